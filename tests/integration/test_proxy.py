# SPDX-License-Identifier: Apache-2.0
"""The HAProxy PROXY protocol (v1 and v2) on listeners with proxy_protocol: true: raw headers
good, bad, slow and missing; with implicit TLS and across STARTTLS; the PROXY hook; and real
HAProxy (send-proxy, send-proxy-v2) in front of two asiosmtpd instances."""
import os
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import harness
from harness import HOST, HOSTNAME, IDENT, Client, ServerTestCase, server_config
from test_tls import client_context, make_certificate

GREETING = f"220 {HOSTNAME} {IDENT}"


def scripted(hooks):
    return {"path": harness.fixture_plugin("scripted"), "config": {"hooks": hooks}}


# NOOP answers with the peer the plugins see.
WHO = scripted({"NOOP": {"verdict": "accept", "code": 250, "text": "peer {peer} {port}"}})


def v2_header(src, sport, dst, dport, tlvs=b""):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) + tlvs
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class ProxyTestCase(ServerTestCase):
    def proxy_config(self, plugins=None, **server):
        listen = server.pop("listen", [{"address": HOST, "port": 0, "proxy_protocol": True}])
        return server_config(plugins=plugins or [WHO, "sink"], listen=listen, proxy_protocol_timeout=2, **server)


class ProxyHeaderTest(ProxyTestCase):
    def test_v1_header_sets_the_peer(self):
        server = self.start_server(self.proxy_config())
        c = self.connect(server)
        c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 40123 25\r\n")
        self.assertEqual(c.line(), GREETING)
        self.assertEqual(c.cmd("NOOP"), ["250 peer 192.0.2.10 40123"])
        server.wait_output(lambda e: "event=proxy version=1 client=192.0.2.10:40123 via=127.0.0.1:" in e, which="stderr")

    def test_v2_header_with_pipelined_command(self):
        server = self.start_server(self.proxy_config())
        c = self.connect(server)
        c.send(v2_header("203.0.113.7", 5555, "198.51.100.1", 25, tlvs=b"\x05\x00\x03abc") + b"NOOP\r\n")
        self.assertEqual(c.line(), GREETING)
        self.assertEqual(c.reply(), ["250 peer 203.0.113.7 5555"])

    def test_bad_headers_close_without_a_reply(self):
        server = self.start_server(self.proxy_config())
        for bad in (b"EHLO client.example\r\n", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
                    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x00"):
            with self.subTest(header=bad):
                c = self.connect(server)
                c.send(bad)
                self.assertEqual(c.expect_eof(timeout=5), b"")
        # The listener still serves good clients.
        c = self.connect(server)
        c.send(b"PROXY UNKNOWN\r\n")
        self.assertEqual(c.line(), GREETING)

    def test_missing_and_slow_headers(self):
        server = self.start_server(self.proxy_config())
        silent = self.connect(server)
        t0 = time.monotonic()
        self.assertEqual(silent.expect_eof(timeout=6), b"")  # proxy_protocol_timeout: 2
        self.assertLess(time.monotonic() - t0, 5)
        slow = self.connect(server)
        for byte in b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n":
            slow.send(bytes([byte]))
            time.sleep(0.01)
        self.assertEqual(slow.line(), GREETING)

    def test_the_proxy_hook_can_refuse(self):
        server = self.start_server(self.proxy_config(plugins=[scripted({"PROXY": {"verdict": "reject"}}), "sink"]))
        c = self.connect(server)
        c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 40123 25\r\n")
        self.assertEqual(c.expect_eof(timeout=5), b"")


class ProxyTlsTest(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="asiosmtpd-proxy-")
        cls.cert, cls.key = make_certificate(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def tls_proxy_config(self):
        config = self.proxy_config(listen=[{"address": HOST, "port": 0, "proxy_protocol": True, "tls": "implicit"},
                                           {"address": HOST, "port": 0, "proxy_protocol": True, "tls": "starttls"}])
        config["tls"] = {"certificate": self.cert, "private_key": self.key}
        return config

    def test_implicit_tls_after_the_header(self):
        server = self.start_server(self.tls_proxy_config())
        raw = socket.create_connection((HOST, server.listeners[0][1]), timeout=10)
        self.addCleanup(raw.close)
        raw.sendall(b"PROXY TCP4 192.0.2.20 198.51.100.1 4444 465\r\n")
        with smtplib.SMTP_SSL(timeout=10, context=client_context()) as s:
            s.sock = client_context().wrap_socket(raw, server_hostname="localhost")
            s.file = None
            self.assertEqual(s.getreply()[0], 220)
            self.assertEqual(s.noop(), (250, b"peer 192.0.2.20 4444"))

    def test_the_client_address_survives_starttls(self):
        server = self.start_server(self.tls_proxy_config())
        raw = socket.create_connection((HOST, server.listeners[1][1]), timeout=10)
        self.addCleanup(raw.close)
        raw.sendall(b"PROXY TCP4 192.0.2.30 198.51.100.1 3333 25\r\n")
        s = smtplib.SMTP(timeout=10)
        self.addCleanup(s.close)
        s._host = "localhost"  # for the TLS server name; the socket is connected by hand
        s.sock = raw
        s.file = None
        self.assertEqual(s.getreply()[0], 220)
        s.ehlo("x")
        s.starttls(context=client_context())
        s.ehlo("x")
        self.assertEqual(s.noop(), (250, b"peer 192.0.2.30 3333"))


class HaproxyTest(ProxyTestCase):
    """Real HAProxy in TCP mode in front of two instances, one with send-proxy (v1), one with
    send-proxy-v2: each sees the client's own address and port."""

    def setUp(self):
        if not shutil.which("haproxy"):
            self.skipTest("haproxy is not installed")

    def start_haproxy(self, backends):
        folder = tempfile.mkdtemp(prefix="asiosmtpd-haproxy-")
        self.addCleanup(shutil.rmtree, folder, True)
        ports = []
        lines = ["global", "  maxconn 256", "defaults", "  mode tcp", "  timeout connect 5s",
                 "  timeout client 30s", "  timeout server 30s"]
        for i, (port, option) in enumerate(backends):
            with socket.socket() as probe:
                probe.bind((HOST, 0))
                front = probe.getsockname()[1]
            ports.append(front)
            lines += [f"frontend f{i}", f"  bind {HOST}:{front}", f"  default_backend b{i}",
                      f"backend b{i}", f"  server s{i} {HOST}:{port} {option}"]
        cfg = os.path.join(folder, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stop():
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.addCleanup(stop)
        for port in ports:  # wait until haproxy listens
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError("haproxy did not start: " + proc.stderr.read().decode(errors="replace"))
                    time.sleep(0.05)
        return ports

    def test_send_proxy_v1_and_v2(self):
        one = self.start_server(self.proxy_config(plugins=[WHO, "debugging"]))
        two = self.start_server(self.proxy_config(plugins=[WHO, "debugging"]))
        fronts = self.start_haproxy([(one.port, "send-proxy"), (two.port, "send-proxy-v2")])
        for front, server, version in ((fronts[0], one, 1), (fronts[1], two, 2)):
            with smtplib.SMTP(HOST, front, timeout=10) as s:
                my_port = s.sock.getsockname()[1]
                self.assertEqual(s.noop(), (250, f"peer 127.0.0.1 {my_port}".encode()))
                s.sendmail("a@b.example", ["c@d.example"], b"Subject: via haproxy\r\n\r\nhello\r\n")
            server.wait_output(lambda o: f"X-Peer: ('127.0.0.1', {my_port})" in o)
            self.assertIn(f"event=proxy version={version} client=127.0.0.1:{my_port}", server.stderr())


if __name__ == "__main__":
    harness.main()
