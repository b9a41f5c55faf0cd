# SPDX-License-Identifier: AGPL-3.0-or-later
"""Start-up failures, shutdown and a corrupt outbox, with a real `reflow-agent run`."""

import os
import random
import re
import signal
import subprocess
import unittest
from pathlib import Path

import harness as h


def line_of(text, needle):
    """1-based number of the first line of `text` containing `needle`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in config text")


class StartupFailureTest(h.AgentTestCase):
    """`run` refuses bad start-up input with exit 1 and a message that says where and what."""

    def run_agent_expecting_failure(self, config_path):
        try:
            r = subprocess.run([h.agent_binary(), "run", "--config", str(config_path)],
                               capture_output=True, text=True, timeout=h.WAIT_S)
        except subprocess.TimeoutExpired:
            self.fail(f"run --config {config_path} did not exit: it accepted bad input")
        with open(self.tmp / "agent.log", "a") as log:
            log.write(f"==== run --config {config_path.name}: exit {r.returncode}\n{r.stdout}{r.stderr}\n")
        self.assertEqual(r.returncode, 1, f"stderr: {r.stderr}")
        return r.stderr

    def assert_config_error(self, text, line_needle, key):
        path = self.tmp / "bad.toml"
        path.write_text(text)
        stderr = self.run_agent_expecting_failure(path)
        self.assertIn("reflow-agent: ", stderr, "cli.md: reflow-agent: FILE:LINE: KEY: …")
        if line_needle is None:
            self.assertIn(path.name, stderr)
        else:
            line = line_of(text, line_needle)
            self.assertRegex(stderr, re.escape(f"{path.name}:{line}") + r"(?!\d)",
                             f"expected FILE:LINE = bad.toml:{line}")
        if key is not None:
            self.assertIn(key, stderr)

    def base(self, **kwargs):
        args = dict(device_id=h.DEVICE_ID, key_file=self.key_file, data_dir=self.data_dir,
                    url=self.broker.url)
        args.update(kwargs)
        return h.config_text(**args)

    def test_unknown_key_names_file_line_and_key(self):
        self.assert_config_error(self.base(extra_mqtt="bogus_knob = 1"), "bogus_knob", "bogus_knob")

    def test_bad_duration_names_file_line_and_key(self):
        self.assert_config_error(self.base(resend_after="soon"), "resend_after", "resend_after")

    def test_bad_url_scheme_names_file_line_and_key(self):
        self.assert_config_error(self.base(url="htp://127.0.0.1:1883"), "htp://", "url")

    def test_missing_device_id_names_file_and_key(self):
        text = "\n".join(line for line in self.base().splitlines() if not line.startswith("device_id"))
        self.assert_config_error(text + "\n", None, "device_id")

    def test_toml_syntax_error_names_file_and_line(self):
        text = self.base().replace('topic_prefix = "reflow/v1"', 'topic_prefix = "reflow/v1')
        self.assert_config_error(text, "topic_prefix", None)

    def test_key_readable_by_others_is_refused_with_chmod_hint(self):
        os.chmod(self.key_file, 0o644)
        stderr = self.run_agent_expecting_failure(self.config_path)
        self.assertIn("chmod 600", stderr)


class ShutdownTest(h.AgentTestCase):

    def test_sigterm_exits_cleanly_publishes_offline_and_keeps_events(self):
        self.node.pause()  # unacked events stay in the outbox for export
        agent = self.start_agent()
        acked = self.emit_ok(h.emit_lines(3))
        stream = agent.status()["stream"]
        self.node.wait_contiguous(stream, 3)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait_exit(10)
        self.assertIsNotNone(code, "run did not exit within 10 s of SIGTERM")
        self.assertEqual(code, 0)
        retained = h.read_retained(self.broker.port, f"{h.PREFIX}/{h.DEVICE_ID}/status")
        self.assertEqual(retained.get("state"), "offline", f"retained status after SIGTERM: {retained}")

        r = h.run_cli(["export", "--config", str(self.config_path)])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [line for line in r.stdout.splitlines() if line.strip()]
        envs = [h.verify_envelope(line, self.key, device=h.DEVICE_ID) for line in lines]
        self.assertEqual([(e.seq, e.id) for e in envs], acked)
        self.assertEqual(envs[0].event["prev"], None)
        for before, after in zip(envs, envs[1:]):
            self.assertEqual(after.event["prev"], before.hash)


class CorruptOutboxTest(h.AgentTestCase):

    def test_corrupt_outbox_is_quarantined_and_a_new_stream_starts(self):
        agent = self.start_agent()
        self.emit_ok(h.emit_lines(3))
        old_stream = agent.status()["stream"]
        self.node.wait_contiguous(old_stream, 3)
        agent.send_signal(signal.SIGTERM)
        self.assertEqual(agent.wait_exit(h.WAIT_S), 0)

        outbox = self.data_dir / "outbox.db"
        self.assertTrue(outbox.exists())
        garbage = random.Random(7).randbytes(64 * 1024)
        outbox.write_bytes(garbage)

        agent = self.start_agent()
        status = agent.status()
        self.assertIsNotNone(status["quarantined"], f"status {status}")
        quarantined = Path(status["quarantined"])
        if not quarantined.is_absolute():
            quarantined = self.data_dir / quarantined
        self.assertTrue(quarantined.exists(), f"{quarantined} missing")
        self.assertEqual(quarantined.read_bytes(), garbage, "quarantined file must be byte-identical")
        self.assertNotEqual(status["stream"], old_stream)
        self.assertEqual(status["last_seq"], 0)

        ((seq, event_id),) = self.emit_ok(h.emit_lines(1, start=3))
        self.assertEqual(seq, 1)
        new_stream = agent.status()["stream"]
        self.assertNotEqual(new_stream, old_stream)
        self.node.wait_contiguous(new_stream, 1)
        env = self.node.stored(new_stream)[1]
        self.assertEqual(env.id, event_id)
        self.assertIsNone(env.event["prev"])
        self.assert_node_clean()

    def test_export_recovers_the_envelopes_of_an_outbox_whose_first_page_is_gone(self):
        self.node.pause()  # nothing acked: every event stays in the outbox
        agent = self.start_agent()
        acked = self.emit_ok(h.emit_lines(40))
        agent.send_signal(signal.SIGTERM)
        self.assertEqual(agent.wait_exit(h.WAIT_S), 0)

        outbox = self.data_dir / "outbox.db"
        damaged = bytearray(outbox.read_bytes())
        damaged[:4096] = bytes(4096)
        outbox.write_bytes(bytes(damaged))

        r = h.run_cli(["export", "--config", str(self.config_path), "--outbox", str(outbox)])
        self.assertIn("recovered 40 envelopes", r.stderr)
        lines = [line for line in r.stdout.splitlines() if line.strip()]
        envs = [h.verify_envelope(line, self.key, device=h.DEVICE_ID) for line in lines]
        self.assertEqual([(e.seq, e.id) for e in envs], acked)
        self.assertEqual(outbox.read_bytes(), bytes(damaged), "export must not modify the file")


if __name__ == "__main__":
    unittest.main()
