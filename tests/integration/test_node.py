# SPDX-License-Identifier: AGPL-3.0-or-later
"""The community node end to end: real Mosquitto (the repository's reflow-node.conf and
reflow.acl), real `reflow-agent run` and real `reflow-ingest run`, the node's PKI made by
`reflow-ingest ca …` and `reflow-agent enroll` (ingest.md, PROTOCOL §2, §5, §7)."""

import base64
import csv
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import unittest

from jwcrypto import jwk, jws

import harness as h
import node_harness as nh

P = h.PREFIX


def events_topic(device):
    return f"{P}/{device}/events"


def ack_topic(device):
    return f"{P}/{device}/ack"


def nonzero(counts):
    """`stats` rejections by reason, without reasons counted 0."""
    return {reason: n for reason, n in counts.items() if n}


class Emitter(threading.Thread):
    """Feeds `emit` on one agent, `batch` lines per call, until stop(); keeps every (seq, id)
    emit printed and every failure (asserted by the test, not here)."""

    def __init__(self, config_path, batch=5):
        super().__init__(daemon=True)
        self.config_path = config_path
        self.batch = batch
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.acked = []
        self.failures = []

    def run(self):
        start = 0
        while not self.halt.is_set():
            lines = h.emit_lines(self.batch, start=start)
            start += self.batch
            text = "".join(line + "\n" for line in lines)
            r = h.run_cli(["emit", "--config", str(self.config_path)], input_text=text)
            out = r.json_lines()
            with self.lock:
                if r.returncode != 0 or len(out) != len(lines) or any("seq" not in o for o in out):
                    self.failures.append(f"emit exit {r.returncode}: {r.stdout!r} {r.stderr!r}")
                else:
                    self.acked += [(o["seq"], o["id"]) for o in out]

    def count(self):
        with self.lock:
            return len(self.acked)

    def stop(self):
        self.halt.set()
        self.join(h.WAIT_S)


# ---------------------------------------------------------------------------------------------
# 1. End to end over the real mutual-TLS configuration


class MutualTlsDeliveryTest(nh.NodeTestCase):

    def test_enrolled_device_events_are_stored_verbatim_and_acked_over_mutual_tls(self):
        n = 20
        self.start_tls_broker()
        dev = self.new_device("fablab-mk4-01")
        wire = self.probe(nh.INGEST_IDENTITY, name="wire")  # a second reader of the events
        wire.subscribe(events_topic("+"))
        ingest = self.start_ingest()
        agent = self.start_device_agent(dev)
        agent.wait_status(lambda s: s["connected"], "the agent connected over mutual TLS")

        status_text = h.run_cli(["status", "--config", str(dev.config_path)]).stdout
        self.assertIn(f"CN={dev.id}", status_text,
                      "cli: status shows the client certificate's subject")

        lines = h.emit_lines(n)
        acked = self.emit_for(dev, lines)
        self.assertEqual([seq for seq, _ in acked], list(range(1, n + 1)))
        status = agent.wait_status(lambda s: s["acked_seq"] == n and s["backlog_events"] == 0,
                                   f"the ingest's ack reaches the agent: acked_seq == {n}, backlog 0")
        stream = status["stream"]

        events = self.cli.events(dev.id)
        self.assertEqual([(e["seq"], e["id"]) for _, e in events], acked,
                         "events --device --format jsonl: exactly the emitted events, in seq order")
        for (_, event), line in zip(events, lines):
            self.assertEqual(event["device"], dev.id)
            self.assertEqual(event["stream"], stream)
            for name, value in json.loads(line).items():
                self.assertEqual(event[name], value, f"producer field {name} of seq {event['seq']}")

        # The stored payload is the signed bytes exactly as the agent made them.
        h.wait_for(lambda: len(wire.received()) >= n, f"the wire reader saw {n} envelopes")
        sent = {}
        for _, raw, _ in wire.received():
            env = h.verify_envelope(raw, h.public_jwk(dev.jwk_json), device=dev.id)
            sent.setdefault(env.seq, nh.payload_of(raw.decode()))
        self.assertEqual([raw for raw, _ in events], [sent[seq] for seq in range(1, n + 1)])

        rows = list(csv.DictReader(io.StringIO(
            "\n".join(self.cli.events_lines(dev.id, "csv")) + "\n")))
        self.assertEqual([r.get("id") for r in rows], [i for _, i in acked], "events --format csv")

        stats = self.cli.device_stats(dev.id)
        self.assertEqual(stats["events"], n, f"stats {stats}")
        self.assertEqual(stats["gaps"], 0, f"stats {stats}")
        self.assertTrue(nh.chain_intact(stats), f"stats {stats}")
        self.assertEqual(self.cli.rejections(), [])

        self.assertEqual(ingest.terminate(5), 0, "run exits 0 within 5 s of SIGTERM")


# ---------------------------------------------------------------------------------------------
# 2. SIGKILL of the ingest while events keep coming


class IngestCrashTest(nh.NodeTestCase):

    def test_sigkill_of_ingest_mid_stream_stores_every_committed_event_exactly_once(self):
        seed = int(os.environ.get("REFLOW_IT_SEED") or random.randrange(1 << 32))
        sys.stderr.write(f"\n[ingest sigkill] random seed {seed} (set REFLOW_IT_SEED to replay)\n")
        rng = random.Random(seed)
        rounds = 10
        self.start_plain_broker()
        dev = self.new_device(h.DEVICE_ID)
        agent = self.start_device_agent(dev)
        emitter = Emitter(dev.config_path)
        emitter.start()
        self.addCleanup(emitter.stop)

        for round_no in range(rounds):
            ingest = self.start_ingest()
            base = agent.wait_status(lambda s: True, "status answers")["acked_seq"]
            acks = rng.randint(1, 25)
            agent.wait_status(lambda s: s["acked_seq"] >= base + acks,
                              f"round {round_no}: {acks} more events acked after the restart")
            ingest.kill()
            at_kill = emitter.count()
            more = rng.randint(1, 15)
            h.wait_for(lambda: emitter.count() >= at_kill + more or emitter.failures,
                       f"round {round_no}: {more} events emitted while the ingest is down")
            sys.stderr.write(f"[ingest sigkill] round {round_no}: killed after {acks} acks "
                             f"(acked_seq was {base}), {more} emitted while down\n")

        self.start_ingest()
        emitter.stop()
        self.assertEqual(emitter.failures, [])
        acked = emitter.acked
        last = agent.wait_status(lambda s: True, "status answers")["last_seq"]
        self.assertEqual([seq for seq, _ in acked], list(range(1, last + 1)))
        agent.wait_status(lambda s: s["acked_seq"] == last and s["backlog_events"] == 0,
                          f"acked_seq == {last} and backlog 0 after the last restart")

        stored = [(e["seq"], e["id"]) for _, e in self.cli.events(dev.id)]
        seqs = [seq for seq, _ in stored]
        duplicates = sorted({s for s in seqs if seqs.count(s) > 1})
        missing = sorted(set(range(1, last + 1)) - set(seqs))
        self.assertEqual((duplicates, missing), ([], []), "each (stream, seq) stored exactly once")
        self.assertEqual(stored, acked)
        self.assertEqual(self.cli.rejections(), [], "a killed ingest must not reject anything")
        stats = self.cli.device_stats(dev.id)
        self.assertEqual((stats["events"], stats["gaps"]), (last, 0), f"stats {stats}")
        self.assertTrue(nh.chain_intact(stats), f"stats {stats}")


# ---------------------------------------------------------------------------------------------
# 3. The broker's ACL (real reflow-node.conf + reflow.acl) with the node's certificates


class BrokerAclTest(nh.NodeTestCase):

    def setUp(self):
        super().setUp()
        self.start_tls_broker()
        self.dev_a = self.new_device("dev-a", register=False)
        self.dev_b = self.new_device("dev-b", register=False)

    def test_device_cannot_publish_to_another_devices_events_topic(self):
        self.probe(self.dev_b).publish(events_topic("dev-b"), b"control by dev-b", retain=True)
        a = self.probe(self.dev_a)
        a.publish(events_topic("dev-b"), b"forged by dev-a", retain=True)  # PUBACK: processed
        a.publish(events_topic("dev-a"), b"own by dev-a", retain=True)

        reader = self.probe(nh.INGEST_IDENTITY)
        reader.subscribe(events_topic("dev-b"))
        reader.subscribe(events_topic("dev-a"))
        reader.wait_message(lambda m: m[0] == events_topic("dev-a"), "dev-a's own retained event")
        self.assertEqual([m[1] for m in reader.received(events_topic("dev-b"))],
                         [b"control by dev-b"], "dev-a's publish to dev-b/events must be refused")
        self.assertEqual([m[1] for m in reader.received(events_topic("dev-a"))], [b"own by dev-a"])
        # The shipped broker config logs the denial (written before the broker handled dev-a's
        # next publish, which the reader has received), naming the topic.
        log = self.broker.log_path.read_text(errors="replace")
        self.assertTrue(any("Denied PUBLISH from " in line and f"'{events_topic('dev-b')}'" in line
                            for line in log.splitlines()), log[-2000:])

    def test_device_cannot_publish_any_ack(self):
        node = self.probe(nh.INGEST_IDENTITY)
        node.publish(ack_topic("dev-a"), b'{"control":"a"}', retain=True)
        node.publish(ack_topic("dev-b"), b'{"control":"b"}', retain=True)
        a = self.probe(self.dev_a)
        a.publish(ack_topic("dev-a"), b'{"forged":"own ack"}', retain=True)
        a.publish(ack_topic("dev-b"), b'{"forged":"other ack"}', retain=True)

        for device, control in ((self.dev_a, b'{"control":"a"}'), (self.dev_b, b'{"control":"b"}')):
            reader = self.probe(device)
            reader.subscribe(ack_topic(device.id))
            topic, payload, retain = reader.wait_message(lambda m: True, f"{device.id}'s retained ack")
            self.assertEqual((topic, payload, retain), (ack_topic(device.id), control, True),
                             "a device's publish to an ack topic must be refused")

    def test_device_cannot_read_another_devices_ack(self):
        node = self.probe(nh.INGEST_IDENTITY)
        node.publish(ack_topic("dev-a"), b"retained for a", retain=True)
        node.publish(ack_topic("dev-b"), b"retained for b", retain=True)

        a = self.probe(self.dev_a)
        a.subscribe(ack_topic("dev-b"))
        a.subscribe(ack_topic("dev-a"))
        a.wait_message(lambda m: m[1] == b"retained for a", "dev-a reads its own retained ack")
        wildcard = self.probe(self.dev_a)
        granted = wildcard.subscribe(ack_topic("+"))  # the broker may refuse it (128) or filter
        node.publish(ack_topic("dev-b"), b"live for b")
        node.publish(ack_topic("dev-a"), b"live for a")
        a.wait_message(lambda m: m[1] == b"live for a", "dev-a reads its own live ack")
        if granted != 128:
            wildcard.wait_message(lambda m: m[1] == b"live for a", "dev-a reads its own ack via +")
        for p in (a, wildcard):
            self.assertEqual(p.received(ack_topic("dev-b")), [], "dev-a must not read dev-b's ack")

    def test_client_without_a_node_certificate_cannot_connect(self):
        self.probe(self.dev_a)  # control: a node certificate connects
        with self.assertRaises(nh.ConnectFailed, msg="TLS without a client certificate"):
            self.probe(None, name="no-cert")
        plain = nh.Probe(self.broker.port, name="plain")
        self.probes.append(plain)
        with self.assertRaises(nh.ConnectFailed, msg="plain MQTT on the TLS listener"):
            plain.connect()

        foreign = nh.NodeTls(self.tmp / "foreign")
        foreign.root.mkdir()
        foreign.cli.config_path.write_text(nh.ingest_config_text(data_dir=foreign.data_dir,
                                                                 url="mqtt://127.0.0.1:1883"))
        foreign.cli.ok("ca", "init")
        (foreign.root / "id").mkdir()
        foreign.cli.ok("ca", "client", nh.INGEST_IDENTITY, "--out-dir", foreign.root / "id")
        cert, key = nh.find_cert_and_key(foreign.root / "id")
        stranger = nh.Probe(self.broker.port, ca_file=self.tls.ca_cert, cert_file=cert,
                            key_file=key, name="foreign-ca")
        self.probes.append(stranger)
        with self.assertRaises(nh.ConnectFailed, msg="a certificate of another CA"):
            stranger.connect()

    def test_ingest_identity_reads_every_devices_events_and_writes_their_acks(self):
        node = self.probe(nh.INGEST_IDENTITY)
        node.subscribe(events_topic("+"))
        self.probe(self.dev_a).publish(events_topic("dev-a"), b"event of a")
        self.probe(self.dev_b).publish(events_topic("dev-b"), b"event of b")
        node.wait_message(lambda m: m[1] == b"event of a", "the ingest reads dev-a's events")
        node.wait_message(lambda m: m[1] == b"event of b", "the ingest reads dev-b's events")

        node.publish(ack_topic("dev-a"), b"ack of a", retain=True)
        node.publish(ack_topic("dev-b"), b"ack of b", retain=True)
        for device, payload in ((self.dev_a, b"ack of a"), (self.dev_b, b"ack of b")):
            reader = self.probe(device)
            reader.subscribe(ack_topic(device.id))
            self.assertEqual(reader.wait_message(lambda m: True, f"{device.id}'s ack")[1], payload)

    def test_oversized_envelope_passes_the_broker_and_is_kept_as_rejected(self):
        # reflow-node.conf's max_packet_size leaves a margin above 64 KiB for exactly this.
        self.start_ingest()
        big = json.dumps({"protected": "e30", "payload": "x" * (100 * 1024), "signature": "AA"})
        self.probe(self.dev_a).publish(events_topic("dev-a"), big.encode())
        (rejection,) = h.wait_for(lambda: self.cli.rejections(), "the ingest keeps the rejection")
        self.assertEqual((rejection["reason"], rejection["device"], rejection["topic"]),
                         ("oversized", "dev-a", events_topic("dev-a")), rejection)
        self.assertEqual(rejection["envelope"], big, "the envelope is kept whole")

    def test_two_ingests_sharing_a_subscription_store_every_event_once(self):
        n = 40
        self.cli.device_add(self.dev_a.id, self.dev_a.jwk_json)
        first = self.start_ingest("ingest-1", client_id="reflow-ingest-1", share_group="reflow")
        second = self.start_ingest("ingest-2", client_id="reflow-ingest-2", share_group="reflow")
        agent = self.start_device_agent(self.dev_a)
        acked = []
        for batch in range(4):
            acked += self.emit_for(self.dev_a, h.emit_lines(n // 4, start=batch * (n // 4)))
        agent.wait_status(lambda s: s["acked_seq"] == n and s["backlog_events"] == 0,
                          f"acked_seq == {n} and backlog 0 with two ingests sharing the load")
        stored = [(e["seq"], e["id"]) for _, e in self.cli.events(self.dev_a.id)]
        self.assertEqual(stored, acked, "every event stored exactly once")
        self.assertEqual(self.cli.rejections(), [])
        counts = (first.stored_count(), second.stored_count())
        self.assertEqual(sum(counts), n, f"'stored' log lines of the two ingests: {counts}")
        self.assertTrue(all(counts), f"both ingests of the share group stored events: {counts}")


# ---------------------------------------------------------------------------------------------
# 4. Verdicts of PROTOCOL §7 on crafted envelopes (plain loopback broker: this tests the ingest)


class VerdictTest(nh.NodeTestCase):

    def setUp(self):
        super().setUp()
        self.start_plain_broker()
        self.keys = {}
        for device in ("dev-v", "dev-w", "ctl-01"):
            self.keys[device] = nh.new_private_key()
            r = self.cli.device_add(device, nh.keygen_json(self.keys[device]))
            self.assertIn(f"added {device} kid {self.keys[device].thumbprint()}", r.stdout)
        self.attacker = nh.new_private_key()
        self.acks = self.ack_watcher()
        self.ingest = self.start_ingest()
        self.publisher = self.probe(name="publisher")
        self.v = nh.Chain(self.keys["dev-v"], "dev-v")
        self.ctl = nh.Chain(self.keys["ctl-01"], "ctl-01")

    def publish(self, device, line):
        self.publisher.publish(events_topic(device), line.encode() if isinstance(line, str) else line)

    def publish_valid(self, chain, seq, wait_ack=None):
        """Publishes the valid event seq of `chain` (made if needed); waits for the ack of
        `wait_ack` (default: seq) when given a number."""
        line = chain.lines.get(seq) or chain.add(seq)
        self.publish(chain.device, line)
        if wait_ack is not None:
            self.acks.wait_ack(chain.device, chain.stream, wait_ack)
        return line

    def barrier(self):
        """Publishes the next event of the control device and waits for its ack: the ingest takes
        envelopes in order and acks after storing, so everything published before is decided."""
        seq = len(self.ctl.lines) + 1
        self.publish_valid(self.ctl, seq, wait_ack=seq)

    def new_rejections(self, before):
        return self.cli.rejections()[before:]

    def assert_rejection(self, rejection, reason, device, line, what, stream=None, seq=None):
        self.assertEqual(rejection["reason"], reason, f"{what}: {rejection}")
        self.assertEqual(rejection["device"], device, f"{what}: {rejection}")
        self.assertEqual(rejection["topic"], events_topic(device), f"{what}: {rejection}")
        self.assertEqual(rejection["envelope"], line, f"{what}: the envelope as received")
        self.assertTrue(rejection.get("detail"), f"{what}: a detail for people: {rejection}")
        if stream is not None:
            self.assertEqual((rejection["stream"], rejection["seq"]), (stream, seq), what)

    def assert_stored(self, chain, seqs):
        """`events --device` holds exactly the valid events `seqs` of `chain`, byte for byte."""
        self.assertEqual([raw for raw, _ in self.cli.events(chain.device)],
                         [nh.payload_of(chain.lines[s]) for s in seqs])

    def test_envelopes_failing_verification_are_rejected_with_reason_while_valid_ones_flow(self):
        v, key_v, key_w = self.v, self.keys["dev-v"], self.keys["dev-w"]
        self.publish_valid(v, 1, wait_ack=1)

        def tampered(line):
            outer = json.loads(line)
            event = json.loads(h.b64url_decode(outer["payload"]))
            event["resourceInventoriedAs"] = "printer:someone-elses"
            outer["payload"] = h.b64url(json.dumps(event, separators=(",", ":")).encode())
            return json.dumps(outer, separators=(",", ":"))

        def set_field(name, value):
            return lambda event: event.__setitem__(name, value)

        # (what, reason, topic device, envelope maker for the next seq). Each bad envelope claims
        # the next seq; the valid event of that seq follows it (and acts as the barrier).
        cases = [
            ("forged signature (another key, dev-v's kid)", "bad_signature", "dev-v",
             lambda s: v.variant(s, key=self.attacker, kid=key_v.thumbprint())),
            ("tampered payload", "bad_signature", "dev-v", lambda s: tampered(v.add(s))),
            ("unknown kid", "unknown_kid", "dev-v", lambda s: v.variant(s, key=self.attacker)),
            ("payload device is another device", "device_mismatch", "dev-v",
             lambda s: v.variant(s, mutate=set_field("device", "dev-w"))),
            ("signed by another registered device's key", "device_mismatch", "dev-v",
             lambda s: v.variant(s, key=key_w)),
            ("published on another device's topic", "device_mismatch", "dev-w", lambda s: v.add(s)),
            ("malformed JSON", "malformed_jws", "dev-v", lambda s: v.add(s)[:-20]),
            ("JSON but not a JWS", "malformed_jws", "dev-v", lambda s: '{"hello":"world"}'),
            ("bad base64url in protected", "malformed_jws", "dev-v",
             lambda s: json.dumps(dict(json.loads(v.add(s)), protected="!!not*base64!!"))),
            ("alg not EdDSA", "malformed_jws", "dev-v",
             lambda s: nh.sign_payload(key_v, v.event(s), alg="HS256")),
            ("payload not JSON", "invalid_event", "dev-v",
             lambda s: nh.sign_payload(key_v, b"\x00 not json")),
            ("action not a ValueFlows action", "invalid_event", "dev-v",
             lambda s: v.variant(s, mutate=set_field("action", "print"))),
            ("oversized (> 64 KiB)", "oversized", "dev-v",
             lambda s: v.variant(s, mutate=set_field("note", "x" * (70 * 1024)))),
        ]
        seq = 1
        for what, reason, topic_device, make in cases:
            seq += 1
            before = len(self.cli.rejections())
            bad = make(seq)
            self.publish(topic_device, bad)
            self.publish_valid(v, seq, wait_ack=seq)
            new = self.new_rejections(before)
            self.assertEqual(len(new), 1, f"{what}: one new rejection, got {new}")
            self.assert_rejection(new[0], reason, topic_device, bad, what)

        self.barrier()
        self.assert_stored(v, range(1, seq + 1))
        self.assertEqual(self.cli.events("dev-w"), [])
        self.assertEqual(self.acks.acks("dev-w"), [], "nothing of dev-w was stored, so no ack")
        acks = self.acks.acks("dev-v")
        self.assertTrue(all(a["stream"] == v.stream and 1 <= a["seq"] <= seq for a in acks), acks)
        self.assertEqual([a["seq"] for a in acks], sorted(a["seq"] for a in acks), "acks never go back")
        self.assertEqual(h.read_retained(self.broker.port, ack_topic("dev-v")),
                         {"stream": v.stream, "seq": seq})
        stats = self.cli.device_stats("dev-v")
        want = {}
        for _, reason, device, _ in cases:
            if device == "dev-v":
                want[reason] = want.get(reason, 0) + 1
        self.assertEqual(nonzero(stats["rejections"]), want, f"stats {stats}")
        self.assertEqual((stats["events"], stats["gaps"]), (seq, 0), f"stats {stats}")
        self.assertTrue(nh.chain_intact(stats), f"stats {stats}")

    def test_replayed_event_is_a_duplicate_stored_once_and_its_ack_republished(self):
        v = self.v
        self.publish_valid(v, 1)
        self.publish_valid(v, 2, wait_ack=2)
        acks_before = len(self.acks.acks("dev-v"))
        self.publish(v.device, v.lines[1])
        self.publish(v.device, v.lines[2])
        self.barrier()
        h.wait_for(lambda: len(self.acks.acks("dev-v")) > acks_before,
                   "the ack is re-published when a duplicate arrives (ingest.md)")
        self.assertTrue(all(a == {"stream": v.stream, "seq": 2}
                            for a in self.acks.acks("dev-v")[acks_before:]), self.acks.acks("dev-v"))
        self.assertEqual(self.cli.rejections(), [], "a duplicate is not a rejection")
        self.assert_stored(v, [1, 2])
        self.publish_valid(v, 3, wait_ack=3)
        self.assert_stored(v, [1, 2, 3])

    def test_equivocation_is_rejected_and_the_first_copy_kept(self):
        v = self.v
        self.publish_valid(v, 1, wait_ack=1)
        other = v.variant(1, mutate=lambda e: e.__setitem__("note", "the same seq, other bytes"))
        self.publish(v.device, other)
        self.barrier()
        (rejection,) = self.cli.rejections()
        self.assert_rejection(rejection, "equivocation", "dev-v", other, "equivocation",
                              stream=v.stream, seq=1)
        self.assert_stored(v, [1])
        self.publish_valid(v, 2, wait_ack=2)  # chained to the first copy
        self.assert_stored(v, [1, 2])
        self.assertEqual(nonzero(self.cli.device_stats("dev-v")["rejections"]), {"equivocation": 1})

    def test_ack_holds_at_a_gap_and_advances_when_it_is_filled(self):
        v = self.v
        self.publish_valid(v, 1, wait_ack=1)
        for seq in (2, 3, 4):
            v.add(seq)
        self.publish_valid(v, 3)
        self.publish_valid(v, 4)
        self.barrier()
        self.assert_stored(v, [1])  # 3 and 4 are held until seq 2 decides them (PROTOCOL §7)
        stats = self.cli.device_stats("dev-v")
        self.assertEqual((stats["events"], stats["gaps"]), (3, 1), f"stats {stats}")
        self.assertEqual(h.read_retained(self.broker.port, ack_topic("dev-v")),
                         {"stream": v.stream, "seq": 1}, "the ack holds below the gap")
        self.assertEqual({a["seq"] for a in self.acks.acks("dev-v")}, {1})
        self.publish_valid(v, 2, wait_ack=4)
        self.assertEqual(h.read_retained(self.broker.port, ack_topic("dev-v")),
                         {"stream": v.stream, "seq": 4})
        self.assert_stored(v, [1, 2, 3, 4])
        stats = self.cli.device_stats("dev-v")
        self.assertEqual((stats["events"], stats["gaps"]), (4, 0), f"stats {stats}")
        self.assertEqual(self.cli.rejections(), [])

    def test_wrong_prev_is_a_chain_break_in_either_arrival_order(self):
        v = self.v
        self.publish_valid(v, 1, wait_ack=1)
        wrong = v.variant(2, mutate=lambda e: e.__setitem__("prev", h.b64url(b"\x01" * 32)))
        self.publish(v.device, wrong)
        self.barrier()
        self.assert_rejection(self.cli.rejections()[-1], "chain_break", "dev-v", wrong,
                              "prev ≠ hash of the stored seq 1", stream=v.stream, seq=2)
        self.publish_valid(v, 2, wait_ack=2)

        # A seq 4 with a wrong prev first, across a gap: held. The real seq 3 then arrives and
        # decides it: seq 4, not seq 3, is the wrong one (issue 14: it used to wedge the ack).
        v.add(3)
        wrong_4 = v.variant(4, mutate=lambda e: e.__setitem__("prev", h.b64url(b"\x02" * 32)))
        self.publish(v.device, wrong_4)
        self.barrier()
        self.assert_stored(v, [1, 2])
        self.publish_valid(v, 3, wait_ack=3)
        self.assert_rejection(self.cli.rejections()[-1], "chain_break", "dev-v", wrong_4,
                              "prev of the held seq 4 ≠ hash of seq 3", stream=v.stream, seq=4)
        self.publish_valid(v, 4, wait_ack=4)  # the agent resends its real seq 4
        self.assert_stored(v, [1, 2, 3, 4])
        stats = self.cli.device_stats("dev-v")
        self.assertEqual(nonzero(stats["rejections"]), {"chain_break": 2}, f"stats {stats}")
        self.assertFalse(nh.chain_intact(stats), f"a chain break marks the stream broken: {stats}")

    def test_events_recorded_after_revocation_are_rejected_as_key_revoked(self):
        key_r = nh.new_private_key()
        self.cli.device_add("dev-r", nh.keygen_json(key_r))
        old = nh.Chain(key_r, "dev-r", recorded=nh.now_rfc3339(-3600))
        self.publish_valid(old, 1, wait_ack=1)
        old.add(2)
        self.publish_valid(old, 3)  # held across the gap at seq 2
        self.barrier()
        r = self.cli.ok("device", "revoke", "dev-r")
        self.assertRegex(r.stdout, r"^revoked dev-r \(1 keys?\) at \d{4}-\d\d-\d\dT")
        listed = [d for d in self.cli.ok("device", "list", "--json").json_lines()
                  if d["device"] == "dev-r"]
        self.assertEqual(len(listed), 1, listed)
        self.assertIsNotNone(listed[0]["revoked"], listed)
        refused = self.cli.run("device", "add", "dev-r", "--jwk", "-", input_text=nh.keygen_json(key_r))
        self.assertEqual(refused.returncode, 1, "a revoked kid cannot be added again")
        self.assertTrue(refused.stderr.startswith("reflow-ingest: "), refused.stderr)

        after = old.variant(4, mutate=lambda e: e.__setitem__("recorded", nh.now_rfc3339(60)))
        # Back-dated by the device's clock (issue 14): a new seq of the known stream, and a new
        # stream. Nothing the node stored before the revocation vouches for either.
        back_dated = old.variant(4)
        fresh = nh.Chain(key_r, "dev-r", recorded=nh.now_rfc3339(-3600))
        fresh_line = fresh.add(1)
        self.publish("dev-r", after)
        self.publish("dev-r", back_dated)
        self.publish("dev-r", fresh_line)
        self.barrier()
        rejections = self.cli.rejections("dev-r")
        self.assertEqual(len(rejections), 3, rejections)
        self.assert_rejection(rejections[0], "key_revoked", "dev-r", after,
                              "recorded after the revocation")
        self.assert_rejection(rejections[1], "key_revoked", "dev-r", back_dated,
                              "a seq above what the node had at the revocation")
        self.assert_rejection(rejections[2], "key_revoked", "dev-r", fresh_line,
                              "a stream first seen after the revocation")
        self.assertEqual({a["stream"] for a in self.acks.acks("dev-r")}, {old.stream})
        self.assertEqual({a["seq"] for a in self.acks.acks("dev-r")}, {1})

        # seq 2, still in the outbox of the known stream, fills the gap below seq 3, which the
        # node stored before the revocation and whose prev binds it: stored.
        self.publish_valid(old, 2, wait_ack=3)
        self.assert_stored(old, [1, 2, 3])


if __name__ == "__main__":
    unittest.main()


# RFC 9162 §2.1, written here from the RFC alone (hashlib), to check the node's log with nothing
# of ours: what an auditor would write.
def rfc9162_leaf(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def rfc9162_node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def rfc9162_root(leaves):
    """MTH(D[n]) of §2.1.1 over leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return rfc9162_node(rfc9162_root(leaves[:k]), rfc9162_root(leaves[k:]))


def rfc9162_verify_inclusion(index, size, leaf, proof, root):
    """§2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = rfc9162_node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = rfc9162_node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc9162_verify_consistency(size1, size2, root1, root2, proof):
    """§2.1.4.2 (size1 < size2, size1 > 0)."""
    if not proof:
        return False
    if size1 & (size1 - 1) == 0:
        proof = [root1] + proof
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = rfc9162_node(c, fr)
            sr = rfc9162_node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = rfc9162_node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ed25519_verify(public_key, signature, message):
    """True when `signature` is the Ed25519 signature of `message` by the 32-byte key
    (python3-cryptography, independent of the node's libsodium)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except InvalidSignature:
        return False


def verify_signed_checkpoint(note, origin, public_key):
    """Checks a C2SP tlog-checkpoint signed note (c2sp.org/signed-note, Ed25519) from the
    specification alone; returns (size, root) or raises AssertionError."""
    text, sep, signatures = note.rpartition("\n\n")
    assert sep, f"no blank line in {note!r}"
    text += "\n"
    key_id = hashlib.sha256(origin.encode() + b"\n\x01" + public_key).digest()[:4]
    verified = False
    for line in signatures.splitlines():
        assert line.startswith("\u2014 "), line
        name, blob = line[2:].split(" ")
        blob = base64.b64decode(blob)
        if name == origin and blob[:4] == key_id:
            assert ed25519_verify(public_key, blob[4:], text.encode()), "bad signature"
            verified = True
    assert verified, f"no signature of {origin} in {note!r}"
    lines = text.splitlines()
    assert lines[0] == origin, lines
    return int(lines[1]), base64.b64decode(lines[2])


class LogTest(nh.NodeTestCase):
    """`reflow-ingest log`: the node's verifiable log (issue 19), checked by the RFC 9162
    verifier above from the envelopes the devices sent and the JSON the commands print; the node
    has its own key, so its acks and its checkpoints are signed (PROTOCOL §5.1)."""

    def setUp(self):
        super().setUp()
        self.start_plain_broker()
        self.keys = {d: nh.new_private_key() for d in ("dev-l", "dev-m")}
        for device, key in self.keys.items():
            self.cli.device_add(device, nh.keygen_json(key))
        self.node_key = json.loads(self.cli.ok("key", "init", "--json").stdout)
        self.checkpoints = self.probe(name="checkpoints")
        self.checkpoints.subscribe(f"{P}/_node/checkpoint")
        self.acks = self.ack_watcher()
        self.ingest = self.start_ingest()
        self.publisher = self.probe(name="publisher")

    def log(self, *args):
        return json.loads(self.cli.ok("log", *args).stdout)

    def test_signed_checkpoints_and_acks_verify_from_the_published_formats(self):
        origin = self.node_key["origin"]
        kid = self.node_key["kid"]
        public_key = b64url_decode(self.node_key["jwk"]["x"])
        self.assertEqual(self.cli.ok("key", "show", "--json").stdout.strip(),
                         json.dumps(self.node_key, separators=(",", ":")))
        chains = {d: nh.Chain(key, d) for d, key in self.keys.items()}
        sent = []
        for i in range(11):
            chain = chains["dev-l" if i % 2 else "dev-m"]
            seq = len(chain.lines) + 1
            line = chain.add(seq)
            self.publisher.publish(events_topic(chain.device), line.encode())
            self.acks.wait_ack(chain.device, chain.stream, seq)
            sent.append(line)
        leaves = [rfc9162_leaf(line.encode()) for line in sent]

        # The retained checkpoint follows the burst (at most a second later) and verifies.
        topic = f"{P}/_node/checkpoint"
        self.checkpoints.wait_message(
            lambda m: m[0] == topic and m[1].startswith(f"{origin}\n{len(sent)}\n".encode()),
            f"the checkpoint of {len(sent)} leaves")
        notes = [m[1].decode() for m in self.checkpoints.received(topic)]
        for note in notes:
            size, root = verify_signed_checkpoint(note, origin, public_key)
            self.assertEqual(root, rfc9162_root(leaves[:size]), f"checkpoint of {size}")
        # A late subscriber gets the latest one, retained.
        late = self.probe(name="late")
        late.subscribe(topic)
        late.wait_message(lambda m: m[0] == topic and m[2], "the retained checkpoint")
        size, root = verify_signed_checkpoint(late.received(topic)[-1][1].decode(), origin,
                                              public_key)
        self.assertEqual((size, root), (len(sent), rfc9162_root(leaves)))
        # On request, the same note.
        printed = self.cli.ok("log", "checkpoint", "--signed").stdout
        self.assertEqual(verify_signed_checkpoint(printed, origin, public_key),
                         (len(sent), rfc9162_root(leaves)))
        forged = printed.replace(f"\n{len(sent)}\n", f"\n{len(sent) - 1}\n")
        with self.assertRaises(AssertionError):
            verify_signed_checkpoint(forged, origin, public_key)

        # Every ack carries the node's signed statement: stream and seq for old agents, and a
        # JWS whose inclusion proof puts the acked envelope in the log.
        checked = 0
        for device, chain in chains.items():
            for ack in self.acks.raw_acks(device):
                jws = ack["signed"]
                header = json.loads(b64url_decode(jws["protected"]))
                self.assertEqual(header, {"alg": "EdDSA", "kid": kid, "typ": "reflow-ack+json"})
                signing_input = f"{jws['protected']}.{jws['payload']}".encode()
                signature = b64url_decode(jws["signature"])
                self.assertTrue(ed25519_verify(public_key, signature, signing_input))
                self.assertFalse(ed25519_verify(public_key, signature, signing_input + b" "))
                payload = json.loads(b64url_decode(jws["payload"]))
                self.assertEqual((payload["device"], payload["stream"], payload["seq"]),
                                 (device, ack["stream"], ack["seq"]))
                self.assertEqual((payload["node"], payload["origin"]), (kid, origin))
                index, size = payload["leaf_index"], payload["tree_size"]
                envelope = chain.lines[ack["seq"]].encode()
                self.assertEqual(leaves[index], rfc9162_leaf(envelope))
                root = base64.b64decode(payload["root"])
                self.assertEqual(root, rfc9162_root(leaves[:size]))
                proof = [base64.b64decode(p) for p in payload["inclusion"]]
                self.assertTrue(rfc9162_verify_inclusion(index, size, rfc9162_leaf(envelope),
                                                         proof, root), payload)
                checked += 1
        self.assertGreaterEqual(checked, len(sent))

    def test_every_event_is_proven_in_every_checkpoint_by_an_independent_verifier(self):
        chains = {d: nh.Chain(key, d) for d, key in self.keys.items()}
        sent = []  # envelopes in the order the node stores them (acked one by one)
        checkpoints = [self.log("checkpoint")]
        self.assertEqual(checkpoints[0], {"size": 0, "root": rfc9162_root([]).hex()})
        for i in range(23):
            chain = chains["dev-l" if i % 3 else "dev-m"]
            seq = len(chain.lines) + 1
            line = chain.add(seq)
            self.publisher.publish(events_topic(chain.device), line.encode())
            self.acks.wait_ack(chain.device, chain.stream, seq)
            if seq == 2:  # a duplicate is not a new leaf
                self.publisher.publish(events_topic(chain.device), line.encode())
            sent.append(line)
            if i % 4 == 0:
                checkpoints.append(self.log("checkpoint"))
        checkpoints.append(self.log("checkpoint"))
        leaves = [rfc9162_leaf(line.encode()) for line in sent]
        self.assertEqual(checkpoints[-1]["size"], len(sent))

        for size in range(1, len(sent) + 1):
            self.assertEqual(self.log("checkpoint", "--size", str(size))["root"],
                             rfc9162_root(leaves[:size]).hex(), f"root of {size} leaves")
        for checkpoint in checkpoints:
            self.assertEqual(checkpoint["root"], rfc9162_root(leaves[:checkpoint["size"]]).hex())

        for index, line in enumerate(sent):
            event_id = json.loads(nh.payload_of(line))["id"]
            for size in {index + 1, len(sent)}:
                answer = self.log("prove", event_id, "--size", str(size))
                self.assertEqual((answer["index"], answer["size"]), (index, size))
                self.assertEqual(answer["leaf"], leaves[index].hex())
                proof = [bytes.fromhex(p) for p in answer["proof"]]
                root = bytes.fromhex(answer["root"])
                self.assertEqual(root, rfc9162_root(leaves[:size]))
                self.assertTrue(rfc9162_verify_inclusion(index, size, leaves[index], proof, root),
                                f"event {index} in {size}")
                if proof:
                    proof[-1] = bytes(32)
                    self.assertFalse(
                        rfc9162_verify_inclusion(index, size, leaves[index], proof, root))

        sizes = sorted({c["size"] for c in checkpoints if c["size"] > 0})
        for old in sizes:
            for new in sizes:
                if old >= new:
                    continue
                answer = self.log("consistency", str(old), "--size", str(new))
                proof = [bytes.fromhex(p) for p in answer["proof"]]
                self.assertTrue(rfc9162_verify_consistency(
                    old, new, bytes.fromhex(answer["old_root"]), bytes.fromhex(answer["root"]),
                    proof), f"{old} → {new}")
                self.assertEqual(answer["old_root"], rfc9162_root(leaves[:old]).hex())

        unknown = self.cli.run("log", "prove", "01J0000000000000000000000Z")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no stored event has id", unknown.stderr)
        beyond = self.cli.run("log", "checkpoint", "--size", str(len(sent) + 1))
        self.assertEqual(beyond.returncode, 1)
        self.assertIn(f"the log has {len(sent)} leaves", beyond.stderr)


def sign_ack(private_key, statement, *, kid=None):
    """A flattened JWS of a PROTOCOL §5.1 ack statement with `private_key`, whatever `kid` says:
    a node's signed ack, or a forged one."""
    payload = json.dumps(statement, separators=(",", ":")).encode("utf-8")
    header = json.dumps({"alg": "EdDSA", "kid": kid or private_key.thumbprint(),
                         "typ": "reflow-ack+json"}, separators=(",", ":"))
    protected, payload_b64 = h.b64url(header.encode("utf-8")), h.b64url(payload)
    signature = private_key.get_op_key("sign").sign(f"{protected}.{payload_b64}".encode("ascii"))
    return {"protected": protected, "payload": payload_b64, "signature": h.b64url(signature)}


class SignedAckTest(nh.NodeTestCase):
    """An agent that pins the node's key (`[mqtt] node_jwk`, PROTOCOL §5.1) against a hostile
    client that publishes acks straight to the broker (the plain test broker has no ACL: open on
    purpose). Unsigned, forged, replayed-older and misrouted acks prune nothing and are counted by
    reason in `status`; the node's own signed acks then prune as before."""

    def setUp(self):
        super().setUp()
        self.start_plain_broker()
        self.node_key = json.loads(self.cli.ok("key", "init", "--json").stdout)
        self.acks = self.ack_watcher()
        self.ingest = self.start_ingest()
        self.device = self.new_device("dev-s")
        self.other = self.new_device("dev-o")
        jwk_file = self.device.config_path.parent / "node.jwk"
        jwk_file.write_text(json.dumps(self.node_key["jwk"]) + "\n")
        with open(self.device.config_path, "a") as config:  # [mqtt] is the config's last table
            config.write(f"node_jwk = {nh.toml_str(jwk_file)}\n")

    def signed_ack(self, device, seq):
        """The node's signed ack of `device` up to `seq`, as it published it."""
        for ack in self.acks.raw_acks(device):
            if ack["seq"] == seq and "signed" in ack:
                return ack
        self.fail(f"no signed ack of {device} seq {seq} in {self.acks.raw_acks(device)}")

    def test_members_publish_signs_the_list_with_the_node_key_retained(self):
        """`reflow-ingest members publish` (PROTOCOL §5.3): the site's members file, signed with
        the node's key as acks are, retained on PREFIX/_node/members/SITE; jwcrypto verifies it
        with the node's public JWK."""
        members = self.tmp / "members.toml"
        text = '[[member]]\nhandle = "ada"\nagent = "person:ada"\nbadges = ["' + "A" * 43 + '"]\n'
        members.write_text(text)
        out = self.cli.ok("members", "publish", "--site", "fablab", "--file", members,
                          "--version", "2").stdout
        topic = f"{h.PREFIX}/_node/members/fablab"
        self.assertIn(topic, out)
        probe = self.probe(name="members")
        probe.subscribe(topic)
        _, payload, retained = probe.wait_message(lambda m: m[0] == topic, "the members list")
        self.assertTrue(retained)
        token = jws.JWS()
        token.deserialize(payload.decode("utf-8"))
        token.verify(jwk.JWK(**self.node_key["jwk"]), alg="EdDSA")
        self.assertEqual(json.loads(b64url_decode(json.loads(payload)["protected"])),
                         {"alg": "EdDSA", "kid": self.node_key["kid"],
                          "typ": "reflow-members+json"})
        statement = json.loads(token.payload)
        self.assertEqual((statement["site"], statement["version"], statement["members"]),
                         ("fablab", 2, text))
        # A site that is not a topic level is refused before anything is published.
        bad = self.cli.run("members", "publish", "--site", "fab/+", "--file", members)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertIn('--site "fab/+"', bad.stderr)

    def test_hostile_acks_prune_nothing_and_the_nodes_signed_ack_then_prunes(self):
        agent = self.start_device_agent(self.device)
        other_agent = self.start_device_agent(self.other)
        self.assertIn("acks are verified", agent.log_text())
        self.assertIn("acks are NOT verified", other_agent.log_text())
        self.assertFalse(other_agent.status()["acks_verified"])

        # The node's signed acks prune, one event at a time so that each seq has its own ack.
        for seq in (1, 2):
            self.emit_for(self.device, h.emit_lines(1, start=seq - 1))
            s = agent.wait_status(lambda s, seq=seq: s["acked_seq"] == seq and
                                  s["backlog_events"] == 0, f"seq {seq} acked and pruned")
        self.assertTrue(s["acks_verified"])
        self.assertEqual(s["node_kid"], self.node_key["kid"])
        self.assertEqual(s["refused_acks"], 0, s)
        self.assertGreaterEqual(s["verified_tree_size"], 2)
        self.assertIsNone(s["ack_error"])
        stream = s["stream"]
        self.emit_for(self.other, h.emit_lines(1))
        other_agent.wait_status(lambda s: s["acked_seq"] == 1, "the other device acked")
        old_ack, last_ack = self.signed_ack("dev-s", 1), self.signed_ack("dev-s", 2)
        other_ack = self.signed_ack("dev-o", 1)

        # The node stops; two more events wait in the outbox.
        self.assertIsNotNone(self.ingest.terminate(h.WAIT_S))
        self.emit_for(self.device, h.emit_lines(2, start=2))
        agent.wait_status(lambda s: s["last_seq"] == 4 and s["backlog_events"] == 2, "seq 3..4 kept")

        forger = nh.new_private_key()
        statement = json.loads(b64url_decode(last_ack["signed"]["payload"]))
        statement["seq"] = 4
        tampered = dict(last_ack["signed"])
        tampered["payload"] = h.b64url(json.dumps(statement, separators=(",", ":")).encode())
        hostile = {
            "replayed": old_ack,
            "unsigned": {"stream": stream, "seq": 4},
            "wrong_key": {"stream": stream, "seq": 4, "signed": sign_ack(forger, statement)},
            "bad_signature": {"stream": stream, "seq": 4, "signed": tampered},
            "misrouted": other_ack,
        }
        attacker = self.probe(name="attacker")
        for ack in hostile.values():
            attacker.publish(ack_topic("dev-s"), json.dumps(ack).encode())
        s = agent.wait_status(lambda s: s["refused_acks"] == len(hostile), "every hostile ack refused")
        self.assertEqual({reason: n for reason, n in s["refused_acks_by_reason"].items() if n},
                         {reason: 1 for reason in hostile})
        self.assertEqual((s["acked_seq"], s["backlog_events"]), (2, 2), "nothing pruned")
        log = agent.log_text()
        for reason in hostile:
            self.assertIn(f"({reason})", log)

        # The node comes back; the agent republishes and the node's signed ack prunes as before.
        self.ingest = self.start_ingest()
        s = agent.wait_status(lambda s: s["acked_seq"] == 4 and s["backlog_events"] == 0,
                              "seq 3..4 acked by the node and pruned")
        # The node may sign the republished events' ack before it reads the agent's retained
        # status (its session delivers the queued events first): that ack has no consistency
        # proof and is refused as no_consistency_proof, without an error, until the node signs
        # again with the proof (PROTOCOL §5.1).
        self.assertEqual(s["refused_acks"] - s["refused_acks_by_reason"]["no_consistency_proof"],
                         len(hostile))
        self.assertIsNone(s["ack_error"])
        self.assertIs(s["consistency_proven"], True, s)
        self.assertGreaterEqual(s["verified_tree_size"], 5)
        self.assertEqual(len(self.cli.events("dev-s")), 4)

    def audit(self, *extra):
        return h.run_cli(["audit", "--config", str(self.device.config_path), "--timeout", "30",
                          *extra])

    def test_audit_proves_every_acked_event_and_names_those_the_node_lost_or_altered(self):
        agent = self.start_device_agent(self.device)
        emitted = self.emit_for(self.device, h.emit_lines(3))
        agent.wait_status(lambda s: s["acked_seq"] == 3 and s["backlog_events"] == 0,
                          "seq 1..3 acked and pruned")
        ok = self.audit("--format", "json")
        self.assertEqual(ok.returncode, 0, ok.stderr)
        report = json.loads(ok.stdout)
        self.assertTrue(report["ok"], report)
        self.assertEqual(report["checked"], 3)
        self.assertGreaterEqual(report["tree_size"], 3)
        self.assertEqual(report["origin"], self.node_key["origin"])
        self.assertIn("checked 3/3 leaves", ok.stderr)
        text = self.audit()
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("checked 3 leaves", text.stdout)
        self.assertTrue(text.stdout.rstrip().endswith(": OK"), text.stdout)
        self.assertEqual(report["saved_tree_size"], 0, "nothing newer to save")
        # A witness keeps the node's signed checkpoint of these 3 leaves.
        witness = self.device.config_path.parent / "witness-3.note"
        witness.write_text(self.cli.ok("log", "checkpoint", "--signed").stdout)
        self.assertTrue(witness.read_text().startswith(f"{self.node_key['origin']}\n3\n"))

        # The log grows by the other device's event (leaf 3) while this agent is stopped: the
        # audit proves the signed checkpoint of 4 leaves an extension of the 3 it verified and
        # saves it in the outbox, so that the next audit starts from it.
        checkpoint_topic = f"{h.PREFIX}/_node/checkpoint"
        checkpoints = self.probe(name="checkpoints")
        checkpoints.subscribe(checkpoint_topic)
        agent.send_signal(signal.SIGTERM)
        self.assertIsNotNone(agent.wait_exit(h.WAIT_S))
        other_agent = self.start_device_agent(self.other)
        self.emit_for(self.other, h.emit_lines(1))
        other_agent.wait_status(lambda s: s["acked_seq"] == 1, "the other device acked")
        checkpoints.wait_message(lambda m: m[0] == checkpoint_topic and
                                 m[1].split(b"\n")[1] == b"4", "the checkpoint of 4 leaves")
        grown = self.audit("--format", "json")
        self.assertEqual(grown.returncode, 0, grown.stderr)
        report = json.loads(grown.stdout)
        self.assertEqual((report["consistency_from"], report["tree_size"],
                          report["saved_tree_size"]), (3, 4, 4), report)
        # The next audit starts from the saved log, and proves the witness's checkpoint a view
        # of the same log (the node's consistency proof from 3 to 4 leaves).
        report = json.loads(self.audit("--format", "json", "--witness", str(witness)).stdout)
        self.assertEqual((report["ok"], report["consistency_from"], report["saved_tree_size"]),
                         (True, 4, 0), report)
        self.assertEqual((report["witness"]["tree_size"], report["witness"]["consistent"]),
                         (3, True), report)

        # The restarted agent's ack verifier holds the node to the saved log too: the ack it
        # accepts for seq 4 (leaf 4) proves the log of 5 leaves from the log of 4.
        agent = self.start_device_agent(self.device)
        emitted += self.emit_for(self.device, h.emit_lines(1, start=3))
        s = agent.wait_status(lambda s: s["acked_seq"] == 4 and s["backlog_events"] == 0,
                              "seq 4 acked and pruned")
        self.assertEqual(s["verified_tree_size"], 5)
        self.assertIs(s["consistency_proven"], True, s)
        accepted = [ack for ack in self.acks.raw_acks("dev-s")
                    if ack["seq"] == 4 and "signed" in ack]
        statement = json.loads(b64url_decode(accepted[-1]["signed"]["payload"]))
        self.assertEqual((statement["consistency_from"], statement["tree_size"]), (4, 5))

        # The operator deletes event 1, changes a byte of event 2's envelope and deletes the
        # other device's leaf 3 from the log, by SQL, while the node runs. Event 3's inclusion
        # proof needs leaf 3: the node answers that it cannot give it, and the audit names it.
        db = sqlite3.connect(self.ingest_data / "ingest.db")
        with db:
            deleted = db.execute("DELETE FROM events WHERE device = 'dev-s' AND seq = 1").rowcount
            (envelope,) = db.execute(
                "SELECT envelope FROM events WHERE device = 'dev-s' AND seq = 2").fetchone()
            at = envelope.index('"signature":"') + 13
            altered = envelope[:at] + ("A" if envelope[at] != "A" else "B") + envelope[at + 1:]
            db.execute("UPDATE events SET envelope = ? WHERE device = 'dev-s' AND seq = 2",
                       (altered,))
            leaf_rows = db.execute("DELETE FROM log_leaves WHERE idx = 3").rowcount
        db.close()
        self.assertEqual((deleted, leaf_rows), (1, 1))

        failed = self.audit("--format", "json")
        self.assertEqual(failed.returncode, 1, failed.stderr)
        report = json.loads(failed.stdout)
        self.assertFalse(report["ok"])
        self.assertIsNone(report["inconsistent"])
        self.assertEqual(report["checked"], 4)
        ids = {seq: event_id for seq, event_id in emitted}
        self.assertEqual([(f["seq"], f["id"], f["problem"]) for f in report["findings"]],
                         [(1, ids[1], "missing"), (2, ids[2], "altered"),
                          (3, ids[3], "not_proven")])
        self.assertIn("no hash for subtree (0, 3)", report["findings"][2]["detail"])
        text = self.audit()
        self.assertEqual(text.returncode, 1)
        self.assertIn(f"MISSING: seq 1 id {ids[1]}", text.stdout)
        self.assertIn(f"ALTERED: seq 2 id {ids[2]}", text.stdout)
        self.assertIn(f"NOT PROVEN: seq 3 id {ids[3]}: the node holds it but cannot prove it",
                      text.stdout)

    def test_an_altered_node_store_fails_the_next_proof_and_prunes_nothing(self):
        agent = self.start_device_agent(self.device)
        other_agent = self.start_device_agent(self.other)
        for seq in (1, 2):  # leaves 0 and 1 of the node's log
            self.emit_for(self.device, h.emit_lines(1, start=seq - 1))
            agent.wait_status(lambda s, seq=seq: s["acked_seq"] == seq, f"seq {seq} acked")
        self.emit_for(self.other, h.emit_lines(1))  # leaf 2
        other_agent.wait_status(lambda s: s["acked_seq"] == 1, "the other device acked")

        # Event 3 reaches the broker while the node is down (its session keeps it), and the node
        # stores it as leaf 3 while the agent is down: the agent has not seen its ack.
        self.assertIsNotNone(self.ingest.terminate(h.WAIT_S))
        self.emit_for(self.device, h.emit_lines(1, start=2))
        s = agent.wait_status(lambda s: s["published"] >= 3, "seq 3 published")
        stream = s["stream"]
        agent.send_signal(signal.SIGTERM)
        self.assertIsNotNone(agent.wait_exit(h.WAIT_S))
        self.ingest = self.start_ingest()
        self.acks.wait_ack("dev-s", stream, 3)
        self.assertIsNotNone(self.ingest.terminate(h.WAIT_S))

        # The operator changes a byte of every interior hash of the log, by SQL, and removes
        # the retained ack that proved event 3 in the untouched log.
        db = sqlite3.connect(self.ingest_data / "ingest.db")
        with db:
            changed = db.execute(
                "UPDATE log_nodes SET hash = CASE WHEN substr(hash, 1, 1) = X'00' THEN X'01' "
                "ELSE X'00' END || substr(hash, 2)").rowcount
        db.close()
        self.assertGreaterEqual(changed, 2)
        self.probe(name="operator").publish(ack_topic("dev-s"), b"", retain=True)

        # The node acks the republished event 3 from the altered log: the proof fails.
        self.ingest = self.start_ingest()
        agent = self.start_device_agent(self.device)
        # Its consistency proof from the log the agent verified (2 leaves) fails first; the
        # inclusion proof would too.
        s = agent.wait_status(lambda s: s["ack_error"] is not None, "the failed proof in status")
        self.assertIn("consistency proof fails", s["ack_error"])
        self.assertGreaterEqual(s["refused_acks_by_reason"]["inconsistent"], 1)
        self.assertEqual((s["acked_seq"], s["backlog_events"]), (2, 1), "nothing pruned")
        self.assertIn("(inconsistent)", agent.log_text())

    def test_a_grown_log_whose_consistency_proof_fails_prunes_nothing(self):
        agent = self.start_device_agent(self.device)
        other_agent = self.start_device_agent(self.other)
        # Seq 1 is leaf 0; the agent's status then says it verified the log of 1 leaf, which the
        # node reads before seq 2 (same client, in order), so the ack of seq 2 (leaf 1) carries
        # the proof that the log of 2 leaves extends it.
        for seq in (1, 2):
            self.emit_for(self.device, h.emit_lines(1, start=seq - 1))
            s = agent.wait_status(lambda s, seq=seq: s["acked_seq"] == seq, f"seq {seq} acked")
        self.assertEqual(s["verified_tree_size"], 2)
        self.assertIs(s["consistency_proven"], True, s)
        statement = json.loads(b64url_decode(self.signed_ack("dev-s", 2)["signed"]["payload"]))
        self.assertEqual(statement["consistency_from"], 1)
        self.assertEqual(statement["tree_size"], 2)

        # After the agent verified the log of 2 leaves, the operator deletes event 2's leaf
        # (and what hangs on it) from the node's log by SQL.
        self.assertIsNotNone(self.ingest.terminate(h.WAIT_S))
        db = sqlite3.connect(self.ingest_data / "ingest.db")
        with db:
            deleted = db.execute("DELETE FROM log_leaves WHERE idx >= 1").rowcount
            db.execute("DELETE FROM log_nodes")
        db.close()
        self.assertEqual(deleted, 1)

        # The log grows again: the other device's event is leaf 1, seq 3 leaf 2. The node reads
        # the agent's retained status (2) and proves the log of 3 leaves from the log of 2 it has
        # now, which is not the one the agent verified.
        self.ingest = self.start_ingest()
        self.emit_for(self.other, h.emit_lines(1))
        other_agent.wait_status(lambda s: s["acked_seq"] == 1, "the other device acked")
        self.emit_for(self.device, h.emit_lines(1, start=2))
        s = agent.wait_status(lambda s: s["refused_acks_by_reason"]["inconsistent"] >= 1,
                              "the grown log's failed consistency proof refused")
        self.assertIn("consistency proof fails", s["ack_error"])
        self.assertEqual(s["refused_acks_by_reason"]["no_consistency_proof"], 0, s)
        self.assertEqual((s["acked_seq"], s["backlog_events"]), (2, 1), "nothing pruned")
        self.assertEqual(s["verified_tree_size"], 2)
        self.assertIn("(inconsistent)", agent.log_text())
        statement = json.loads(b64url_decode(self.signed_ack("dev-s", 3)["signed"]["payload"]))
        self.assertEqual((statement["consistency_from"], statement["tree_size"]), (2, 3))

    def test_a_node_log_cut_back_by_sql_is_inconsistent_and_prunes_nothing(self):
        agent = self.start_device_agent(self.device)
        for seq in (1, 2):  # leaves 0 and 1
            self.emit_for(self.device, h.emit_lines(1, start=seq - 1))
            s = agent.wait_status(lambda s, seq=seq: s["acked_seq"] == seq, f"seq {seq} acked")
        self.assertEqual(s["verified_tree_size"], 2)
        # A witness keeps the node's signed checkpoint of these 2 leaves.
        witness = self.device.config_path.parent / "witness-2.note"
        witness.write_text(self.cli.ok("log", "checkpoint", "--signed").stdout)
        checkpoint_topic = f"{h.PREFIX}/_node/checkpoint"
        checkpoints = self.probe(name="checkpoints")
        checkpoints.subscribe(checkpoint_topic)

        # The operator cuts the log back to its first leaf; the node then stores event 3 as a
        # second leaf 1: a log of the size the agent verified, with another root.
        self.assertIsNotNone(self.ingest.terminate(h.WAIT_S))
        db = sqlite3.connect(self.ingest_data / "ingest.db")
        with db:
            db.execute("DELETE FROM log_leaves WHERE idx >= 1")
            db.execute("DELETE FROM log_nodes")
        db.close()
        self.ingest = self.start_ingest()
        self.emit_for(self.device, h.emit_lines(1, start=2))
        s = agent.wait_status(lambda s: s["refused_acks_by_reason"]["inconsistent"] >= 1,
                              "the inconsistent log refused")
        self.assertIn("a log only grows", s["ack_error"])
        self.assertEqual((s["acked_seq"], s["backlog_events"]), (2, 1), "nothing pruned")
        # The node now signs another checkpoint of 2 leaves: the witness's and the audit's are
        # two histories, a split view the audit names.
        old_root = witness.read_text().split("\n")[2].encode()
        checkpoints.wait_message(lambda m: m[0] == checkpoint_topic and
                                 m[1].split(b"\n")[1] == b"2" and
                                 m[1].split(b"\n")[2] != old_root,
                                 "the new checkpoint of 2 leaves")
        split = self.audit("--format", "json", "--witness", str(witness))
        self.assertEqual(split.returncode, 1, split.stderr)
        report = json.loads(split.stdout)
        self.assertEqual((report["witness"]["tree_size"], report["witness"]["consistent"]),
                         (2, False), report)
        self.assertIn("different histories", report["witness"]["detail"])
        # A restarted agent holds the node to the same log: it was kept in the outbox.
        agent.send_signal(signal.SIGTERM)
        self.assertIsNotNone(agent.wait_exit(h.WAIT_S))
        agent = self.start_device_agent(self.device)
        s = agent.wait_status(lambda s: s["refused_acks_by_reason"]["inconsistent"] >= 1,
                              "the inconsistent log refused after a restart")
        self.assertEqual((s["acked_seq"], s["backlog_events"]), (2, 1), "nothing pruned")
