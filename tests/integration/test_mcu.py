# SPDX-License-Identifier: AGPL-3.0-or-later
"""A machine-node board end to end: `reflow-fw-sim` (the firmware's main logic on the host,
firmware/app) plays the board on one end of a pseudo-terminal, a real `reflow-agent run` with
the `mcu` driver opens the other, and a real Mosquitto carries its signed events to a real
`reflow-ingest run` that verifies and stores them (drivers/mcu/README.md, docs/firmware-link.md).
Covered: a session arriving as verified use + consume, the agent SIGKILLed mid-session (nothing
lost, nothing twice) and the board reset mid-session (a new boot; only the open session lost).

The sim's board clock runs faster than real time (--speed), so a session of board minutes takes
real seconds; nothing sleeps to let time pass: every wait polls observable state (the sim's log,
the ingest's store) with a bound."""

import base64
import hashlib
import json
import os
import signal
import subprocess

import harness as h
import node_harness as nh

DEVICE = "saw-node-01"


def sim_binary():
    return os.environ.get("REFLOW_FW_SIM") or str(h.REPO_ROOT / "build" / "bin" / "reflow-fw-sim")


def driver_toml(link):
    """The agent's [[driver]] table for the board at `link`: 10 mA per count, 1 kHz sampling,
    0.2 s RMS windows, on at 1 A, off under 0.5 A, 230 V (drivers/mcu/README.md)."""
    return "\n".join([
        "",
        "[[driver]]",
        'kind = "mcu"',
        'name = "saw"',
        f"path = {nh.toml_str(link)}",
        'resource = "machine:bandsaw-01"',
        'electricity = "electricity:workshop"',
        "ua_per_count = 10000",
        "sample_rate_hz = 1000",
        "window_samples = 200",
        "on_ma = 1000",
        "off_ma = 500",
        'min_on = "1s"',
        'gap_merge = "2s"',
        "voltage = 230",
        "power_factor = 1.0",
        "",
    ])


def assert_session(tc, events, seconds):
    """`events` are the use and consume of one session of 4 A at 230 V lasting `seconds`."""
    tc.assertEqual(len(events), 2, events)
    use, consume = sorted(events, key=lambda e: e["action"], reverse=True)
    tc.assertEqual(use["action"], "use")
    tc.assertEqual(use["resourceInventoriedAs"], "machine:bandsaw-01")
    tc.assertEqual(use["effortQuantity"]["hasUnit"], "hour")
    tc.assertAlmostEqual(use["effortQuantity"]["hasNumericalValue"], seconds / 3600,
                         delta=1 / 3600)
    tc.assertEqual(consume["action"], "consume")
    tc.assertEqual(consume["resourceInventoriedAs"], "electricity:workshop")
    tc.assertEqual(consume["resourceQuantity"]["hasUnit"], "kilowattHour")
    # 4 A at 230 V: 0.92 kW, within a window of the session's length
    tc.assertAlmostEqual(consume["resourceQuantity"]["hasNumericalValue"],
                         0.92 * seconds / 3600,
                         delta=0.92 * 1 / 3600 + 1e-4)
    tc.assertEqual(use["inputOf"], consume["inputOf"])
    tc.assertEqual(use["source"]["driver"], "mcu")
    tc.assertEqual(use["meta"]["source"], "current clamp")
    tc.assertAlmostEqual(use["meta"]["peak_a"], 4.0, delta=0.05)


class McuTest(nh.NodeTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(sim_binary(), os.X_OK):
            self.fail(f"reflow-fw-sim not found at {sim_binary()} (set REFLOW_FW_SIM)")
        self.link = self.tmp / "ttyMCU"
        self.sim_log = self.tmp / "fw-sim.log"
        self.sim = None
        self.addCleanup(self._stop_sim)

    def _stop_sim(self):
        if self.sim is not None and self.sim.poll() is None:
            self.sim.send_signal(signal.SIGTERM)
            self.sim.wait(timeout=h.WAIT_S)

    def start_sim(self, *sessions, speed=10, badges=()):
        args = [sim_binary(), "--link", str(self.link), "--boot-file", str(self.tmp / "boot"),
                "--speed", str(speed)]
        for s in sessions:
            args += ["--session", s]
        for b in badges:
            args += ["--badge", b]
        with open(self.sim_log, "ab") as log:
            self.sim = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        h.wait_for(lambda: self.link.is_symlink(), "the sim's pty link")

    def sim_says(self, text):
        return h.wait_for(lambda: text in self.sim_log.read_text(errors="replace"),
                          f"the sim's log says {text!r}")

    def start_node_and_agent(self, *sessions, extra="", badges=(), before_start=None):
        """Broker, ingest, the sim (first, so the agent finds its pty at once) and the agent."""
        self.start_plain_broker()
        dev = self.new_device(DEVICE)
        dev.config_path.write_text(dev.config_path.read_text() + driver_toml(self.link) + extra)
        if before_start:
            before_start(dev)
        self.start_ingest()
        self.start_sim(*sessions, badges=badges)
        return dev, self.start_device_agent(dev)

    def stored(self, dev):
        return [event for _, event in self.cli.events(dev.id)]

    def wait_stored(self, dev, n):
        return h.wait_for(lambda: len(self.stored(dev)) >= n and self.stored(dev),
                          f"the ingest stores {n} event(s) of {dev.id}")

    def assert_session(self, events, seconds):
        assert_session(self, events, seconds)

    def test_a_session_measured_by_the_board_arrives_verified_at_the_node(self):
        # 4 A for 20 s of board time, from 3 s after the agent configured the board
        dev, agent = self.start_node_and_agent("3000:20000:4")
        events = self.wait_stored(dev, 2)
        self.assert_session(events, 20)
        agent.wait_status(lambda s: s["last_seq"] == 2 and s["acked_seq"] == 2,
                          "the ingest's ack covers the two events")
        self.assertEqual(self.cli.rejections(dev.id), [], "the ingest rejected nothing")
        self.assertTrue(nh.chain_intact(self.cli.device_stats(dev.id)))
        self.sim_says("0 unacked")  # the board forgot the session once the agent acked it

    def test_agent_killed_mid_session_loses_nothing(self):
        dev, agent = self.start_node_and_agent("3000:40000:4")
        self.sim_says("configured at")
        self.sim_says("sent seq 1 ")  # the session started on the board
        agent.kill()  # SIGKILL: the Pi's power cut mid-session
        self.sim_says("sent seq 2 ")  # it ended while nobody listened
        agent = self.start_device_agent(dev)
        events = self.wait_stored(dev, 2)
        self.assert_session(events, 40)
        agent.wait_status(lambda s: s["acked_seq"] == s["last_seq"] == 2,
                          "the ingest's ack covers the two events, and nothing more was made")
        self.assertEqual(len(self.stored(dev)), 2)
        self.assertEqual(self.cli.rejections(dev.id), [])

    def test_board_reset_mid_session_loses_only_the_open_session(self):
        dev, agent = self.start_node_and_agent("3000:40000:4")
        self.sim_says("sent seq 1 ")  # a session started on the board
        self.sim.kill()  # the board resets: its RAM ring and the open session are gone
        self.sim.wait()
        self.link.unlink()
        self.start_sim("2000:10000:4")  # the same board (boot file): boot 2
        self.sim_says("boot 2")
        events = self.wait_stored(dev, 2)
        self.assert_session(events, 10)
        self.assertTrue(all(e["inputOf"] == "mcu:saw:boot-2-session-1" for e in events), events)
        status = agent.wait_status(lambda s: s["acked_seq"] == s["last_seq"] == 2,
                                   "the ingest's ack covers the two events")
        saw = [d for d in status["drivers"] if d["name"] == "saw"][0]
        self.assertIn("boot 2", saw["state"])
        self.assertEqual(len(self.stored(dev)), 2)

    def test_a_badged_session_arrives_at_the_node_with_its_member(self):
        """Badge then use (issue 17): the sim's board reads an RDM6300 card, the agent turns it
        into a keyed hash that the members file knows, and the session that follows arrives at
        the node with the member as receiver and the makerspace as provider. The keyed hash is
        computed here independently (BLAKE2b keyed with the site secret, over the card id in
        lowercase hex, base64url without padding: README "Badges and members")."""
        secret = os.urandom(32)

        def enrol(dev):
            dev.data_dir.mkdir(parents=True, exist_ok=True)
            secret_file = dev.data_dir / "site-secret"
            secret_file.write_bytes(secret)
            secret_file.chmod(0o600)
            digest = hashlib.blake2b(b"0a1b2c3d4e", key=secret, digest_size=32).digest()
            badge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            (dev.data_dir.parent / "members.toml").write_text(
                f'[[member]]\nhandle = "ada"\nagent = "person:ada"\nbadges = ["{badge}"]\n')

        extra = "\n".join([
            "[driver.badge]",
            'source = "mcu"',
            'window = "10m"',  # board minutes: a slow agent start must not push the session out
            "[members]",
            'file = "members.toml"',
            'provider = "org:fablab"',
            "",
        ])
        # ada badges at board ms 100, an unknown card later; 4 A for 20 s from 3 s after config
        dev, agent = self.start_node_and_agent(
            "3000:20000:4", extra=extra, before_start=enrol,
            badges=("100:0A1B2C3D4E", "40000:0102030405"))
        # The board sends the unknown card after the session: its event is the stream's third.
        events = self.wait_stored(dev, 3)
        self.assertEqual(len(events), 3, events)
        sighting = events[2]
        events = events[:2]
        self.assert_session(events, 20)
        use, consume = sorted(events, key=lambda e: e["action"], reverse=True)
        self.assertEqual(use["provider"], "org:fablab")
        self.assertEqual(use["receiver"], "person:ada")
        self.assertEqual(consume["receiver"], "person:ada")
        self.assertEqual(self.cli.rejections(dev.id), [])
        # The node's usage report (issue 17, "Reports at the node") names the member, the
        # machine she used, the session's hours and the electricity it took.
        out = self.cli.ok("report", "usage", "--by", "member", "--period", "all",
                          "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        self.assertEqual([r["member"] for r in rows], ["person:ada"], out)
        self.assertEqual(rows[0]["sessions"], 1)
        self.assertEqual(rows[0]["machines"], {"machine:bandsaw-01": 1})
        self.assertAlmostEqual(rows[0]["hours"], 20 / 3600, delta=1 / 3600)
        self.assertAlmostEqual(rows[0]["hours"], use["effortQuantity"]["hasNumericalValue"],
                               places=6)
        self.assertEqual([(c["resource"], c["unit"]) for c in rows[0]["consumed"]],
                         [("electricity:workshop", "kilowattHour")])
        self.assertAlmostEqual(rows[0]["consumed"][0]["quantity"],
                               consume["resourceQuantity"]["hasNumericalValue"], places=6)
        status = agent.wait_status(
            lambda s: "unknown 1" in [d for d in s["drivers"] if d["name"] == "saw"][0]["state"],
            "the agent saw the unknown card")
        saw = [d for d in status["drivers"] if d["name"] == "saw"][0]
        self.assertIn("known 1, unknown 1", saw["state"])
        self.assertIn("last member ada", saw["state"])
        last = json.loads((dev.data_dir / "drivers" / "saw" / "last-unknown.json").read_text())
        digest = hashlib.blake2b(b"0102030405", key=secret, digest_size=32).digest()
        self.assertEqual(last["hash"], base64.urlsafe_b64encode(digest).rstrip(b"=").decode())
        # The node lists the unknown card for enrolment (PROTOCOL §4.1), by its keyed hash.
        self.assertEqual(sighting["action"], "cite")
        self.assertEqual(sighting["meta"]["badge_hash"], last["hash"])
        out = self.cli.ok("members", "--since", "36500d", "--format", "json").stdout
        cards = [json.loads(line) for line in out.splitlines() if line.strip()]
        self.assertEqual([(c["device"], c["machine"], c["badge"], c["times"]) for c in cards],
                         [(dev.id, "machine:bandsaw-01", last["hash"], 1)], out)
        # The raw ids are in no event, no status line and no log line of the agent.
        for raw in ("0a1b2c3d4e", "0A1B2C3D4E", "0102030405"):
            self.assertNotIn(raw, json.dumps(self.stored(dev)))
            self.assertNotIn(raw, json.dumps(status))
            self.assertNotIn(raw, agent.log_path.read_text(errors="replace"))


if __name__ == "__main__":
    import unittest
    unittest.main()
