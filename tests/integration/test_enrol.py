# SPDX-License-Identifier: AGPL-3.0-or-later
"""Enrolment as a node operator and a device owner do it (issue 15), with the real binaries: the
CA's files keep one owner whoever runs `reflow-ingest ca …`; nothing is recorded as issued unless
the certificate was written; `ca server` leaves a ca.crt the broker can read beside its
certificate; one bundle file (`reflow-ingest ca enroll`) taken by one command (`reflow-agent
enroll BUNDLE`); the TLS key readable by the service user when root enrols; the MQTT password
file re-read on SIGHUP and at each reconnect, and refused when others may read it."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import unittest
from pathlib import Path

import harness as h
import node_harness as nh

NOBODY = 65534  # the CA's owner in these tests: stands for the reflow-ingest service user
DAEMON = 1      # someone else (Debian's `daemon` user)
AS_ROOT_WITH_SETPRIV = unittest.skipUnless(
    os.geteuid() == 0 and shutil.which("setpriv"),
    "needs root and setpriv (util-linux) to run a command as another user")


def run_ingest_as(uid, args):
    return nh.run_ingest_as(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"],
                            args)


def owner(path):
    st = Path(path).stat()
    return st.st_uid, st.st_gid


def issued_lines(ca_dir):
    path = Path(ca_dir) / "issued.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CaCase(unittest.TestCase):
    """A node config in a temp dir readable by everyone, its CA not made yet."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-enrol-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.tmp.chmod(0o755)
        self.data_dir = self.tmp / "data"
        self.ca_dir = self.data_dir / "ca"
        self.config = self.tmp / "ingest.toml"
        self.config.write_text(nh.ingest_config_text(data_dir=self.data_dir,
                                                     url="mqtt://127.0.0.1:1883"))
        self.config.chmod(0o644)
        self.cli = nh.IngestCli(self.config)

    def make_csr(self, device_id="fablab-mk4-01"):
        """A device's CSR from `reflow-agent enroll`, readable by everyone."""
        base = self.tmp / device_id
        base.mkdir(mode=0o755)
        config = base / "agent.toml"
        config.write_text(h.config_text(device_id=device_id, key_file=base / "device.key",
                                        data_dir=base / "data", url="mqtt://127.0.0.1:1883"))
        csr = base / f"{device_id}.csr"
        r = h.run_cli(["enroll", "--config", str(config), "--out", str(csr)])
        self.assertEqual(r.returncode, 0, r.stderr)
        csr.chmod(0o644)
        return csr


class CaFilesTest(CaCase):

    def test_a_certificate_that_cannot_be_written_is_not_recorded_as_issued(self):
        self.cli.ok("ca", "init")
        csr = self.make_csr()
        r = self.cli.run("ca", "sign", csr, "--out", self.tmp / "missing-dir" / "dev.crt")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("missing-dir", r.stderr)
        self.assertEqual(issued_lines(self.ca_dir), [],
                         "a failed write leaves no issuance record")
        self.cli.ok("ca", "sign", csr, "--out", self.tmp / "dev.crt")
        self.assertEqual([r["cn"] for r in issued_lines(self.ca_dir)], ["fablab-mk4-01"])

    def test_an_issued_jsonl_that_cannot_be_opened_is_named_and_the_csr_is_not_blamed(self):
        self.cli.ok("ca", "init")
        csr = self.make_csr()
        (self.ca_dir / "issued.jsonl").mkdir()  # open(O_RDWR) fails: EISDIR
        r = self.cli.run("ca", "sign", csr, "--out", self.tmp / "dev.crt")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(str(self.ca_dir / "issued.jsonl"), r.stderr)
        self.assertNotIn(f"{csr}:", r.stderr, "the CSR is not what failed")
        self.assertFalse((self.tmp / "dev.crt").exists())

    def test_ca_server_writes_the_ca_certificate_beside_its_own_and_names_it_as_cafile(self):
        self.cli.ok("ca", "init")
        out = self.tmp / "broker"
        out.mkdir()
        r = self.cli.ok("ca", "server", "--host", "node.example.org", "--out-dir", out)
        self.assertEqual((out / "ca.crt").read_text(), (self.ca_dir / "ca.crt").read_text())
        self.assertEqual((out / "ca.crt").stat().st_mode & 0o777, 0o644)
        self.assertIn(f"cafile {out / 'ca.crt'}\n", r.stderr)
        self.assertNotIn(str(self.ca_dir / "ca.crt"), r.stderr,
                         "the broker cannot read the CA directory (0700)")


@AS_ROOT_WITH_SETPRIV
class CaOwnerTest(CaCase):
    """The CA belongs to the service user (here: nobody); root and the owner may use it."""

    def setUp(self):
        super().setUp()
        self.data_dir.mkdir(mode=0o750)
        os.chown(self.data_dir, NOBODY, NOBODY)

    def test_root_running_ca_commands_leaves_every_ca_file_to_the_ca_owner(self):
        self.cli.ok("ca", "init")  # as root, in the service user's data dir
        out = self.tmp / "broker"
        out.mkdir()
        self.cli.ok("ca", "server", "--host", "node.example.org", "--out-dir", out)
        self.cli.ok("ca", "sign", self.make_csr("dev-a"), "--out", self.tmp / "dev-a.crt")
        for path in [self.ca_dir, *self.ca_dir.iterdir()]:
            self.assertEqual(owner(path), (NOBODY, NOBODY), path)
        # ... so the service user can go on signing.
        r = run_ingest_as(NOBODY, ["ca", "sign", self.make_csr("dev-b"), "--config",
                                   self.config])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("BEGIN CERTIFICATE", r.stdout)
        self.assertEqual([r["cn"] for r in issued_lines(self.ca_dir)],
                         ["node.example.org", "dev-a", "dev-b"])

    def test_another_user_is_told_which_user_to_run_as(self):
        r = run_ingest_as(NOBODY, ["ca", "init", "--config", self.config])
        self.assertEqual(r.returncode, 0, r.stderr)
        csr = self.make_csr()
        r = run_ingest_as(DAEMON, ["ca", "sign", csr, "--config", self.config])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("sudo -u nobody reflow-ingest", r.stderr)
        self.assertIn(str(self.ca_dir), r.stderr)
        self.assertEqual(issued_lines(self.ca_dir), [])


if __name__ == "__main__":
    unittest.main()
