# SPDX-License-Identifier: AGPL-3.0-or-later
"""Exactly once into zenflows (issue 16): the real `reflow-ingest export --post` sends the demo's
events (`reflow-agent demo`: three print jobs, each a process with use, consume and produce) to
a stand-in zenflows (zenflows_standin.py) that checks every signature and the per-action rules.
For every n of the run's requests, the n-th fails (refused, HTTP 500, created but unanswered) or
the exporter is SIGKILLed right after the n-th answer; the next --post settles what was left in
flight and sends the rest, after which the server holds each event, process and part exactly
once, and a further --post sends nothing."""

import collections
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import harness as h
import node_harness as nh
from zenflows_standin import ZenflowsStandIn

USER = "reflow-node"
PRINTER_ID = "01FVHYTC1M3N5P7Q9R2S4T6V8W"
SPOOL_ID = "01FVHYTD2N4P6Q8R1S3T5V7W9X"

EXPORT_CONFIG = """
[export]
zenflows_url = {url}
zenflows_user = "reflow-node"
zenflows_key_file = {key}
default_agent = "01FVHYSZ8M6W2K4QJ9TNX0RBCE"

[export.units]
gram = "01FVHYT9B8T38MQT1WSDY42XJC"
hour = "01FVHYTA3QG7N5KX2D9R4WB6MZ"
one = "01FVHYTB6D2Q8W4N7R3K5X9ZAC"

[export.ids]
"printer:prusa-mk4-01" = "01FVHYTC1M3N5P7Q9R2S4T6V8W"
"spool:pla-galaxy-black-01" = "01FVHYTD2N4P6Q8R1S3T5V7W9X"
"benchy.gcode" = "01FVHYTE3P5Q7R9S2T4V6W8X1Y"
"""


class ExportLedgerTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="reflow-ledger-"))
        # The demo's own run, kept: its node store holds the events every case exports.
        demo = subprocess.run([h.agent_binary(), "demo", "--keep"], capture_output=True,
                              text=True, timeout=h.WAIT_S * 2,
                              env={**os.environ, "TMPDIR": str(cls.tmp)})
        if demo.returncode != 0:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise AssertionError(f"demo failed: {demo.stdout}\n{demo.stderr}")
        cls.demo_dir = next(cls.tmp.glob("reflow-demo-*"))
        cls.key_file = cls.tmp / "zenflows.key"
        keygen = subprocess.run([h.agent_binary(), "keygen", "--key", str(cls.key_file)],
                                capture_output=True, text=True, timeout=h.WAIT_S)
        assert keygen.returncode == 0, keygen.stderr
        cls.public_key = h.b64url_decode(json.loads(keygen.stdout)["x"])
        events = nh.run_ingest(["events", "--config", cls.demo_dir / "ingest.toml",
                                "--format", "jsonl"])
        assert events.returncode == 0, events.stderr
        cls.event_ids = [json.loads(line)["id"] for line in events.stdout.splitlines()]
        assert len(cls.event_ids) == 9, events.stdout

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.cases = 0

    # --- helpers ------------------------------------------------------------------------------

    def fresh_node(self, standin):
        """A copy of the demo's store (ledger empty) with [export] pointing at `standin`."""
        self.cases += 1
        node = Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{self._testMethodName}-"))
        shutil.copytree(self.demo_dir / "node", node / "data")
        text = (self.demo_dir / "ingest.toml").read_text()
        text = re.sub(r'(?m)^data_dir = .*$', f"data_dir = {nh.toml_str(node / 'data')}", text)
        text += EXPORT_CONFIG.format(url=nh.toml_str(standin.url),
                                     key=nh.toml_str(self.key_file))
        config = node / "ingest.toml"
        config.write_text(text)
        return config

    def new_standin(self):
        standin = ZenflowsStandIn()
        standin.add_user(USER, self.public_key)
        standin.add_resource(PRINTER_ID, "printer")
        standin.add_resource(SPOOL_ID, "spool")
        standin.start()
        self.addCleanup(standin.stop)
        return standin

    def post(self, config, standin):
        proc = subprocess.Popen([nh.ingest_binary(), "export", "--format", "vf-graphql", "--post",
                                 "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        standin.set_victim(proc.pid)
        out, err = proc.communicate(timeout=h.WAIT_S)
        return proc.returncode, out, err

    def assert_exactly_once(self, standin, context):
        notes = [e["note"] for e in standin.events]
        for event_id in self.event_ids:
            self.assertEqual(sum(f"(reflow event {event_id}," in n for n in notes), 1,
                             f"{context}: event {event_id} on the server: {notes}")
        self.assertEqual(len(standin.events), 9, context)
        names = collections.Counter(p["name"] for p in standin.processes)
        self.assertEqual(len(names), 3, f"{context}: {names}")
        self.assertTrue(all(c == 1 for c in names.values()), f"{context}: {names}")
        parts = collections.Counter(r["name"] for r in standin.resources.values()
                                    if r["id"] not in (PRINTER_ID, SPOOL_ID))
        self.assertEqual(len(parts), 3, f"{context}: {parts}")
        self.assertTrue(all(c == 1 for c in parts.values()), f"{context}: {parts}")
        self.assertEqual(standin.bad_signatures, 0, context)

    def assert_second_post_sends_nothing(self, config, standin, context):
        before = standin.mutations
        code, out, err = self.post(config, standin)
        self.assertEqual(code, 0, f"{context}: {out}\n{err}")
        self.assertEqual(out, "nothing to send: the export ledger holds all 9 events for "
                              f"{standin.url}\n", context)
        self.assertEqual(standin.mutations, before, context)

    # --- tests --------------------------------------------------------------------------------

    def test_a_whole_run_records_each_event_once_and_a_second_post_sends_nothing(self):
        standin = self.new_standin()
        config = self.fresh_node(standin)
        code, out, err = self.post(config, standin)
        self.assertEqual(code, 0, f"{out}\n{err}")
        self.assertEqual(standin.mutations, 12)  # 3 createProcess + 9 createEconomicEvent
        self.assert_exactly_once(standin, "one run")
        self.assertIn("export: 12 of 12 requests sent and recorded", err.splitlines())
        self.assertIn("export: 1 of 12 requests sent and recorded", err.splitlines())
        self.assertEqual(out.splitlines()[-1], f"sent 9 events and 3 processes to {standin.url}")
        # Later events name the processes and parts by the ids the server gave.
        process_ids = {p["id"] for p in standin.processes}
        for e in standin.events:
            event = e["variables"]["event"]
            link = event.get("inputOf") or event.get("outputOf")
            self.assertIn(link, process_ids)
        self.assert_second_post_sends_nothing(config, standin, "one run")

    def run_interrupted(self, mode, n):
        standin = self.new_standin()
        standin.faults[n] = mode
        config = self.fresh_node(standin)
        context = f"{mode} at request {n}"
        code, out, err = self.post(config, standin)
        if mode == "kill":
            self.assertEqual(code, -9, f"{context}: {out}\n{err}")
        else:
            self.assertEqual(code, 1, f"{context}: {out}\n{err}")
            self.assertIn("run --post again", err, context)
        code, out, err = self.post(config, standin)
        self.assertEqual(code, 0, f"{context}: resumed: {out}\n{err}")
        self.assert_exactly_once(standin, context)
        self.assert_second_post_sends_nothing(config, standin, context)
        return err

    def export(self, config, *args):
        return nh.run_ingest(["export", "--format", "vf-graphql", "--config", config, *args])

    def test_check_and_print_report_what_the_ledger_recorded_as_posted(self):
        standin = self.new_standin()
        standin.faults[5] = "refuse"  # the second job's createProcess: the first job is posted
        config = self.fresh_node(standin)
        code, out, err = self.post(config, standin)
        self.assertEqual(code, 1, f"{out}\n{err}")
        posted = {e["note"].split("(reflow event ")[1].split(",")[0]: e["id"]
                  for e in standin.events}
        self.assertEqual(len(posted), 3, standin.events)
        mutations = standin.mutations

        check = self.export(config, "--check")
        self.assertEqual(check.returncode, 0, f"{check.stdout}\n{check.stderr}")
        lines = check.stdout.splitlines()
        self.assertEqual(lines[-1], "checked 6 events: 0 would be refused by zenflows "
                                    "(0 problems), 6 pass; 3 already posted (export ledger), "
                                    "not checked again")
        for event_id, server_id in posted.items():
            self.assertIn(f"posted already as {server_id}",
                          next(line for line in lines if line.startswith(event_id)))
        report = json.loads(self.export(config, "--check", "--json").stdout)
        self.assertEqual((report["checked"], report["posted"]), (6, 3))
        self.assertEqual({e["id"]: e["posted_id"] for e in report["events"] if "posted_id" in e},
                         posted)

        # The printing mode prints what --post would send: 2 processes and 6 events.
        printed = self.export(config)
        self.assertEqual(printed.returncode, 0, printed.stderr)
        bodies = [json.loads(line) for line in printed.stdout.splitlines()]
        self.assertEqual(len(bodies), 8, printed.stdout)
        notes = [b["variables"]["event"]["note"] for b in bodies if "event" in b["variables"]]
        self.assertEqual(len(notes), 6)
        self.assertFalse(any(f"(reflow event {i}," in n for n in notes for i in posted), notes)
        self.assertIn("export: 3 of 9 events are already in the export ledger for "
                      f"{standin.url} (posted): left out", printed.stderr)
        self.assertEqual(standin.mutations, mutations, "--check and printing send nothing")

    def test_refused_nth_request_then_resume_records_each_event_once(self):
        for n in range(1, 13):
            err = self.run_interrupted("refuse", n)
            # A refusal is final: nothing is left to settle.
            self.assertNotIn("asking the server", err, n)

    def test_http_500_at_nth_request_then_resume_settles_it_as_not_created(self):
        for n in range(1, 13):
            err = self.run_interrupted("http500", n)
            self.assertIn("was not created: it will be sent", err, n)

    def test_created_but_unanswered_nth_request_is_settled_as_created(self):
        for n in range(1, 13):
            err = self.run_interrupted("create_then_drop", n)
            self.assertRegex(err, r"export: create\w+ for .* was created as [0-9A-Z]{26}.*: "
                                  r"recorded", n)

    def test_sigkill_after_nth_answer_then_resume_records_each_event_once(self):
        for n in range(1, 13):
            err = self.run_interrupted("kill", n)
            # Killed with the answer unread: its intent is found on the server, not resent.
            self.assertRegex(err, r"export: create\w+ for .* was created as [0-9A-Z]{26}.*: "
                                  r"recorded", n)

    def test_a_second_post_while_one_runs_sends_nothing(self):
        standin = self.new_standin()
        config = self.fresh_node(standin)
        data_dir = config.parent / "data"
        # Another --post holds the store's export lock (as a running one does).
        with open(data_dir / "ingest.db.export-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            code, out, err = self.post(config, standin)
        self.assertEqual(code, 1, f"{out}\n{err}")
        self.assertIn("another `reflow-ingest export --post` is running", err)
        self.assertEqual(standin.mutations, 0)
        code, out, err = self.post(config, standin)
        self.assertEqual(code, 0, f"{out}\n{err}")
        self.assert_exactly_once(standin, "after the lock was released")

    def test_a_server_that_cannot_be_asked_keeps_the_intent_and_sends_nothing(self):
        standin = self.new_standin()
        standin.faults[4] = "create_then_drop"
        config = self.fresh_node(standin)
        code, _, _ = self.post(config, standin)
        self.assertEqual(code, 1)
        self.assertEqual(standin.mutations, 4)
        # The server goes away: --post cannot settle, so it sends nothing.
        standin.stop()
        code, out, err = self.post(config, standin)
        self.assertEqual(code, 1, f"{out}\n{err}")
        self.assertIn("not sending anything until the server can say whether it created them",
                      err)
        self.assertEqual(standin.mutations, 4)


if __name__ == "__main__":
    unittest.main()
