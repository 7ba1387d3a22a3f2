# SPDX-License-Identifier: Apache-2.0
"""The SDK example plugin `ping`: a new SMTP command, as aiosmtpd's documented smtp_PING."""
import smtplib

import harness
from harness import HOSTNAME, ServerTestCase, server_config

SUPPORTED = "Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP PING QUIT RCPT RSET VRFY"


class PingTest(ServerTestCase):
    def setUp(self):
        self.server = self.start_server(server_config(plugins=["ping", "sink"]))

    def test_docmd_ping(self):
        # No HELO needed first, as in aiosmtpd's example.
        with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as s:
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))
            self.assertEqual(s.docmd("PING", "with an argument"), (259, b"Pong"))
            self.assertEqual(s.docmd("ping"), (259, b"Pong"))
            s.ehlo("client.example")
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))

    def test_help_lists_ping(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as s:
            code, text = s.docmd("HELP")
            self.assertEqual(code, 250)
            self.assertIn("PING", text.decode().split())
            self.assertEqual(text.decode(), SUPPORTED)
            self.assertEqual(s.docmd("HELP", "PING"), (250, b"Syntax: PING"))

    def test_ping_inside_a_transaction(self):
        # A plugin command does not disturb the transaction around it.
        with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@b.example"), (250, b"OK"))
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))
            self.assertEqual(s.rcpt("c@d.example"), (250, b"OK"))
            self.assertEqual(s.data(b"Subject: p\r\n\r\nx\r\n"), (250, b"OK"))


if __name__ == "__main__":
    harness.main()
