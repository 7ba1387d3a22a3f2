# SPDX-License-Identifier: Apache-2.0
"""Hostile clients (issue 9): each attack is bounded in time, the server must stay alive and
bounded in memory (RSS from /proc), and a well-behaved client must be served meanwhile.

Attacks covered elsewhere, not repeated here: 32 MB command and DATA lines and data above the
size limit (test_limits.InputBoundsTest), max_connections (test_limits.MaxConnectionsTest),
clients trickling a byte at a time (test_slowloris),
clients vanishing at every stage and bare-LF smuggling (test_wire), TLS garbage (test_tls),
misbehaving plugins (test_scripted).
"""
import contextlib
import os
import socket
import struct
import threading
import time

import harness
from harness import HOSTNAME, IDENT, ServerTestCase, server_config

GREETING = f"220 {HOSTNAME} {IDENT}"
MB = 1 << 20


def rss_kib(pid, field="VmRSS"):
    """VmRSS (current) or VmHWM (peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class AttackTestCase(ServerTestCase):
    def assert_served(self, server, within=2.0):
        """A well-behaved client gets its greeting and a NOOP answered within `within` seconds."""
        started = time.monotonic()
        c = self.connect(server, timeout=within + 1)
        self.assertEqual(c.reply(), [GREETING])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        c.close()
        took = time.monotonic() - started
        self.assertLess(took, within, f"a well-behaved client waited {took:.2f}s")
        return took


class AbandonedConnectionsTest(AttackTestCase):
    def test_many_connections_opened_and_abandoned(self):
        # 300 connections: half closed politely (FIN), half reset (RST, SO_LINGER 0), most of them
        # before reading the greeting. No descriptor may leak.
        server = self.start_server(server_config(max_connections=1000))
        self.assert_served(server)
        time.sleep(0.2)
        fds_before = open_fds(server.process.pid)
        for i in range(300):
            s = socket.create_connection((server.host, server.port), timeout=5)
            if i % 3 == 0:
                s.sendall(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n")
            if i % 2 == 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        self.assert_served(server)
        deadline = time.monotonic() + 5
        while open_fds(server.process.pid) > fds_before and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(open_fds(server.process.pid), fds_before, "descriptors leaked")

    def test_half_open_connections_time_out(self):
        # Clients that connect and never send a byte hold a slot only until the idle timeout.
        server = self.start_server(server_config(timeout=1, max_connections=50))
        idle = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(40)]
        try:
            self.assert_served(server)
            for s in idle:
                s.settimeout(5)
                data = b""
                with contextlib.suppress(ConnectionResetError):
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                self.assertEqual(data.decode(), f"{GREETING}\r\n421 4.4.2 {HOSTNAME} Error: timeout exceeded\r\n")
        finally:
            for s in idle:
                s.close()
        self.assert_served(server)


class NeverReadsTest(AttackTestCase):
    def test_pipelined_flood_from_a_client_that_never_reads(self):
        # The client sends NOOPs as fast as it can and never reads a reply. The server must stop
        # reading once its replies back up (TCP flow control), not buffer replies or commands
        # without bound. The flood stops when the client's send blocks for a second.
        server = self.start_server()
        self.assert_served(server)
        pid = server.process.pid
        before = rss_kib(pid)
        s = socket.create_connection((server.host, server.port), timeout=5)
        self.addCleanup(s.close)
        s.settimeout(1.0)
        chunk = b"NOOP\r\n" * 10000  # 60 KB
        sent = 0
        deadline = time.monotonic() + 20
        with contextlib.suppress(socket.timeout, BlockingIOError):
            while sent < 256 * MB and time.monotonic() < deadline:
                sent += s.send(chunk)
        self.assertLess(sent, 256 * MB, "the server kept reading 256 MB of commands nobody reads replies of")
        # Meanwhile the server answers others, and its memory stays bounded.
        self.assert_served(server)
        grown = rss_kib(pid, "VmHWM") - before
        print(f"\nnon-reading client: server took {sent // 1024} KiB, peak RSS grew by {grown} KiB", flush=True)
        self.assertLess(grown, (256 if harness.sanitized() else 16) * 1024,
                        f"a non-reading client grew the server by {grown} KiB "
                                           f"after {sent // 1024} KiB of commands")


class ManyRecipientsTest(AttackTestCase):
    def test_hundred_thousand_rcpts(self):
        # aiosmtpd has no recipient limit, and neither has asiosmtpd (RFC 5321 §4.5.3.1.8 asks
        # for at least 100). The envelope grows with the recipients; this bounds the cost:
        # 10^5 recipients of 20 bytes must stay under 32 MB. Replies are read concurrently.
        server = self.start_server()
        pid = server.process.pid
        before = rss_kib(pid)
        c = self.connect(server, timeout=30)
        c.reply()
        n = 100_000
        replies = []

        def reader():
            with contextlib.suppress(Exception):
                for _ in range(n + 3):
                    replies.append(c.line())

        t = threading.Thread(target=reader, daemon=True)
        c.send(b"HELO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        t.start()
        batch = b"".join(b"RCPT TO:<r%06d@d.example>\r\n" % i for i in range(n))
        c.send(batch + b"RSET\r\n")
        t.join(timeout=60)
        self.assertFalse(t.is_alive(), f"only {len(replies)} replies within 60 s")
        self.assertEqual(replies[:2], [f"250 {HOSTNAME}", "250 OK"])
        self.assertEqual(replies[2:-1], ["250 OK"] * n)
        self.assertEqual(replies[-1], "250 OK")  # the RSET
        grown = rss_kib(pid, "VmHWM") - before
        print(f"\n10^5 RCPTs: peak RSS grew by {grown} KiB", flush=True)
        # AddressSanitizer keeps freed memory in quarantine (256 MB by default): the bound is
        # for real builds; a sanitized one only has to survive.
        limit = 512 * 1024 if harness.sanitized() else 32 * 1024
        self.assertLess(grown, limit, f"10^5 recipients grew the server by {grown} KiB")
        self.assert_served(server)


class HugeMessageTest(AttackTestCase):
    GIB = 1 << 30

    def test_one_gib_of_data_against_a_1_mib_limit(self):
        # 1 GiB of valid DATA (512-byte CRLF lines, sent in 64 KiB chunks) against
        # data_size_limit 1 MiB. The engine drops every byte past the limit as it comes and
        # answers "552 Error: Too much mail data" after the dot (aiosmtpd; replies.too_much_data).
        # The server must keep reading at loopback speed with bounded memory (VmRSS sampled
        # every 10 ms during the transfer), and serve a second client's whole transaction
        # (connect ... QUIT) within 2 s, again and again, while the transfer runs; with
        # workers: 1, so the one event-loop thread must interleave them (no second thread helps).
        # test_limits.InputBoundsTest checks 32 MB the same way, without the concurrent client.
        # About 1 s on a 2-core machine (~1 GB/s over loopback, dev and asan builds alike).
        total = self.GIB
        chunk = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 9)[:510] + b"\r\n"
        chunk *= 64 * 1024 // len(chunk)
        self.assertEqual(len(chunk), 64 * 1024)
        probe_within = 2.0
        server = self.start_server(server_config(data_size_limit=MB, workers=1))
        pid = server.process.pid
        self.assert_served(server)
        before = rss_kib(pid)

        c = self.connect(server, timeout=30)
        self.assertEqual(c.reply(), [GREETING])
        self.assertEqual(c.cmd("HELO big.example"), [f"250 {HOSTNAME}"])
        self.assertEqual(c.cmd("MAIL FROM:<big@client.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<victim@server.example>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])

        sending = threading.Event()
        done = threading.Event()
        peak = [before]
        probes = []   # seconds per whole transaction of the well-behaved client
        errors = []

        def sampler():
            while not done.is_set():
                with contextlib.suppress(OSError, AssertionError):
                    peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.01)

        def prober():
            sending.wait(10)
            while not done.is_set():
                started = time.monotonic()
                try:
                    with harness.Client(server.host, server.port, timeout=probe_within + 3) as p:
                        got = [p.reply(), p.cmd("HELO probe.example"), p.cmd("MAIL FROM:<p@probe.example>"),
                               p.cmd("RCPT TO:<q@server.example>"), p.cmd("DATA")]
                        p.send(b"Subject: probe\r\n\r\nhello\r\n.\r\n")
                        got += [p.reply(), p.cmd("QUIT")]
                except Exception as e:  # reported below, in the test's thread
                    errors.append(repr(e))
                    return
                expected = [[GREETING], [f"250 {HOSTNAME}"], ["250 OK"], ["250 OK"],
                            ["354 End data with <CR><LF>.<CR><LF>"], ["250 OK"], ["221 Bye"]]
                if got != expected:
                    errors.append(f"probe replies {got}")
                    return
                if not done.is_set():  # it ran entirely during the transfer
                    probes.append(time.monotonic() - started)
                time.sleep(0.05)

        threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=prober, daemon=True)]
        for t in threads:
            t.start()
        try:
            started = time.monotonic()
            deadline = started + 50
            for i in range(total // len(chunk)):
                c.send(chunk)
                if i == 16:
                    sending.set()  # 1 MiB in: the limit is passed, the probes may start
                self.assertLess(time.monotonic(), deadline, f"only {i * len(chunk) // MB} MiB sent in 50 s")
            sent = time.monotonic() - started
            c.send(b".\r\n")
            final = c.reply()
            answered = time.monotonic() - started
        finally:
            done.set()
            sending.set()
            for t in threads:
                t.join(timeout=10)
        self.assertFalse(any(t.is_alive() for t in threads), "a helper thread did not stop")
        self.assertEqual(final, ["552 Error: Too much mail data"])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])  # the session goes on
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

        peak_kib = max(peak[0], rss_kib(pid, "VmHWM"))
        grown = peak_kib - before
        print(f"\n1 GiB DATA vs 1 MiB limit: sent in {sent:.2f}s ({total / sent / 1e6:.0f} MB/s), 552 after "
              f"{answered:.2f}s; peak RSS {before} -> {peak_kib} KiB (+{grown} KiB); {len(probes)} probe "
              f"transactions meanwhile, slowest {max(probes, default=0):.3f}s", flush=True)
        self.assertEqual(errors, [], "the well-behaved client failed during the transfer")
        self.assertGreater(len(probes), 0, "no probe transaction completed during the transfer")
        self.assertLess(max(probes), probe_within, f"a well-behaved client waited {max(probes):.2f}s")
        limit = (512 if harness.sanitized() else 64) * 1024
        self.assertLess(grown, limit, f"1 GiB above a 1 MiB limit grew the server by {grown} KiB")
        self.assert_served(server)


class NulBytesTest(AttackTestCase):
    def test_nul_bytes_in_commands(self):
        # NUL is an ordinary byte to aiosmtpd's parser: an unknown verb echoes it, a HELO name and
        # the message keep it (asiosmtpd_str has a size: C plugins must not treat them as C
        # strings). An address with a NUL, which aiosmtpd keeps too (Python's header parser
        # records a defect and goes on), is refused like any control character
        # (test_header_injection.py): the session goes on.
        server = self.start_server(server_config(plugins=["debugging"]))
        c = self.connect(server)
        self.assertEqual(c.reply(), [GREETING])
        c.send(b"NO\x00OP\r\n")
        self.assertEqual(c.reply(), ['500 Error: command "NO\x00OP" not recognized'])
        self.assertEqual(c.cmd("NOOP \x00"), ["250 OK"])
        self.assertEqual(c.cmd("HELO a\x00b"), [f"250 {HOSTNAME}"])
        self.assertEqual(c.cmd("MAIL FROM:<a\x00b@c.example>"), ["553 5.1.3 Error: malformed address"])
        self.assertEqual(c.cmd("MAIL FROM:<a@c.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<d@e.example>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
        self.assertEqual(c.reply(), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        out = server.wait_output(lambda o: "END MESSAGE" in o)
        self.assertIn("a\x00b", out)
        self.assert_served(server)


if __name__ == "__main__":
    harness.main()
