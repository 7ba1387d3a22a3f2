# SPDX-License-Identifier: Apache-2.0
"""The proxy plugin with `protocol: lmtp` and `host: unix:<path>` into a real Dovecot's LMTP
UNIX socket (a private instance: dovecot_instance.py), with per-recipient outcomes reaching the
client: Dovecot knows bob and carol (carol's quota is 1 KiB), not nobody.

- A client on an LMTP UNIX listener of asiosmtpd: nobody is refused at RCPT with Dovecot's 550;
  after the dot bob gets 250 and carol Dovecot's quota refusal, each its own reply (RFC 2033 §4.2),
  and only bob's copy is in the Maildir. The whole chain is UNIX sockets: client -> asiosmtpd
  (LMTP) -> Dovecot (LMTP).
- An SMTP client (TCP): nobody refused at RCPT, the message 250 listing carol's refusal.
Needs Dovecot (dovecot-core, dovecot-lmtpd); skipped otherwise."""
import os
import smtplib
import socket
import tempfile
import unittest

import dovecot_instance
import harness
from harness import HOST, ServerTestCase, server_config
from delivery import rmtree

# Dovecot's quota plugin (dovecot-core), for one user only: carol's rule makes her mailbox full
# for any message over 1 KiB; the check runs when the message is saved (after the dot), as
# lmtp_rcpt_check_quota is off.
QUOTA = """\
mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
}
"""
USERS = {"bob@example.net": "", "carol@example.net": "userdb_quota_rule=*:storage=1k"}

MESSAGE = (b"From: alice@example.org\r\nSubject: over unix sockets\r\n\r\n" +
           b"a line of the body that is long enough to pass a quota of one kilobyte\r\n" * 40)


class UnixClient(harness.Client):
    """harness.Client over a UNIX socket."""

    def __init__(self, path, timeout=harness.IO_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""


@unittest.skipUnless(dovecot_instance.available(), "Dovecot is not installed (.ci/setup-tests installs it)")
class DovecotLmtpUnixTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-dovecot-unix-")
        self.addCleanup(rmtree, self.dir)
        self.dc = dovecot_instance.DovecotInstance(self.dir, users=USERS, extra=QUOTA)
        self.dc.start()
        self.addCleanup(self.dc.stop)
        self.lmtp_path = os.path.join(self.dir, "lmtp.sock")
        proxy = {"host": "unix:" + self.dc.socket, "protocol": "lmtp", "timeout": 10, "helo": "relay.test"}
        # A TCP listener first: the harness finds the server by it.
        self.server = self.start_server(server_config(
            plugins=[{"name": "proxy", "config": proxy}],
            listen=[{"address": HOST, "port": 0}, {"path": self.lmtp_path, "protocol": "lmtp"}]))

    def test_lmtp_client_gets_each_recipients_own_reply(self):
        c = UnixClient(self.lmtp_path)
        self.addCleanup(c.close)
        c.reply()
        c.cmd("LHLO mta.example")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<bob@example.net>"), ["250 OK"])
        refused = c.cmd("RCPT TO:<nobody@example.net>")
        self.assertEqual(len(refused), 1, refused)
        self.assertRegex(refused[0], r"^550 5\.1\.1 .*nobody@example\.net.*(doesn't exist|[Uu]nknown)")
        self.assertEqual(c.cmd("RCPT TO:<carol@example.net>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA")[0][:3], "354")
        c.send(MESSAGE + b".\r\n")
        bob, carol = c.reply(), c.reply()
        self.assertEqual(len(bob), 1, bob)
        self.assertRegex(bob[0], r"^250 2\.0\.0 <bob@example\.net> .*Saved")
        self.assertEqual(len(carol), 1, carol)
        self.assertRegex(carol[0], r"^552 5\.2\.2 <carol@example\.net> .*[Qq]uota")
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        files = self.dc.wait_messages(1)
        self.assertEqual(len(files), 1)
        self.assertIn(b"Subject: over unix sockets", files[0])
        self.assertIn(b"Return-Path: <alice@example.org>", files[0])
        log = self.dc.wait_log("saved mail to INBOX")
        self.assertIn("lmtp(bob@example.net)", log)
        err = self.server.wait_output(lambda e: "refused <carol@example.net>: 552" in e, which="stderr")
        self.assertIn(f"upstream=unix:{self.dc.socket}", err)

    def test_smtp_client_gets_250_listing_the_refusal(self):
        with smtplib.SMTP(HOST, self.server.port, timeout=20) as c:
            c.ehlo("client.test")
            c.mail("alice@example.org")
            self.assertEqual(c.rcpt("bob@example.net")[0], 250)
            self.assertEqual(c.rcpt("nobody@example.net")[0], 550)
            self.assertEqual(c.rcpt("carol@example.net")[0], 250)
            code, text = c.data(MESSAGE)
        self.assertEqual(code, 250, text)
        self.assertIn(b"refused <carol@example.net>: 552 5.2.2", text)
        self.assertEqual(len(self.dc.wait_messages(1)), 1)


if __name__ == "__main__":
    harness.main()
