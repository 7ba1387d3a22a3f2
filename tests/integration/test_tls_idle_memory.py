# SPDX-License-Identifier: Apache-2.0
"""Idle TLS sessions and session resumption.

- memory: 200 TLS sessions (implicit TLS and STARTTLS, half each), each with its handshake done
  and a command answered, then idle. The server's RSS growth per session must stay at or below
  IDLE_KIB: OpenSSL's record buffers are given back between records and the server keeps no
  buffer of its own per session (with an asio::ssl::stream it was about 78 KiB per session,
  four 17 KiB buffers among it; now about 19 KiB in the release build, most of it OpenSSL
  3.0's SSL object). Not under a sanitizer. The sessions still work afterwards.
- resumption (tls.session_resumption, on by default): a client that offers the session
  (ticket) of its previous connection gets an abbreviated handshake, with TLS 1.3 and 1.2;
  with `session_resumption: false` it never does.
"""
import shutil
import socket
import ssl
import sys
import tempfile
import time

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config
from test_attacks import rss_kib
from test_tls import client_context, make_certificate

SESSIONS = 200
IDLE_KIB = 32  # RSS growth per idle TLS session allowed (release build: about 19; debug: about 24)
GREETING = f"220 {HOSTNAME} {IDENT}".encode()


def read_reply(tls):
    """One reply (its last line) from a TLS socket."""
    data = b""
    while True:
        chunk = tls.recv(4096)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return lines[-2]


class IdleTlsTestCase(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="asiosmtpd-tls-")
        cls.cert, cls.key = make_certificate(cls.certs)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def start(self, **tls):
        config = server_config(plugins=["sink"], listen=[{"address": HOST, "port": 0, "tls": "implicit"},
                                                         {"address": HOST, "port": 0, "tls": "starttls"}])
        config["tls"] = {"certificate": self.cert, "private_key": self.key, **tls}
        server = self.start_server(config)
        server.implicit, server.starttls = server.listeners[0][1], server.listeners[1][1]
        return server

    def connect(self, server, implicit, ctx, session=None):
        """A TLS session with its greeting (implicit) or its STARTTLS done, and a NOOP answered."""
        raw = socket.create_connection((HOST, server.implicit if implicit else server.starttls), timeout=10)
        self.addCleanup(raw.close)
        if not implicit:
            c = harness.Client.__new__(harness.Client)
            c.sock, c.buf = raw, b""
            self.assertEqual(c.line().encode(), GREETING)
            self.assertEqual(c.cmd("STARTTLS"), ["220 Ready to start TLS"])
        tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        self.addCleanup(tls.close)
        if implicit:
            self.assertEqual(read_reply(tls), GREETING)
        tls.sendall(b"NOOP\r\n")
        self.assertEqual(read_reply(tls), b"250 OK")
        return tls


class IdleMemoryTest(IdleTlsTestCase):
    def test_an_idle_tls_session_holds_no_buffer(self):
        server = self.start()
        pid = server.process.pid
        ctx = client_context()
        for implicit in (True, False, True, False):  # OpenSSL and the allocator warmed up
            self.connect(server, implicit, ctx).close()
        time.sleep(0.3)
        baseline = rss_kib(pid)
        sessions = [self.connect(server, i % 2 == 0, ctx) for i in range(SESSIONS)]
        time.sleep(0.5)
        after = rss_kib(pid)
        per = (after - baseline) / SESSIONS
        sys.stderr.write(f"\n  {SESSIONS} idle TLS sessions: RSS {baseline} -> {after} KiB, {per:.1f} KiB each\n")
        # Still served, each of them.
        for tls in sessions[::37]:
            tls.sendall(b"NOOP\r\n")
            self.assertEqual(read_reply(tls), b"250 OK")
        if not harness.sanitized():
            self.assertLessEqual(per, IDLE_KIB, f"RSS per idle TLS session: {per:.1f} KiB")


class ResumptionTest(IdleTlsTestCase):
    def resumed(self, server, version, implicit):
        """Whether a second connection that offers the first one's session resumes it."""
        ctx = client_context()
        ctx.minimum_version = ctx.maximum_version = version
        first = self.connect(server, implicit, ctx)
        self.assertFalse(first.session_reused)
        session = first.session
        first.close()
        self.assertIsNotNone(session)
        second = self.connect(server, implicit, ctx, session=session)
        return second.session_reused

    def test_resumption_is_on_by_default(self):
        server = self.start()
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            for implicit in (True, False):
                with self.subTest(version=version, implicit=implicit):
                    self.assertTrue(self.resumed(server, version, implicit))

    def test_resumption_can_be_turned_off(self):
        server = self.start(session_resumption=False)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version):
                self.assertFalse(self.resumed(server, version, True))


if __name__ == "__main__":
    harness.main()
