# SPDX-License-Identifier: AGPL-3.0-or-later
"""`reflow-ingest` without a config, or with one whose store does not exist yet: an error that
names the path and says what to do, never a silent default that creates files (issue 15)."""

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import node_harness as nh

DEFAULT_CONFIG = Path("/etc/reflow-ingest/reflow-ingest.toml")
DEFAULT_DATA_DIR = Path("/var/lib/reflow-ingest")

# Every command that opens the store, with the arguments it needs besides --config.
STORE_COMMANDS = [
    ["run"],
    ["device", "add", "dev-a", "--jwk", "-"],
    ["device", "list"],
    ["device", "revoke", "dev-a"],
    ["events"],
    ["rejections"],
    ["stats"],
    ["trace", "spool:pla-01"],
    ["log", "checkpoint"],
    ["export", "--format", "vf-graphql"],
]
# The commands that only read (and revoke, which needs a registered device): they must never
# create a store.
QUERY_COMMANDS = [c for c in STORE_COMMANDS if c[0] != "run" and c[:2] != ["device", "add"]]


def files_under(path):
    return sorted(str(p) for p in Path(path).rglob("*"))


class MissingConfigTest(unittest.TestCase):

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-it-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def test_every_store_command_refuses_a_missing_config_naming_it_and_creates_nothing(self):
        missing = self.tmp / "etc" / "reflow-ingest.toml"
        for command in STORE_COMMANDS:
            with self.subTest(command=command):
                r = nh.run_ingest([*command, "--config", missing], input_text="{}\n")
                self.assertEqual(r.returncode, 1, f"stdout {r.stdout!r} stderr {r.stderr!r}")
                self.assertIn(str(missing), r.stderr)
                self.assertIn("--config", r.stderr)
                self.assertEqual(files_under(self.tmp), [])

    def test_the_default_config_path_is_no_exception(self):
        store = DEFAULT_DATA_DIR / "ingest.db"
        if DEFAULT_CONFIG.exists() or store.exists():
            self.skipTest(f"{DEFAULT_CONFIG} or {store} exists on this machine")
        dir_existed = DEFAULT_DATA_DIR.exists()
        try:
            for command in QUERY_COMMANDS:
                with self.subTest(command=command):
                    r = nh.run_ingest(command)
                    self.assertEqual(r.returncode, 1, f"stdout {r.stdout!r} stderr {r.stderr!r}")
                    self.assertIn(str(DEFAULT_CONFIG), r.stderr)
                    self.assertFalse(store.exists(), f"{command} created {store}")
        finally:  # only the old code leaves something behind: remove it
            for leftover in DEFAULT_DATA_DIR.glob("ingest.db*"):
                leftover.unlink()
            if not dir_existed and DEFAULT_DATA_DIR.exists():
                shutil.rmtree(DEFAULT_DATA_DIR)


class MissingStoreTest(unittest.TestCase):

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-it-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.data_dir = self.tmp / "data"
        self.config = self.tmp / "ingest.toml"
        self.config.write_text(nh.ingest_config_text(data_dir=self.data_dir,
                                                     url="mqtt://127.0.0.1:1883"))

    def test_query_commands_never_create_a_store(self):
        store = self.data_dir / "ingest.db"
        for command in QUERY_COMMANDS:
            with self.subTest(command=command):
                r = nh.run_ingest([*command, "--config", self.config])
                self.assertEqual(r.returncode, 1, f"stdout {r.stdout!r} stderr {r.stderr!r}")
                self.assertIn(f"no store at {store}", r.stderr)
                self.assertIn("reflow-ingest run", r.stderr)
                self.assertFalse(self.data_dir.exists(), f"{command} created {self.data_dir}")

    def test_device_add_still_creates_the_store_before_the_first_run(self):
        jwk = ('{"kty":"OKP","crv":"Ed25519",'
               '"x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}')
        cli = nh.IngestCli(self.config)
        cli.device_add("dev-a", jwk)
        self.assertTrue((self.data_dir / "ingest.db").exists())
        self.assertIn("dev-a", cli.ok("device", "list").stdout)
        self.assertEqual(cli.ok("stats").returncode, 0)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"),
                     "needs root and setpriv (util-linux) to run a command as another user")
class GroupReaderTest(unittest.TestCase):
    """The package makes the store readable by the reflow-ingest group (data_dir 0750, files
    0640): a member queries it without write access; anyone else is told what to do."""

    NOBODY = 65534

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="reflow-it-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.tmp.chmod(0o755)
        self.data_dir = self.tmp / "data"
        self.config = self.tmp / "ingest.toml"
        self.config.write_text(nh.ingest_config_text(data_dir=self.data_dir,
                                                     url="mqtt://127.0.0.1:1883"))
        self.config.chmod(0o644)
        jwk = ('{"kty":"OKP","crv":"Ed25519",'
               '"x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}')
        nh.IngestCli(self.config).device_add("dev-a", jwk)  # as the owner (root here)

    def share_with_group(self, gid):
        os.chown(self.data_dir, 0, gid)
        self.data_dir.chmod(0o750)
        for path in self.data_dir.iterdir():
            os.chown(path, 0, gid)
            path.chmod(0o640)

    def test_a_group_member_queries_the_store_it_cannot_write(self):
        self.share_with_group(self.NOBODY)
        before = files_under(self.data_dir)
        for command in (["device", "list"], ["stats"], ["events"], ["rejections"]):
            with self.subTest(command=command):
                r = h_run_as(self.NOBODY, self.NOBODY, [*command, "--config", self.config])
                self.assertEqual(r.returncode, 0, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        self.assertIn("dev-a", h_run_as(self.NOBODY, self.NOBODY,
                                        ["device", "list", "--config", self.config]).stdout)
        self.assertEqual(files_under(self.data_dir), before)

    def test_someone_outside_the_group_is_told_to_use_the_service_user_or_the_group(self):
        self.share_with_group(0)
        r = h_run_as(self.NOBODY, self.NOBODY, ["stats", "--config", self.config])
        self.assertEqual(r.returncode, 1, f"stdout {r.stdout!r} stderr {r.stderr!r}")
        self.assertIn("sudo -u reflow-ingest reflow-ingest", r.stderr)
        self.assertIn("reflow-ingest group", r.stderr)


def h_run_as(uid, gid, args):
    """`reflow-ingest ARGS` as uid:gid with no supplementary groups."""
    return nh.run_ingest_as(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"],
                            args)


if __name__ == "__main__":
    unittest.main()
