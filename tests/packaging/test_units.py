# SPDX-License-Identifier: AGPL-3.0-or-later
"""The shipped systemd units pass `systemd-analyze verify` and stay hardened.

The units are the ones CMake configured for this build (build/config/*.service). `verify` checks
that ExecStart is an executable, so each unit is checked with ExecStart pointed at the binary of
this build; every other line is the shipped one. `systemd-analyze security --offline=true`
rates the hardening from 0 (best) to 10; the figure is printed for the notes and must stay at or
below MAX_EXPOSURE.
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

UNIT_DIR = os.environ.get("REFLOW_UNIT_DIR", "")
BIN_DIR = os.environ.get("REFLOW_BIN_DIR", "")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# "OK" in systemd's own scale starts below 2.0 (then MEDIUM, EXPOSED, UNSAFE).
MAX_EXPOSURE = 2.0

REQUIRED = {
    "reflow-agent": ["Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=reflow-agent",
                     "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     "RestrictAddressFamilies=", "DevicePolicy=closed", "DeviceAllow=char-ttyUSB rw",
                     "DeviceAllow=char-input r", "DeviceAllow=char-gpiochip rw", "User=reflow-agent"],
    "reflow-ingest": ["Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=reflow-ingest",
                      "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "RestrictAddressFamilies=", "PrivateDevices=yes", "User=reflow-ingest",
                      "StateDirectoryMode=0750", "UMask=0027"],
}


@unittest.skipUnless(SYSTEMD_ANALYZE, "systemd-analyze is not installed (Debian package systemd)")
class UnitTest(unittest.TestCase):

    def unit_for_this_build(self, name):
        """The configured unit with ExecStart's binary replaced by this build's."""
        with open(os.path.join(UNIT_DIR, f"{name}.service"), encoding="utf-8") as f:
            text = f.read()
        match = re.search(r"^ExecStart=(\S+)", text, re.M)
        self.assertIsNotNone(match, f"{name}.service has no ExecStart")
        self.assertTrue(match.group(1).endswith(f"/{name}"), match.group(1))
        text = text.replace(match.group(1), os.path.join(BIN_DIR, name), 1)
        directory = tempfile.mkdtemp(prefix="reflow-units-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, f"{name}.service")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path, text

    def check(self, name):
        path, text = self.unit_for_this_build(name)
        for line in REQUIRED[name]:
            self.assertRegex(text, re.compile("^" + re.escape(line), re.M), f"{name}.service lacks {line}")

        verify = subprocess.run([SYSTEMD_ANALYZE, "verify", path], capture_output=True, text=True)
        # verify also reports problems in units it pulls in; only this unit's lines count.
        own = [l for l in (verify.stdout + verify.stderr).splitlines() if f"{name}.service" in l]
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        self.assertEqual(own, [], "systemd-analyze verify complained")

        security = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", path],
                                  capture_output=True, text=True)
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", security.stdout)
        self.assertIsNotNone(match, security.stdout + security.stderr)
        exposure = float(match.group(1))
        print(f"\n{name}.service: systemd-analyze security exposure {exposure} {match.group(2)}")
        self.assertLessEqual(exposure, MAX_EXPOSURE, security.stdout)

    def test_agent_unit_verifies_and_is_hardened(self):
        self.check("reflow-agent")

    def test_ingest_unit_verifies_and_is_hardened(self):
        self.check("reflow-ingest")


if __name__ == "__main__":
    unittest.main()
