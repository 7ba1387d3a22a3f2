# SPDX-License-Identifier: Apache-2.0
"""Slowloris (issue 15): `server.timeout` bounds the time to receive each whole command line or
AUTH line, whatever trickles in meanwhile; a message must keep `server.data_min_rate` bytes/s
over each `timeout` window; the TLS handshake is bounded by `tls_handshake_timeout`. Trickling
clients are closed with "421 4.4.2 ... timeout exceeded" within the timeout (+ 1 s); slow but
honest clients are not. Before the fix every byte read pushed the deadline back, so a client
sending one byte a second held its connection (and its max_connections slot) for ever.
"""
import shutil
import socket
import ssl
import tempfile
import threading
import time

import harness
from harness import HOST, HOSTNAME, IDENT, Client, ServerTestCase, server_config
from test_auth import authfile_plugin
from test_tls import make_certificate

GREETING = f"220 {HOSTNAME} {IDENT}"
TIMEOUT = 3.0          # server.timeout of these tests, seconds
INTERVAL = 0.5         # one byte every INTERVAL seconds: a trickle
SLACK = 1.0            # "closed within timeout + 1 s"
TIMEOUT_REPLY = f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"


def trickle(sock, data, interval=INTERVAL, limit=4 * TIMEOUT):
    """Sends `data` one byte every `interval` seconds until the server closes the connection
    (or `limit` seconds pass). Returns (seconds until the server closed or None, what the server
    sent meanwhile)."""
    started = time.monotonic()
    received = b""
    sock.settimeout(interval)
    for i in range(len(data)):
        if time.monotonic() - started > limit:
            return None, received
        try:
            sock.sendall(data[i:i + 1])
        except OSError:  # reset: the server closed while we were sending
            return time.monotonic() - started, received
        try:
            chunk = sock.recv(4096)
            if not chunk:
                return time.monotonic() - started, received
            received += chunk
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - started, received
    return None, received


def slow_bytes(n):
    """A command line that never ends within any test: n bytes, no LF."""
    return b"NOOP " + b"x" * n


class SlowlorisTestCase(ServerTestCase):
    def assert_closed_in_time(self, took, received, reply=TIMEOUT_REPLY, timeout=TIMEOUT):
        self.assertIsNotNone(took, "the trickling client is still connected")
        self.assertLessEqual(took, timeout + SLACK, f"closed after {took:.2f}s, timeout is {timeout}s")
        self.assertGreaterEqual(took, timeout - 0.5, f"closed too early: {took:.2f}s")
        if reply is not None:
            self.assertIn(reply.encode(), received)


class CommandPhaseTest(SlowlorisTestCase):
    def test_trickled_command_line_is_cut_off(self):
        server = self.start_server(server_config(timeout=TIMEOUT))
        with Client(server.host, server.port) as c:
            self.assertEqual(c.reply(), [GREETING])
            self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
            took, received = trickle(c.sock, slow_bytes(100))
        self.assert_closed_in_time(took, received)
        # The disconnect line follows the close: wait for it (bounded).
        server.wait_output(lambda err: 'reason="timeout"' in err, which="stderr", timeout=5)

    def test_trickle_before_the_first_command(self):
        # The greeting's clock: bytes right after connecting do not extend it either.
        server = self.start_server(server_config(timeout=TIMEOUT))
        s = socket.create_connection((server.host, server.port), timeout=5)
        self.addCleanup(s.close)
        took, received = trickle(s, b"EHLO " + b"y" * 100)
        self.assert_closed_in_time(took, received)
        self.assertTrue(received.startswith(GREETING.encode()))

    def test_honest_client_split_lines_and_pauses(self):
        # Each line arrives within the timeout, in pieces: served. Pauses between commands
        # shorter than the timeout: served. The clock starts again at each line.
        server = self.start_server(server_config(timeout=TIMEOUT))
        with Client(server.host, server.port) as c:
            self.assertEqual(c.reply(), [GREETING])
            for _ in range(3):
                c.send("NO")
                time.sleep(TIMEOUT / 3)
                c.send("OP\r\n")
                self.assertEqual(c.reply(), ["250 OK"])
                time.sleep(TIMEOUT * 0.6)
            self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_trickling_clients_do_not_hold_every_slot(self):
        # max_connections clients trickle; within timeout + 1 s every slot is free again.
        slots = 8
        server = self.start_server(server_config(timeout=TIMEOUT, max_connections=slots))
        results = [None] * slots
        socks = []
        for _ in range(slots):
            s = socket.create_connection((server.host, server.port), timeout=5)
            self.addCleanup(s.close)
            socks.append(s)

        def run(i):
            results[i] = trickle(socks[i], slow_bytes(100))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(4 * TIMEOUT + 5)
        for took, received in results:
            self.assertIsNotNone(took)
            self.assertLessEqual(took, TIMEOUT + SLACK)
        with Client(server.host, server.port) as c:
            self.assertEqual(c.reply(), [GREETING])
            self.assertEqual(c.cmd("QUIT"), ["221 Bye"])


class AuthLineTest(SlowlorisTestCase):
    def test_trickled_auth_line_is_cut_off(self):
        config = server_config(plugins=[authfile_plugin(self, {"alice": "wonderland"}), "sink"],
                               timeout=TIMEOUT, auth_require_tls=False)
        server = self.start_server(config)
        with Client(server.host, server.port) as c:
            self.assertEqual(c.reply(), [GREETING])
            c.cmd("EHLO client.example")
            self.assertEqual(c.cmd("AUTH LOGIN"), ["334 VXNlcm5hbWU6"])
            took, received = trickle(c.sock, b"YWxpY2U" * 20)
        self.assert_closed_in_time(took, received)


class DataPhaseTest(SlowlorisTestCase):
    def open_data(self, server):
        c = Client(server.host, server.port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply(), [GREETING])
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        return c

    def test_trickled_message_is_cut_off(self):
        server = self.start_server(server_config(timeout=TIMEOUT))
        c = self.open_data(server)
        took, received = trickle(c.sock, b"Subject: slow\r\n\r\n" + b"z\r\n" * 100)
        self.assert_closed_in_time(took, received)
        server.wait_output(lambda err: "slower than 500 bytes/s" in err, which="stderr", timeout=5)

    def test_below_data_min_rate_is_cut_off(self):
        # 10 KiB/s steadily against a floor of 40 KiB/s: closed at the end of the first window.
        server = self.start_server(server_config(timeout=TIMEOUT, data_min_rate=40 * 1024))
        c = self.open_data(server)
        line = b"x" * 1022 + b"\r\n"
        started = time.monotonic()
        took = None
        received = b""
        c.sock.settimeout(0.1)
        while time.monotonic() - started < 4 * TIMEOUT:
            try:
                c.sock.sendall(line * 1)
                chunk = c.sock.recv(4096)
                if not chunk:
                    took = time.monotonic() - started
                    break
                received += chunk
            except socket.timeout:
                continue
            except OSError:
                took = time.monotonic() - started
                break
        self.assert_closed_in_time(took, received)

    def test_slow_but_honest_message_is_accepted(self):
        # 100 KiB/s for three timeout windows (the default floor is 500 bytes/s): accepted,
        # although the message takes far longer than `timeout`.
        server = self.start_server(server_config(timeout=TIMEOUT, plugins=["sink"]))
        c = self.open_data(server)
        rate = 100 * 1024
        total = int(rate * TIMEOUT * 3)
        line = b"y" * 998 + b"\r\n"
        sent = 0
        started = time.monotonic()
        while sent < total:
            c.send(line * 10)
            sent += len(line) * 10
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        self.assertGreater(time.monotonic() - started, TIMEOUT * 2.5)
        self.assertEqual(c.cmd("."), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_pause_in_data_shorter_than_the_timeout(self):
        # A message that starts after a pause just under the timeout is not cut off: the
        # window starts when the 354 went out, and a window that brought bytes fast enough
        # (here: all of them at once) never times out.
        server = self.start_server(server_config(timeout=TIMEOUT))
        c = self.open_data(server)
        time.sleep(TIMEOUT * 0.6)
        c.send(b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(c.cmd("."), ["250 OK"])


class TlsHandshakeTest(SlowlorisTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="asiosmtpd-slowloris-tls-")
        cls.cert, cls.key = make_certificate(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_trickled_handshake_is_cut_off(self):
        config = server_config(listen=[{"address": HOST, "port": 0, "tls": "implicit"}],
                               timeout=30, tls_handshake_timeout=TIMEOUT)
        config["tls"] = {"certificate": self.cert, "private_key": self.key}
        server = self.start_server(config)
        # A real ClientHello, sent one byte at a time.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        self.assertGreater(len(hello), 100)
        s = socket.create_connection((server.host, server.port), timeout=5)
        self.addCleanup(s.close)
        took, received = trickle(s, hello)
        self.assert_closed_in_time(took, received, reply=None)
        self.assertEqual(received, b"")


if __name__ == "__main__":
    harness.main()
