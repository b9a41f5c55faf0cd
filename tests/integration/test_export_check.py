# SPDX-License-Identifier: AGPL-3.0-or-later
"""`reflow-ingest export --format vf-graphql --check` on a node that stored real signed events:
each event that zenflows would refuse is listed with its field and rule, the exit status says so,
and nothing is sent to the configured zenflows (issue 16)."""

import json
import socket
import unittest

import node_harness as nh

P = nh.h.PREFIX

EXPORT_CONFIG = """
[export]
zenflows_url = "http://127.0.0.1:{port}/api"
default_agent = "01FVHYSZ8M6W2K4QJ9TNX0RBCE"

[export.units]
gram = "01FVHYT9B8T38MQT1WSDY42XJC"
hour = "01FVHYTA3QG7N5KX2D9R4WB6MZ"
one = "01FVHYTB6D2Q8W4N7R3K5X9ZAC"

[export.ids]
"printer:mk4-01" = "01FVHYTC1M3N5P7Q9R2S4T6V8W"
"spool:pla-black-01" = "01FVHYTD2N4P6Q8R1S3T5V7W9X"
"part:bracket-v2" = "01FVHYTE3P5Q7R9S2T4V6W8X1Y"
"""


class ExportCheckTest(nh.NodeTestCase):

    def test_check_lists_what_zenflows_would_refuse_with_field_and_rule_and_sends_nothing(self):
        self.start_plain_broker()
        key = nh.new_private_key()
        self.cli.device_add("dev-x", nh.keygen_json(key))
        acks = self.ack_watcher()
        self.start_ingest()
        publisher = self.probe(name="publisher")
        chain = nh.Chain(key, "dev-x")
        # The harness's events: 1 consume, 2 produce of a specification only (zenflows cannot
        # name the new resource), 3 use; and 4 a consume without its process.
        for seq in (1, 2, 3):
            chain.add(seq)
        chain.add(4, mutate=lambda e: e.pop("inputOf"))
        for seq in (1, 2, 3, 4):
            publisher.publish(f"{P}/dev-x/events", chain.lines[seq].encode())
        acks.wait_ack("dev-x", chain.stream, 4)
        ids = {seq: json.loads(nh.payload_of(chain.lines[seq]))["id"] for seq in (1, 2, 3, 4)}

        # A listener where zenflows would be: --check must never connect to it.
        zenflows = socket.socket()
        self.addCleanup(zenflows.close)
        zenflows.bind(("127.0.0.1", 0))
        zenflows.listen(4)
        zenflows.setblocking(False)
        self.ingest_config.write_text(self.ingest_config.read_text() +
                                      EXPORT_CONFIG.format(port=zenflows.getsockname()[1]))

        r = self.cli.run("export", "--format", "vf-graphql", "--check")
        self.assertEqual(r.returncode, 1, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        lines = r.stdout.splitlines()
        self.assertEqual(lines[-1],
                         "checked 4 events: 2 would be refused by zenflows (2 problems), 2 pass")
        self.assertIn(f"{ids[1]} consume (device dev-x): ok", lines)
        self.assertIn(f"{ids[3]} use (device dev-x): ok", lines)
        produce = lines.index(f"{ids[2]} produce (device dev-x): 1 problem")
        self.assertTrue(lines[produce + 1].startswith(
            '  resourceInventoriedAs: required for action "produce" (zenflows, valueflows.md §2d:'),
            lines[produce + 1])
        consume = lines.index(f"{ids[4]} consume (device dev-x): 1 problem")
        self.assertEqual(lines[consume + 1],
                         '  inputOf: required for action "consume" (zenflows, valueflows.md §2c: '
                         'a consume is an input of a process)')

        r = self.cli.run("export", "--format", "vf-graphql", "--check", "--json")
        self.assertEqual(r.returncode, 1, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        report = json.loads(r.stdout)
        self.assertEqual((report["checked"], report["refused"], report["problems"]), (4, 2, 2))
        by_id = {e["id"]: e for e in report["events"]}
        self.assertEqual(by_id[ids[4]]["problems"][0]["field"], "inputOf")
        self.assertEqual(by_id[ids[4]]["problems"][0]["section"], "valueflows.md §2c")
        self.assertEqual(by_id[ids[1]]["problems"], [])

        # Only what passes: exit 0.
        r = self.cli.run("export", "--format", "vf-graphql", "--check", "--since", "2099-01-01")
        self.assertEqual(r.returncode, 0, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        self.assertEqual(r.stdout, "checked 0 events: 0 would be refused by zenflows "
                                   "(0 problems), 0 pass\n")
        # --check and --post do not go together; --json needs --check.
        self.assertNotEqual(self.cli.run("export", "--format", "vf-graphql", "--check",
                                         "--post").returncode, 0)
        self.assertNotEqual(self.cli.run("export", "--format", "vf-graphql", "--json").returncode, 0)

        with self.assertRaises(BlockingIOError):
            zenflows.accept()


if __name__ == "__main__":
    unittest.main()
