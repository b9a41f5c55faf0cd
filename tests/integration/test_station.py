# SPDX-License-Identifier: AGPL-3.0-or-later
"""The recycling station end to end: a real `reflow-agent run` whose `station` drivers read
serial-mode barcode scanners and `st_gs` scales, each a real pseudo-terminal (os.openpty) behind a
by-id-style symlink, a real Mosquitto and a real `reflow-ingest run` that verifies and stores what
arrives (drivers/station/README.md, PROTOCOL §4, §7). The recycling chain intake → shredder →
extruder is then exported with the real `reflow-ingest export --post` to the stand-in zenflows
(zenflows_standin.py), which accepts every request (issue 16).

Nothing sleeps to let time pass: every wait polls a condition with a bound. "Nothing recorded"
is asserted by recording a later good batch and finding it alone in the ingest's store and in
the agent's own sequence."""

import json
import os
import unittest

import harness as h
import node_harness as nh
from zenflows_standin import ZenflowsStandIn

BATCH = "urn:example:batch:0042"
OTHER_BATCH = "urn:example:batch:0043"
DEVICE = "station-01"
FLAKES = "urn:example:flakes:0007"
SPOOL = "urn:example:spool:0003"
# A process station's processes carry the device id: two sites' "shredder" stations differ.
SHRED_1 = f"station:{DEVICE}:shredder:shred-1"
EXTRUDE_1 = f"station:{DEVICE}:extruder:extrude-1"
PATTERNS = ["scanner_patterns = '''",
            "batch = ^urn:example:batch:[0-9]+$",
            "flakes = ^urn:example:flakes:[0-9]+$",
            "spool = ^urn:example:spool:[0-9]+$",
            "'''"]
# The zenflows ids of what the stations name (agents, place, the intake's resources, the output
# kinds, the unit), as a node operator maps them in [export.ids] and [export.units].
IDS = {
    "agent:green-shed-collective": "01FVHYSZ8M6W2K4QJ9TNX0RBCE",
    "agent:fablab-recycling": "01FVHYT0AB2C3D4E5F6G7H8J9K",
    "place:fablab-intake": "01FVHYT1BC3D4E5F6G7H8J9KMN",
    BATCH: "01FVHYT2CD4E5F6G7H8J9KMNPQ",
    BATCH + "@fablab-recycling": "01FVHYT3DE5F6G7H8J9KMNPQRS",
    "pet-flakes": "01FVHYT4EF6G7H8J9KMNPQRSTV",
    "pet-filament": "01FVHYT5FG7H8J9KMNPQRSTVWX",
    "machine:extruder-01": "01FVHYT7HJ9KMNPQRSTVWXYZ01",
}
KILOGRAM_ID = "01FVHYT6GH8J9KMNPQRSTVWXYZ"
HOUR_ID = "01FVHYT8JK0MNPQRSTVWXYZ012"


class Pty:
    """A pseudo-terminal standing for a USB-serial device: the agent opens `link` (a symlink to
    the slave, as /dev/serial/by-id/… is to /dev/ttyUSBn); the test writes what the device sends
    to the master. The test keeps the slave open too, so the pty does not hang up between opens."""

    def __init__(self, link):
        self.master, self.slave = os.openpty()
        self.link = link
        os.symlink(os.ttyname(self.slave), link)

    def send(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def st_gs(kilograms, stable=True):
    """One frame of a generic indicator: `ST,GS,+ 13.545,kg` (stable) / `US,GS,…` (motion)."""
    return f"{'ST' if stable else 'US'},GS,+{kilograms:7.3f},kg\r\n".encode()


class StationTest(nh.NodeTestCase):

    def setUp(self):
        super().setUp()
        self.by_id = self.tmp / "serial-by-id"
        self.by_id.mkdir()
        self.devices = {}  # station name → (scanner Pty, scale Pty)
        self.scanner, self.scale = self.station_devices("intake")
        self.addCleanup(self._kill_agents)  # the agent goes first, then the devices it holds open

    def station_devices(self, name):
        scanner = Pty(self.by_id / f"usb-Example_Barcode_Scanner_{name}-if00")
        scale = Pty(self.by_id / f"usb-FTDI_FT232R_USB_UART_{name}-if00-port0")
        self.addCleanup(scale.close)
        self.addCleanup(scanner.close)
        self.devices[name] = (scanner, scale)
        return scanner, scale

    def station_table(self, name, *keys):
        scanner, scale = self.devices[name]
        return "\n".join(["", "[[driver]]", 'kind = "station"', f"name = {nh.toml_str(name)}",
                          *keys,
                          f"scanner = {nh.toml_str(scanner.link)}", 'scanner_mode = "serial"',
                          *PATTERNS,
                          f"scale = {nh.toml_str(scale.link)}", 'scale_protocol = "st_gs"',
                          "scale_resolution = 0.005", ""])

    def intake_table(self, window="60s"):
        return self.station_table(
            "intake", 'action = "transferCustody"', 'to_resource = "{batch}@fablab-recycling"',
            'provider = "agent:green-shed-collective"', 'receiver = "agent:fablab-recycling"',
            'at_location = "place:fablab-intake"', f"window = {nh.toml_str(window)}", "tare = 0.5")

    def start_station(self, window="60s", more_tables=""):
        self.start_plain_broker()
        dev = self.new_device(DEVICE)
        dev.config_path.write_text(dev.config_path.read_text() + self.intake_table(window)
                                   + more_tables)
        self.start_ingest()
        agent = self.start_device_agent(dev)
        self.wait_station(agent, "scanner connected", "scale connected")
        return dev, agent

    def station_status(self, status, name="intake"):
        for d in status.get("drivers", []):
            if d.get("name") == name:
                return d
        return None

    def wait_station(self, agent, *texts, name="intake"):
        """Waits until the station's status line says each of `texts`; returns its status."""
        def says(s):
            d = self.station_status(s, name)
            return d is not None and all(t in d["state"] for t in texts)

        status = agent.wait_status(says, f"the station {name}'s state says {texts}")
        return self.station_status(status, name)

    def weigh(self, kilograms, scale=None):
        """The operator puts it on: the indicator sends motion, then the value settles."""
        (scale or self.scale).send(st_gs(kilograms * 0.6, stable=False)
                                   + st_gs(kilograms, stable=False) + st_gs(kilograms) * 4)

    def empty_pan(self, scale=None):
        (scale or self.scale).send(st_gs(0.3, stable=False) + st_gs(0.0) * 4)

    def stored(self, dev):
        return [event for _, event in self.cli.events(dev.id)]

    def wait_stored(self, dev, n):
        return h.wait_for(lambda: len(self.stored(dev)) >= n and self.stored(dev),
                          f"the ingest stores {n} event(s) of {dev.id}")

    def assert_intake(self, event, batch, kilograms):
        self.assertEqual(event["device"], DEVICE)
        self.assertEqual(event["action"], "transferCustody")
        self.assertEqual(event["resourceInventoriedAs"], batch)
        self.assertEqual(event["toResourceInventoriedAs"], batch + "@fablab-recycling")
        self.assertEqual(event["resourceQuantity"],
                         {"hasNumericalValue": kilograms, "hasUnit": "kilogram"})
        self.assertEqual(event["provider"], "agent:green-shed-collective")
        self.assertEqual(event["receiver"], "agent:fablab-recycling")
        self.assertEqual(event["atLocation"], "place:fablab-intake")
        self.assertEqual(event["source"]["driver"], "station")
        self.assertEqual(event["source"]["instance"], "intake")
        self.assertEqual(event["meta"]["method"], "weighed")
        self.assertEqual(event["meta"]["tare_kg"], 0.5)

    def assert_only(self, dev, agent, batch, kilograms):
        """The store holds exactly one event, and the agent made no other (its seq is 1, acked)."""
        events = self.wait_stored(dev, 1)
        agent.wait_status(lambda s: s["last_seq"] >= 1 and s["acked_seq"] == s["last_seq"],
                          "the ingest's ack covers everything the agent recorded")
        events = self.stored(dev)
        self.assertEqual(len(events), 1, f"stored: {events}")
        self.assert_intake(events[0], batch, kilograms)
        self.assertEqual(agent.status()["last_seq"], 1, "the agent recorded nothing else")
        self.assertEqual(self.cli.rejections(dev.id), [], "the ingest rejected nothing")
        return events[0]

    def test_scan_then_stable_weight_stores_one_signed_intake_of_the_batch(self):
        dev, agent = self.start_station()
        self.scanner.send(f"{BATCH}\r\n".encode())
        self.wait_station(agent, f"waiting for the weight of {BATCH}")
        self.weigh(13.545)
        event = self.assert_only(dev, agent, BATCH, 13.045)
        self.assertEqual(event["meta"]["gross_kg"], 13.545)
        self.assertEqual(event["source"]["ref"], "record 1")
        self.assertEqual(event["seq"], 1)
        self.assertTrue(nh.chain_intact(self.cli.device_stats(dev.id)))
        station = self.wait_station(agent, "waiting for a batch scan", "1 recorded")
        self.assertEqual(station["events"], 1)
        self.assertEqual(station["malformed"], 0)

    def test_scan_without_weight_and_weight_without_scan_store_nothing(self):
        dev, agent = self.start_station(window="3s")
        # A scan, and no weight in the window.
        self.scanner.send(f"{OTHER_BATCH}\r\n".encode())
        self.wait_station(agent, f"waiting for the weight of {OTHER_BATCH}")
        self.wait_station(agent, "1 scan(s) without weight", "waiting for a batch scan")
        # A weight, and no scan.
        self.weigh(5.0)
        self.wait_station(agent, "1 weight(s) without scan")
        self.empty_pan()
        # Then a good one: it is all the store holds.
        self.scanner.send(f"{BATCH}\r\n".encode())
        self.wait_station(agent, f"waiting for the weight of {BATCH}")
        self.weigh(8.25)
        self.assert_only(dev, agent, BATCH, 7.75)
        station = self.wait_station(agent, "1 recorded")
        self.assertEqual(station["malformed"], 2, station)

    def record(self, agent, name, code, kilograms, n_stored, dev):
        """Scans `code` at station `name`, weighs it, waits until the ingest stores it."""
        scanner, scale = self.devices[name]
        scanner.send(f"{code}\r\n".encode())
        self.wait_station(agent, f"waiting for the weight of {code}", name=name)
        self.weigh(kilograms, scale)
        self.wait_stored(dev, n_stored)
        self.empty_pan(scale)

    def test_recycling_chain_records_processes_and_exports_to_zenflows_in_full(self):
        self.station_devices("shredder")
        self.station_devices("extruder")
        one_agent = ['provider = "agent:fablab-recycling"', 'receiver = "agent:fablab-recycling"']
        shredder = self.station_table(
            "shredder", 'process = "shred"', *one_agent, 'resource = "{batch}@fablab-recycling"',
            'output_label = "flakes"', 'output_conforms_to = "pet-flakes"')
        extruder = self.station_table(
            "extruder", 'process = "extrude"', *one_agent, 'batch_label = "flakes"',
            'output_label = "spool"', 'output_conforms_to = "pet-filament"',
            'machine = "machine:extruder-01"')
        dev, agent = self.start_station(more_tables=shredder + extruder)
        self.record(agent, "intake", BATCH, 13.545, 1, dev)
        self.record(agent, "shredder", BATCH, 13.0, 2, dev)
        self.record(agent, "shredder", FLAKES, 12.5, 3, dev)
        self.record(agent, "extruder", FLAKES, 12.5, 4, dev)
        self.record(agent, "extruder", SPOOL, 11.8, 6, dev)  # the machine's use and the spool

        events = self.stored(dev)
        self.assertEqual([(e["action"], e["resourceInventoriedAs"]) for e in events], [
            ("transferCustody", BATCH), ("consume", BATCH + "@fablab-recycling"),
            ("produce", FLAKES), ("consume", FLAKES), ("use", "machine:extruder-01"),
            ("produce", SPOOL)])
        self.assertEqual([e.get("inputOf") or e.get("outputOf") for e in events[1:]], [
            SHRED_1, SHRED_1, EXTRUDE_1, EXTRUDE_1, EXTRUDE_1])
        self.assertEqual(events[2]["resourceConformsTo"], "pet-flakes")
        self.assertEqual(events[5]["resourceConformsTo"], "pet-filament")
        # The extruder's machine time: from its input's weighing to the spool's.
        use = events[4]
        self.assertEqual(use["effortQuantity"]["hasUnit"], "hour")
        self.assertGreater(use["effortQuantity"]["hasNumericalValue"], 0)
        self.assertEqual((use["hasBeginning"], use["hasEnd"]),
                         (events[3]["hasPointInTime"], events[5]["hasPointInTime"]))
        self.assertEqual(self.cli.rejections(dev.id), [])

        # The node exports the chain to zenflows: every request accepted, in time order.
        key_file = self.tmp / "zenflows.key"
        keygen = h.run_cli(["keygen", "--key", str(key_file)])
        self.assertEqual(keygen.returncode, 0, keygen.stderr)
        standin = ZenflowsStandIn()
        standin.add_user("reflow-node", h.b64url_decode(json.loads(keygen.stdout)["x"]))
        for reference in (BATCH, BATCH + "@fablab-recycling", "machine:extruder-01"):
            standin.add_resource(IDS[reference], reference)
        standin.start()
        self.addCleanup(standin.stop)
        ids = "\n".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in IDS.items())
        self.ingest_config.write_text(
            self.ingest_config.read_text()
            + f"\n[export]\nzenflows_url = {nh.toml_str(standin.url)}\n"
            + f'zenflows_user = "reflow-node"\nzenflows_key_file = {nh.toml_str(key_file)}\n'
            + f'\n[export.units]\nkilogram = "{KILOGRAM_ID}"\nhour = "{HOUR_ID}"\n'
            + f'\n[export.ids]\n{ids}\n')
        check = self.cli.run("export", "--format", "vf-graphql", "--check")
        self.assertEqual(check.returncode, 0, f"{check.stdout}\n{check.stderr}")
        post = self.cli.run("export", "--format", "vf-graphql", "--post")
        self.assertEqual(post.returncode, 0, f"{post.stdout}\n{post.stderr}")
        self.assertEqual(standin.mutations, 8)  # 2 createProcess + 6 createEconomicEvent
        self.assertEqual(standin.bad_signatures, 0)
        self.assertEqual(sorted(p["name"] for p in standin.processes),
                         [EXTRUDE_1, SHRED_1])
        sent = [e["variables"]["event"] for e in standin.events]
        self.assertEqual([e["action"] for e in sent],
                         ["transferCustody", "consume", "produce", "consume", "use", "produce"])
        process_id = {p["name"]: p["id"] for p in standin.processes}
        self.assertEqual(sent[1]["inputOf"], process_id[SHRED_1])
        self.assertEqual(sent[2]["outputOf"], process_id[SHRED_1])
        self.assertEqual(sent[3]["inputOf"], process_id[EXTRUDE_1])
        self.assertEqual(sent[4]["inputOf"], process_id[EXTRUDE_1])
        self.assertEqual(sent[4]["resourceInventoriedAs"], IDS["machine:extruder-01"])
        self.assertEqual(sent[4]["effortQuantity"]["hasUnit"], HOUR_ID)
        self.assertEqual(sent[5]["outputOf"], process_id[EXTRUDE_1])
        self.assertEqual(sent[1]["resourceInventoriedAs"], IDS[BATCH + "@fablab-recycling"])
        # The extruder consumes the very flakes resource the shredder's produce created.
        flakes = [r for r in standin.resources.values() if r["name"] == FLAKES]
        self.assertEqual(len(flakes), 1, standin.resources)
        self.assertEqual(sent[3]["resourceInventoriedAs"], flakes[0]["id"])
        self.assertEqual([r["name"] for r in standin.resources.values()
                          if r["name"] == SPOOL], [SPOOL])


if __name__ == "__main__":
    unittest.main()
