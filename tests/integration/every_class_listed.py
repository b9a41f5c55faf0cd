# SPDX-License-Identifier: AGPL-3.0-or-later
"""Checks that tests/integration/CMakeLists.txt runs every integration test class.

The CMake list names each module whole ("cli 47") or class by class ("node:VerdictTest 70");
a class added to a module listed class by class would otherwise never run. Usage:
    every_class_listed.py CMAKELISTS
Exits 1 naming each class that no entry runs, or each entry that names nothing.
"""
import ast
import pathlib
import re
import sys


def classes_with_tests(path):
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(f, ast.FunctionDef) and f.name.startswith("test_") for f in node.body)
    }


def main():
    cmakelists = pathlib.Path(sys.argv[1])
    entries = re.findall(r'"([a-z_]+)(?::([A-Za-z]+))? [0-9]+"', cmakelists.read_text())
    here = cmakelists.parent
    problems = []
    listed = {}
    for module, cls in entries:
        listed.setdefault(module, set()).add(cls or None)
    for path in sorted(here.glob("test_*.py")):
        module = path.stem[len("test_"):]
        found = classes_with_tests(path)
        if module not in listed:
            problems.append(f"{path.name}: not listed in {cmakelists}")
            continue
        if None in listed[module]:
            continue
        for cls in sorted(found - listed[module]):
            problems.append(f"{path.name}: class {cls} is not listed in {cmakelists}")
        for cls in sorted(listed[module] - found):
            problems.append(f"{cmakelists}: {module}:{cls} names no test class in {path.name}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"every test class of {len(listed)} modules is listed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
