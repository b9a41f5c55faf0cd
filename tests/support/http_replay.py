#!/usr/bin/python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Replays recorded HTTP responses for the driver tests (see http_replay.hpp for the script format).

Usage: http_replay.py CONTROL_DIR PORT
  CONTROL_DIR/script        the current script's path on its first line, a load counter on the
                            second; re-read before each request, so that a new load takes effect
                            at the next request and route positions start again
  CONTROL_DIR/port          written (atomically) once the server listens: its port
  CONTROL_DIR/requests.jsonl one JSON object per request received, appended before the answer
PORT 0 picks a free port; restarts pass the old one (SO_REUSEADDR).

Python 3 standard library only (Debian's python3), so the tests need nothing from outside.
"""

import json
import os
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Replay:
    def __init__(self, control_dir):
        self.control_dir = control_dir
        self.lock = threading.Lock()
        self.control_text = None
        self.script_dir = "."
        self.routes = []
        self.positions = {}
        self.load_error = None

    def _refresh(self):
        with open(os.path.join(self.control_dir, "script"), encoding="utf-8") as f:
            text = f.read()
        if text == self.control_text:
            return
        self.control_text = text
        self.positions = {}
        self.routes = []
        self.load_error = None
        path = text.splitlines()[0] if text else ""
        try:
            with open(path, encoding="utf-8") as f:
                script = json.load(f)
            self.routes = script.get("routes", [])
            self.script_dir = os.path.dirname(os.path.abspath(path))
        except (OSError, ValueError) as e:
            self.load_error = "cannot load script %s: %s" % (path, e)
            print(self.load_error, file=sys.stderr, flush=True)

    def next_response(self, method, path):
        """The response for one request: a dict as in the script, or None for 404."""
        with self.lock:
            self._refresh()
            if self.load_error:
                return {"status": 500, "body": self.load_error, "content_type": "text/plain"}
            for index, route in enumerate(self.routes):
                if route.get("method", "GET") == method and route.get("path") == path:
                    responses = route.get("responses", [])
                    if not responses:
                        return None
                    position = self.positions.get(index, 0)
                    self.positions[index] = position + 1
                    return responses[min(position, len(responses) - 1)]
            return None

    def record(self, entry):
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self.lock:
            # One write of the whole line, so that a reader never sees half of it.
            with open(os.path.join(self.control_dir, "requests.jsonl"), "a", encoding="utf-8") as f:
                f.write(line)

    def body_of(self, response):
        if "body_file" in response:
            with open(os.path.join(self.script_dir, response["body_file"]), "rb") as f:
                return f.read()
        body = response.get("body", "")
        if isinstance(body, str):
            return body.encode("utf-8")
        return json.dumps(body).encode("utf-8")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real devices do
    replay = None

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        self.replay.record({
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        })
        response = self.replay.next_response(self.command, url.path)
        if response is None:
            self._send(404, b"no such route in the replay script", "text/plain", {})
            return
        if response.get("close"):
            # The device dropped the connection without an answer.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if response.get("hang"):
            # The device accepted the request and never answers: wait until the client gives up.
            self.close_connection = True
            while self.connection.recv(4096):
                pass
            return
        try:
            payload = self.replay.body_of(response)
        except OSError as e:
            self._send(500, ("replay: %s" % e).encode("utf-8"), "text/plain", {})
            return
        self._send(int(response.get("status", 200)), payload,
                   response.get("content_type", "application/json"),
                   response.get("headers", {}))

    def _send(self, status, payload, content_type, headers):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = _handle
    do_PUT = _handle
    do_POST = _handle
    do_DELETE = _handle
    do_PATCH = _handle
    do_HEAD = _handle

    def log_message(self, format, *args):
        sys.stderr.write("%s\n" % (format % args))
        sys.stderr.flush()


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    if len(sys.argv) != 3:
        print("usage: http_replay.py CONTROL_DIR PORT", file=sys.stderr)
        return 2
    control_dir, port = sys.argv[1], int(sys.argv[2])
    Handler.replay = Replay(control_dir)
    server = Server(("127.0.0.1", port), Handler)
    port_file = os.path.join(control_dir, "port")
    with open(port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write("%d\n" % server.server_address[1])
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
