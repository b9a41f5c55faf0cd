#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""A stand-in zenflows for zenflows_test: answers POSTs with canned JSON and records them.

usage: zenflows_stub.py PORT_FILE LOG_FILE RESPONSES_FILE
RESPONSES_FILE holds a JSON array; the Nth POST gets the Nth element as its JSON body (HTTP 200),
or {"errors":[{"message":"no canned answer"}]} once they run out. Each request is appended to
LOG_FILE as one JSON line {"path", "headers" (names lower-cased), "body_hex"} before the answer is
sent. The port (bound on 127.0.0.1, chosen by the kernel) is written to PORT_FILE once listening.
"""
import http.server
import json
import os
import sys

port_file, log_file, responses_file = sys.argv[1:4]
with open(responses_file, encoding="utf-8") as f:
    responses = json.load(f)
served = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global served
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        record = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_hex": body.hex(),
        }
        with open(log_file, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        if served < len(responses):
            answer = responses[served]
        else:
            answer = {"errors": [{"message": "no canned answer"}]}
        served += 1
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
