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


class PasswordFileTest(unittest.TestCase):
    """A broker that wants a user name and password (mosquitto_passwd); the agent's
    mqtt.password_file is read at each connect and on SIGHUP, and must not be readable by
    others."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-enrol-pw-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.broker_dir = self.tmp / "broker"
        self.broker_dir.mkdir()
        self.broker_passwd = self.broker_dir / "passwd"
        self.set_broker_password("first-secret")
        passwd = self.broker_passwd

        def conf(port):
            return (f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {passwd}\npersistence false\nlog_dest stderr\n"
                    "log_type all\n")

        self.broker = h.Mosquitto(self.broker_dir, config=conf).start()
        self.addCleanup(self.broker.stop)
        key = self.tmp / "device.key"
        r = h.run_cli(["keygen", "--key", str(key)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.password_file = self.tmp / "mqtt.password"
        self.write_agent_password("first-secret")
        self.config = self.tmp / "agent.toml"
        self.config.write_text(h.config_text(
            device_id=h.DEVICE_ID, key_file=key, data_dir=self.tmp / "data", url=self.broker.url,
            extra_mqtt=f'username = "dev"\npassword_file = "{self.password_file}"'))
        self.agent = h.AgentProcess(self.config, self.tmp / "agent.log")
        self.addCleanup(self.agent.kill)
        self.addCleanup(self._dump_log_on_failure)

    def _dump_log_on_failure(self):
        outcome = getattr(self, "_outcome", None)
        errors = getattr(getattr(outcome, "result", None), "failures", []) + \
            getattr(getattr(outcome, "result", None), "errors", [])
        if any(test is self for test, _ in errors):
            print(f"\n---- agent log ----\n{self.agent.log_text()}", flush=True)

    def set_broker_password(self, password):
        self.broker_passwd.unlink(missing_ok=True)
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(self.broker_passwd), "dev", password],
                       check=True, capture_output=True)
        nh.readable_by_broker(self.broker_dir)

    def write_agent_password(self, password):
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)

    def connected(self, connects):
        return self.agent.wait_status(
            lambda s: s["connected"] and s["connects"] == connects,
            f"the agent is connected, connect number {connects}")

    def test_a_password_file_others_may_read_is_refused_naming_it_and_the_fix(self):
        self.password_file.chmod(0o644)
        self.agent.start()
        self.assertEqual(self.agent.wait_exit(h.WAIT_S), 1, "run refuses to start")
        log = self.agent.log_text()
        self.assertIn(str(self.password_file), log)
        self.assertIn(f"chmod 600 {self.password_file}", log)
        self.assertNotIn("first-secret", log)

    def test_sighup_rereads_the_password_file_and_reconnects_with_a_new_password(self):
        self.agent.start()
        self.agent.wait_ready()
        self.connected(1)
        # The broker learns the new password (SIGHUP makes Mosquitto re-read its password file;
        # the agent's session stays), then the agent's file gets it, then the agent its SIGHUP.
        self.set_broker_password("second-secret")
        self.broker.proc.send_signal(signal.SIGHUP)
        self.write_agent_password("second-secret")
        self.agent.send_signal(signal.SIGHUP)
        self.connected(2)
        self.assertTrue(self.agent.running())
        self.assertIn("SIGHUP", self.agent.log_text())
        self.assertNotIn("second-secret", self.agent.log_text())

    def test_each_reconnect_reads_the_password_file_again(self):
        self.agent.start()
        self.agent.wait_ready()
        self.connected(1)
        self.broker.stop()
        self.set_broker_password("second-secret")
        self.write_agent_password("second-secret")
        self.broker.start()
        self.connected(2)


if __name__ == "__main__":
    unittest.main()
