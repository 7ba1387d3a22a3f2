# SPDX-License-Identifier: Apache-2.0
"""Idle timeout and max_connections, with bounded waits."""
import time

import harness
from harness import HOSTNAME, IDENT, ServerTestCase, server_config


def bound(kib):
    """A memory bound in KiB; AddressSanitizer's quarantine keeps freed memory (the asan preset
    only has to survive, not to be small)."""
    return kib * 32 if harness.sanitized() else kib


class IdleTimeoutTest(ServerTestCase):
    def test_idle_client_gets_421_and_close(self):
        server = self.start_server(server_config(timeout=1))
        c = self.connect(server, timeout=5)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        started = time.monotonic()
        self.assertEqual(c.line(), f"421 4.4.2 {HOSTNAME} Error: timeout exceeded")
        waited = time.monotonic() - started
        self.assertEqual(c.expect_eof(timeout=5), b"")
        self.assertGreater(waited, 0.5, "the timeout came too early")
        self.assertLess(waited, 4.0, "the timeout came too late")

    def test_activity_resets_the_timer(self):
        server = self.start_server(server_config(timeout=1))
        c = self.connect(server, timeout=5)
        c.reply()
        for _ in range(4):  # 2 s of activity, never 1 s idle
            time.sleep(0.5)
            self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        self.assertEqual(c.line(), f"421 4.4.2 {HOSTNAME} Error: timeout exceeded")
        self.assertEqual(c.expect_eof(timeout=5), b"")

    def test_timeout_in_the_middle_of_data(self):
        server = self.start_server(server_config(timeout=1, plugins=["debugging"]))
        c = self.connect(server, timeout=5)
        c.reply()
        c.cmd("HELO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send(b"Subject: never finished\r\n\r\npartial")
        self.assertEqual(c.line(), f"421 4.4.2 {HOSTNAME} Error: timeout exceeded")
        self.assertEqual(c.expect_eof(timeout=5), b"")
        time.sleep(0.2)
        self.assertEqual(server.stdout(), "", "an unfinished message was delivered")



class InputBoundsTest(ServerTestCase):
    """A client cannot make the server buffer more than its limits: too-long lines and
    messages above data_size_limit are answered and discarded, not kept in memory."""

    MB = 1 << 20

    def test_endless_command_line(self):
        server = self.start_server()
        c = self.connect(server)
        c.reply()
        before = harness.peak_rss_kib(server.process.pid)
        for _ in range(32):
            c.send(b"a" * self.MB)
        c.send(b"\r\nNOOP\r\n")
        self.assertEqual([c.line(), c.line()], ["500 Command line too long", "250 OK"])
        grown = harness.peak_rss_kib(server.process.pid) - before
        self.assertLess(grown, bound(8 * 1024), f"32 MB on one command line grew the server by {grown} KiB")

    def test_endless_data_line(self):
        server = self.start_server(server_config(data_size_limit=0))  # no size limit at all
        c = self.connect(server)
        c.reply()
        c.cmd("HELO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        before = harness.peak_rss_kib(server.process.pid)
        for _ in range(32):
            c.send(b"b" * self.MB)
        c.send(b"\r\n.\r\nNOOP\r\n")
        self.assertEqual([c.line(), c.line()], ["500 Line too long (see RFC5321 4.5.3.1.6)", "250 OK"])
        grown = harness.peak_rss_kib(server.process.pid) - before
        self.assertLess(grown, bound(8 * 1024), f"32 MB on one DATA line grew the server by {grown} KiB")

    def test_message_above_the_size_limit(self):
        server = self.start_server(server_config(data_size_limit=self.MB))
        c = self.connect(server)
        c.reply()
        c.cmd("HELO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        c.cmd("RCPT TO:<c@d.example>")
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        before = harness.peak_rss_kib(server.process.pid)
        line = b"c" * 98 + b"\r\n"
        for _ in range(32):
            c.send(line * (self.MB // len(line)))
        c.send(b".\r\nNOOP\r\n")
        self.assertEqual([c.line(), c.line()], ["552 Error: Too much mail data", "250 OK"])
        grown = harness.peak_rss_kib(server.process.pid) - before
        self.assertLess(grown, bound(12 * 1024), f"32 MB above a 1 MB limit grew the server by {grown} KiB")


class MaxConnectionsTest(ServerTestCase):
    def test_second_connection_refused(self):
        server = self.start_server(server_config(max_connections=1))
        first = self.connect(server)
        self.assertEqual(first.reply(), [f"220 {HOSTNAME} {IDENT}"])
        second = self.connect(server)
        line = second.line()
        self.assertTrue(line.startswith("421 "), line)
        self.assertEqual(line, f"421 4.7.0 {HOSTNAME} Error: too many connections")
        self.assertEqual(second.expect_eof(timeout=5), b"")
        # The first session is unaffected.
        self.assertEqual(first.cmd("NOOP"), ["250 OK"])
        self.assertEqual(first.cmd("QUIT"), ["221 Bye"])
        first.expect_eof()
        # Once it is gone, a new client is served (the slot frees up shortly after).
        deadline = time.monotonic() + 5
        while True:
            third = self.connect(server)
            greeting = third.line()
            if greeting.startswith("220 ") or time.monotonic() > deadline:
                break
            third.close()
            time.sleep(0.05)
        self.assertEqual(greeting, f"220 {HOSTNAME} {IDENT}")


if __name__ == "__main__":
    harness.main()
