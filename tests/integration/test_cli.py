# SPDX-License-Identifier: AGPL-3.0-or-later
"""The CLI contract (notes/cli.md): keygen, emit's per-line answers, exit codes, verify."""

import json
import os
import shutil
import stat
import subprocess
import tempfile
import unittest
from pathlib import Path

from jwcrypto import jwk, jws

import harness as h
import node_harness as nh


class KeygenTest(h.AgentTestCase):

    def test_keygen_writes_private_file_and_prints_thumbprinted_jwk(self):
        path = self.tmp / "other.key"
        r = h.run_cli(["keygen", "--key", str(path)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1, f"stdout {r.stdout!r}")
        printed = json.loads(lines[0])
        self.assertEqual(printed["kty"], "OKP")
        self.assertEqual(printed["crv"], "Ed25519")
        self.assertEqual(len(h.b64url_decode(printed["x"])), 32)
        key = jwk.JWK(kty=printed["kty"], crv=printed["crv"], x=printed["x"])
        self.assertEqual(printed["kid"], key.thumbprint())
        self.assertNotEqual(printed["x"], json.loads(self.jwk_json)["x"], "every key must be new")

        before = path.read_bytes()
        again = h.run_cli(["keygen", "--key", str(path)])
        self.assertNotEqual(again.returncode, 0, "keygen must refuse an existing file")
        self.assertIn("exist", again.stderr.lower())
        self.assertEqual(path.read_bytes(), before, "the existing key must be untouched")


class PublicKeyFileTest(unittest.TestCase):
    """The device's public JWK travels to the node as a file: `keygen` writes it beside the key
    (KEY with its extension replaced by .jwk, mode 0644), and `key show` derives it again from the
    private key at any time (issue 15)."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-it-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def test_keygen_writes_the_public_jwk_and_key_show_prints_it_after_it_is_lost(self):
        key = self.tmp / "device.key"
        jwk_file = self.tmp / "device.jwk"
        # Under the service's UMask=0077 the public file must still be world-readable.
        proc = subprocess.run([h.agent_binary(), "keygen", "--key", str(key)], capture_output=True,
                              text=True, timeout=h.WAIT_S, preexec_fn=lambda: os.umask(0o077))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        printed = json.loads(proc.stdout)
        self.assertEqual(stat.S_IMODE(os.stat(jwk_file).st_mode), 0o644)
        self.assertEqual(json.loads(jwk_file.read_text()), printed)
        self.assertIn(str(jwk_file), proc.stderr)

        jwk_file.unlink()
        shown = h.run_cli(["key", "show", "--key", str(key)])
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertEqual(json.loads(shown.stdout), printed)
        self.assertFalse(jwk_file.exists(), "key show only prints")

        config = self.tmp / "agent.toml"
        config.write_text(h.config_text(device_id="dev-k", key_file=key, data_dir=self.tmp / "d",
                                        url="mqtt://127.0.0.1:1883"))
        by_config = h.run_cli(["key", "show", "--config", str(config)])
        self.assertEqual(by_config.returncode, 0, by_config.stderr)
        self.assertEqual(json.loads(by_config.stdout), printed)

        again = h.run_cli(["keygen", "--key", str(key)])
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("reflow-agent key show", again.stderr)

    def test_key_show_names_a_missing_key_file(self):
        r = h.run_cli(["key", "show", "--key", str(self.tmp / "nope.key")])
        self.assertEqual(r.returncode, 1)
        self.assertIn(str(self.tmp / "nope.key"), r.stderr)
        self.assertEqual(r.stdout, "")

    def test_enroll_next_steps_name_device_add_ca_enroll_and_enroll_bundle(self):
        key = self.tmp / "device.key"
        self.assertEqual(h.run_cli(["keygen", "--key", str(key)]).returncode, 0)
        config = self.tmp / "agent.toml"
        config.write_text(h.config_text(device_id="fablab-mk4-01", key_file=key,
                                        data_dir=self.tmp / "d", url="mqtt://127.0.0.1:1883"))
        r = h.run_cli(["enroll", "--config", str(config), "--out", str(self.tmp / "x.csr")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("reflow-ingest device add fablab-mk4-01 --jwk device.jwk", r.stderr)
        self.assertIn(str(self.tmp / "device.jwk"), r.stderr)
        self.assertIn(f"reflow-agent key show --config {config}", r.stderr)
        self.assertIn("reflow-ingest ca enroll x.csr --url mqtts://NODE:8883 --out "
                      "fablab-mk4-01.enrol.json", r.stderr)
        self.assertIn(f"reflow-agent enroll --config {config} fablab-mk4-01.enrol.json", r.stderr)


class DemoTest(unittest.TestCase):
    """The README's first command ends with `reflow-agent demo`: it must work as shown."""

    def test_demo_delivers_every_event_to_a_real_reflow_ingest(self):
        r = h.run_cli(["demo", "--jobs", "2"], timeout=120)
        self.assertEqual(r.returncode, 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        self.assertIn("reflow-ingest stored 6 of 6 events", r.stdout)
        self.assertIn("chain: intact), 0 rejected", r.stdout)
        self.assertIn("demo OK", r.stdout)
        for seq in range(1, 7):
            self.assertRegex(r.stdout, rf"seq +{seq}  stored by the node ")


class DemoWithDriverTest(unittest.TestCase):
    """`demo --drivers FILE` runs any driver instead of the sim printer: here the moonraker driver
    against a replayed Moonraker (recorded history of one completed job), end to end through the
    real agent, broker and reflow-ingest."""

    def test_moonraker_job_reaches_the_node_signed_with_its_quantities(self):
        tmp = Path(tempfile.mkdtemp(prefix="reflow-it-demo-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        case = h.REPO_ROOT / "drivers" / "moonraker" / "testdata" / "completed"
        control = tmp / "http"
        control.mkdir()
        (control / "script").write_text(f"{case / 'script.json'}\n1\n")
        server = subprocess.Popen(["/usr/bin/python3", str(h.REPO_ROOT / "tests" / "support" /
                                                          "http_replay.py"), str(control), "0"])
        self.addCleanup(server.wait)
        self.addCleanup(server.kill)
        port = h.wait_for(lambda: (control / "port").exists() and
                          (control / "port").read_text().strip(), "the replay server's port")
        drivers = tmp / "drivers.toml"
        drivers.write_text(
            "[[driver]]\nkind = \"moonraker\"\nname = \"voron\"\n"
            f"url = \"http://127.0.0.1:{port}\"\nresource = \"printer:voron-01\"\n"
            "filament = \"spool:pla-black-01\"\npoll_interval = \"1s\"\nbackfill = \"3650d\"\n")
        r = h.run_cli(["demo", "--drivers", str(drivers), "--events", "3", "--timeout", "60"],
                      timeout=180)
        self.assertEqual(r.returncode, 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        self.assertIn("reflow-ingest stored 3 of 3 events", r.stdout)
        expected = [json.loads(line) for line in
                    (case / "expected.jsonl").read_text().splitlines() if line.strip()]
        for seq, event in enumerate(expected, start=1):
            q = event.get("effortQuantity") or event.get("resourceQuantity")
            self.assertRegex(r.stdout, rf"seq +{seq}  stored by the node .* {event['action']} ")
            self.assertIn(f"{q['hasNumericalValue']:.4g} {q['hasUnit']}", r.stdout)


class DriversTest(unittest.TestCase):

    def test_drivers_lists_sim_and_describe_prints_its_keys(self):
        listed = h.run_cli(["drivers"])
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r"(?m)^sim\s")
        described = h.run_cli(["drivers", "describe", "sim"])
        self.assertEqual(described.returncode, 0, described.stderr)
        for key in ("kind", "name", "printer", "filament", "part", "jobs", "job_duration",
                    "filament_grams"):
            self.assertRegex(described.stdout, rf"(?m)^{key} = ", f"key {key} not described")
        unknown = h.run_cli(["drivers", "describe", "no-such-kind"])
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no-such-kind", unknown.stderr)


class EmptyValueTest(unittest.TestCase):
    """An empty option value is refused before anything runs: `events --device ""` read as "no
    filter" would answer about every device (issue 14, item 14)."""

    def test_both_programs_refuse_empty_option_values_naming_the_option(self):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "node"
            config = Path(tmp) / "ingest.toml"
            config.write_text(f'[ingest]\ndata_dir = "{data_dir}"\n')
            for args in (["events", "--device", ""], ["events", "--action", ""],
                         ["events", "--since", ""], ["rejections", "--device", ""],
                         ["export", "--device", ""]):
                r = nh.run_ingest([*args, "--config", config])
                self.assertNotEqual(r.returncode, 0, f"{args}: {r.stdout}")
                self.assertIn(f"{args[1]}: is empty", r.stderr, args)
                self.assertFalse(data_dir.exists(), f"{args} opened the store")
            r = h.run_cli(["verify", "--device", ""], input_text="")
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn("--device: is empty", r.stderr)
            r = h.run_cli(["status", "--config", ""])
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn("--config: is empty", r.stderr)


class EmitTest(h.AgentTestCase):

    def test_malformed_lines_get_numbered_errors_and_good_lines_are_delivered(self):
        agent = self.start_agent()
        good = h.emit_lines(4)
        unknown_action = dict(h.make_fields(0), action="fly")
        negative = h.make_fields(1)
        negative["resourceQuantity"] = {"hasNumericalValue": -12.5, "hasUnit": "gram"}
        no_effort = h.make_fields(0)
        del no_effort["effortQuantity"]
        agent_field = dict(h.make_fields(2), seq=5)
        lines = [
            good[0],                      # 1
            "this is not json",           # 2
            "",                           # 3 blank: counted, not answered
            json.dumps(unknown_action),   # 4
            good[1],                      # 5
            json.dumps(negative),         # 6
            json.dumps(no_effort),        # 7
            json.dumps(agent_field),      # 8
            good[2],                      # 9
            "   ",                        # 10 blank
            good[3],                      # 11
        ]
        r = self.emit(lines)
        self.assertEqual(r.returncode, 1, f"stderr {r.stderr!r}")
        out = r.json_lines()
        self.assertEqual(len(out), 9, f"one answer per non-blank line: {r.stdout!r}")
        errors = {o["line"]: o["error"] for o in out if "error" in o}
        self.assertEqual(sorted(errors), [2, 4, 6, 7, 8], f"stdout {r.stdout!r}")
        for o in out:
            if "error" in o:
                self.assertEqual(set(o), {"error", "line"})
        self.assertIn("action", errors[4])
        self.assertIn("hasNumericalValue", errors[6])
        self.assertIn("effortQuantity", errors[7])
        self.assertIn("seq", errors[8])
        committed = [o for o in out if "seq" in o]
        self.assertEqual([o["seq"] for o in committed], [1, 2, 3, 4])
        kinds = [("error" if "error" in o else "ok") for o in out]
        self.assertEqual(kinds, ["ok", "error", "error", "ok", "error", "error", "error", "ok", "ok"],
                         "answers must come in input order")

        stream = agent.status()["stream"]
        self.node.wait_contiguous(stream, 4)
        stored = self.node.stored(stream)
        for o, line in zip(committed, good):
            self.assertEqual(stored[o["seq"]].id, o["id"])
            self.assertEqual(stored[o["seq"]].event["note"], json.loads(line)["note"])
        self.assert_node_clean()

    def test_emit_accepts_but_warns_about_an_event_zenflows_would_refuse(self):
        agent = self.start_agent()
        fields = h.make_fields(1)  # a consume of a spool, input of a job
        del fields["inputOf"]      # valid in PROTOCOL v1, refused by zenflows
        self.emit_ok([json.dumps(fields), json.dumps(h.make_fields(4))])
        status = agent.status()
        self.assertEqual(status["zenflows_warnings"], 1, status)
        self.assertEqual(status["zenflows_last_warning"],
                         'emit/control: inputOf: required for action "consume" (zenflows, '
                         'valueflows.md §2c: a consume is an input of a process)')
        self.assertIn('would refuse at export', agent.log_text())
        self.assertIn('inputOf: required for action "consume"', agent.log_text())
        r = h.run_cli(["status", "--config", str(self.config_path)])
        self.assertIn("zenflows:        1 events accepted that zenflows would refuse at export",
                      r.stdout)

    def test_status_and_emit_exit_3_when_daemon_not_running(self):
        r = h.run_cli(["status", "--config", str(self.config_path), "--json"])
        self.assertEqual(r.returncode, 3, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        r = h.run_cli(["status", "--config", str(self.config_path)])
        self.assertEqual(r.returncode, 3)
        r = self.emit(h.emit_lines(1))
        self.assertEqual(r.returncode, 3, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        self.assertTrue(r.stderr.strip(), "emit must say on stderr that the daemon is not running")

        agent = self.start_agent()
        agent.kill()  # a stale control socket left by a crash is "not running" too
        r = h.run_cli(["status", "--config", str(self.config_path), "--json"])
        self.assertEqual(r.returncode, 3)
        self.assertEqual(self.emit(h.emit_lines(1)).returncode, 3)


class VerifyTest(h.AgentTestCase):

    def setUp(self):
        super().setUp()
        self.jwk_file = self.tmp / "device.jwk"
        self.jwk_file.write_text(self.jwk_json + "\n")

    def verify(self, lines, jwk_file=None):
        r = h.run_cli(["verify", "--jwk", str(jwk_file or self.jwk_file)],
                      input_text="".join(line + "\n" for line in lines))
        return r, r.json_lines()

    def exported(self, count):
        self.node.pause()  # nothing acked, nothing pruned: export has every event
        agent = self.start_agent()
        acked = self.emit_ok(h.emit_lines(count))
        r = h.run_cli(["export", "--config", str(self.config_path)])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [line for line in r.stdout.splitlines() if line.strip()]
        self.assertEqual(len(lines), count)
        for line, (seq, event_id) in zip(lines, acked):
            env = h.verify_envelope(line, self.key, device=h.DEVICE_ID)
            self.assertEqual((env.seq, env.id), (seq, event_id))
        return agent, lines, acked

    def test_export_verifies_and_tampering_is_detected(self):
        _, lines, acked = self.exported(5)

        r, out = self.verify(lines)
        self.assertEqual(r.returncode, 0, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        self.assertEqual(len(out), 5)
        for number, (o, (seq, event_id)) in enumerate(zip(out, acked), start=1):
            self.assertEqual(o["line"], number)
            self.assertIs(o["ok"], True, o)
            self.assertEqual((o["seq"], o["id"]), (seq, event_id))

        tampered = json.loads(lines[2])
        event = json.loads(h.b64url_decode(tampered["payload"]))
        event["note"] = "changed after signing"
        tampered["payload"] = h.b64url(json.dumps(event, separators=(",", ":")).encode())
        r, out = self.verify(lines[:2] + [json.dumps(tampered)] + lines[3:])
        self.assertEqual(r.returncode, 1)
        self.assertEqual([o["ok"] for o in out], [True, True, False, True, True], r.stdout)
        self.assertEqual(out[2]["line"], 3)
        self.assertTrue(out[2]["error"])

        r, out = self.verify(lines[:2] + lines[3:])
        self.assertEqual(r.returncode, 0, f"a gap is not a chain break: {r.stdout}")
        self.assertEqual([o["seq"] for o in out], [1, 2, 4, 5])

    def test_verify_accepts_jwcrypto_envelopes_and_reports_chain_break(self):
        private = jwk.JWK.generate(kty="OKP", crv="Ed25519")
        jwk_file = self.tmp / "jwcrypto.jwk"
        jwk_file.write_text(private.export_public() + "\n")
        stream = h.new_ulid()
        events, lines, prev = [], [], None
        for seq in range(1, 4):
            event = h.make_event(stream, seq, prev, i=seq)
            line = h.sign_event(private, event)
            outer = json.loads(line)
            prev = h.chain_hash(outer["protected"], outer["payload"])
            events.append(event)
            lines.append(line)
        r, out = self.verify(lines, jwk_file)
        self.assertEqual(r.returncode, 0, f"envelopes made by jwcrypto must verify: {r.stdout} {r.stderr}")
        self.assertEqual([o["seq"] for o in out], [1, 2, 3])

        first = json.loads(lines[0])
        swapped = dict(events[2], prev=h.chain_hash(first["protected"], first["payload"]))
        r, out = self.verify(lines[:2] + [h.sign_event(private, swapped)], jwk_file)
        self.assertEqual(r.returncode, 1)
        self.assertEqual([o["ok"] for o in out], [True, True, False], r.stdout)
        self.assertIn("chain break", out[2]["error"])

        r, out = self.verify(lines, self.jwk_file)
        self.assertEqual(r.returncode, 1, "another device's key must not verify these")
        self.assertTrue(all(o["ok"] is False for o in out), r.stdout)

    def test_verify_judges_every_line_and_checks_the_device(self):
        # Issue 14 item 6: a payload whose member name is not UTF-8 used to end the run with a
        # JSON exception and no line number; every line gets a verdict now.
        private = jwk.JWK.generate(kty="OKP", crv="Ed25519")
        jwk_file = self.tmp / "jwcrypto.jwk"
        jwk_file.write_text(private.export_public() + "\n")

        def sign_bytes(payload):
            header = json.dumps({"alg": "EdDSA", "kid": private.thumbprint(), "typ": h.HEADER_TYP},
                                separators=(",", ":"))
            token = jws.JWS(payload)
            token.add_signature(private, alg="EdDSA", protected=header)
            outer = json.loads(token.serialize())
            return json.dumps({k: outer[k] for k in ("protected", "payload", "signature")},
                              separators=(",", ":"))

        stream = h.new_ulid()
        good = [h.sign_event(private, h.make_event(stream, 1, None, i=1))]
        bad_name = json.dumps(h.make_event(h.new_ulid(), 1, None, i=2),
                              separators=(",", ":")).encode().replace(b'"note"', b'"n\xffte"')
        repeated = json.dumps(h.make_event(h.new_ulid(), 1, None, i=3),
                              separators=(",", ":")).encode().replace(b'"v":1,', b'"v":1,"v":1,')
        other = h.make_event(h.new_ulid(), 1, None, i=4, device="someone-else")
        lines = good + [sign_bytes(bad_name), "\xff{", sign_bytes(repeated),
                        h.sign_event(private, other)]
        r, out = self.verify(lines, jwk_file)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual([o["line"] for o in out], [1, 2, 3, 4, 5], r.stdout + r.stderr)
        self.assertEqual([o["ok"] for o in out], [True, False, False, False, True], r.stdout)
        self.assertIn("UTF-8", out[1]["error"])
        self.assertIn('member "v" appears twice', out[3]["error"])

        r = h.run_cli(["verify", "--jwk", str(jwk_file), "--device", h.DEVICE_ID],
                      input_text=good[0] + "\n" + h.sign_event(private, other) + "\n")
        out = r.json_lines()
        self.assertEqual(r.returncode, 1)
        self.assertEqual([o["ok"] for o in out], [True, False], r.stdout)
        self.assertIn('the event names "someone-else"', out[1]["error"])



class MembersTest(unittest.TestCase):
    """`members add --last-unknown` enrols the card a machine saw (its keyed hash, from the
    driver's state directory) into the members file, keeping its comments; `members list` shows
    members and the cards still unknown (issue 17)."""

    HASH_A = "kX3v" + "A" * 39
    HASH_B = "Zz09" + "B" * 38 + "E"  # 32 bytes: the last digit has 2 zero bits

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.config = self.dir / "agent.toml"
        self.members = self.dir / "members.toml"
        tables = "".join(
            f'[[driver]]\nkind = "mcu"\nname = "{name}"\npath = "/dev/null"\n'
            f'resource = "machine:{name}"\n[driver.badge]\nsource = "mcu"\n'
            for name in ("laser", "saw"))
        self.config.write_text(
            f'[agent]\ndevice_id = "lab-01"\nkey_file = "device.key"\ndata_dir = "data"\n'
            f'[members]\nfile = "members.toml"\nprovider = "org:fablab"\n{tables}')
        self.members.write_text('# who may use what\n[[member]]\nhandle = "bob"  # since 2025\n'
                                f'agent = "person:bob"\nbadges = ["{self.HASH_B}"]\n')

    def tearDown(self):
        self.tmp.cleanup()

    def unknown_at(self, machine, badge):
        state = self.dir / "data" / "drivers" / machine
        state.mkdir(parents=True, exist_ok=True)
        (state / "last-unknown.json").write_text(json.dumps(
            {"version": 1, "hash": badge, "seen_at": "2026-01-01T10:00:00.000Z"}))

    def members_cli(self, *args):
        return h.run_cli(["members", *args, "--config", str(self.config)])

    def test_enrols_the_last_unknown_card_keeping_comments(self):
        nothing = self.members_cli("add", "ada", "--agent", "person:ada", "--last-unknown")
        self.assertEqual(nothing.returncode, 1)
        self.assertIn("no machine has seen an unknown card", nothing.stderr)

        self.unknown_at("laser", self.HASH_A)
        listed = self.members_cli("list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r"(?m)^bob\s+person:bob\s+1\s+-$")
        self.assertIn(f"last unknown card at laser: {self.HASH_A}", listed.stdout)

        added = self.members_cli("add", "ada", "--agent", "person:ada", "--last-unknown")
        self.assertEqual(added.returncode, 0, added.stderr)
        text = self.members.read_text()
        self.assertTrue(text.startswith("# who may use what\n"), text)
        self.assertIn('handle = "bob"  # since 2025', text)
        self.assertIn(f'badges = ["{self.HASH_A}"]', text)
        self.assertIn('machines = ["laser"]', text)
        listed = self.members_cli("list")
        self.assertRegex(listed.stdout, r"(?m)^ada\s+person:ada\s+1\s+laser$")
        self.assertNotIn("last unknown", listed.stdout)  # enrolled: no longer unknown

    def test_refuses_raw_ids_ambiguous_machines_and_someone_elses_badge(self):
        raw = self.members_cli("add", "eve", "--agent", "person:eve", "--badge", "0415A3B2C1")
        self.assertEqual(raw.returncode, 1)
        self.assertIn("a raw card id is never written", raw.stderr)
        taken = self.members_cli("add", "eve", "--agent", "person:eve", "--badge", self.HASH_B)
        self.assertEqual(taken.returncode, 1)
        self.assertIn("already \"bob\"'s", taken.stderr)
        self.unknown_at("laser", self.HASH_A)
        self.unknown_at("saw", "Qq11" + "C" * 38 + "Q")
        both = self.members_cli("add", "eve", "--agent", "person:eve", "--last-unknown")
        self.assertEqual(both.returncode, 1)
        self.assertIn("add --machine NAME", both.stderr)
        picked = self.members_cli("add", "bob", "--agent", "person:bob", "--last-unknown",
                                  "--machine", "saw")
        self.assertEqual(picked.returncode, 0, picked.stderr)
        self.assertIn(f'"{self.HASH_B}", "Qq11', self.members.read_text())
        self.assertIn('machines = ["saw"]', self.members.read_text())

if __name__ == "__main__":
    unittest.main()
