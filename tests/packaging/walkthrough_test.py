#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Runs the node operator's and the device owner's walkthroughs exactly as the docs write them.

The walkthrough is every ```sh block in README.md and docs/*.md that follows a marker line
    <!-- walkthrough: ROLE N -->
Every other ```sh block there must follow a line <!-- not walked: REASON --> (the commands that
need hardware, a zenflows server or placeholders filled in), or the test fails naming it.
(ROLE is `node` or `device`, N the block's place in the whole walkthrough; HTML comments, so a
reader sees nothing). The blocks run in the order of N, each with `bash -euo pipefail` as root,
all in one working directory (the files a role hands to the other are there), after the
Debian packages are installed (tests/packaging/deb_test.sh runs this after `dpkg -i`). The text
is read from the docs at every run: when a doc changes, the test runs the new text.

After each block, while the device's agent runs, it waits until the agent has no backlog (the
node has stored and acknowledged every event it committed; a person typing the next command is
slower than that), so that the node's queries do not race the delivery.

Then it checks what the walkthrough promises:
  - an event handed to the device's agent (`reflow-agent emit`) is stored by the node, verified
    (`reflow-ingest events` lists it) and acknowledged (the agent's `status` shows it acked), over
    mqtts:// with the device's client certificate (the broker of the docs has no other listener);
  - a second device that presents the first device's certificate but publishes as another
    device id (registered at the node, so only the broker's ACL stands in its way) is refused:
    the broker logs the denied PUBLISH and the node stores nothing of it.

The sandbox: `unshare --mount --net` (a new network namespace with only `lo`, brought up; so the
broker's port 8883 is private) and, in the new mount namespace only, scratch copies bind-mounted
over /etc/reflow-agent, /etc/reflow-ingest, /etc/mosquitto, /var/lib/reflow-agent,
/var/lib/reflow-ingest and /var/lib/mosquitto (the packages' state is copied in first), tmpfs
over /run and /var/log, and /etc/hosts with the node's host name (the walkthrough's
`ca server --host`) at 127.0.0.1. What the walkthrough writes there stays in the scratch
directory. The working directory is a scratch copy of the checkout (without .git and build*),
so the docs' `config/...` paths resolve and the files the roles hand each other stay out of it.

Shims (on PATH before the system's, because the real commands cannot work in the sandbox);
everything else runs verbatim:
  sudo [-u USER] CMD...   runs CMD as root, or as USER with setpriv (USER's groups, HOME).
  systemctl daemon-reload does nothing; `start`, `restart`, `enable --now`, `stop` UNIT run the
                          unit file's ExecStartPre= lines and its ExecStart= as its User= in the
                          background (stdout and stderr to the unit's log), waiting for READY=1
                          on a notify socket for Type=notify units; `enable` without --now does
                          nothing; `status` and `is-active` say whether it runs.
  journalctl -u UNIT ...  prints the unit's log so far and exits (also with -f).

Usage (as root, on a throw-away machine with the packages installed):
  tests/packaging/walkthrough_test.py [--keep] [--list] [REPO_DIR]
--list prints the blocks in order and exits; --keep keeps the scratch directory.
"""

import argparse
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

MARKER = re.compile(r"^<!--\s*walkthrough:\s*(node|device)\s+(\d+)\s*-->\s*$")
# A command block the walkthrough does not run says why, so that no new block escapes unseen.
NOT_WALKED = re.compile(r"^<!--\s*not walked:\s*\S.*-->\s*$")
SANDBOXED_DIRS = ["/etc/reflow-agent", "/etc/reflow-ingest", "/etc/mosquitto",
                  "/var/lib/reflow-agent", "/var/lib/reflow-ingest", "/var/lib/mosquitto"]
TMPFS_DIRS = ["/run", "/var/log"]
UNIT_DIRS = ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"]
AGENT_CONFIG = "/etc/reflow-agent/agent.toml"
INGEST_CONFIG = "/etc/reflow-ingest/reflow-ingest.toml"
BROKER_LOG = "/var/log/mosquitto/mosquitto.log"
SECOND_DEVICE = "saw-02"
WAIT_SECONDS = 30


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------- the docs' blocks

def extract_blocks(repo):
    """[(n, role, file:line, text)] of the marked ```sh blocks, in walkthrough order."""
    docs = [repo / "README.md"] + sorted((repo / "docs").glob("*.md"))
    blocks = []
    unmarked = []
    for doc in docs:
        lines = doc.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = MARKER.match(lines[i].strip())
            if lines[i].strip() in ("```sh", "```bash"):
                # Reached without its marker: only a block that says why it is not walked may be.
                before = i - 1
                while before >= 0 and not lines[before].strip():
                    before -= 1
                if before < 0 or not NOT_WALKED.match(lines[before].strip()):
                    unmarked.append(f"{doc.relative_to(repo)}:{i + 1}")
                i += 1
                while i < len(lines) and lines[i].strip() != "```":
                    i += 1
                i += 1
                continue
            if not match:
                if "walkthrough:" in lines[i] and "<!--" in lines[i]:
                    raise Failure(f"{doc.relative_to(repo)}:{i + 1}: a walkthrough marker must "
                                  f"read <!-- walkthrough: node|device N -->; got {lines[i]!r}")
                i += 1
                continue
            where = f"{doc.relative_to(repo)}:{i + 1}"
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j == len(lines) or lines[j].strip() not in ("```sh", "```bash"):
                raise Failure(f"{where}: the walkthrough marker is not followed by a ```sh block")
            k = j + 1
            while k < len(lines) and lines[k].strip() != "```":
                k += 1
            if k == len(lines):
                raise Failure(f"{where}: the ```sh block after the marker is not closed")
            blocks.append((int(match.group(2)), match.group(1), where, "\n".join(lines[j + 1:k])))
            i = k + 1
    if unmarked:
        raise Failure("command blocks the walkthrough neither runs nor excuses (put "
                      "<!-- walkthrough: node|device N --> or <!-- not walked: REASON --> on the "
                      "line before): " + ", ".join(unmarked))
    seen = {}
    for n, _, where, _ in blocks:
        if n in seen:
            raise Failure(f"{where}: walkthrough step {n} is also at {seen[n]}")
        seen[n] = where
    if not blocks:
        raise Failure("no <!-- walkthrough: ROLE N --> markers in README.md or docs/*.md")
    return sorted(blocks)


def node_host(blocks):
    """The first --host of the walkthrough's `reflow-ingest ca server`."""
    for _, _, _, text in blocks:
        match = re.search(r"reflow-ingest ca server\b.*?--host[ =](\S+)", text)
        if match:
            return match.group(1)
    raise Failure("the walkthrough never runs `reflow-ingest ca server --host NAME`")


# ---------------------------------------------------------------------------- the shims

def unit_file(unit):
    name = unit if unit.endswith(".service") else unit + ".service"
    for directory in UNIT_DIRS:
        path = Path(directory) / name
        if path.is_file():
            return path
    raise Failure(f"systemctl (walkthrough shim): no unit file {name} in {', '.join(UNIT_DIRS)}")


def parse_unit(path):
    service = {"pre": [], "start": None, "user": None, "type": "simple"}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "ExecStartPre":
            service["pre"].append(value)
        elif key == "ExecStart":
            service["start"] = value
        elif key == "User":
            service["user"] = value
        elif key == "Type":
            service["type"] = value
    if not service["start"]:
        raise Failure(f"systemctl (walkthrough shim): {path} has no ExecStart=")
    return service


def exec_line(value):
    """An Exec*= value without its prefixes, and whether a failure is ignored ('-')."""
    ignore = False
    while value and value[0] in "-@+!:":
        ignore |= value[0] == "-"
        value = value[1:]
    return shlex.split(value), ignore


def as_user(user, argv):
    if not user or user == "root":
        return argv
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--", "env", f"HOME={entry.pw_dir}", f"USER={user}", f"LOGNAME={user}", *argv]


def service_pid(state, unit):
    pid_file = state / f"{unit}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A zombie (exited, not yet reaped by whoever adopted it) does not run.
    if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
        return None
    return pid


def stop_service(state, unit):
    pid = service_pid(state, unit)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + WAIT_SECONDS
    while service_pid(state, unit) is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    (state / f"{unit}.pid").unlink(missing_ok=True)


def start_service(state, unit):
    if service_pid(state, unit) is not None:
        return
    service = parse_unit(unit_file(unit))
    for value in service["pre"]:
        argv, ignore = exec_line(value)
        if subprocess.run(argv).returncode != 0 and not ignore:
            raise Failure(f"systemctl (walkthrough shim): {unit}: ExecStartPre={value} failed")
    argv, _ = exec_line(service["start"])
    log = state / f"{unit}.log"
    env = dict(os.environ)
    notify = None
    if service["type"] == "notify":
        path = state / f"{unit}.notify"
        path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(path))
        os.chmod(path, 0o777)  # the service writes to it after dropping its privileges
        env["NOTIFY_SOCKET"] = str(path)
    with open(log, "ab") as out:
        process = subprocess.Popen(as_user(service["user"], argv), stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=out, env=env, start_new_session=True)
    (state / f"{unit}.pid").write_text(str(process.pid))
    if notify is None:
        return
    deadline = time.monotonic() + WAIT_SECONDS
    notify.settimeout(0.1)
    while True:
        try:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        except socket.timeout:
            pass
        if process.poll() is not None:
            raise Failure(f"systemctl (walkthrough shim): {unit} exited with {process.returncode} "
                          f"before READY=1; its log:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise Failure(f"systemctl (walkthrough shim): {unit} not ready in {WAIT_SECONDS} s")


def shim_systemctl(state, args):
    args = [a for a in args if a not in ("--no-pager", "--quiet", "-q")]
    if not args:
        raise Failure("systemctl (walkthrough shim): no command")
    command, rest = args[0], args[1:]
    now = "--now" in rest
    units = [u.removesuffix(".service") for u in rest if not u.startswith("-")]
    if command == "daemon-reload":
        return 0
    if command in ("start", "restart") or (command == "enable" and now):
        for unit in units:
            if command == "restart":
                stop_service(state, unit)
            start_service(state, unit)
        return 0
    if command == "enable":
        return 0
    if command == "stop":
        for unit in units:
            stop_service(state, unit)
        return 0
    if command in ("status", "is-active"):
        running = all(service_pid(state, unit) is not None for unit in units)
        for unit in units:
            pid = service_pid(state, unit)
            print(f"{unit}: {'active (running), pid ' + str(pid) if pid else 'inactive'}")
        return 0 if running else 3
    raise Failure(f"systemctl (walkthrough shim): `{command}` is not simulated")


def shim_journalctl(state, args):
    units = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-u"]
    units += [a[len("--unit="):] for a in args if a.startswith("--unit=")]
    for unit in units:
        log = state / f"{unit.removesuffix('.service')}.log"
        if log.exists():
            sys.stdout.write(log.read_text(errors="replace"))
    return 0


def shim_sudo(args):
    user = None
    while args and args[0].startswith("-"):
        if args[0] == "--":
            args = args[1:]
            break
        if args[0] == "-u" and len(args) > 1:
            user, args = args[1], args[2:]
        else:
            raise Failure(f"sudo (walkthrough shim): option {args[0]} is not simulated")
    if not args:
        raise Failure("sudo (walkthrough shim): no command")
    argv = as_user(user, args)
    os.execvp(argv[0], argv)


def run_shim(name, state, args):
    try:
        if name == "sudo":
            shim_sudo(args)
        if name == "systemctl":
            return shim_systemctl(state, args)
        if name == "journalctl":
            return shim_journalctl(state, args)
        raise Failure(f"unknown shim {name}")
    except Failure as failure:
        print(failure, file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------- the sandbox

def run(argv, **kwargs):
    return subprocess.run(argv, check=True, **kwargs)


def loopback_up():
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS/SIOCSIFFLAGS on a struct ifreq."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def enter_sandbox(scratch, host):
    loopback_up()
    for directory in SANDBOXED_DIRS:
        if not os.path.isdir(directory):
            raise Failure(f"{directory} does not exist: install the reflow-agent, reflow-ingest "
                          "and mosquitto packages first")
        copy = scratch / "root" / directory.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", directory, str(copy)])
        run(["mount", "--bind", str(copy), directory])
    for directory in TMPFS_DIRS:
        run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", directory])
    hosts = scratch / "root" / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"\n127.0.0.1 {host}\n")
    run(["mount", "--bind", str(hosts), "/etc/hosts"])


def install_shims(scratch):
    shims = scratch / "bin"
    shims.mkdir()
    me = Path(__file__).resolve()
    for name in ("sudo", "systemctl", "journalctl"):
        path = shims / name
        path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(me))} "
                        f"--shim {name} --state {shlex.quote(str(scratch / 'services'))} \"$@\"\n")
        path.chmod(0o755)
    (scratch / "services").mkdir()
    (scratch / "services").chmod(0o755)
    return shims


def capture(argv, check=True):
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise Failure(f"{shlex.join(argv)} exited with {result.returncode}:\n"
                      f"{result.stdout}{result.stderr}")
    return result


def wait_for(what, predicate):
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise Failure(f"not within {WAIT_SECONDS} s: {what}")
        time.sleep(0.2)


def check(description, condition, detail=""):
    if not condition:
        raise Failure(f"FAIL - {description}\n{detail}")
    print(f"ok   - {description}", flush=True)


def settle(state, step):
    """After a block: a running device agent has delivered everything it committed and the node
    acknowledged it (a person typing the next command is slower than that), so that the next
    block's queries do not race the delivery."""
    if service_pid(state, "reflow-agent") is None:
        return
    last = {}

    def delivered():
        status = capture(["reflow-agent", "status", "--config", AGENT_CONFIG, "--json"],
                         check=False)
        if status.returncode != 0:
            return False
        last.update(json.loads(status.stdout))
        return last.get("backlog_events") == 0
    try:
        wait_for(f"after walkthrough step {step} the device's agent has delivered its events",
                 delivered)
    except Failure as failure:
        raise Failure(f"FAIL - {failure}; its status: {json.dumps(last)}") from None


def final_checks(scratch, state):
    with open(AGENT_CONFIG, "rb") as f:
        agent = tomllib.load(f)
    with open(INGEST_CONFIG, "rb") as f:
        ingest = tomllib.load(f)
    device = agent["agent"]["device_id"]
    mqtt = agent.get("mqtt", {})
    check("the device's agent uses mqtts:// with a client certificate",
          mqtt.get("url", "").startswith("mqtts://") and mqtt.get("cert_file") and
          mqtt.get("key_file"), json.dumps(mqtt))
    check("the node's ingest uses mqtts:// with a client certificate",
          ingest.get("mqtt", {}).get("url", "").startswith("mqtts://") and
          ingest["mqtt"].get("cert_file"), json.dumps(ingest.get("mqtt", {})))
    check("the broker is running", service_pid(state, "mosquitto") is not None)

    event = {"action": "use", "resourceInventoriedAs": "laser:walkthrough-01",
             "effortQuantity": {"hasNumericalValue": 0.5, "hasUnit": "hour"},
             "hasBeginning": "2026-11-21T10:00:00Z", "hasEnd": "2026-11-21T10:30:00Z",
             "note": "walkthrough"}
    emitted = subprocess.run(["reflow-agent", "emit", "--config", AGENT_CONFIG],
                             input=json.dumps(event) + "\n", capture_output=True, text=True)
    check("the device's agent commits an emitted event", emitted.returncode == 0,
          emitted.stdout + emitted.stderr)
    answer = json.loads(emitted.stdout.splitlines()[-1])

    def stored():
        out = capture(["reflow-ingest", "events", "--device", device]).stdout
        return answer["id"] in out
    wait_for(f"the node stores event {answer['id']} of {device}", stored)
    check(f"the node verified and stored the event (reflow-ingest events --device {device})", True)

    def acked():
        status = capture(["reflow-agent", "status", "--config", AGENT_CONFIG, "--json"],
                         check=False)
        return (status.returncode == 0 and
                (json.loads(status.stdout).get("acked_seq") or 0) >= answer["seq"])
    wait_for(f"the device's agent sees seq {answer['seq']} acknowledged", acked)
    check("the node's acknowledgement reached the device (reflow-agent status)", True)
    stats = capture(["reflow-ingest", "stats"]).stdout
    print(stats, end="")
    check(f"reflow-ingest stats lists {device} with an intact chain",
          any(line.split()[:1] == [device] and "intact" in line.split()
              for line in stats.splitlines()), stats)

    # A second device: the first device's certificate, another device id. The node knows it
    # (device add), so only the broker's ACL can refuse it.
    second = scratch / SECOND_DEVICE
    second.mkdir()
    capture(["reflow-agent", "keygen", "--key", str(second / "device.key")])
    capture(["reflow-ingest", "device", "add", SECOND_DEVICE, "--jwk", str(second / "device.jwk")])
    config = Path(AGENT_CONFIG).read_text()
    config = re.sub(r'(?m)^device_id = .*$', f'device_id = "{SECOND_DEVICE}"', config)
    config = re.sub(r'(?m)^key_file = "/var/lib/reflow-agent/device.key"$',
                    f'key_file = "{second}/device.key"', config)
    config = re.sub(r'(?m)^data_dir = .*$', f'data_dir = "{second}"', config)
    (second / "agent.toml").write_text(config)
    with open(second / "agent.log", "wb") as log:
        agent2 = subprocess.Popen(["reflow-agent", "run", "--config", str(second / "agent.toml")],
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for("the second agent's control socket", lambda: (second / "control.sock").exists())
        emitted = subprocess.run(["reflow-agent", "emit", "--config", str(second / "agent.toml")],
                                 input=json.dumps(event) + "\n", capture_output=True, text=True)
        check(f"{SECOND_DEVICE}'s agent (with {device}'s certificate) commits an event",
              emitted.returncode == 0, emitted.stdout + emitted.stderr)
        second_id = json.loads(emitted.stdout.splitlines()[-1])["id"]
        denied = f"'reflow/v1/{SECOND_DEVICE}/events'"

        def broker_denied():
            log_text = Path(BROKER_LOG).read_text(errors="replace")
            return any("Denied PUBLISH" in line and denied in line
                       for line in log_text.splitlines())
        wait_for(f"the broker logs a denied PUBLISH to {denied}", broker_denied)
        line = next(line for line in Path(BROKER_LOG).read_text().splitlines()
                    if "Denied PUBLISH" in line and denied in line)
        check(f"the broker's ACL refuses {SECOND_DEVICE}'s events: {line.strip()}", True)
        events = capture(["reflow-ingest", "events", "--device", SECOND_DEVICE]).stdout
        check(f"the node stored nothing of {SECOND_DEVICE}",
              second_id not in events and "laser:walkthrough-01" not in events, events)
    finally:
        agent2.terminate()
        agent2.wait()


def inside(repo, scratch, blocks):
    host = node_host(blocks)
    enter_sandbox(scratch, host)
    shims = install_shims(scratch)
    state = scratch / "services"
    work = scratch / "work"
    shutil.copytree(repo, work, ignore=shutil.ignore_patterns(".git", "build*"))
    work.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{shims}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["HOME"] = str(work)
    try:
        for n, role, where, text in blocks:
            print(f"# walkthrough {n} ({role}, {where})", flush=True)
            started = time.monotonic()
            result = subprocess.run(["bash", "-euo", "pipefail", "-x", "-c", text], cwd=work,
                                    env=env, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                raise Failure(f"FAIL - walkthrough step {n} ({role}, {where}) exited with "
                              f"{result.returncode}")
            settle(state, n)
            print(f"ok   - walkthrough step {n} ({role}, {where}), "
                  f"{time.monotonic() - started:.1f} s", flush=True)
        os.environ["PATH"] = env["PATH"]
        final_checks(scratch, state)
    except Failure:
        for log in sorted(state.glob("*.log")) + [Path(BROKER_LOG)]:
            if log.exists():
                print(f"--- {log} (last lines)", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-30:]),
                      file=sys.stderr)
        raise
    finally:
        for pid_file in state.glob("*.pid"):
            stop_service(state, pid_file.stem)


def main():
    if len(sys.argv) > 4 and sys.argv[1] == "--shim" and sys.argv[3] == "--state":
        return run_shim(sys.argv[2], Path(sys.argv[4]), sys.argv[5:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--list", action="store_true", help="print the blocks in order and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    try:
        blocks = extract_blocks(repo)
        if args.list:
            for n, role, where, text in blocks:
                print(f"# walkthrough {n} ({role}, {where})\n{text}\n")
            return 0
        if args.inside:
            inside(repo, Path(args.inside), blocks)
            return 0
        if os.geteuid() != 0:
            raise Failure("walkthrough_test.py needs root (it runs the docs' sudo commands)")
        for binary in ("/usr/bin/reflow-agent", "/usr/bin/reflow-ingest", "/usr/sbin/mosquitto"):
            if not os.access(binary, os.X_OK):
                raise Failure(f"{binary} is not installed: install the reflow-agent and "
                              "reflow-ingest packages (dpkg -i) and mosquitto first")
    except Failure as failure:
        print(failure, file=sys.stderr)
        return 1
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="reflow-walkthrough-"))
    scratch.chmod(0o755)
    try:
        result = subprocess.run(["unshare", "--mount", "--net", "--", sys.executable,
                                 str(Path(__file__).resolve()), "--inside", str(scratch),
                                 str(repo)])
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - started
    if result.returncode != 0:
        print(f"walkthrough FAILED after {took:.1f} s", file=sys.stderr)
        return 1
    print(f"walkthrough OK: every marked block ran verbatim, {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
