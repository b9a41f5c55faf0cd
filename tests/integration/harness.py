# SPDX-License-Identifier: AGPL-3.0-or-later
"""Shared harness of the integration tests: a real Mosquitto, a real `reflow-agent run`, and a small
community node that verifies every envelope with jwcrypto (an independent JOSE implementation) and
acks what it stored, as PROTOCOL.md §5 and §7 describe.

Run with Debian's /usr/bin/python3 (python3-jwcrypto, python3-paho-mqtt 1.6.1). The binary under
test comes from $REFLOW_AGENT (set by CTest), else from the lead's build directory.

Nothing here sleeps to let time pass: every wait polls a condition with a generous upper bound.
"""

import base64
import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from jwcrypto import jwk, jws

REPO_ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = "/usr/sbin/mosquitto"
DEVICE_ID = "test-dev-01"
PREFIX = "reflow/v1"
WAIT_S = 60.0  # upper bound of every wait; a healthy run takes a small fraction of it
HEADER_TYP = "reflow-event+json"

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
RECORDED_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def agent_binary():
    path = os.environ.get("REFLOW_AGENT") or str(REPO_ROOT / "build" / "bin" / "reflow-agent")
    return path


# ---------------------------------------------------------------------------------------------
# Small helpers


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def chain_hash(protected_b64, payload_b64):
    """PROTOCOL §4 `prev`: b64url(SHA-256(JWS signing input))."""
    return b64url(hashlib.sha256(f"{protected_b64}.{payload_b64}".encode("ascii")).digest())


def ephemeral_port_floor():
    """The first port of the kernel's ephemeral range (ip_local_port_range), 32768 by default."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A loopback TCP port that is free now, below the kernel's ephemeral range.

    A test that stops its broker and starts it again on the same port needs the port to stay
    free in between. A port the kernel hands out for bind(0) comes from the ephemeral range, from
    which it also picks the source port of every outgoing connection, so any client of a test
    running in parallel may take it meanwhile (seen in CI: the restarted Mosquitto exited with
    "Address already in use"). Below that range only listeners that bind it by number take it."""
    floor = ephemeral_port_floor()
    first = 10000 if floor > 11000 else 1024
    rng = secrets.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(first, floor)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {first}..{floor - 1}")


def wait_for(predicate, what, timeout=WAIT_S, interval=0.05):
    """Polls `predicate` until it returns something truthy; returns that value. Raises
    AssertionError naming `what` when the bound runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(interval)


_ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid():
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_ULID_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def parse_rfc3339(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Producer fields (PROTOCOL §4) for `emit`


def make_fields(i, note_bytes=0):
    """Valid producer fields; cycles use / consume / produce with job `i`."""
    job = f"test:job-{i // 3}"
    kind = i % 3
    if kind == 0:
        fields = {
            "action": "use",
            "hasPointInTime": "2026-11-21T09:40:19Z",
            "resourceInventoriedAs": "printer:mk4-01",
            "effortQuantity": {"hasNumericalValue": 0.5, "hasUnit": "hour"},
            "inputOf": job,
        }
    elif kind == 1:
        fields = {
            "action": "consume",
            "hasPointInTime": "2026-11-21T09:40:19Z",
            "resourceInventoriedAs": "spool:pla-black-01",
            "resourceQuantity": {"hasNumericalValue": 12.5, "hasUnit": "gram"},
            "inputOf": job,
        }
    else:
        fields = {
            "action": "produce",
            "hasBeginning": "2026-11-21T08:40:19Z",
            "hasEnd": "2026-11-21T09:40:19Z",
            "resourceConformsTo": "part:bracket-v2",
            "resourceQuantity": {"hasNumericalValue": 1, "hasUnit": "one"},
            "outputOf": job,
        }
    fields["note"] = f"event {i}" + ("x" * note_bytes)
    return fields


def emit_lines(count, start=0, note_bytes=0):
    return [json.dumps(make_fields(start + i, note_bytes)) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Envelope verification with jwcrypto


class EnvelopeError(Exception):
    pass


@dataclass
class Envelope:
    raw: bytes
    protected: str
    payload_b64: str
    header: dict
    event: dict

    @property
    def stream(self):
        return self.event["stream"]

    @property
    def seq(self):
        return self.event["seq"]

    @property
    def id(self):
        return self.event["id"]

    @property
    def hash(self):
        return chain_hash(self.protected, self.payload_b64)


def public_jwk(jwk_json):
    """The verification key from keygen's JWK line (kid is informative)."""
    data = json.loads(jwk_json) if isinstance(jwk_json, (str, bytes)) else dict(jwk_json)
    return jwk.JWK(kty=data["kty"], crv=data["crv"], x=data["x"])


def verify_envelope(raw, key, device=None):
    """Verifies one envelope (PROTOCOL §3, §4) with jwcrypto; returns an Envelope or raises
    EnvelopeError with the reason."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    try:
        outer = json.loads(raw)
    except ValueError as e:
        raise EnvelopeError(f"not JSON: {e}") from e
    if not isinstance(outer, dict) or set(outer) != {"protected", "payload", "signature"}:
        raise EnvelopeError(f"not a flattened JWS with exactly protected/payload/signature: {raw[:200]!r}")
    if len(raw) > 64 * 1024:
        raise EnvelopeError(f"envelope of {len(raw)} bytes exceeds 64 KiB")
    token = jws.JWS()
    try:
        token.deserialize(raw.decode("utf-8"))
        token.verify(key, alg="EdDSA")
    except Exception as e:  # jwcrypto raises several types
        raise EnvelopeError(f"jwcrypto rejects the signature: {type(e).__name__}: {e}") from e
    header = json.loads(b64url_decode(outer["protected"]))
    expected_header = {"alg": "EdDSA", "kid": key.thumbprint(), "typ": HEADER_TYP}
    if header != expected_header:
        raise EnvelopeError(f"header {header} != {expected_header}")
    payload_bytes = b64url_decode(outer["payload"])
    if token.payload != payload_bytes:
        raise EnvelopeError("jwcrypto's verified payload differs from the envelope's payload")
    try:
        event = json.loads(payload_bytes.decode("utf-8"))
    except ValueError as e:
        raise EnvelopeError(f"payload not UTF-8 JSON: {e}") from e
    problems = []
    if event.get("v") != 1:
        problems.append(f"v={event.get('v')!r}")
    for name in ("id", "stream"):
        if not isinstance(event.get(name), str) or not ULID_RE.match(event[name]):
            problems.append(f"{name}={event.get(name)!r} is not a ULID")
    if device is not None and event.get("device") != device:
        problems.append(f"device={event.get('device')!r}, expected {device!r}")
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        problems.append(f"seq={seq!r}")
    elif seq == 1 and event.get("prev") is not None:
        problems.append(f"prev={event.get('prev')!r} for seq 1, expected null")
    elif seq > 1 and not (isinstance(event.get("prev"), str) and len(event["prev"]) == 43):
        problems.append(f"prev={event.get('prev')!r} is not a b64url SHA-256")
    if not isinstance(event.get("recorded"), str) or not RECORDED_RE.match(event["recorded"]):
        problems.append(f"recorded={event.get('recorded')!r} is not RFC 3339 UTC with ms")
    if event.get("clock") not in ("synced", "unsynced"):
        problems.append(f"clock={event.get('clock')!r}")
    if not isinstance(event.get("action"), str):
        problems.append("no action")
    source = event.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("driver"), str):
        problems.append(f"source={source!r}")
    if problems:
        raise EnvelopeError("payload: " + "; ".join(problems))
    return Envelope(raw, outer["protected"], outer["payload"], header, event)


# ---------------------------------------------------------------------------------------------
# Mosquitto


class Mosquitto:
    """A real broker on a free loopback port; stop() and start() again keep the port.

    `config`, when given, is a function of the port that returns the whole configuration text
    (e.g. the node's real TLS configuration with its port rewritten); the default is a plain,
    anonymous loopback listener."""

    def __init__(self, workdir, port=None, config=None):
        self.port = port or free_port()
        self.conf = Path(workdir) / "mosquitto.conf"
        self.log_path = Path(workdir) / "mosquitto.log"
        if config is not None:
            self.conf.write_text(config(self.port))
        else:
            self.conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "log_dest stderr\nlog_type all\n"
            )
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()

        def accepting():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited with {self.proc.returncode}:\n"
                                     + self.log_path.read_text(errors="replace"))
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return True
            return False

        wait_for(accepting, f"mosquitto listening on port {self.port}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def freeze(self):
        """SIGSTOP: the broker keeps its sockets open but answers nothing (no PUBACK)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self):
        """SIGKILL, as a crash or power loss of the broker host would end it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"


def read_retained(port, topic, predicate=lambda value: True, timeout=WAIT_S):
    """Connects a fresh client to `topic` (so it gets the retained message first, then live ones)
    and returns the first message, parsed as JSON, for which `predicate` is true."""
    cond = threading.Condition()
    messages = []
    client = mqtt.Client(client_id=f"retained-{secrets.token_hex(4)}", clean_session=True)

    def on_connect(c, _u, _f, rc):
        if rc == 0:
            c.subscribe(topic, qos=1)

    def on_message(_c, _u, msg):
        with cond:
            with contextlib.suppress(ValueError):
                messages.append(json.loads(msg.payload))
            cond.notify_all()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        with cond:
            found = cond.wait_for(lambda: any(predicate(m) for m in messages), timeout)
            if not found:
                raise AssertionError(f"no matching message on {topic} within {timeout:.0f} s; "
                                     f"got {messages}")
            return next(m for m in messages if predicate(m))
    finally:
        client.disconnect()
        client.loop_stop()


# ---------------------------------------------------------------------------------------------
# The node: subscriber + verifier + ack publisher


@dataclass
class StreamState:
    stored: dict = field(default_factory=dict)  # seq -> Envelope (first copy)
    contiguous: int = 0  # highest N with 1..N stored
    arrivals: list = field(default_factory=list)  # seqs in arrival order, duplicates included


class Node:
    """Plays the community node until reflow-ingest exists.

    Subscribes to PREFIX/+/events and PREFIX/+/status (QoS 1), verifies every envelope with
    jwcrypto and the device's JWK, keeps one copy per (device, stream, seq), records equivocations,
    chain breaks and rejections, and publishes the retained ack {"stream":S,"seq":N} (N = highest
    contiguous seq stored) to PREFIX/DEVICE/ack, QoS 1. While paused it keeps storing but publishes
    no ack; unpause() publishes the current acks. On every (re)connect it re-publishes its acks,
    because a broker without persistence forgets retained messages when it restarts.

    One client does both jobs so that everything the node acked was also seen by the subscriber.
    All public methods are thread-safe.
    """

    def __init__(self, port, keys, prefix=PREFIX):
        self.port = port
        self.keys = keys  # device -> jwcrypto JWK
        self.prefix = prefix
        self.cond = threading.Condition()
        self.streams = {}  # (device, stream) -> StreamState
        self.arrivals = []  # every verified Envelope in arrival order
        self.rejected = []  # (topic, reason, raw)
        self.equivocations = []
        self.chain_breaks = []
        self.statuses = []  # (device, parsed status, retained flag)
        self.acks_published = []  # (device, stream, seq)
        self.last_stream = {}  # device -> stream of its latest event
        self.paused = False
        self.subscribed = threading.Event()
        self.client = mqtt.Client(client_id=f"test-node-{secrets.token_hex(4)}", clean_session=True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # lifecycle ---------------------------------------------------------------------------------

    def start(self):
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(WAIT_S):
            raise AssertionError("node: no SUBACK from the broker")
        return self

    def stop(self):
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def pause(self):
        with self.cond:
            self.paused = True

    def unpause(self):
        with self.cond:
            self.paused = False
            for device, stream in self.last_stream.items():
                self._publish_ack(device, stream)

    # queries -----------------------------------------------------------------------------------

    def contiguous(self, stream, device=DEVICE_ID):
        with self.cond:
            state = self.streams.get((device, stream))
            return state.contiguous if state else 0

    def stored(self, stream, device=DEVICE_ID):
        with self.cond:
            state = self.streams.get((device, stream))
            return dict(state.stored) if state else {}

    def arrival_seqs(self, stream, device=DEVICE_ID):
        with self.cond:
            state = self.streams.get((device, stream))
            return list(state.arrivals) if state else []

    def ids(self):
        with self.cond:
            return {e.id: e for e in self.arrivals}

    def stream_names(self, device=DEVICE_ID):
        with self.cond:
            return [s for (d, s) in self.streams if d == device]

    def latest_status(self, device=DEVICE_ID):
        with self.cond:
            for d, status, _ in reversed(self.statuses):
                if d == device:
                    return status
            return None

    def wait_contiguous(self, stream, seq, device=DEVICE_ID, timeout=WAIT_S):
        wait_for(lambda: self.contiguous(stream, device) >= seq,
                 f"node stored seqs 1..{seq} of stream {stream} (has {self.contiguous(stream, device)})",
                 timeout)

    def wait_ids(self, ids, timeout=WAIT_S):
        wanted = set(ids)
        wait_for(lambda: wanted <= set(self.ids()),
                 f"node received ids; missing {sorted(wanted - set(self.ids()))}", timeout)

    def problems(self):
        """Everything the node saw that PROTOCOL §7 rejects; [] when all was well."""
        with self.cond:
            return ([f"rejected on {t}: {r}" for t, r, _ in self.rejected]
                    + [f"equivocation: {e}" for e in self.equivocations]
                    + [f"chain break: {c}" for c in self.chain_breaks])

    # MQTT callbacks (network thread) -----------------------------------------------------------

    def _on_connect(self, client, _userdata, _flags, rc):
        if rc != 0:
            return
        client.subscribe([(f"{self.prefix}/+/events", 1), (f"{self.prefix}/+/status", 1)])
        with self.cond:
            if not self.paused:
                for device, stream in self.last_stream.items():
                    self._publish_ack(device, stream)

    def _on_subscribe(self, _client, _userdata, _mid, _granted):
        self.subscribed.set()

    def _on_message(self, _client, _userdata, msg):
        parts = msg.topic.split("/")
        device, kind = parts[-2], parts[-1]
        with self.cond:
            if kind == "status":
                with contextlib.suppress(ValueError):
                    self.statuses.append((device, json.loads(msg.payload), bool(msg.retain)))
            elif kind == "events":
                self._on_event(msg.topic, device, bytes(msg.payload))
            self.cond.notify_all()

    def _on_event(self, topic, device, raw):
        key = self.keys.get(device)
        if key is None:
            self.rejected.append((topic, f"unknown device {device}", raw))
            return
        try:
            env = verify_envelope(raw, key, device=device)
        except EnvelopeError as e:
            self.rejected.append((topic, str(e), raw))
            return
        self.arrivals.append(env)
        state = self.streams.setdefault((device, env.stream), StreamState())
        state.arrivals.append(env.seq)
        self.last_stream[device] = env.stream
        old = state.stored.get(env.seq)
        if old is not None:
            if old.raw != env.raw:
                self.equivocations.append(f"{device}/{env.stream}/{env.seq}: {old.raw!r} vs {env.raw!r}")
            return
        before = state.stored.get(env.seq - 1)
        if before is not None and env.event["prev"] != before.hash:
            self.chain_breaks.append(f"{device}/{env.stream}/{env.seq}: prev {env.event['prev']} != {before.hash}")
            self.rejected.append((topic, "chain break", raw))
            return
        after = state.stored.get(env.seq + 1)
        if after is not None and after.event["prev"] != env.hash:
            self.chain_breaks.append(f"{device}/{env.stream}/{env.seq + 1}: prev does not match seq {env.seq}")
        state.stored[env.seq] = env
        advanced = False
        while state.contiguous + 1 in state.stored:
            state.contiguous += 1
            advanced = True
        if advanced and not self.paused:
            self._publish_ack(device, env.stream)

    def _publish_ack(self, device, stream):
        state = self.streams.get((device, stream))
        if not state or state.contiguous == 0:
            return
        body = json.dumps({"stream": stream, "seq": state.contiguous}, separators=(",", ":"))
        self.client.publish(f"{self.prefix}/{device}/ack", body, qos=1, retain=True)
        self.acks_published.append((device, stream, state.contiguous))


# ---------------------------------------------------------------------------------------------
# The agent under test


def config_text(*, device_id, key_file, data_dir, url, prefix=PREFIX, resend_after="1s",
                quota=None, extra_mqtt="", extra=""):
    lines = [
        "[agent]",
        f"device_id = {json.dumps(device_id)}",
        f"key_file = {json.dumps(str(key_file))}",
        f"data_dir = {json.dumps(str(data_dir))}",
        "",
        "[mqtt]",
        f"url = {json.dumps(url)}",
        f"topic_prefix = {json.dumps(prefix)}",
        f"resend_after = {json.dumps(resend_after)}",
        'reconnect_min = "100ms"',
        'reconnect_max = "1s"',
    ]
    if extra_mqtt:
        lines.append(extra_mqtt)
    if quota:
        lines += ["", "[outbox]", f"quota = {json.dumps(quota)}"]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self):
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_cli(args, input_text=None, timeout=WAIT_S):
    """Runs one short CLI command of the agent; returns Completed."""
    proc = subprocess.run([agent_binary(), *args], input=input_text, capture_output=True,
                          text=True, timeout=timeout)
    return Completed(proc.returncode, proc.stdout, proc.stderr)


class AgentProcess:
    """A `reflow-agent run` process; its stdout and stderr are appended to log_path."""

    def __init__(self, config_path, log_path):
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            log.write(f"==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen([agent_binary(), "run", "--config", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def status(self):
        """status --json as a dict, or None when the daemon did not answer."""
        r = run_cli(["status", "--config", str(self.config_path), "--json"])
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def wait_ready(self, timeout=WAIT_S):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"reflow-agent run exited with {self.proc.returncode} before "
                                     f"it was ready; log:\n{self.log_text()}")
            return self.status()

        return wait_for(ready, "reflow-agent status --json answers", timeout)

    def wait_status(self, predicate, what, timeout=WAIT_S):
        last = {}

        def check():
            s = self.status()
            if s is not None:
                last["s"] = s
                if predicate(s):
                    return s
            return None

        try:
            return wait_for(check, what, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}; last status: {last.get('s')}") from None

    def send_signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class AgentTestCase(unittest.TestCase):
    """Per test: a temp dir, a broker, a key, a config, a node. Agents started with start_agent()
    are killed at the end; logs are printed when the test failed."""

    quota = None
    resend_after = "1s"

    def setUp(self):
        binary = agent_binary()
        if not os.access(binary, os.X_OK):
            self.fail(f"reflow-agent binary not found at {binary} (set REFLOW_AGENT)")
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-it-"))
        self.addCleanup(self._cleanup_tmp)
        self.addCleanup(self._dump_logs_on_failure)
        self.key_file = self.tmp / "device.key"
        self.data_dir = self.tmp / "data"
        r = run_cli(["keygen", "--key", str(self.key_file)])
        self.assertEqual(r.returncode, 0, f"keygen failed: {r.stderr}")
        self.jwk_json = r.stdout.strip()
        self.key = public_jwk(self.jwk_json)
        self.broker = Mosquitto(self.tmp).start()
        self.addCleanup(self.broker.stop)
        self.config_path = self.tmp / "agent.toml"
        self.write_config()
        self.node = Node(self.broker.port, {DEVICE_ID: self.key}).start()
        self.addCleanup(self.node.stop)
        self.agents = []
        self.addCleanup(self._kill_agents)

    def write_config(self, **overrides):
        kwargs = dict(device_id=DEVICE_ID, key_file=self.key_file, data_dir=self.data_dir,
                      url=self.broker.url, resend_after=self.resend_after, quota=self.quota)
        kwargs.update(overrides)
        self.config_path.write_text(config_text(**kwargs))

    def start_agent(self, wait=True):
        agent = AgentProcess(self.config_path, self.tmp / "agent.log").start()
        self.agents.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    def emit(self, lines, timeout=WAIT_S):
        text = "".join(line + "\n" for line in lines)
        return run_cli(["emit", "--config", str(self.config_path)], input_text=text, timeout=timeout)

    def emit_ok(self, lines):
        """Emits lines that must all be committed; returns [(seq, id)]."""
        r = self.emit(lines)
        out = r.json_lines()
        self.assertEqual(r.returncode, 0, f"emit exit {r.returncode}; stdout {r.stdout!r}; stderr {r.stderr!r}")
        self.assertEqual(len(out), len(lines), f"emit printed {r.stdout!r}")
        for o in out:
            self.assertEqual(set(o), {"seq", "id"}, f"emit line {o}")
            self.assertRegex(o["id"], ULID_RE)
        return [(o["seq"], o["id"]) for o in out]

    def emit_interrupted(self, lines, after, action):
        """Feeds `lines` to one emit process and calls `action()` (SIGKILL the agent, stop the
        broker …) once emit printed `after` acks, or at once when `after` is 0. Returns every
        (seq, id) emit printed and emit's exit status. Fails if emit does not exit."""
        emit = subprocess.Popen([agent_binary(), "emit", "--config", str(self.config_path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        stderr = []

        def feed():
            try:
                for line in lines:
                    emit.stdin.write(line + "\n")
                emit.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass

        hung = threading.Event()

        def watchdog():
            hung.set()
            emit.kill()

        threads = [threading.Thread(target=feed, daemon=True),
                   threading.Thread(target=lambda: stderr.append(emit.stderr.read()), daemon=True)]
        for t in threads:
            t.start()
        timer = threading.Timer(WAIT_S, watchdog)
        timer.start()
        got = []
        done = False
        try:
            if after == 0:
                action()
                done = True
            for line in emit.stdout:
                if not line.strip():
                    continue
                out = json.loads(line)
                if "seq" in out:
                    self.assertEqual(set(out), {"seq", "id"}, f"emit line {line!r}")
                    got.append((out["seq"], out["id"]))
                if not done and len(got) >= after:
                    action()
                    done = True
            emit.wait()
        finally:
            timer.cancel()
            if not done:
                action()
            if emit.poll() is None:
                emit.kill()
                emit.wait()
            for t in threads:
                t.join(WAIT_S)
        self.assertFalse(hung.is_set(), f"emit did not exit within {WAIT_S:.0f} s; stderr {stderr}")
        return got, emit.returncode

    def assert_node_clean(self):
        self.assertEqual(self.node.problems(), [], "the node saw envelopes PROTOCOL §7 rejects")

    def assert_in_order(self, stream):
        """Per stream the first arrival of each seq follows seq order: 1, 2, 3 … (duplicates of
        earlier seqs may come anywhere)."""
        firsts = []
        seen = set()
        for s in self.node.arrival_seqs(stream):
            if s not in seen:
                seen.add(s)
                firsts.append(s)
        self.assertEqual(firsts, list(range(1, len(firsts) + 1)),
                         f"first arrivals of stream {stream} out of order; all arrivals "
                         f"{self.node.arrival_seqs(stream)}; node problems {self.node.problems()}")

    # cleanup -----------------------------------------------------------------------------------

    def _kill_agents(self):
        for agent in self.agents:
            agent.kill()

    def _failed(self):
        # Inside a cleanup `_outcome.success` is reset for the cleanup itself, so look at what
        # the result recorded for this test instead.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return True
        recorded = list(getattr(result, "failures", [])) + list(getattr(result, "errors", []))
        return any(test is self for test, _ in recorded)

    def _dump_logs_on_failure(self):
        if not self._failed():
            return
        self.keep_tmp = True
        for name in ("agent.log", "mosquitto.log"):
            path = self.tmp / name
            if path.exists():
                text = path.read_text(errors="replace")
                if len(text) > 60000:
                    text = text[:20000] + "\n…(cut; whole file kept in the temp dir)…\n" + text[-40000:]
                sys.stderr.write(f"\n----- {self.id()}: {name} -----\n{text}\n----- end of {name} -----\n")

    def _cleanup_tmp(self):
        if os.environ.get("REFLOW_KEEP_TMP") or getattr(self, "keep_tmp", False):
            sys.stderr.write(f"kept {self.tmp}\n")
            return
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Envelopes made by jwcrypto, for checking the agent's `verify` against an independent signer


def sign_event(private_key, event):
    """A flattened JWS of `event` (PROTOCOL §3) signed by jwcrypto; returns the envelope line."""
    header = json.dumps({"alg": "EdDSA", "kid": private_key.thumbprint(), "typ": HEADER_TYP},
                        separators=(",", ":"))
    token = jws.JWS(json.dumps(event, separators=(",", ":")).encode("utf-8"))
    token.add_signature(private_key, alg="EdDSA", protected=header)
    outer = json.loads(token.serialize())
    return json.dumps({"protected": outer["protected"], "payload": outer["payload"],
                       "signature": outer["signature"]}, separators=(",", ":"))


def make_event(stream, seq, prev, i=0, device=DEVICE_ID):
    event = {"v": 1, "id": new_ulid(), "device": device, "stream": stream, "seq": seq, "prev": prev,
             "recorded": "2026-11-21T09:40:19.123Z", "clock": "synced"}
    event.update(make_fields(i))
    event["source"] = {"driver": "emit", "instance": "control", "ref": ""}
    return event
