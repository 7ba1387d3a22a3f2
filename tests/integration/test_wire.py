# SPDX-License-Identifier: Apache-2.0
"""Exact bytes on the wire through a raw socket: greeting, EHLO lines per config, pipelining,
SMTP smuggling, several listeners, LMTP."""
import socket
import subprocess
import time

import harness
from harness import HOSTNAME, IDENT, ServerTestCase, server_config


def version():
    p = subprocess.run([harness.BIN, "--version"], capture_output=True, text=True, timeout=10)
    # "asiosmtpd 0.1.0 (plugin ABI 1.0)"
    return p.stdout.split()[1]


class GreetingTest(ServerTestCase):
    def test_greeting_from_config(self):
        server = self.start_server(server_config(hostname="smtp.example.org", ident="Example ESMTP 9.9"))
        c = self.connect(server)
        self.assertEqual(c.reply(), ["220 smtp.example.org Example ESMTP 9.9"])
        self.assertEqual(c.cmd("HELO client.example"), ["250 smtp.example.org"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        self.assertEqual(c.expect_eof(), b"")

    def test_default_ident_is_name_and_version(self):
        server = self.start_server(server_config(ident=None))
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} asiosmtpd {version()}"])


class EhloTest(ServerTestCase):
    def ehlo(self, **server):
        srv = self.start_server(server_config(**server))
        c = self.connect(srv)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        return c.cmd("EHLO client.example")

    def test_defaults(self):
        self.assertEqual(self.ehlo(), [f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250 HELP"])

    def test_size_custom_and_pipelining(self):
        self.assertEqual(self.ehlo(data_size_limit=1000, advertise_pipelining=True),
                         [f"250-{HOSTNAME}", "250-SIZE 1000", "250-8BITMIME", "250-PIPELINING", "250 HELP"])

    def test_no_size_no_8bitmime(self):
        self.assertEqual(self.ehlo(data_size_limit=0, decode_data=True), [f"250-{HOSTNAME}", "250 HELP"])

    def test_smtputf8_and_pipelining(self):
        self.assertEqual(self.ehlo(enable_smtputf8=True, advertise_pipelining=True),
                         [f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250-SMTPUTF8",
                          "250-PIPELINING", "250 HELP"])


class PipeliningTest(ServerTestCase):
    def test_transaction_in_one_send(self):
        server = self.start_server(server_config(plugins=["debugging"]))
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        c.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
               b"RCPT TO:<a@b@c>\r\nRCPT TO:<e@f.example>\r\nDATA\r\nSubject: pipelined\r\n\r\n"
               b"body\r\n.\r\nNOOP\r\nQUIT\r\n")
        replies = []
        for _ in range(8):
            replies.append(c.reply())
        self.assertEqual(replies, [
            [f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250 HELP"],
            ["250 OK"],
            ["250 OK"],
            ["553 5.1.3 Error: malformed address"],
            ["250 OK"],
            ["354 End data with <CR><LF>.<CR><LF>"],
            ["250 OK"],
            ["250 OK"],
        ])
        self.assertEqual(c.reply(), ["221 Bye"])
        self.assertEqual(c.expect_eof(), b"")
        out = server.wait_output(lambda t: "END MESSAGE" in t)
        self.assertIn("Subject: pipelined\n", out)

    def test_two_transactions_in_one_send(self):
        server = self.start_server(server_config(plugins=["debugging"]))
        c = self.connect(server)
        c.reply()
        one = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: %d\r\n\r\nx\r\n.\r\n"
        c.send(b"HELO client.example\r\n" + one % 1 + one % 2 + b"QUIT\r\n")
        got = [c.line() for _ in range(10)]
        self.assertEqual(got, [f"250 {HOSTNAME}"] + ["250 OK", "250 OK", "354 End data with <CR><LF>.<CR><LF>",
                                                      "250 OK"] * 2 + ["221 Bye"])
        out = server.wait_output(lambda t: t.count("END MESSAGE") == 2)
        self.assertLess(out.index("Subject: 1\n"), out.index("Subject: 2\n"))


class BurstTest(ServerTestCase):
    def test_thousand_pipelined_commands(self):
        # Far more replies than a socket buffer holds while the client is still sending.
        server = self.start_server()
        c = self.connect(server)
        c.reply()
        n = 2000
        c.send(b"HELO client.example\r\n" + b"NOOP\r\n" * n + b"QUIT\r\n")
        self.assertEqual(c.line(), f"250 {HOSTNAME}")
        got = [c.line() for _ in range(n)]
        self.assertEqual(got, ["250 OK"] * n)
        self.assertEqual(c.line(), "221 Bye")
        self.assertEqual(c.expect_eof(), b"")

    def test_abrupt_disconnects(self):
        # Clients vanishing at every stage do not disturb the server.
        server = self.start_server(server_config(plugins=["debugging"]))
        stages = [b"", b"EHLO x\r\n", b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n",
                  b"HELO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: cut\r\n\r\nhalf",
                  b"NOOP\r\n" * 500]
        for data in stages:
            s = socket.create_connection((server.host, server.port), timeout=5)
            if data:
                s.sendall(data)
            s.close()
        time.sleep(0.3)
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        self.assertEqual(server.stdout(), "", "a cut message was delivered")


class SmugglingTest(ServerTestCase):
    def test_bare_lf_dot_does_not_end_data(self):
        server = self.start_server(server_config(plugins=["debugging"]))
        c = self.connect(server)
        c.reply()
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send(b"Subject: smuggling\r\n\r\nTesting\n.\nMAIL FROM:<evil1@x.example>\r\nRCPT TO:<v@x.example>\r\n"
               b"DATA\r\nmore\n.\r\nMAIL FROM:<evil2@x.example>\r\nNOOP\r\n"
               b"more\r.\r\nNOOP\r\n\r\n.\nNOOP\r\n")
        # None of those ended the message: the server must stay silent.
        c.sock.settimeout(1.0)
        try:
            early = c.sock.recv(4096)
        except socket.timeout:
            early = None
        c.sock.settimeout(harness.IO_TIMEOUT)
        self.assertIsNone(early, f"the server answered before CRLF.CRLF: {early!r}")
        c.send(b"end\r\n.\r\n")
        self.assertEqual(c.reply(), ["250 OK"])
        # Exactly one message, and the envelope is reset: the smuggled MAIL was content.
        self.assertEqual(c.cmd("RCPT TO:<d@e.example>"), ["503 Error: need MAIL command"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        out = server.wait_output(lambda t: "END MESSAGE" in t)
        self.assertEqual(out.count("MESSAGE FOLLOWS"), 1)
        # The smuggled bytes are in the message (Debugging splits on LF and CR too; the
        # CRLF-framed line ".\nNOOP" is dot-unstuffed to "\nNOOP", as aiosmtpd does).
        self.assertIn("Testing\n.\nMAIL FROM:<evil1@x.example>\nRCPT TO:<v@x.example>\nDATA\nmore\n.\n"
                      "MAIL FROM:<evil2@x.example>\nNOOP\nmore\n.\nNOOP\n\n\nNOOP\nend\n", out)


class ListenersTest(ServerTestCase):
    def test_two_listeners(self):
        server = self.start_server(server_config(listen=[{"address": "127.0.0.1", "port": 0},
                                                         {"address": "127.0.0.1", "port": 0}]))
        self.assertEqual(len(server.listeners), 2)
        ports = [p for _, p, _ in server.listeners]
        self.assertNotEqual(ports[0], ports[1])
        for port in ports:
            c = harness.Client("127.0.0.1", port)
            self.addCleanup(c.close)
            self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
            self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_lmtp_one_reply_per_recipient(self):
        server = self.start_server(server_config(listen=[{"address": "127.0.0.1", "port": 0, "protocol": "lmtp"}]))
        self.assertEqual(server.listeners[0][2], "lmtp")
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("LHLO client.example")[0], f"250-{HOSTNAME}")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<e@f.example>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send(b"Subject: lmtp\r\n\r\nx\r\n.\r\n")
        self.assertEqual([c.line(), c.line()], ["250 OK", "250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])


if __name__ == "__main__":
    harness.main()
