# SPDX-License-Identifier: AGPL-3.0-or-later
"""The recycling station end to end: a real `reflow-agent run` whose `station` driver reads a
serial-mode barcode scanner and an `st_gs` scale, each a real pseudo-terminal (os.openpty) behind a
by-id-style symlink, a real Mosquitto and a real `reflow-ingest run` that verifies and stores what
arrives (drivers/station/README.md, PROTOCOL §4, §7).

Nothing sleeps to let time pass: every wait polls a condition with a bound. "Nothing recorded"
is asserted by recording a later good batch and finding it alone in the ingest's store and in
the agent's own sequence."""

import os
import unittest

import harness as h
import node_harness as nh

BATCH = "urn:example:batch:0042"
OTHER_BATCH = "urn:example:batch:0043"
DEVICE = "station-01"


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
        by_id = self.tmp / "serial-by-id"
        by_id.mkdir()
        self.scanner = Pty(by_id / "usb-Example_Barcode_Scanner_0001-if00")
        self.scale = Pty(by_id / "usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0")
        # The agent goes first, then the devices it holds open.
        self.addCleanup(self.scale.close)
        self.addCleanup(self.scanner.close)
        self.addCleanup(self._kill_agents)

    def start_station(self, window="60s"):
        self.start_plain_broker()
        dev = self.new_device(DEVICE)
        station = "\n".join([
            "",
            "[[driver]]",
            'kind = "station"',
            'name = "intake"',
            'action = "accept"',
            'provider = "agent:green-shed-collective"',
            'receiver = "agent:fablab-recycling"',
            'at_location = "place:fablab-intake"',
            f"window = {nh.toml_str(window)}",
            "tare = 0.5",
            f"scanner = {nh.toml_str(self.scanner.link)}",
            'scanner_mode = "serial"',
            "scanner_patterns = '''",
            "batch = ^urn:example:batch:[0-9]+$",
            "'''",
            f"scale = {nh.toml_str(self.scale.link)}",
            'scale_protocol = "st_gs"',
            "scale_resolution = 0.005",
            "",
        ])
        dev.config_path.write_text(dev.config_path.read_text() + station)
        self.start_ingest()
        agent = self.start_device_agent(dev)
        self.wait_station(agent, "scanner connected", "scale connected")
        return dev, agent

    def station_status(self, status):
        for d in status.get("drivers", []):
            if d.get("name") == "intake":
                return d
        return None

    def wait_station(self, agent, *texts):
        """Waits until the station's status line says each of `texts`; returns its status."""
        def says(s):
            d = self.station_status(s)
            return d is not None and all(t in d["state"] for t in texts)

        status = agent.wait_status(says, f"the station's state says {texts}")
        return self.station_status(status)

    def weigh(self, kilograms):
        """The operator puts it on: the indicator sends motion, then the value settles."""
        self.scale.send(st_gs(kilograms * 0.6, stable=False) + st_gs(kilograms, stable=False)
                        + st_gs(kilograms) * 4)

    def empty_pan(self):
        self.scale.send(st_gs(0.3, stable=False) + st_gs(0.0) * 4)

    def stored(self, dev):
        return [event for _, event in self.cli.events(dev.id)]

    def wait_stored(self, dev, n):
        return h.wait_for(lambda: len(self.stored(dev)) >= n and self.stored(dev),
                          f"the ingest stores {n} event(s) of {dev.id}")

    def assert_accept(self, event, batch, kilograms):
        self.assertEqual(event["device"], DEVICE)
        self.assertEqual(event["action"], "accept")
        self.assertEqual(event["resourceInventoriedAs"], batch)
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
        self.assert_accept(events[0], batch, kilograms)
        self.assertEqual(agent.status()["last_seq"], 1, "the agent recorded nothing else")
        self.assertEqual(self.cli.rejections(dev.id), [], "the ingest rejected nothing")
        return events[0]

    def test_scan_then_stable_weight_stores_one_signed_accept_of_the_batch(self):
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


if __name__ == "__main__":
    unittest.main()
