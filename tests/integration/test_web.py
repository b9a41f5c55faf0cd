# SPDX-License-Identifier: AGPL-3.0-or-later
"""`reflow-ingest serve`, the node's web page (issue 20), over plain HTTP with the standard
library's http.client: a real agent fills the store through a real Mosquitto and `run`, then the
test logs in and reads the pages, the downloads and /metrics. One test method, so that the
processes start once."""

import http.client
import json
import re
import subprocess
import unittest
import urllib.parse

import harness as h
import node_harness as nh

P = h.PREFIX
HOSTILE_NOTE = "<script>alert('x')</script> & \"quoted\""
HOSTILE_DEVICE = "<img src=x onerror=alert(1)>"
USER, PASSWORD = "alice", "correct horse battery"
EVENTS = 60  # more than one page (50)
# The Prometheus text format's sample line (prometheus.io/docs/instrumenting/exposition_formats).
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
                       r',?)*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$')


def parse_metrics(text):
    """{(name, labels text): value}; asserts each family has # HELP and # TYPE before its samples."""
    helped, typed, samples = set(), {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name in helped, f"# TYPE before # HELP: {line}"
            typed[name] = kind
        else:
            m = SAMPLE_RE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert m.group(1) in typed, f"sample without # TYPE: {line!r}"
            samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


class ServedNodeTestCase(nh.NodeTestCase):
    """A store filled by a real agent (EVENTS events, the hostile note and a rejected hostile
    sender), an account USER, and `reflow-ingest serve` on a free port (self.port)."""

    def setUp(self):
        super().setUp()
        self.start_plain_broker()
        self.device = self.new_device("dev-w")
        self.start_ingest()
        self.start_device_agent(self.device)
        # The hostile note on the last event and on the last consume of the spool (event 59),
        # which the spool's passport draws.
        fields = [json.loads(line) for line in h.emit_lines(EVENTS)]
        for f in fields[-2:]:
            f["note"] = HOSTILE_NOTE
        self.emit_for(self.device, [json.dumps(f) for f in fields])
        h.wait_for(lambda: len(self.cli.events_lines("dev-w")) == EVENTS,
                   f"{EVENTS} events stored at the node")
        probe = self.probe(name="hostile")
        probe.publish(f"{P}/{HOSTILE_DEVICE}/events", b"<script>not a JWS</script>")
        h.wait_for(lambda: self.cli.rejections(HOSTILE_DEVICE), "the hostile envelope rejected")
        self.cli.ok("users", "add", USER, input_text=PASSWORD + "\n")
        self.serve_log = self.tmp / "serve.log"
        with open(self.serve_log, "wb") as log:
            self.serve = subprocess.Popen(
                [nh.ingest_binary(), "serve", "--config", str(self.ingest_config), "--listen",
                 "127.0.0.1:0"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.addCleanup(self._stop_serve)
        found = {}

        def serving():
            if self.serve.poll() is not None:
                raise AssertionError(f"serve exited {self.serve.returncode}: "
                                     f"{self.serve_log.read_text()}")
            m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", self.serve_log.read_text())
            if m:
                found["port"] = int(m.group(1))
            return m

        h.wait_for(serving, "serve logs its address")
        self.port = found["port"]

    def _stop_serve(self):
        if self.serve.poll() is None:
            self.serve.terminate()
        self.serve.wait(timeout=h.WAIT_S)


class WebTest(ServedNodeTestCase):
    def request(self, method, path, cookie=None, body=None):
        """(status, headers, body text) of one request on a new connection; no redirects."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=h.WAIT_S)
        try:
            headers = {}
            if cookie:
                headers["Cookie"] = cookie
            if body is not None:
                body = urllib.parse.urlencode(body)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read().decode(errors="replace"))
        finally:
            conn.close()

    def login(self, password=PASSWORD):
        return self.request("POST", "/login", body={"user": USER, "password": password})

    def test_the_pages_of_a_store_filled_by_a_real_agent(self):
        # Without a session: 401 everywhere, the HTML pages with the login form.
        for path in ("/devices", "/events", "/rejections", "/metrics", "/events.csv", "/event"):
            status, _, body = self.request("GET", path)
            self.assertEqual(status, 401, path)
            self.assertNotIn("dev-w", body, path)
        self.assertIn('action="/login"', self.request("GET", "/devices")[2])
        status, headers, _ = self.login("wrong password")
        self.assertEqual(status, 401)
        self.assertNotIn("set-cookie", headers)

        status, headers, _ = self.login()
        self.assertEqual(status, 303)
        self.assertEqual(headers["location"], "/devices")
        cookie_header = headers["set-cookie"]
        self.assertRegex(cookie_header,
                         r"^reflow_session=[0-9a-f]{64}; Path=/; HttpOnly; SameSite=Strict$")
        cookie = cookie_header.split(";")[0]

        def get(path):
            status, headers, body = self.request("GET", path, cookie=cookie)
            self.assertEqual(status, 200, f"{path}: {body[:300]}")
            return headers, body

        # Devices: the unregistered hostile sender (trouble) above dev-w, its name escaped.
        _, body = get("/devices")
        escaped_device = "&lt;img src=x onerror=alert(1)&gt;"
        self.assertIn(escaped_device, body)
        self.assertNotIn(HOSTILE_DEVICE, body)
        self.assertLess(body.index(escaped_device), body.index(">dev-w<"))
        self.assertRegex(body, rf">dev-w</a></td><td>registered</td><td>[^<]+</td><td>{EVENTS}</td>"
                               rf"<td>{EVENTS}</td><td>{EVENTS}</td>")

        # Events: two pages by keyset cursor; the note comes out escaped, never as markup.
        seqs = []
        path = "/events?device=dev-w"
        pages = 0
        while path:
            _, body = get(path)
            pages += 1
            self.assertNotIn("<script>", body)
            seqs += [int(s) for s in re.findall(r'&amp;seq=(\d+)">', body)]
            m = re.search(r'<a href="(/events\?[^"]+)">Next page</a>', body)
            path = m.group(1).replace("&amp;", "&") if m else None
            if pages == 2:
                self.assertIn("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; "
                              "&quot;quoted&quot;", body)
        self.assertEqual((pages, seqs), (2, list(range(1, EVENTS + 1))))
        _, body = get("/events?device=dev-w&action=consume")
        self.assertEqual(len(re.findall(r"<td>consume</td>", body)), EVENTS // 3)
        _, body = get("/events?resource=spool%3Apla-black-01")
        self.assertEqual(len(re.findall(r"<td>consume</td>", body)), EVENTS // 3)
        self.assertNotIn("<td>use</td>", body)

        # The spool's material passport, linked from Events: drawn as SVG by Graphviz, one node
        # for the spool and one per consume, the hostile note escaped there too.
        self.assertIn('<a href="/passport?resource=spool%3Apla-black-01">spool:pla-black-01</a>',
                      body)
        _, body = get("/passport?resource=spool%3Apla-black-01")
        svg = body[body.index("<svg"):body.index("</svg>")]
        self.assertEqual(len(re.findall(r'<g id="node\d+" class="node">', svg)), 1 + EVENTS // 3)
        self.assertIn("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;", svg)
        self.assertNotIn("<script", body)
        self.assertEqual(self.request("GET", "/passport?resource=nothing", cookie=cookie)[0], 404)

        # process: its inputs (inputOf) and outputs (outputOf); member: provider or receiver.
        _, body = get("/events?process=test%3Ajob-3")
        self.assertEqual(re.findall(r"<td>(use|consume|produce)</td>", body),
                         ["use", "consume", "produce"])
        _, body = get("/events?device=dev-w&member=someone")
        self.assertIn("No events match.", body)

        # One event's page: its envelope, and the note escaped.
        stream = json.loads(self.cli.events_lines("dev-w")[-1])["stream"]
        _, body = get(f"/event?device=dev-w&stream={stream}&seq={EVENTS}")
        self.assertIn("Envelope as received", body)
        self.assertIn("&lt;script&gt;", body)
        self.assertNotIn("<script>", body)
        self.assertEqual(self.request("GET", f"/event?device=dev-w&stream={stream}&seq=999",
                                      cookie=cookie)[0], 404)

        # Downloads equal the CLI's output byte for byte.
        for fmt, path in (("csv", "/events.csv?device=dev-w"), ("jsonl", "/events.jsonl")):
            args = ["events", "--format", fmt, "--config", str(self.ingest_config)]
            if "device" in path:
                args += ["--device", "dev-w"]
            cli = subprocess.run([nh.ingest_binary(), *args], capture_output=True, check=True)
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=h.WAIT_S)
            conn.request("GET", path, headers={"Cookie": cookie})
            response = conn.getresponse()
            self.assertEqual((response.status, response.read()), (200, cli.stdout), fmt)
            conn.close()

        # Rejections: the hostile envelope and sender, escaped.
        _, body = get("/rejections")
        self.assertIn("malformed_jws", body)
        self.assertIn("&lt;script&gt;not a JWS&lt;/script&gt;", body)
        self.assertNotIn("<script>", body)
        self.assertIn(escaped_device, body)

        # /metrics parses as the Prometheus text format.
        headers, body = get("/metrics")
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        samples = parse_metrics(body)
        self.assertEqual(samples[("reflow_events_stored_total", '{device="dev-w"}')], EVENTS)
        self.assertEqual(samples[("reflow_events_rejected_total",
                                  '{device="<img src=x onerror=alert(1)>",reason="malformed_jws"}')],
                         1)
        self.assertEqual(samples[("reflow_devices", "")], 2)
        self.assertGreater(samples[("reflow_store_size_bytes", "")], 0)

        # Assets come from the binary only: no path reaches the file system.
        headers, body = get("/assets/style.css")
        self.assertTrue(headers["content-type"].startswith("text/css"))
        for path in ("/assets/../../../../etc/passwd", "/assets/%2e%2e/%2e%2e/etc/passwd",
                     "/assets/..%2f..%2f..%2fetc%2fpasswd", "/assets/style.css/../../etc/passwd"):
            status, _, body = self.request("GET", path, cookie=cookie)
            self.assertIn(status, (400, 404), path)
            self.assertNotIn("root:", body, path)

        # Oversized queries are refused before any work: a long parameter, a long URI.
        status, _, body = self.request("GET", "/events?device=" + "d" * 300, cookie=cookie)
        self.assertEqual(status, 400)
        self.assertIn("longer than 256 bytes", body)
        self.assertEqual(self.request("GET", "/events?device=" + "d" * 10000, cookie=cookie)[0],
                         414)

        # Read-only: no other method reaches a page.
        self.assertIn(self.request("POST", "/devices", cookie=cookie, body={})[0], (404, 405))

        # Logout ends the session on the server: the old cookie is worth nothing.
        status, headers, _ = self.request("POST", "/logout", cookie=cookie, body={})
        self.assertEqual((status, headers["location"]), (303, "/login"))
        self.assertIn("Max-Age=0", headers["set-cookie"])
        self.assertEqual(self.request("GET", "/devices", cookie=cookie)[0], 401)
        self.assertEqual(self.request("GET", "/metrics", cookie=cookie)[0], 401)

        # Password guessing: 5 failures a minute from this address (an unknown name costs the
        # same check as an account), then 429 with Retry-After, even for the right password.
        for _ in range(5):
            status, _, _ = self.request("POST", "/login",
                                        body={"user": "mallory", "password": "guess"})
            self.assertEqual(status, 401)
        status, headers, body = self.login()
        self.assertEqual(status, 429)
        self.assertIn(int(headers["retry-after"]), range(1, 61))
        self.assertIn("too many failed logins", body)
        self.assertNotIn("set-cookie", headers)


if __name__ == "__main__":
    unittest.main()
