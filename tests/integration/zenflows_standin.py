# SPDX-License-Identifier: AGPL-3.0-or-later
"""A stand-in zenflows for the export tests: a real HTTP server on loopback (Python's
http.server, in a thread of the test) that answers the GraphQL requests `reflow-ingest export
--post` sends, as zenflows would, and can be told to fail.

Why Python in the test process and not a C++ server: the test that SIGKILLs the exporter after
the n-th answer must know the exporter's pid before that answer leaves; in-process, the test
hands it over directly (`victim`) and the handler waits for it, so there is no race and no file
to poll. The checks are independent of the C++ code under test: the signature is verified with
python3-cryptography over the body normalised as Zenroom does.

What it does, after zenflows (github.com/interfacerproject/zenflows):
- the signature (src/zenflows/gql/mw/sign.ex → Restroom.verify_graphql): headers zenflows-user
  and zenflows-sign, Ed25519 over the body after Zenroom's OCTET:compact_ascii (zen_octet.c:
  drop bytes below 0x21 and, signed char on x86-64, those >= 0x80; drop every backslash and an
  a/b/t/n/v/f/r right after it). A request that does not verify gets zenflows' GraphQL error;
- ids: fresh ULIDs of its clock (Zenflows.DB.ID.gen: 48-bit ms time, 80 random bits); ids it
  is given must be 26-character ULIDs (Zenflows.DB.ID.cast);
- createProcess: `name` required;
- createEconomicEvent, the per-action rules the exporter relies on (valueflows.md §2c/§2d,
  economic_event.ex): provider and receiver; inputOf for use/consume/accept/work/cite, outputOf
  for produce/modify, naming a process it has; consume and lower need resourceInventoriedAs, a
  resource it has; produce/raise either add to a resource it has (resourceInventoriedAs) or
  create one from newInventoriedResource, whose `name` is required, with resourceConformsTo;
- economicEvents / processes (first, after): ascending by id, ids greater than `after`, at most
  100 a page (Zenflows.DB.Page.all, GQL.Connection), pageInfo {hasNextPage endCursor};
- faults, for the n-th mutation (createProcess/createEconomicEvent, counted from 1 over the
  server's life): `refuse` (a GraphQL error, nothing created), `http500` (HTTP 500, nothing
  created), `create_then_drop` (created, then the connection is closed without an answer),
  `kill` (created; the process `victim`, waiting for the answer, is SIGSTOPped, the answer is
  sent, then it is SIGKILLed: it never reads the answer).
"""

import base64
import http.server
import json
import os
import re
import secrets
import signal
import sys
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
MAX_PAGE = 100


def new_ulid():
    """48-bit ms time + 80 random bits, Crockford base32 (as Zenflows.DB.ID.gen)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def compact_ascii(body: bytes) -> bytes:
    """Zenroom's OCTET:compact_ascii as zenflows runs it (x86-64, signed char)."""
    out = bytearray()
    escape = False
    for c in body:
        if c < 0x21 or c >= 0x80:
            continue
        if escape:
            escape = False
            if c in b"abtnvfr":
                continue
        if c == 0x5C:
            escape = True
            continue
        out.append(c)
    return bytes(out)


class Refusal(Exception):
    """A GraphQL error: zenflows created nothing."""


class ZenflowsStandIn:
    def __init__(self):
        self.users = {}  # user name → Ed25519PublicKey
        self.known = set()  # ids that exist on the server without this run (agents, units, …)
        self.processes = []  # {"id", "name", "note"}
        self.resources = {}  # id → {"id", "name", "trackingIdentifier"}
        self.events = []  # {"id", "note", "action", "resourceInventoriedAs", "variables"}
        self.faults = {}  # n → mode
        self.mutations = 0
        self.bad_signatures = 0
        self.victim = None  # pid to SIGKILL for the `kill` fault
        self.victim_known = threading.Event()
        self.lock = threading.Lock()
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                standin._handle(self, body)

            def log_message(self, *args):
                pass

        class Server(http.server.HTTPServer):
            def handle_error(self, request, client_address):
                # A killed exporter resets its connection: expected, not worth a traceback.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- set-up -------------------------------------------------------------------------------

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def add_user(self, name, public_key_bytes):
        self.users[name] = Ed25519PublicKey.from_public_bytes(public_key_bytes)

    def add_resource(self, server_id, name):
        self.resources[server_id] = {"id": server_id, "name": name, "trackingIdentifier": None}

    def set_victim(self, pid):
        self.victim = pid
        self.victim_known.set()

    # --- requests -----------------------------------------------------------------------------

    def _answer(self, handler, status, payload):
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _handle(self, handler, body):
        with self.lock:
            user = handler.headers.get("zenflows-user")
            sign = handler.headers.get("zenflows-sign")
            if not user or not sign:
                return self._answer(handler, 200, {"errors": [{"message": (
                    "couldn't aunthenticate: zenflows-user and/or zenflows-sign headers are "
                    "missing")}]})
            if not self._verifies(user, sign, body):
                self.bad_signatures += 1
                return self._answer(handler, 200, {"errors": [{"message": "authentication error."}]})
            request = json.loads(body)
            query = request["query"]
            variables = request.get("variables") or {}
            field = re.search(r"\{\s*(\w+)", query).group(1)
            if field in ("economicEvents", "processes"):
                return self._answer(handler, 200, self._page(field, variables.get("after"),
                                                             variables.get("first")))
            if field not in ("createProcess", "createEconomicEvent"):
                return self._answer(handler, 200, {"errors": [{"message": f"unknown {field}"}]})

            self.mutations += 1
            fault = self.faults.get(self.mutations)
            if fault == "refuse":
                return self._answer(handler, 200, {"errors": [{"message": "refused (fault)"}],
                                                   "data": None})
            if fault == "http500":
                return self._answer(handler, 500, {"message": "internal error (fault)"})
            try:
                answer = (self._create_process(variables) if field == "createProcess"
                          else self._create_event(variables))
            except Refusal as refusal:
                return self._answer(handler, 200, {"errors": [{"message": str(refusal)}],
                                                   "data": None})
            if fault == "create_then_drop":
                handler.close_connection = True
                handler.connection.shutdown(2)
                return None
            if fault == "kill":
                # Stopped while it waits in the kernel for this answer, the exporter runs no
                # more of its code: it dies with the answer sent but unread (the worst case).
                if not self.victim_known.wait(60):
                    raise RuntimeError("the test never said which process to kill")
                os.kill(self.victim, signal.SIGSTOP)
            self._answer(handler, 200, {"data": answer})
            if fault == "kill":
                os.kill(self.victim, signal.SIGKILL)
            return None

    def _verifies(self, user, sign, body):
        key = self.users.get(user)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(sign, validate=True), compact_ascii(body))
            return True
        except (InvalidSignature, ValueError):
            return False

    def _page(self, field, after, first):
        rows = self.events if field == "economicEvents" else self.processes
        if after is not None and not ULID_RE.match(after):
            return {"errors": [{"message": "after: is invalid"}]}
        size = MAX_PAGE if first is None else min(first, MAX_PAGE)
        rows = sorted((r for r in rows if after is None or r["id"] > after), key=lambda r: r["id"])
        page, more = rows[:size], len(rows) > size
        edges = []
        for r in page:
            node = {"id": r["id"], "note": r["note"]}
            if field == "economicEvents":
                res = r["resourceInventoriedAs"]
                node["resourceInventoriedAs"] = {"id": res} if res else None
            edges.append({"cursor": r["id"], "node": node})
        return {"data": {field: {"edges": edges, "pageInfo": {
            "hasNextPage": more, "endCursor": page[-1]["id"] if page else None}}}}

    # --- the mutations --------------------------------------------------------------------------

    def _id(self, params, field, required=False):
        value = params.get(field)
        if value is None:
            if required:
                raise Refusal(f"{field}: can't be blank")
            return None
        if not isinstance(value, str) or not ULID_RE.match(value):
            raise Refusal(f"{field}: is invalid")
        return value

    def _create_process(self, variables):
        params = variables.get("process") or {}
        if not isinstance(params.get("name"), str) or not params["name"]:
            raise Refusal("name: can't be blank")
        process = {"id": new_ulid(), "name": params["name"], "note": params.get("note")}
        self.processes.append(process)
        return {"createProcess": {"process": {"id": process["id"]}}}

    def _create_event(self, variables):
        e = variables.get("event") or {}
        new_resource = variables.get("newInventoriedResource")
        action = e.get("action")
        if action not in ("use", "consume", "produce", "raise", "lower", "work", "cite",
                          "accept", "modify", "pickup", "dropoff", "move", "transfer",
                          "transferCustody", "transferAllRights", "deliverService"):
            raise Refusal(f"action: is invalid: {action!r}")
        self._id(e, "provider", required=True)
        self._id(e, "receiver", required=True)
        process_ids = {p["id"] for p in self.processes} | self.known
        for field, actions in (("inputOf", ("use", "consume", "accept", "work", "cite")),
                               ("outputOf", ("produce", "modify"))):
            pid = self._id(e, field, required=action in actions)
            if pid is not None and pid not in process_ids:
                raise Refusal(f"{field}: does not exist")
        resource = self._id(e, "resourceInventoriedAs")
        if resource is not None and resource not in self.resources:
            raise Refusal("resourceInventoriedAs: does not exist")
        spec = self._id(e, "resourceConformsTo")
        if action in ("consume", "lower") and resource is None:
            raise Refusal(f"resourceInventoriedAs: is required for {action}")
        if action in ("produce", "raise"):
            if resource is not None and (spec is not None or new_resource):
                raise Refusal("resourceInventoriedAs and resourceConformsTo are mutually exclusive")
            if resource is None:
                if spec is None:
                    raise Refusal("resourceConformsTo: is required when creating a resource")
                if not new_resource or not new_resource.get("name"):
                    raise Refusal("newInventoriedResource.name: can't be blank")
        if action in ("use", "work") and not isinstance(e.get("effortQuantity"), dict):
            raise Refusal(f"effortQuantity: is required for {action}")
        if action in ("use", "cite") and (resource is None) == (spec is None):
            raise Refusal("exactly one of resourceInventoriedAs and resourceConformsTo")
        for quantity in ("resourceQuantity", "effortQuantity"):
            if quantity in e:
                self._id(e[quantity], "hasUnit", required=True)
        if action in ("produce", "raise") and resource is None:
            resource = new_ulid()
            self.resources[resource] = {"id": resource, "name": new_resource["name"],
                                        "trackingIdentifier": new_resource.get("trackingIdentifier")}
        event = {"id": new_ulid(), "note": e.get("note"), "action": action,
                 "resourceInventoriedAs": resource, "variables": variables}
        self.events.append(event)
        return {"createEconomicEvent": {"economicEvent": {
            "id": event["id"],
            "resourceInventoriedAs": {"id": resource} if resource else None}}}
