# SPDX-License-Identifier: AGPL-3.0-or-later
"""The agent's MQTT connection through an HTTP CONNECT proxy (`[mqtt] proxy`, issue 23): a real
tinyproxy (Debian's tinyproxy-bin, run in the foreground as the test user) on a loopback port
between a real reflow-agent and a real Mosquitto with mutual TLS (the node's own configuration),
with the real reflow-ingest acknowledging. Tor's HTTPTunnelPort speaks the same CONNECT; Tor itself
is not run here (README "Private networks over Tor")."""

import os
import re
import shutil
import socket
import subprocess
import unittest

import harness as h
import node_harness as nh

TINYPROXY = os.environ.get("TINYPROXY", shutil.which("tinyproxy") or "/usr/bin/tinyproxy")


class Tinyproxy:
    """tinyproxy -d on a free loopback port, allowing CONNECT to `connect_port` only; its log
    (LogLevel Info) goes to a file. stop() and start() again keep the port."""

    def __init__(self, workdir, connect_port):
        self.port = h.free_port()
        self.dir = workdir  # its *.log files are printed when a test fails
        self.conf = self.dir / "tinyproxy.conf"
        self.log_path = self.dir / "tinyproxy.log"
        self.proc = None
        self.configure(connect_port)

    def configure(self, connect_port):
        # tinyproxy.conf(5): no User/Group lines, so it stays the test user; ConnectPort limits
        # CONNECT to that port (any other gets "403 Access violation").
        self.conf.write_text("\n".join([
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 600",
            "Allow 127.0.0.1",
            f"ConnectPort {connect_port}",
            f"LogFile \"{self.log_path}\"",
            "LogLevel Info",
            "MaxClients 20",
        ]) + "\n")

    def start(self):
        with open(self.dir / "tinyproxy-stderr.log", "ab") as err:
            self.proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)

        def accepting():
            if self.proc.poll() is not None:
                raise AssertionError(f"tinyproxy exited with {self.proc.returncode}:\n"
                                     + self.log_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1):
                    return True
            except OSError:
                return False

        h.wait_for(accepting, f"tinyproxy listening on port {self.port}")
        return self

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        self.proc = None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connects_to(self, target):
        """How many CONNECT requests for `target` ("host:port") the log shows."""
        return len(re.findall(rf"CONNECT {re.escape(target)} HTTP/1\.1", self.log_text()))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


class ProxyTest(nh.NodeTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(TINYPROXY, os.X_OK):
            self.fail(f"tinyproxy not found at {TINYPROXY} (apt-get install tinyproxy-bin)")
        self.proxies = []
        self.addCleanup(self._kill_proxies)

    def _kill_proxies(self):
        for proxy in self.proxies:
            proxy.kill()

    def new_proxy(self, connect_port):
        proxy = Tinyproxy(self.tmp, connect_port)
        self.proxies.append(proxy)
        return proxy

    def device_through(self, proxy, device_id):
        dev = self.new_device(device_id)
        text = dev.config_path.read_text()
        dev.config_path.write_text(text.replace(
            "[mqtt]\n", f"[mqtt]\nproxy = {nh.toml_str(proxy.url)}\n", 1))
        return dev

    def target(self):
        return f"{nh.TLS_HOST}:{self.broker.port}"

    def test_mutual_tls_through_the_proxy_delivers_and_a_proxy_restart_loses_nothing(self):
        self.start_tls_broker()
        proxy = self.new_proxy(self.broker.port).start()
        dev = self.device_through(proxy, "fablab-proxy-01")
        self.start_ingest()
        agent = self.start_device_agent(dev)
        status = agent.wait_status(lambda s: s["connected"],
                                   "the agent connected through the proxy")
        self.assertEqual(status["proxy"], proxy.url, "status --json names the proxy")
        self.assertIn(f"proxy:           {proxy.url}",
                      h.run_cli(["status", "--config", str(dev.config_path)]).stdout)
        self.assertGreaterEqual(proxy.connects_to(self.target()), 1,
                                "the proxy's log shows the agent's CONNECT to the broker")
        self.assertIn(f"through proxy {proxy.url}", agent.log_text())

        first = self.emit_for(dev, h.emit_lines(10))
        agent.wait_status(lambda s: s["acked_seq"] == 10, "the first 10 acked through the proxy")

        # The proxy dies with the tunnel open: the agent loses the broker, keeps what is emitted
        # meanwhile, and delivers it once the proxy is back on the same port.
        proxy.kill()
        agent.wait_status(lambda s: not s["connected"], "the agent saw the tunnel close")
        during = self.emit_for(dev, h.emit_lines(10, start=10))
        agent.wait_status(lambda s: s["last_error"] and f"proxy 127.0.0.1:{proxy.port}"
                          in s["last_error"], "status names the unreachable proxy")
        connects_before = proxy.connects_to(self.target())
        proxy.start()
        after = self.emit_for(dev, h.emit_lines(10, start=20))
        agent.wait_status(lambda s: s["connected"] and s["acked_seq"] == 30
                          and s["backlog_events"] == 0, "all 30 acked after the proxy restart")
        self.assertGreater(proxy.connects_to(self.target()), connects_before,
                           "the reconnect went through the restarted proxy")

        acked = first + during + after
        self.assertEqual([seq for seq, _ in acked], list(range(1, 31)))
        events = self.cli.events(dev.id)
        self.assertEqual([(e["seq"], e["id"]) for _, e in events], acked,
                         "the node stored every event once, in seq order")
        stats = self.cli.device_stats(dev.id)
        self.assertEqual((stats["events"], stats["gaps"]), (30, 0), f"stats {stats}")

    def test_a_proxy_refusing_connect_is_named_and_retried_until_fixed(self):
        self.start_tls_broker()
        # ConnectPort names another port: tinyproxy answers the agent's CONNECT with 403.
        proxy = self.new_proxy(self.broker.port + 1).start()
        dev = self.device_through(proxy, "fablab-proxy-02")
        self.start_ingest()
        agent = self.start_device_agent(dev)
        emitted = self.emit_for(dev, h.emit_lines(5))
        want = f"proxy 127.0.0.1:{proxy.port} refused CONNECT to {self.target()} (HTTP 403)"
        status = agent.wait_status(lambda s: s["last_error"] and want in s["last_error"],
                                   "status names the proxy's refusal")
        self.assertFalse(status["connected"])
        h.wait_for(lambda: proxy.connects_to(self.target()) >= 4,
                   "the agent keeps retrying through the proxy (each failed attempt is Paho's "
                   "CONNECT and the diagnosis's)")
        self.assertIn(want, agent.log_text(), "the log names the proxy's refusal")

        proxy.kill()
        proxy.configure(self.broker.port)
        proxy.start()
        agent.wait_status(lambda s: s["connected"] and s["acked_seq"] == 5,
                          "delivered once the proxy allows the broker's port")
        self.assertEqual([(e["seq"], e["id"]) for _, e in self.cli.events(dev.id)], emitted)

    def test_a_certificate_without_the_urls_name_is_named_from_inside_the_tunnel(self):
        # The broker listens on every loopback address, but its certificate names localhost and
        # 127.0.0.1 only: through the proxy to 127.0.0.2, as with an onion name missing from
        # `ca server --host`, TLS refuses, and the diagnosis says so from inside the tunnel.
        self.start_tls_broker()
        proxy = self.new_proxy(self.broker.port).start()
        dev = self.device_through(proxy, "fablab-proxy-03")
        text = dev.config_path.read_text()
        dev.config_path.write_text(
            text.replace(f"mqtts://{nh.TLS_HOST}:", "mqtts://127.0.0.2:", 1))
        agent = self.start_device_agent(dev)
        status = agent.wait_status(
            lambda s: "TLS: the broker's certificate names" in (s["last_error"] or ""),
            "status names the TLS cause found through the proxy")
        self.assertIn("not the URL's host 127.0.0.2", status["last_error"])
        self.assertIn(f"(through proxy 127.0.0.1:{proxy.port})", status["last_error"])
        self.assertFalse(status["connected"])
        self.assertGreaterEqual(proxy.connects_to(f"127.0.0.2:{self.broker.port}"), 2,
                                "Paho's CONNECT and the diagnosis's both went through the proxy")


if __name__ == "__main__":
    unittest.main()
