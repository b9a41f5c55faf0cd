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



AGENT_CONFIG_WITH_COMMENTS = """\
# The fablab's printer agent.
[agent]
device_id = "{device_id}"   # as registered at the node
key_file = "{key_file}"
data_dir = "{data_dir}"

[mqtt]
# Set by `reflow-agent enroll BUNDLE`:
url = "mqtt://127.0.0.1:1"  # replaced
resend_after = "1s"
reconnect_min = "100ms"
reconnect_max = "1s"

[outbox]
quota = "64MiB"  # a small SD card
"""


class EnrolmentBundleTest(nh.NodeTestCase):
    """Node operator: `device add` + `ca enroll`; device owner: `reflow-agent enroll BUNDLE`."""

    def new_bare_device(self, device_id):
        """A device as its owner sets it up: keygen, a config without TLS, `enroll` (the CSR)."""
        base = self.tmp / device_id
        base.mkdir()
        key = base / "device.key"
        r = h.run_cli(["keygen", "--key", str(key)])
        self.assertEqual(r.returncode, 0, r.stderr)
        config = base / "agent.toml"
        config.write_text(AGENT_CONFIG_WITH_COMMENTS.format(
            device_id=device_id, key_file=key, data_dir=base / "data"))
        csr = base / f"{device_id}.csr"
        r = h.run_cli(["enroll", "--config", str(config), "--out", str(csr)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("reflow-ingest ca enroll", r.stderr, "enroll's next steps name the bundle")
        self.assertIn("device add", r.stderr)
        return base, config, csr, base / "device.jwk"

    def test_two_node_commands_and_one_device_command_enrol_a_device_over_mutual_tls(self):
        self.start_tls_broker()
        base, config, csr, jwk = self.new_bare_device("fablab-mk4-01")
        url = f"mqtts://{nh.TLS_HOST}:{self.broker.port}"
        bundle = self.tmp / "fablab-mk4-01.enrol.json"
        # The node operator: two commands.
        self.cli.ok("device", "add", "fablab-mk4-01", "--jwk", jwk)
        r = self.tls.cli.ok("ca", "enroll", csr, "--url", url, "--out", bundle)
        self.assertIn("reflow-agent enroll", r.stderr)
        doc = json.loads(bundle.read_text())
        self.assertEqual(sorted(doc), sorted(["format", "version", "device_id", "url",
                                              "topic_prefix", "ca_cert", "device_cert",
                                              "node_ack_jwk"]))
        self.assertEqual((doc["format"], doc["version"], doc["device_id"], doc["url"],
                          doc["topic_prefix"], doc["node_ack_jwk"]),
                         ("reflow-enrolment", 1, "fablab-mk4-01", url, h.PREFIX, None))
        self.assertEqual(doc["ca_cert"], self.tls.ca_cert.read_text())
        self.assertEqual(issued_lines(self.tls.data_dir / "ca")[-1]["cn"], "fablab-mk4-01")
        # The device owner: one command.
        before = config.read_text()
        r = h.run_cli(["enroll", "--config", str(config), str(bundle)])
        self.assertEqual(r.returncode, 0, r.stderr)
        after = config.read_text()
        for kept in ("# The fablab's printer agent.", '# as registered at the node',
                     "# Set by `reflow-agent enroll BUNDLE`:", '# replaced',
                     'quota = "64MiB"  # a small SD card', 'reconnect_min = "100ms"'):
            self.assertIn(kept, after, f"kept from\n{before}\nin\n{after}")
        self.assertIn(f'url = "{url}"  # replaced', after)
        self.assertEqual((base / "node-ca.pem").read_text(), doc["ca_cert"])
        self.assertEqual((base / "device.crt").read_text(), doc["device_cert"])
        for name in ("node-ca.pem", "device.crt"):
            self.assertEqual((base / name).stat().st_mode & 0o777, 0o644, name)
        for line in (f'ca_file = "{base / "node-ca.pem"}"', f'cert_file = "{base / "device.crt"}"',
                     f'key_file = "{base / "data" / "tls.key"}"',
                     f'topic_prefix = "{h.PREFIX}"'):
            self.assertIn(line, after)

        # ... and the device's events arrive, verified, over mutual TLS.
        self.start_ingest()
        agent = h.AgentProcess(config, self.tmp / "agent-enrolled.log").start()
        self.agents.append(agent)
        agent.wait_ready()
        agent.wait_status(lambda s: s["connected"], "the enrolled agent connected")
        self.config_path = config
        acked = self.emit_ok(h.emit_lines(3))
        agent.wait_status(lambda s: s["acked_seq"] == 3, "the node acked the three events")
        self.assertEqual([e["id"] for _, e in self.cli.events("fablab-mk4-01")],
                         [i for _, i in acked])

    def test_a_bundle_with_the_nodes_key_pins_it_and_the_nodes_signed_acks_prune(self):
        self.start_tls_broker()
        node_key = json.loads(self.tls.cli.ok("key", "init", "--json").stdout)
        # The running ingest signs with the key `ca enroll` hands out.
        self.ingest_data.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.tls.data_dir / "node.key", self.ingest_data / "node.key")
        base, config, csr, jwk = self.new_bare_device("fablab-mk4-02")
        url = f"mqtts://{nh.TLS_HOST}:{self.broker.port}"
        bundle = self.tmp / "fablab-mk4-02.enrol.json"
        self.cli.ok("device", "add", "fablab-mk4-02", "--jwk", jwk)
        self.tls.cli.ok("ca", "enroll", csr, "--url", url, "--out", bundle)
        self.assertEqual(json.loads(bundle.read_text())["node_ack_jwk"]["kid"], node_key["kid"])

        r = h.run_cli(["enroll", "--config", str(config), str(bundle)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"node_jwk:  {base / 'node.jwk'}", r.stdout)
        self.assertIn(f'node_jwk = "{base / "node.jwk"}"', config.read_text())
        self.assertEqual(json.loads((base / "node.jwk").read_text())["kid"], node_key["kid"])

        self.start_ingest()
        agent = h.AgentProcess(config, self.tmp / "agent-pinned.log").start()
        self.agents.append(agent)
        agent.wait_ready()
        s = agent.wait_status(lambda s: s["connected"], "the enrolled agent connected")
        self.assertEqual((s["acks_verified"], s["node_kid"]), (True, node_key["kid"]))
        self.config_path = config
        self.emit_ok(h.emit_lines(3))
        s = agent.wait_status(lambda s: s["acked_seq"] == 3 and s["backlog_events"] == 0,
                              "the node's signed acks verified and pruned")
        self.assertEqual(s["refused_acks"], 0, s)

    def test_a_bundle_for_another_device_or_another_key_is_refused_and_nothing_is_written(self):
        self.start_tls_broker()
        url = f"mqtts://{nh.TLS_HOST}:{self.broker.port}"
        base_a, config_a, csr_a, _ = self.new_bare_device("dev-a")
        base_b, config_b, _, _ = self.new_bare_device("dev-b")
        bundle = self.tmp / "dev-a.enrol.json"
        self.tls.cli.ok("ca", "enroll", csr_a, "--url", url, "--out", bundle)
        before = config_b.read_text()
        r = h.run_cli(["enroll", "--config", str(config_b), str(bundle)])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('is for the device "dev-a"', r.stderr)
        self.assertEqual(config_b.read_text(), before)
        self.assertFalse((base_b / "device.crt").exists())
        # dev-a's TLS key replaced since its CSR: the certificate is not for it.
        (base_a / "data" / "tls.key").unlink()
        h.run_cli(["enroll", "--config", str(config_a), "--out", str(self.tmp / "again.csr")])
        before = config_a.read_text()
        r = h.run_cli(["enroll", "--config", str(config_a), str(bundle)])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("for another key", r.stderr)
        self.assertEqual(config_a.read_text(), before)
        self.assertFalse((base_a / "device.crt").exists())

    def test_a_config_that_cannot_be_edited_safely_is_refused_naming_the_keys(self):
        self.start_tls_broker()
        url = f"mqtts://{nh.TLS_HOST}:{self.broker.port}"
        base, config, csr, _ = self.new_bare_device("dev-a")
        bundle = self.tmp / "dev-a.enrol.json"
        self.tls.cli.ok("ca", "enroll", csr, "--url", url, "--out", bundle)
        text = config.read_text().replace('url = "mqtt://127.0.0.1:1"  # replaced',
                                          'url = """\nmqtt://127.0.0.1:1"""')
        config.write_text(text)
        r = h.run_cli(["enroll", "--config", str(config), str(bundle)])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("mqtt.url", r.stderr)
        self.assertIn("by hand", r.stderr)
        self.assertIn(f'url = "{url}"', r.stderr)
        self.assertEqual(config.read_text(), text)
        self.assertFalse((base / "device.crt").exists())

    def test_ca_enroll_records_nothing_when_the_bundle_cannot_be_written(self):
        self.start_tls_broker()
        _, _, csr, _ = self.new_bare_device("dev-a")
        before = issued_lines(self.tls.data_dir / "ca")
        r = self.tls.cli.run("ca", "enroll", csr, "--url", f"mqtts://{nh.TLS_HOST}:8883", "--out",
                         self.tmp / "no-such-dir" / "dev-a.enrol.json")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(issued_lines(self.tls.data_dir / "ca"), before)


@unittest.skipUnless(os.geteuid() == 0, "needs root: enrolling as root")
class EnrollAsRootTest(unittest.TestCase):
    """`sudo reflow-agent enroll`: the TLS key goes to the service user (the data dir's owner)."""

    def test_the_tls_key_made_by_root_is_given_to_the_owner_of_the_data_dir(self):
        tmp = Path(tempfile.mkdtemp(prefix="reflow-enrol-root-"))
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        data = tmp / "data"
        data.mkdir(mode=0o750)
        os.chown(data, NOBODY, NOBODY)
        config = tmp / "agent.toml"
        config.write_text(h.config_text(device_id="dev-a", key_file=tmp / "device.key",
                                        data_dir=data, url="mqtt://127.0.0.1:1"))
        r = h.run_cli(["enroll", "--config", str(config), "--out", str(tmp / "dev-a.csr")])
        self.assertEqual(r.returncode, 0, r.stderr)
        key = data / "tls.key"
        self.assertEqual(owner(key), (NOBODY, NOBODY))
        self.assertEqual(key.stat().st_mode & 0o777, 0o600)
        self.assertIn("owned by nobody", r.stderr)


if __name__ == "__main__":
    unittest.main()
