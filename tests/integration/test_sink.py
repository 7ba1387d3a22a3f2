# SPDX-License-Identifier: Apache-2.0
"""The `sink` plugin under load: many messages in one session, several concurrent sessions."""
import smtplib
import socket
import threading

import harness
from harness import ServerTestCase, server_config

MESSAGES_PER_SESSION = 100
SESSIONS = 8
MESSAGES_PER_CONCURRENT_SESSION = 25



def transaction(s, i):
    """One message through the low-level calls, returning every reply code."""
    body = f"Subject: message {i}\r\n\r\nbody of message {i}\r\n".encode()
    return (s.mail(f"from{i}@b.example")[0], s.rcpt(f"to{i}@d.example")[0],
            s.rcpt(f"cc{i}@d.example")[0], s.data(body)[0])


class SinkTest(ServerTestCase):
    def setUp(self):
        self.server = self.start_server(server_config(plugins=["sink"]))

    def test_many_messages_one_session(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as s:
            s.ehlo("client.example")
            codes = [transaction(s, i) for i in range(MESSAGES_PER_SESSION)]
            self.assertEqual(s.noop(), (250, b"OK"))
        self.assertEqual(codes, [(250, 250, 250, 250)] * MESSAGES_PER_SESSION)

    def test_concurrent_sessions(self):
        results = {}
        errors = []
        start = threading.Barrier(SESSIONS, timeout=10)

        def session(n):
            try:
                with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as s:
                    start.wait()  # all connected at once
                    s.ehlo(f"client{n}.example")
                    results[n] = [transaction(s, n * 1000 + i) for i in range(MESSAGES_PER_CONCURRENT_SESSION)]
            except Exception as e:  # reported below, in the main thread
                errors.append(f"session {n}: {e!r}")

        threads = [threading.Thread(target=session, args=(n,), daemon=True) for n in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertFalse(any(t.is_alive() for t in threads), "a session thread did not finish within 60 s")
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), list(range(SESSIONS)))
        for n in range(SESSIONS):
            self.assertEqual(results[n], [(250, 250, 250, 250)] * MESSAGES_PER_CONCURRENT_SESSION, f"session {n}")

    def test_large_message(self):
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2000  # about 2 MB
        with smtplib.SMTP(self.server.host, self.server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@b.example", [f"SIZE={len(body)}"]), (250, b"OK"))
            self.assertEqual(s.rcpt("c@d.example"), (250, b"OK"))
            self.assertEqual(s.data(body), (250, b"OK"))

    def test_messages_are_streamed_not_held(self):
        # sink takes DATA in chunks (ABI 1.2, DATA_CHUNK): the server never holds a whole
        # message for it, so three 48 MiB messages leave its peak RSS far below one message.
        limit = 64 * 1024 * 1024
        big = self.start_server(server_config(plugins=["sink"], data_size_limit=limit, workers=1))
        peak_before = harness.peak_rss_kib(big.process.pid)
        line = b"y" * 998 + b"\r\n"
        body = b"Subject: huge\r\n\r\n" + line * (48 * 1049)
        with socket.create_connection((big.host, big.port), timeout=30) as c:
            f = c.makefile("rb")
            f.readline()
            c.sendall(b"EHLO client.example\r\n")
            while f.readline()[:4] != b"250 ":
                pass
            for _ in range(3):
                c.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
                self.assertEqual([f.readline()[:3] for _ in range(3)], [b"250", b"250", b"354"])
                c.sendall(body + b".\r\n")
                self.assertEqual(f.readline(), b"250 OK\r\n")
        grown_mib = (harness.peak_rss_kib(big.process.pid) - peak_before) / 1024
        bound = 16 if not harness.sanitized() else 160
        self.assertLess(grown_mib, bound, f"peak RSS grew {grown_mib:.1f} MiB for 48 MiB messages")

    def test_size_limit(self):
        # A message above data_size_limit: aiosmtpd's 552 after DATA; the session goes on.
        small = self.start_server(server_config(plugins=["sink"], data_size_limit=1000))
        with smtplib.SMTP(small.host, small.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@b.example"), (250, b"OK"))
            self.assertEqual(s.rcpt("c@d.example"), (250, b"OK"))
            self.assertEqual(s.data(b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * 20),
                             (552, b"Error: Too much mail data"))
            self.assertEqual(s.noop(), (250, b"OK"))


if __name__ == "__main__":
    harness.main()
