# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Cortex-M image end to end (issue 18): the netduinoplus2 build of firmware/stm32 runs under
`qemu-system-arm -M netduinoplus2` (an emulated STM32F405), reads its clamp samples from a file
this test synthesises, through ARM semihosting, and talks over its emulated USART1 to the real
`reflow-agent` with the `mcu` driver, whose events go through a real Mosquitto to a real
`reflow-ingest run` that verifies and stores them. Covered: a session arriving as verified use +
consume, garbage on the line both ways, the agent SIGKILLed mid-session (nothing lost, nothing
twice) and the board reset mid-session (a new boot from the same boot counter file; only the open
session lost).

QEMU's USART1 is a Unix socket (`-chardev socket`); the test relays it to a pseudo-terminal that
the agent opens as its serial port, as it would the Pi's UART, and can put garbage on the line in
either direction. The board's log (its semihosting console, QEMU's standard error) says what it
sent, so nothing sleeps: every wait polls observable state with a bound. The emulated clocks run
at real-time speed, so sessions here last a few seconds.

Skipped (ctest SKIP_REGULAR_EXPRESSION, not passed) when qemu-system-arm or the image is missing:
the image needs Debian's gcc-arm-none-eabi, picolibc-arm-none-eabi and
libstdc++-arm-none-eabi-picolibc (firmware/README.md)."""

import math
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import tty

import harness as h
import node_harness as nh
from test_mcu import DEVICE, assert_session, driver_toml

SAMPLE_RATE_HZ = 1000  # driver_toml's
UA_PER_COUNT = 10000
MID_RAIL = 2048


def image_path():
    return os.environ.get("REFLOW_FW_IMAGE") or str(
        h.REPO_ROOT / "build" / "firmware" / "stm32" / "reflow-fw-netduinoplus2.elf")


def samples(*sessions, total_ms):
    """ADC counts at SAMPLE_RATE_HZ as fw-samples.bin wants them (16-bit little-endian), timed
    from the board's config: a 50 Hz current of AMPS RMS during each (start_ms, length_ms, amps),
    the clamp's bias (mid-rail) elsewhere."""
    counts = []
    for i in range(total_ms * SAMPLE_RATE_HZ // 1000):
        t_ms = i * 1000 // SAMPLE_RATE_HZ
        value = MID_RAIL
        for start_ms, length_ms, amps in sessions:
            if start_ms <= t_ms < start_ms + length_ms:
                peak = amps * math.sqrt(2) * 1e6 / UA_PER_COUNT
                value = round(MID_RAIL + peak * math.sin(2 * math.pi * 50 * i / SAMPLE_RATE_HZ))
        counts.append(value)
    return struct.pack(f"<{len(counts)}H", *counts)


class Relay:
    """A pseudo-terminal for the agent, relayed byte for byte to QEMU's USART socket. Holds the
    slave side open itself, so the master never reads EIO while the agent is away."""

    def __init__(self, sock_path, link):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        link.symlink_to(os.ttyname(self.slave))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        h.wait_for(lambda: self._connect(sock_path), "QEMU's USART1 socket")
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connect(self, path):
        try:
            self.sock.connect(str(path))
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False

    def to_board(self, data):
        self.sock.sendall(data)

    def to_agent(self, data):
        os.write(self.master, data)

    def _run(self):
        try:
            while True:
                ready, _, _ = select.select([self.master, self.sock, self.stop_r], [], [])
                if self.stop_r in ready:
                    return
                if self.sock in ready:
                    data = self.sock.recv(4096)
                    if not data:
                        return  # QEMU ended: the board is off
                    os.write(self.master, data)
                if self.master in ready:
                    try:
                        self.sock.sendall(os.read(self.master, 4096))
                    except BlockingIOError:
                        pass
        except OSError:
            return  # either end went away mid-transfer: a board reset or the test's end

    def close(self):
        os.write(self.stop_w, b"x")
        self.thread.join(timeout=h.WAIT_S)
        for fd in (self.master, self.slave, self.stop_r, self.stop_w):
            os.close(fd)
        self.sock.close()


class McuQemuTest(nh.NodeTestCase):

    def setUp(self):
        super().setUp()
        self.qemu_binary = shutil.which("qemu-system-arm")
        if self.qemu_binary is None:
            self.skipTest("no qemu-system-arm (apt-get install qemu-system-arm)")
        if not os.path.isfile(image_path()):
            self.skipTest(f"no firmware image at {image_path()} (the build makes it when "
                          "arm-none-eabi-g++ is installed; or set REFLOW_FW_IMAGE)")
        self.board_dir = self.tmp / "board"  # QEMU's working directory: the semihosting files
        self.board_dir.mkdir()
        self.link = self.tmp / "ttyMCU"
        self.board_log = self.tmp / "board.log"
        self.qemu = None
        self.relay = None
        self.addCleanup(self._stop_board)

    def _stop_board(self):
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait(timeout=h.WAIT_S)
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    def start_board(self, *sessions, total_ms=30000):
        (self.board_dir / "fw-samples.bin").write_bytes(samples(*sessions, total_ms=total_ms))
        sock_path = self.tmp / "usart1.sock"
        args = [self.qemu_binary, "-M", "netduinoplus2", "-nographic", "-monitor", "none",
                "-semihosting-config", "enable=on,target=native",
                "-chardev", f"socket,id=usart1,path={sock_path},server=on,wait=off",
                "-serial", "chardev:usart1", "-kernel", image_path()]
        with open(self.board_log, "ab") as log:
            self.qemu = subprocess.Popen(args, cwd=self.board_dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        self.relay = Relay(sock_path, self.link)

    def board_says(self, text):
        return h.wait_for(lambda: text in self.board_log.read_text(errors="replace"),
                          f"the board's log says {text!r}")

    def start_node_and_agent(self, *sessions):
        self.start_plain_broker()
        dev = self.new_device(DEVICE)
        dev.config_path.write_text(dev.config_path.read_text() + driver_toml(self.link))
        self.start_ingest()
        self.start_board(*sessions)
        self.board_says("boot 1")
        return dev, self.start_device_agent(dev)

    def stored(self, dev):
        return [event for _, event in self.cli.events(dev.id)]

    def wait_stored(self, dev, n):
        return h.wait_for(lambda: len(self.stored(dev)) >= n and self.stored(dev),
                          f"the ingest stores {n} event(s) of {dev.id}")

    def saw_state(self, status):
        return [d for d in status["drivers"] if d["name"] == "saw"][0]["state"]

    def test_a_session_measured_in_the_emulator_arrives_verified_at_the_node(self):
        # 4 A for 5 s, from 2 s after the agent configured the board
        dev, agent = self.start_node_and_agent((2000, 5000, 4))
        events = self.wait_stored(dev, 2)
        assert_session(self, events, 5)
        self.assertTrue(all(e["inputOf"] == "mcu:saw:boot-1-session-1" for e in events), events)
        agent.wait_status(lambda s: s["last_seq"] == 2 and s["acked_seq"] == 2,
                          "the ingest's ack covers the two events")
        self.assertEqual(self.cli.rejections(dev.id), [], "the ingest rejected nothing")
        self.assertTrue(nh.chain_intact(self.cli.device_stats(dev.id)))
        self.board_says("0 unacked")  # the board forgot the session once the agent acked it
        status = agent.status()
        self.assertIn("configured", self.saw_state(status))
        self.assertIn("boot 1", self.saw_state(status))

    def test_garbage_on_the_line_is_skipped_both_ways(self):
        dev, agent = self.start_node_and_agent((2000, 5000, 4))
        self.board_says("configured at")
        noise = random.Random(18).randbytes(64)  # fixed: the same garbage on every run
        garbage = bytes(range(1, 200)) + b"\x00\xff\xfe\x00" + noise
        self.relay.to_board(garbage + b"\x00")
        self.relay.to_agent(garbage + b"\x00")
        self.board_says("sent seq 1 ")  # the session started, after the garbage
        self.relay.to_board(b"\x00" + garbage + b"\x00")
        self.relay.to_agent(b"\x00" + garbage + b"\x00")
        events = self.wait_stored(dev, 2)
        assert_session(self, events, 5)
        status = agent.wait_status(lambda s: s["acked_seq"] == s["last_seq"] == 2,
                                   "the ingest's ack covers the two events")
        self.assertNotIn("link errors 0,", self.saw_state(status))  # the agent counted them
        self.assertEqual(len(self.stored(dev)), 2)
        self.assertEqual(self.cli.rejections(dev.id), [])

    def test_agent_killed_mid_session_loses_nothing(self):
        dev, agent = self.start_node_and_agent((2000, 8000, 4))
        self.board_says("sent seq 1 ")  # the session started on the board
        agent.kill()  # SIGKILL: the Pi's power cut mid-session
        self.board_says("sent seq 2 ")  # it ended while nobody listened
        agent = self.start_device_agent(dev)
        events = self.wait_stored(dev, 2)
        assert_session(self, events, 8)
        agent.wait_status(lambda s: s["acked_seq"] == s["last_seq"] == 2,
                          "the ingest's ack covers the two events, and nothing more was made")
        self.assertEqual(len(self.stored(dev)), 2)
        self.assertEqual(self.cli.rejections(dev.id), [])

    def test_board_reset_mid_session_loses_only_the_open_session(self):
        dev, agent = self.start_node_and_agent((2000, 30000, 4))
        self.board_says("sent seq 1 ")  # a session started on the board
        self._stop_board()  # the board resets: its RAM ring and the open session are gone
        self.link.unlink()
        self.start_board((2000, 5000, 4))  # the same board (fw-boot.bin): boot 2
        self.board_says("boot 2")
        events = self.wait_stored(dev, 2)
        assert_session(self, events, 5)
        self.assertTrue(all(e["inputOf"] == "mcu:saw:boot-2-session-1" for e in events), events)
        status = agent.wait_status(lambda s: s["acked_seq"] == s["last_seq"] == 2,
                                   "the ingest's ack covers the two events")
        self.assertIn("boot 2", self.saw_state(status))
        self.assertEqual(len(self.stored(dev)), 2)


if __name__ == "__main__":
    import unittest
    unittest.main()
