# SPDX-License-Identifier: Apache-2.0
"""Graceful stop on SIGTERM/SIGINT: idle sessions get 421 and EOF, the process exits 0, and a
session in the middle of a message may finish it within shutdown_grace, then say QUIT (221);
any other command then gets the 421, and so does silence after a short wait."""
import signal
import socket
import time

import harness
from harness import HOSTNAME, ServerTestCase, server_config


class ShutdownTest(ServerTestCase):
    def idle_client_then(self, signo):
        server = self.start_server(server_config(shutdown_grace=5))
        c = self.connect(server, timeout=5)
        c.reply()
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        started = time.monotonic()
        server.signal(signo)
        line = c.line()
        self.assertTrue(line.startswith("421 "), line)
        self.assertEqual(line, f"421 4.3.2 {HOSTNAME} Service shutting down")
        self.assertEqual(c.expect_eof(timeout=5), b"")
        rc = server.wait(timeout=5)
        self.assertIsNotNone(rc, "the server did not exit within 5 s of the signal")
        self.assertEqual(rc, 0, server.stderr())
        self.assertLess(time.monotonic() - started, 4.0, "an idle session must not wait for the grace")
        return server

    def test_sigterm_idle_session(self):
        server = self.idle_client_then(signal.SIGTERM)
        self.assertIn("event=stopped", server.stderr())

    def test_sigint_idle_session(self):
        self.idle_client_then(signal.SIGINT)

    def test_sigterm_without_sessions(self):
        server = self.start_server()
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait(timeout=5), 0)

    def test_no_new_connections_after_sigterm(self):
        server = self.start_server(server_config(shutdown_grace=5))
        busy = self.connect(server, timeout=5)
        busy.reply()
        busy.cmd("HELO client.example")
        busy.cmd("MAIL FROM:<a@b.example>")
        busy.cmd("RCPT TO:<c@d.example>")
        busy.cmd("DATA")
        busy.send(b"Subject: in flight\r\n\r\npart one\r\n")
        time.sleep(0.2)
        server.signal(signal.SIGTERM)
        # The listener closes: a new connection is refused (or closed without a greeting).
        deadline = time.monotonic() + 5
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                with socket.create_connection((server.host, server.port), timeout=2) as s:
                    s.settimeout(2)
                    try:
                        data = s.recv(100)
                    except (socket.timeout, ConnectionResetError):
                        data = b"?"
                    refused = not data.startswith(b"220")
            except (ConnectionRefusedError, ConnectionResetError):
                # Refused, or reset: a connection that reached the backlog just before the
                # listener closed is reset by the kernel.
                refused = True
            if not refused:
                time.sleep(0.05)
        self.assertTrue(refused, "new connections still greeted after SIGTERM")
        # The session in DATA finishes its message within the grace, then gets closed.
        busy.send(b"part two\r\n.\r\n")
        self.assertEqual(busy.line(), "250 OK")
        rest = busy.expect_eof(timeout=5)
        self.assertIn(rest, (b"", f"421 4.3.2 {HOSTNAME} Service shutting down\r\n".encode()))
        self.assertEqual(server.wait(timeout=5), 0)

    def busy_then_stop(self, server):
        c = self.connect(server, timeout=5)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        c.cmd("DATA")
        c.send(b"Subject: in flight\r\n\r\npart one\r\n")
        time.sleep(0.2)
        server.signal(signal.SIGTERM)
        time.sleep(0.2)
        return c

    def test_quit_after_the_transaction_gets_221(self):
        # The message is finished during the drain, then the client says goodbye as usual.
        server = self.start_server(server_config(shutdown_grace=5))
        c = self.busy_then_stop(server)
        self.assertEqual(c.cmd("part two\r\n."), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        self.assertEqual(c.expect_eof(timeout=5), b"")
        self.assertEqual(server.wait(timeout=5), 0)

    def test_pipelined_quit_gets_221_another_command_421(self):
        server = self.start_server(server_config(shutdown_grace=5))
        c = self.busy_then_stop(server)
        c.send(b"part two\r\n.\r\nQUIT\r\n")
        self.assertEqual((c.line(), c.line()), ("250 OK", "221 Bye"))
        self.assertEqual(c.expect_eof(timeout=5), b"")
        self.assertEqual(server.wait(timeout=5), 0)
        server = self.start_server(server_config(shutdown_grace=5))
        other = self.busy_then_stop(server)
        self.assertEqual(other.cmd("part two\r\n."), ["250 OK"])
        self.assertEqual(other.cmd("MAIL FROM:<a@b.example>"), [f"421 4.3.2 {HOSTNAME} Service shutting down"])
        self.assertEqual(other.expect_eof(timeout=5), b"")
        self.assertEqual(server.wait(timeout=5), 0)
        self.assertIn('event=disconnect reason="shutdown"', server.stderr())

    def test_silence_after_the_transaction_gets_421_soon(self):
        server = self.start_server(server_config(shutdown_grace=10))
        c = self.busy_then_stop(server)
        self.assertEqual(c.cmd("part two\r\n."), ["250 OK"])
        started = time.monotonic()
        self.assertEqual(c.line(), f"421 4.3.2 {HOSTNAME} Service shutting down")
        self.assertEqual(c.expect_eof(timeout=5), b"")
        self.assertLess(time.monotonic() - started, 3.0, "the wait for QUIT must be short, not the grace")
        self.assertEqual(server.wait(timeout=5), 0)

    def test_grace_bounds_a_stuck_session(self):
        # A client that stays in DATA past shutdown_grace is cut off; exit stays prompt.
        server = self.start_server(server_config(shutdown_grace=1))
        c = self.connect(server, timeout=5)
        c.reply()
        c.cmd("HELO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        c.cmd("DATA")
        c.send(b"Subject: stuck\r\n\r\nnever ends")
        time.sleep(0.2)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        c.expect_eof(timeout=5)
        rc = server.wait(timeout=5)
        self.assertIsNotNone(rc, "the server did not exit within shutdown_grace + 4 s")
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - started, 4.0)


if __name__ == "__main__":
    harness.main()
