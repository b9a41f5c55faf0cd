# SPDX-License-Identifier: AGPL-3.0-or-later
"""Harness of the node's integration tests: a real `reflow-ingest run` next to the real
`reflow-agent run`, the node's PKI made by the binaries under test (`reflow-ingest ca …`,
`reflow-agent enroll`), a Mosquitto started from the repository's real config/mosquitto/
reflow-node.conf and reflow.acl (only paths and the port rewritten), small MQTT probes (plain or
mutual TLS) and readers of `reflow-ingest events / rejections / stats` output.

The binary under test comes from $REFLOW_INGEST (set by CTest), else from the lead's build
directory. Nothing here sleeps to let time pass: every wait polls a condition with a bound.
"""

import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from jwcrypto import jwk

import harness as h

NODE_CONF = h.REPO_ROOT / "config" / "mosquitto" / "reflow-node.conf"
NODE_ACL = h.REPO_ROOT / "config" / "mosquitto" / "reflow.acl"
INGEST_IDENTITY = "ingest@node"
TLS_HOST = "localhost"  # the name in the broker certificate's SAN that clients verify


def ingest_binary():
    return os.environ.get("REFLOW_INGEST") or str(h.REPO_ROOT / "build" / "bin" / "reflow-ingest")


def toml_str(value):
    return json.dumps(str(value))


def now_rfc3339(offset_s=0.0):
    """Now (+ offset) as PROTOCOL §4 `recorded`: RFC 3339 UTC with milliseconds."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------------------
# reflow-ingest commands


def run_ingest(args, input_text=None, timeout=h.WAIT_S):
    """Runs one short `reflow-ingest` command; returns harness.Completed."""
    proc = subprocess.run([ingest_binary(), *[str(a) for a in args]], input=input_text,
                          capture_output=True, text=True, timeout=timeout)
    return h.Completed(proc.returncode, proc.stdout, proc.stderr)


def run_ingest_as(prefix, args, timeout=h.WAIT_S):
    """`reflow-ingest ARGS` under a command prefix (e.g. setpriv as another user)."""
    proc = subprocess.run([*prefix, ingest_binary(), *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout)
    return h.Completed(proc.returncode, proc.stdout, proc.stderr)


def ingest_config_text(*, data_dir, url, client_id="reflow-ingest", share_group=None,
                       ca_file=None, cert_file=None, key_file=None, prefix=h.PREFIX):
    lines = ["[ingest]", f"data_dir = {toml_str(data_dir)}", "", "[mqtt]",
             f"url = {toml_str(url)}", f"topic_prefix = {toml_str(prefix)}",
             f"client_id = {toml_str(client_id)}", 'reconnect_min = "100ms"',
             'reconnect_max = "1s"']
    if share_group:
        lines.append(f"share_group = {toml_str(share_group)}")
    for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if value is not None:
            lines.append(f"{name} = {toml_str(value)}")
    return "\n".join(lines) + "\n"


def parse_json_output(text):
    """`--json` output as a list of objects: JSON lines, or one JSON document (an array, an
    object with a "devices" array, one device object, or an object keyed by device id)."""
    text = text.strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        if isinstance(doc.get("devices"), list):
            return doc["devices"]
        if "device" in doc:
            return [doc]
        return [dict(v, device=k) for k, v in doc.items() if isinstance(v, dict)]
    raise AssertionError(f"unexpected --json output: {text[:300]!r}")


def chain_intact(device_stats):
    """The `chain intact|broken` of one device of `stats --json`, whichever spelling it uses."""
    for key in ("chain_intact", "intact"):
        if isinstance(device_stats.get(key), bool):
            return device_stats[key]
    if "chain" in device_stats:
        return device_stats["chain"] == "intact"
    raise AssertionError(f"stats --json has no chain field: {device_stats}")


class IngestCli:
    """`reflow-ingest` commands against one config file."""

    def __init__(self, config_path):
        self.config_path = Path(config_path)

    def run(self, *args, input_text=None):
        return run_ingest([*args, "--config", self.config_path], input_text=input_text)

    def ok(self, *args, input_text=None):
        r = self.run(*args, input_text=input_text)
        if r.returncode != 0:
            raise AssertionError(f"reflow-ingest {' '.join(map(str, args))} exited {r.returncode}; "
                                 f"stdout {r.stdout!r}; stderr {r.stderr!r}")
        return r

    def device_add(self, device, jwk_json):
        return self.ok("device", "add", device, "--jwk", "-", input_text=jwk_json + "\n")

    def events_lines(self, device=None, fmt="jsonl", *extra):
        args = ["events", "--format", fmt, *extra]
        if device:
            args += ["--device", device]
        return [line for line in self.ok(*args).stdout.splitlines() if line.strip()]

    def events(self, device=None):
        """[(raw payload line, parsed event)] of `events --format jsonl`."""
        return [(line, json.loads(line)) for line in self.events_lines(device)]

    def rejections(self, device=None):
        args = ["rejections"] + (["--device", device] if device else [])
        return self.ok(*args).json_lines()

    def stats(self):
        return parse_json_output(self.ok("stats", "--json").stdout)

    def device_stats(self, device):
        for d in self.stats():
            if d.get("device") == device:
                return d
        raise AssertionError(f"stats --json has no device {device}: {self.stats()}")


class IngestProcess:
    """A `reflow-ingest run` process; stdout and stderr are appended to log_path."""

    def __init__(self, config_path, log_path, log_level="debug"):
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        self.log_level = log_level
        self.proc = None
        self.offset = 0

    def start(self):
        with open(self.log_path, "ab") as log:
            log.write(f"==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.offset = log.tell()
            self.proc = subprocess.Popen(
                [ingest_binary(), "run", "--config", str(self.config_path), "--log-level",
                 self.log_level], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def this_run(self):
        """The log of the current run only."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout=h.WAIT_S):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"reflow-ingest run exited with {self.proc.returncode} before "
                                     f"it logged 'ready'; log:\n{self.this_run()}")
            return re.search(r"\bready\b", self.this_run())

        h.wait_for(ready, f"reflow-ingest run logs 'ready' ({self.log_path.name})", timeout)
        return self

    def stored_count(self):
        """How many `stored DEVICE seq N ACTION` debug lines all runs logged."""
        return len(re.findall(r"\bstored \S+ seq \d+", self.log_text()))

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def terminate(self, timeout):
        """SIGTERM; returns the exit status, or None when it did not exit within `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


# ---------------------------------------------------------------------------------------------
# The node's PKI and broker, from the binaries and files under test


def find_cert_and_key(directory):
    """The one PEM certificate and one PEM private key a `ca server/client --out-dir` wrote,
    besides the copy of the CA's certificate (ca.crt)."""
    certs, keys = [], []
    for path in sorted(Path(directory).iterdir()):
        if not path.is_file() or path.name == "ca.crt":
            continue
        text = path.read_text(errors="replace")
        if "BEGIN CERTIFICATE" in text:
            certs.append(path)
        elif "PRIVATE KEY" in text:
            keys.append(path)
    if len(certs) != 1 or len(keys) != 1:
        raise AssertionError(f"expected one certificate and one key in {directory}, got "
                             f"{[p.name for p in Path(directory).iterdir()]}")
    return certs[0], keys[0]


class NodeTls:
    """The node's CA (`reflow-ingest ca init`), the broker's certificate (`ca server`) in a
    directory that stands for /etc/mosquitto/reflow/, and the ingest's own identity
    (`ca client ingest@node`)."""

    def __init__(self, root):
        self.root = Path(root)
        self.data_dir = self.root / "node-ca"
        self.broker_dir = self.root / "etc-mosquitto-reflow"
        self.ingest_dir = self.root / "ingest-identity"
        self.cli = IngestCli(self.root / "node-ca.toml")

    def create(self):
        self.cli.config_path.write_text(
            ingest_config_text(data_dir=self.data_dir, url="mqtt://127.0.0.1:1883"))
        self.broker_dir.mkdir(parents=True)
        self.ingest_dir.mkdir(parents=True)
        self.cli.ok("ca", "init")
        self.ca_cert = self.data_dir / "ca" / "ca.crt"
        if not self.ca_cert.exists():
            raise AssertionError(f"`ca init` did not write {self.ca_cert}")
        self.cli.ok("ca", "server", "--host", TLS_HOST, "--host", "127.0.0.1",
                    "--out-dir", self.broker_dir)
        for name in ("server.crt", "server.key"):
            if not (self.broker_dir / name).exists():
                raise AssertionError(f"`ca server --out-dir` did not write {name}, the file "
                                     f"reflow-node.conf names; wrote "
                                     f"{sorted(p.name for p in self.broker_dir.iterdir())}")
        if (self.broker_dir / "ca.crt").read_bytes() != self.ca_cert.read_bytes():
            raise AssertionError("`ca server --out-dir` did not copy the CA's ca.crt there")
        shutil.copy(NODE_ACL, self.broker_dir / "reflow.acl")
        readable_by_broker(self.broker_dir)
        self.cli.ok("ca", "client", INGEST_IDENTITY, "--out-dir", self.ingest_dir)
        self.ingest_cert, self.ingest_key = find_cert_and_key(self.ingest_dir)
        return self

    def issue_device(self, agent_config, csr_path, cert_path):
        """`reflow-agent enroll` (the CSR) then `reflow-ingest ca sign` (the certificate)."""
        r = h.run_cli(["enroll", "--config", str(agent_config), "--out", str(csr_path)])
        if r.returncode != 0:
            raise AssertionError(f"reflow-agent enroll exited {r.returncode}: {r.stderr}")
        if "BEGIN CERTIFICATE REQUEST" not in Path(csr_path).read_text():
            raise AssertionError(f"enroll --out wrote no PEM CSR: {Path(csr_path).read_text()!r}")
        self.cli.ok("ca", "sign", csr_path, "--out", cert_path)
        if "BEGIN CERTIFICATE" not in Path(cert_path).read_text():
            raise AssertionError(f"ca sign --out wrote no PEM certificate to {cert_path}")


def readable_by_broker(broker_dir):
    """Started as root, Mosquitto drops to the `mosquitto` user before it reads the ACL, the
    certificates and the key: let that user reach and read them, as an installed node does."""
    if os.geteuid() != 0:
        return
    broker_dir = Path(broker_dir)
    for directory in [broker_dir, *broker_dir.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            os.chmod(directory, (mode & 0o7777) | 0o001)
    os.chmod(broker_dir, 0o755)
    for path in broker_dir.iterdir():
        os.chmod(path, 0o644)


def node_broker_config(broker_dir):
    """The real reflow-node.conf with /etc/mosquitto/reflow/ → `broker_dir` and the 8883
    listener → the test's port, logging to stderr (with the file's own log types); a function of
    the port for
    harness.Mosquitto."""
    text = NODE_CONF.read_text()
    if "/etc/mosquitto/reflow/" not in text:
        raise AssertionError(f"{NODE_CONF} names no /etc/mosquitto/reflow/ path")
    text = text.replace("/etc/mosquitto/reflow/", f"{broker_dir}/")

    def make(port):
        out, count = re.subn(r"^listener 8883\s*$", f"listener {port}", text, flags=re.M)
        if count != 1:
            raise AssertionError(f"{NODE_CONF} has {count} 'listener 8883' lines, expected one")
        # Only the destination changes: the log types are the shipped file's (ACL denials).
        return out + "\nlog_dest stderr\n"

    return make


# ---------------------------------------------------------------------------------------------
# MQTT probes


class ConnectFailed(Exception):
    pass


class Probe:
    """A paho client (MQTT 3.1.1; optionally TLS with a client certificate) that records every
    message it receives, in order."""

    def __init__(self, port, *, ca_file=None, cert_file=None, key_file=None, name="probe",
                 host=None):
        self.port = port
        self.host = host or (TLS_HOST if ca_file else "127.0.0.1")
        self.cond = threading.Condition()
        self.messages = []  # (topic, payload bytes, retain)
        self.subacks = {}  # mid -> granted qos list
        self.connack = None
        self.disconnected = False
        self.client = mqtt.Client(client_id=f"{name}-{secrets.token_hex(4)}", clean_session=True)
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file),
                                certfile=str(cert_file) if cert_file else None,
                                keyfile=str(key_file) if key_file else None)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self):
        """Connects and waits for the CONNACK; raises ConnectFailed with the reason otherwise
        (TLS handshake refused, connection closed, CONNACK refused)."""
        # The network loop runs in this thread until the CONNACK: a TLS 1.3 server refuses a
        # client certificate only after the handshake, and the error must reach the caller.
        deadline = time.monotonic() + h.WAIT_S
        try:
            self.client.connect(self.host, self.port, keepalive=30)
            while self.connack is None and not self.disconnected:
                rc = self.client.loop(timeout=0.05)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectFailed(f"connection closed before the CONNACK: {mqtt.error_string(rc)}")
                if time.monotonic() > deadline:
                    raise AssertionError("no CONNACK and no disconnect within the bound")
        except ConnectFailed:
            self._drop()
            raise
        except AssertionError:
            self._drop()
            raise
        except Exception as e:  # ssl.SSLError, ConnectionResetError, …
            self._drop()
            raise ConnectFailed(f"{type(e).__name__}: {e}") from e
        if self.connack != 0:
            self._drop()
            raise ConnectFailed(f"CONNACK {self.connack}" if self.connack is not None
                                else "connection closed")
        self.client.loop_start()
        return self

    def _drop(self):
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.socket() and self.client.socket().close()

    def close(self):
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic, qos=1):
        """Subscribes and waits for the SUBACK; returns the granted QoS (128 = refused)."""
        rc, mid = self.client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"subscribe {topic}: rc {rc}")
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.subacks, h.WAIT_S):
                raise AssertionError(f"no SUBACK for {topic}")
            return self.subacks[mid][0]

    def publish(self, topic, payload, retain=False, qos=1):
        """Publishes and waits for the PUBACK (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(h.WAIT_S)
        if not info.is_published():
            raise AssertionError(f"no PUBACK for the publish to {topic}")

    def received(self, topic=None):
        with self.cond:
            return [m for m in self.messages if topic is None or m[0] == topic]

    def wait_message(self, predicate, what, timeout=h.WAIT_S):
        """Waits for a message (topic, payload, retain) with predicate true; returns it."""
        with self.cond:
            if not self.cond.wait_for(lambda: any(predicate(m) for m in self.messages), timeout):
                raise AssertionError(f"timed out waiting for {what}; got {self.messages}")
            return next(m for m in self.messages if predicate(m))

    def _on_connect(self, _c, _u, _f, rc):
        with self.cond:
            self.connack = rc
            self.cond.notify_all()

    def _on_disconnect(self, _c, _u, _rc):
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def _on_subscribe(self, _c, _u, mid, granted):
        with self.cond:
            self.subacks[mid] = list(granted)
            self.cond.notify_all()

    def _on_message(self, _c, _u, msg):
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()


class AckWatcher(Probe):
    """Subscribed to PREFIX/+/ack from the start: sees the retained ack of every device, then
    every ack the node publishes, in order."""

    def start(self):
        self.connect()
        self.subscribe(f"{h.PREFIX}/+/ack")
        return self

    def acks(self, device):
        """The (stream, seq) of each ack of `device`, as `{"stream","seq"}` dicts: what every
        agent reads, whether the node signs its acks (PROTOCOL §5.1) or not."""
        return [{k: ack[k] for k in ("stream", "seq") if k in ack}
                for ack in self.raw_acks(device)]

    def raw_acks(self, device):
        """Each ack of `device` as published, parsed (with its `signed` member, if any)."""
        out = []
        for topic, payload, _ in self.received(f"{h.PREFIX}/{device}/ack"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(payload))
        return out

    def wait_ack(self, device, stream, seq, timeout=h.WAIT_S):
        want = {"stream": stream, "seq": seq}
        h.wait_for(lambda: want in self.acks(device),
                   f"ack {want} of {device} (acks so far {self.acks(device)})", timeout)


# ---------------------------------------------------------------------------------------------
# Envelopes crafted in Python (jwcrypto), for the verdict tests


def new_private_key():
    return jwk.JWK.generate(kty="OKP", crv="Ed25519")


def keygen_json(private_key):
    """The public JWK line `reflow-agent keygen` prints: kty, crv, x, kid."""
    public = json.loads(private_key.export_public())
    return json.dumps({"kty": "OKP", "crv": "Ed25519", "x": public["x"],
                       "kid": private_key.thumbprint()}, separators=(",", ":"))


def sign_payload(private_key, payload, *, kid=None, alg="EdDSA"):
    """A flattened JWS of `payload` (bytes, or a dict serialized compactly): Ed25519 over the
    signing input with `private_key`, whatever the header says — `kid` (default: the key's own
    thumbprint) and `alg` may lie, for forged envelopes."""
    if isinstance(payload, dict):
        payload = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    header = json.dumps({"alg": alg, "kid": kid or private_key.thumbprint(), "typ": h.HEADER_TYP},
                        separators=(",", ":"))
    protected, payload_b64 = h.b64url(header.encode("utf-8")), h.b64url(payload)
    signature = private_key.get_op_key("sign").sign(f"{protected}.{payload_b64}".encode("ascii"))
    return json.dumps({"protected": protected, "payload": payload_b64,
                       "signature": h.b64url(signature)}, separators=(",", ":"))


def payload_of(line):
    """The payload bytes of an envelope line, as text."""
    return h.b64url_decode(json.loads(line)["payload"]).decode("utf-8")


def hash_of(line):
    outer = json.loads(line)
    return h.chain_hash(outer["protected"], outer["payload"])


class Chain:
    """One stream of one device, made in Python: add(seq) makes the valid event seq (chained to
    the valid seq−1, which must exist unless seq is 1); variant(seq, …) makes another event for
    the same place in the chain (a different signature, payload, key …)."""

    def __init__(self, private_key, device, stream=None, recorded=None):
        self.key = private_key
        self.device = device
        self.stream = stream or h.new_ulid()
        self.recorded = recorded
        self.lines = {}  # seq -> the valid envelope line

    def event(self, seq, mutate=None):
        prev = hash_of(self.lines[seq - 1]) if seq > 1 else None
        event = h.make_event(self.stream, seq, prev, i=seq, device=self.device)
        if self.recorded:
            event["recorded"] = self.recorded
        if mutate:
            mutate(event)
        return event

    def add(self, seq, mutate=None):
        self.lines[seq] = sign_payload(self.key, self.event(seq, mutate))
        return self.lines[seq]

    def variant(self, seq, mutate=None, key=None, kid=None):
        return sign_payload(key or self.key, self.event(seq, mutate), kid=kid)


# ---------------------------------------------------------------------------------------------
# Test case base


@dataclass
class Device:
    id: str
    key_file: Path
    data_dir: Path
    config_path: Path
    jwk_json: str
    tls_key: Path = None
    tls_cert: Path = None
    csr: Path = None

    @property
    def kid(self):
        return json.loads(self.jwk_json)["kid"]


class NodeTestCase(h.AgentTestCase):
    """Per test: a temp dir; brokers, devices, agents and ingests on demand. Every process is
    killed at the end; all logs are printed when the test failed."""

    def setUp(self):
        # paho 1.6.1 leaves its wake-up socket pair to the garbage collector and asks ssl for the
        # deprecated PROTOCOL_TLS: noise, not findings.
        warnings.filterwarnings("ignore", category=ResourceWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="paho")
        for what, binary in (("reflow-agent", h.agent_binary()), ("reflow-ingest", ingest_binary())):
            if not os.access(binary, os.X_OK):
                self.fail(f"{what} binary not found at {binary} (set REFLOW_AGENT / REFLOW_INGEST)")
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-node-it-"))
        self.addCleanup(self._cleanup_tmp)
        self.addCleanup(self._dump_logs_on_failure)
        self.agents = []
        self.ingests = []
        self.probes = []
        self.tls = None
        self.broker = None
        # Cleanups run last-added first: probes, ingests and agents end before the broker stops.
        self.addCleanup(self._stop_broker)
        self.addCleanup(self._kill_agents)
        self.addCleanup(self._kill_ingests)
        self.addCleanup(self._close_probes)
        self.ingest_data = self.tmp / "ingest-data"
        self.ingest_config = self.tmp / "ingest.toml"
        self.cli = IngestCli(self.ingest_config)

    # brokers -----------------------------------------------------------------------------------

    def start_plain_broker(self):
        self.broker = h.Mosquitto(self.tmp).start()
        self.write_ingest_config()
        return self.broker

    def start_tls_broker(self):
        """The node's PKI from the binaries, then Mosquitto with the real reflow-node.conf."""
        self.tls = NodeTls(self.tmp).create()
        self.broker = h.Mosquitto(self.tmp, config=node_broker_config(self.tls.broker_dir)).start()
        self.write_ingest_config()
        return self.broker

    @property
    def broker_url(self):
        if self.tls:
            return f"mqtts://{TLS_HOST}:{self.broker.port}"
        return self.broker.url

    # the ingest --------------------------------------------------------------------------------

    def ingest_config_for(self, client_id="reflow-ingest", share_group=None):
        tls = {}
        if self.tls:
            tls = dict(ca_file=self.tls.ca_cert, cert_file=self.tls.ingest_cert,
                       key_file=self.tls.ingest_key)
        return ingest_config_text(data_dir=self.ingest_data, url=self.broker_url,
                                  client_id=client_id, share_group=share_group, **tls)

    def write_ingest_config(self, **kwargs):
        self.ingest_config.write_text(self.ingest_config_for(**kwargs))

    def start_ingest(self, name="ingest", client_id="reflow-ingest", share_group=None, wait=True):
        """`reflow-ingest run` with the node's data dir; `name` picks its config and log file."""
        config = self.tmp / f"{name}.toml"
        config.write_text(self.ingest_config_for(client_id=client_id, share_group=share_group))
        ingest = IngestProcess(config, self.tmp / f"{name}.log").start()
        self.ingests.append(ingest)
        if wait:
            ingest.wait_ready()
        return ingest

    # devices -----------------------------------------------------------------------------------

    def new_device(self, device_id, register=True, resend_after="1s"):
        """A device: Ed25519 key (`reflow-agent keygen`), agent config for this node's broker,
        registered with `reflow-ingest device add`; with TLS also its client certificate from
        `reflow-agent enroll` + `reflow-ingest ca sign`."""
        base = self.tmp / device_id
        base.mkdir()
        key_file = base / "device.key"
        r = h.run_cli(["keygen", "--key", str(key_file)])
        self.assertEqual(r.returncode, 0, f"keygen failed: {r.stderr}")
        device = Device(device_id, key_file, base / "data", base / "agent.toml", r.stdout.strip())
        extra = ""
        if self.tls:
            device.tls_key, device.tls_cert = base / "tls.key", base / "tls.crt"
            device.csr = base / "tls.csr"
            extra = "\n".join([f"ca_file = {toml_str(self.tls.ca_cert)}",
                               f"cert_file = {toml_str(device.tls_cert)}",
                               f"key_file = {toml_str(device.tls_key)}"])
        device.config_path.write_text(h.config_text(
            device_id=device_id, key_file=key_file, data_dir=device.data_dir, url=self.broker_url,
            resend_after=resend_after, extra_mqtt=extra))
        if self.tls:
            self.tls.issue_device(device.config_path, device.csr, device.tls_cert)
        if register:
            r = self.cli.device_add(device_id, device.jwk_json)
            self.assertIn(f"added {device_id} kid {device.kid}", r.stdout)
        return device

    def start_device_agent(self, device, wait=True):
        agent = h.AgentProcess(device.config_path, self.tmp / f"agent-{device.id}.log").start()
        self.agents.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    def emit_for(self, device, lines):
        """emit on `device`'s agent; every line must be committed; returns [(seq, id)]."""
        self.config_path = device.config_path
        return self.emit_ok(lines)

    # probes ------------------------------------------------------------------------------------

    def probe(self, identity=None, name="probe", connect=True):
        """A client of this broker: plain, or TLS as `identity` (a Device, INGEST_IDENTITY, or
        None for TLS without a client certificate)."""
        kwargs = {}
        if self.tls:
            kwargs["ca_file"] = self.tls.ca_cert
            if identity == INGEST_IDENTITY:
                kwargs.update(cert_file=self.tls.ingest_cert, key_file=self.tls.ingest_key)
            elif identity is not None:
                kwargs.update(cert_file=identity.tls_cert, key_file=identity.tls_key)
        p = Probe(self.broker.port, name=name, **kwargs)
        self.probes.append(p)
        return p.connect() if connect else p

    def ack_watcher(self):
        w = AckWatcher(self.broker.port, name="acks")
        self.probes.append(w)
        return w.start()

    # cleanup -----------------------------------------------------------------------------------

    def _stop_broker(self):
        if self.broker is not None:
            self.broker.stop()

    def _kill_ingests(self):
        for ingest in self.ingests:
            ingest.kill()

    def _close_probes(self):
        # A TLS client's network thread notices a disconnect only at its next select timeout
        # (1 s): disconnect them all first, then wait for the threads together.
        for p in self.probes:
            with contextlib.suppress(Exception):
                p.client.disconnect()
        for p in self.probes:
            p.close()

    def _dump_logs_on_failure(self):
        if not self._failed():
            return
        self.keep_tmp = True
        for path in sorted(self.tmp.glob("*.log")):
            text = path.read_text(errors="replace")
            if len(text) > 60000:
                text = text[:20000] + "\n…(cut; whole file kept in the temp dir)…\n" + text[-40000:]
            sys.stderr.write(f"\n----- {self.id()}: {path.name} -----\n{text}\n"
                             f"----- end of {path.name} -----\n")
