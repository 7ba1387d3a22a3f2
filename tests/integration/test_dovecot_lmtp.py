# SPDX-License-Identifier: Apache-2.0
"""Real Dovecot behind asiosmtpd (a private instance per test, see dovecot_instance.py): the proxy
plugin with `protocol: lmtp` relays into Dovecot's LMTP server (LHLO, one reply per recipient
after the dot), and the message lands in Dovecot's Maildir; a recipient Dovecot defers after the
dot makes the message 451 (never a 250 for a message not delivered to everyone)."""
import os
import smtplib
import tempfile
import unittest

import dovecot_instance
import harness
from harness import HOST, ServerTestCase, server_config
from delivery import rmtree

MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: via dovecot\r\n\r\n"
           b"first line\r\n.leading dot\r\n\r\nlast line\r\n")


@unittest.skipUnless(dovecot_instance.available(), "Dovecot is not installed (.ci/setup-tests installs it)")
class DovecotLmtpTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-dovecot-")
        self.addCleanup(rmtree, self.dir)
        self.dc = dovecot_instance.DovecotInstance(self.dir)
        self.dc.start()
        self.addCleanup(self.dc.stop)

    def proxy(self, **config):
        cfg = {"host": "127.0.0.1", "port": self.dc.port, "protocol": "lmtp", "timeout": 10, "helo": "relay.test"}
        cfg.update(config)
        return self.start_server(server_config(plugins=[{"name": "proxy", "config": cfg}]))

    def test_relayed_into_dovecots_maildir(self):
        server = self.proxy()
        with smtplib.SMTP(HOST, server.port, timeout=20) as c:
            refused = c.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE)
            self.assertEqual(refused, {})
            # A second transaction on the same session (and upstream connection).
            c.sendmail("alice@example.org", ["dave@example.net"], MESSAGE.replace(b"via dovecot", b"second"))
        files = self.dc.wait_messages(3)
        self.assertEqual(len(files), 3)
        for f in files:
            headers, _, body = f.partition(b"\n\n")
            self.assertIn(b"Return-Path: <alice@example.org>", headers)
            self.assertIn(b"with LMTP", headers)
            self.assertIn(b"X-Peer: 127.0.0.1", headers)  # the proxy's header, before Dovecot's store
            self.assertEqual(body.replace(b"\r\n", b"\n"), b"first line\n.leading dot\n\nlast line\n")
        log = self.dc.wait_log("saved mail to INBOX", 3)
        for rcpt in ("bob@example.net", "carol@example.net", "dave@example.net"):
            self.assertIn(f"lmtp({rcpt})", log)

    def test_a_deferral_after_the_dot_is_451(self):
        server = self.proxy()
        # Dovecot writes as another user (or as us): a tmp/ it cannot write makes every save fail
        # after the dot with a per-recipient 4xx.
        tmp = os.path.join(self.dc.maildir, "tmp")
        os.chmod(tmp, 0)
        self.addCleanup(os.chmod, tmp, 0o700)
        with smtplib.SMTP(HOST, server.port, timeout=20) as c:
            c.ehlo("client.test")
            c.mail("alice@example.org")
            self.assertEqual(c.rcpt("bob@example.net")[0], 250)
            self.assertEqual(c.rcpt("carol@example.net")[0], 250)
            code, text = c.data(MESSAGE)
        self.assertEqual(code, 451, text)
        self.assertIn(b"refused <bob@example.net>: 451", text)
        self.assertIn(b"refused <carol@example.net>: 451", text)
        self.assertEqual(self.dc.messages(), [])
        server.wait_output(lambda e: "refused <carol@example.net>: 451" in e, which="stderr")

    def test_lhlo_is_required(self):
        # The plain SMTP dialect against an LMTP server is refused (EHLO and HELO): 451, not relayed.
        server = self.proxy(protocol="smtp")
        with smtplib.SMTP(HOST, server.port, timeout=20) as c:
            c.ehlo("client.test")
            code, text = c.mail("alice@example.org")
        self.assertEqual(code, 451, text)
        self.assertIn(b"Upstream unavailable", text)


if __name__ == "__main__":
    harness.main()
