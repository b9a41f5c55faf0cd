# SPDX-License-Identifier: AGPL-3.0-or-later
"""The harness's own node, checked without the agent: envelopes signed by jwcrypto and published
by a plain paho client must be verified, deduplicated, chain-checked and acked as PROTOCOL §5/§7
say, so that the other modules' failures point at the agent, not at the test node."""

import json
import shutil
import tempfile
import unittest

import paho.mqtt.client as mqtt
from jwcrypto import jwk

import harness as h


class NodeHarnessTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="reflow-it-harness-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.private = jwk.JWK.generate(kty="OKP", crv="Ed25519")
        self.broker = h.Mosquitto(self.tmp).start()
        self.addCleanup(self.broker.stop)
        self.node = h.Node(self.broker.port, {h.DEVICE_ID: h.public_jwk(self.private.export_public())})
        self.node.start()
        self.addCleanup(self.node.stop)
        self.publisher = mqtt.Client(client_id="harness-publisher", clean_session=True)
        self.publisher.connect("127.0.0.1", self.broker.port)
        self.publisher.loop_start()
        self.addCleanup(self.publisher.loop_stop)
        self.addCleanup(self.publisher.disconnect)

    def chain(self, count):
        stream, prev, lines = h.new_ulid(), None, []
        for seq in range(1, count + 1):
            line = h.sign_event(self.private, h.make_event(stream, seq, prev, i=seq))
            outer = json.loads(line)
            prev = h.chain_hash(outer["protected"], outer["payload"])
            lines.append(line)
        return stream, lines

    def publish(self, line):
        self.publisher.publish(f"{h.PREFIX}/{h.DEVICE_ID}/events", line, qos=1).wait_for_publish()

    def test_node_stores_dedupes_and_acks_contiguous_prefix(self):
        stream, lines = self.chain(3)
        self.node.pause()
        for line in (lines[0], lines[2], lines[1], lines[1]):
            self.publish(line)
        h.wait_for(lambda: len(self.node.arrival_seqs(stream)) == 4, "four arrivals")
        self.assertEqual(self.node.arrival_seqs(stream), [1, 3, 2, 2])
        self.assertEqual(self.node.contiguous(stream), 3)
        self.assertEqual(self.node.acks_published, [], "a paused node must not ack")
        self.node.unpause()
        ack = h.read_retained(self.broker.port, f"{h.PREFIX}/{h.DEVICE_ID}/ack")
        self.assertEqual(ack, {"stream": stream, "seq": 3})
        self.assertEqual(self.node.problems(), [])

    def test_node_rejects_bad_signature_and_chain_break(self):
        stream, lines = self.chain(3)
        tampered = json.loads(lines[0])
        event = json.loads(h.b64url_decode(tampered["payload"]))
        event["note"] = "tampered"
        tampered["payload"] = h.b64url(json.dumps(event).encode())
        self.publish(json.dumps(tampered))
        h.wait_for(lambda: self.node.problems(), "the node rejects a bad signature")
        self.assertIn("signature", self.node.problems()[0])

        self.publish(lines[0])
        first = json.loads(lines[0])
        bad = h.make_event(stream, 2, h.chain_hash(first["protected"], "x"))
        self.publish(h.sign_event(self.private, bad))
        h.wait_for(lambda: any("chain break" in p for p in self.node.problems()),
                   "the node reports a chain break")
        self.assertEqual(self.node.contiguous(stream), 1)

    def test_node_republishes_ack_after_broker_restart(self):
        stream, lines = self.chain(2)
        for line in lines:
            self.publish(line)
        self.node.wait_contiguous(stream, 2)
        self.broker.stop()
        self.broker.start()
        ack = h.read_retained(self.broker.port, f"{h.PREFIX}/{h.DEVICE_ID}/ack")
        self.assertEqual(ack, {"stream": stream, "seq": 2})


if __name__ == "__main__":
    unittest.main()
