# SPDX-License-Identifier: Apache-2.0
"""A client that leaves while a plugin hook is suspended (the `scripted` test plugin's MAIL
hook completed later by its worker thread). As aiosmtpd (asyncio) does: a reset, or EOF under
TLS, means the client is gone: the session notices at once, cancels the pending call (a later
complete() gets E_GONE), logs why it ended, frees its connection slot and writes nothing. EOF
in plaintext is a half-close: the client may still read, so the hook goes on and its reply is
sent. A client that pipelines its next command meanwhile is served as before: its bytes stay
where they are until the hook is done, then both replies come in order. Plain and TLS."""
import os
import re
import shutil
import socket
import struct
import tempfile
import time
import unittest

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, fixture_plugin, server_config
from test_tls import client_context, make_certificate

SCRIPTED = fixture_plugin("scripted")
DELAY_MS = 3000          # the worker completes the MAIL hook this long after it suspended
PLUGIN_TIMEOUT = 30      # seconds: the host's bound on the wait, far beyond DELAY_MS
NOTICED_WITHIN = 1.5     # seconds from the client's close to the session's disconnect line
MAIL_HOOK_RAN = "plugin=scripted mail hook for <a@b.example>"
GONE_LINE = "scripted: MAIL: complete() returned E_GONE"


def config(delay_ms=DELAY_MS, **server):
    mail = {"verdict": "accept", "code": 250, "text": "2.1.0 late", "delay_ms": delay_ms,
            "log": "mail hook for <{arg}>"}
    entry = {"path": SCRIPTED, "timeout": PLUGIN_TIMEOUT, "config": {"hooks": {"MAIL": mail}}}
    return server_config(plugins=[entry, "sink"], **server)


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disconnects(server):
    return re.findall(r'event=disconnect reason="([^"]*)"', server.stderr())


def suspend_mail(server, send):
    """Sends MAIL and waits until its hook ran (and suspended); returns when that was."""
    send("MAIL FROM:<a@b.example>\r\n")
    server.wait_output(lambda err: MAIL_HOOK_RAN in err, which="stderr", timeout=5)
    return time.monotonic()


@unittest.skipUnless(os.path.exists(SCRIPTED), f"{SCRIPTED} is not built")
class ClientGoneTest(ServerTestCase):
    def session(self, server):
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    def gone_during_mail_hook(self, reset):
        # max_connections 1: the slot must be free again long before the hook would finish.
        server = self.start_server(config(max_connections=1))
        c = self.session(server)
        suspended = suspend_mail(server, c.send)
        if reset:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        server.wait_output(lambda err: "event=disconnect" in err, which="stderr", timeout=NOTICED_WITHIN)
        noticed = time.monotonic() - suspended
        self.assertLess(noticed, DELAY_MS / 1000 - 0.5, "the session waited for the hook")
        expected = ("client connection lost during a plugin hook: Connection reset by peer" if reset
                    else "client closed during a plugin hook")
        self.assertEqual(disconnects(server), [expected])
        self.assertIn(f'event=hook_cancelled plugin=scripted hook=MAIL reason="{expected}"', server.stderr())
        # The connection slot is free: a new client is greeted, not refused.
        other = self.connect(server)
        self.assertEqual(other.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(other.cmd("NOOP"), ["250 OK"])
        other.close()
        # The worker's late complete() finds the call cancelled.
        server.wait_output(lambda err: GONE_LINE in err, which="stderr", timeout=DELAY_MS / 1000 + 5)
        self.assertIsNone(server.process.poll(), "the server exited")

    def test_rst_during_a_suspended_hook(self):
        self.gone_during_mail_hook(reset=True)

    def test_half_close_during_a_suspended_hook_still_gets_its_reply(self):
        # shutdown(SHUT_WR), as `nc -N` does after its input: the client still reads. aiosmtpd
        # keeps such a transport open and answers; so does asiosmtpd.
        server = self.start_server(config(delay_ms=1000))
        c = self.session(server)
        suspended = suspend_mail(server, c.send)
        c.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(c.line(), "250 2.1.0 late")
        self.assertGreater(time.monotonic() - suspended, 0.7, "the MAIL reply came before the hook completed")
        self.assertEqual(c.expect_eof(), b"")
        server.wait_output(lambda err: "event=disconnect" in err, which="stderr", timeout=5)
        self.assertNotIn("event=hook_cancelled", server.stderr())
        self.assertNotIn(GONE_LINE, server.stderr())

    def test_close_during_a_suspended_hook_waits_for_the_hook(self):
        # A FIN alone cannot tell a close from a half-close: the hook goes on (as in aiosmtpd),
        # its reply meets the closed socket, and the session ends then.
        server = self.start_server(config(delay_ms=1000))
        c = self.session(server)
        suspended = suspend_mail(server, c.send)
        c.close()
        server.wait_output(lambda err: "event=disconnect" in err, which="stderr", timeout=5)
        self.assertGreater(time.monotonic() - suspended, 0.7, "the session did not wait for the hook")
        self.assertNotIn("event=hook_cancelled", server.stderr())
        self.assertNotIn(GONE_LINE, server.stderr())
        self.assertIsNone(server.process.poll(), "the server exited")

    def test_pipelined_command_during_a_suspended_hook(self):
        # RFC 2920: RCPT may follow MAIL before its reply. Its bytes wait in the kernel buffer
        # (the session neither reads nor spins on them), then both replies come in order.
        server = self.start_server(config(delay_ms=1500))
        c = self.session(server)
        suspended = suspend_mail(server, c.send)
        cpu_before = cpu_seconds(server.process.pid)
        c.send("RCPT TO:<c@d.example>\r\n")
        self.assertEqual(c.line(), "250 2.1.0 late")
        waited = time.monotonic() - suspended
        self.assertEqual(c.line(), "250 OK")
        self.assertGreater(waited, 1.2, "the MAIL reply came before the hook completed")
        self.assertLess(cpu_seconds(server.process.pid) - cpu_before, 0.5, "the server was busy while waiting")
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(c.cmd("Subject: x\r\n\r\nbody\r\n."), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        self.assertEqual(c.expect_eof(), b"")
        server.wait_output(lambda err: "event=disconnect" in err, which="stderr", timeout=5)
        self.assertNotIn("during a plugin hook", server.stderr())
        self.assertNotIn(GONE_LINE, server.stderr())


@unittest.skipUnless(os.path.exists(SCRIPTED), f"{SCRIPTED} is not built")
class ClientGoneTlsTest(ServerTestCase):
    """Implicit TLS: the peek looks at the TCP socket under the TLS layer, never consumes its
    records."""

    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="asiosmtpd-gone-")
        cls.cert, cls.key = make_certificate(cls.certs)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def tls_server(self, delay_ms):
        cfg = config(delay_ms=delay_ms, listen=[{"address": HOST, "port": 0, "tls": "implicit"}])
        cfg["tls"] = {"certificate": self.cert, "private_key": self.key}
        return self.start_server(cfg)

    def tls_session(self, server):
        raw = socket.create_connection((server.host, server.port), timeout=harness.IO_TIMEOUT)
        self.addCleanup(raw.close)
        tls = client_context().wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(tls.close)
        f = tls.makefile("rb")
        self.addCleanup(f.close)

        def line():
            data = f.readline()
            if not data:
                raise EOFError("connection closed by the server")
            return data.rstrip(b"\r\n").decode()

        def send(text):
            tls.sendall(text.encode())

        self.assertEqual(line(), f"220 {HOSTNAME} {IDENT}")
        send("EHLO client.example\r\n")
        for _ in range(20):
            if line().startswith("250 "):
                break
        return tls, f, send, line

    def test_close_under_tls_during_a_suspended_hook(self):
        server = self.tls_server(DELAY_MS)
        tls, f, send, _ = self.tls_session(server)
        suspended = suspend_mail(server, send)
        f.close()    # the reader holds the socket open too
        tls.close()  # the TCP connection ends without a close_notify
        server.wait_output(lambda err: "event=disconnect" in err, which="stderr", timeout=NOTICED_WITHIN)
        self.assertLess(time.monotonic() - suspended, DELAY_MS / 1000 - 0.5)
        self.assertEqual(disconnects(server), ["client closed during a plugin hook"])
        server.wait_output(lambda err: GONE_LINE in err, which="stderr", timeout=DELAY_MS / 1000 + 5)

    def test_pipelined_command_under_tls_during_a_suspended_hook(self):
        server = self.tls_server(1000)
        _, _, send, line = self.tls_session(server)
        suspended = suspend_mail(server, send)
        send("RCPT TO:<c@d.example>\r\n")  # a TLS record: the session's to read after the hook
        self.assertEqual(line(), "250 2.1.0 late")
        self.assertGreater(time.monotonic() - suspended, 0.7)
        self.assertEqual(line(), "250 OK")
        send("NOOP\r\n")
        self.assertEqual(line(), "250 OK")
        self.assertNotIn("during a plugin hook", server.stderr())


if __name__ == "__main__":
    harness.main()
