# SPDX-License-Identifier: Apache-2.0
"""The proxy plugin with `protocol: lmtp` (LHLO, one reply per recipient after the dot). Into real
Dovecot (a private instance per test, see dovecot_instance.py): the message lands in Dovecot's
Maildir; a deferral after the dot makes the message 451 (never a 250 for a message not delivered
to everyone). Into asiosmtpd's own LMTP listener with the lmtp_split fixture, for the mixed
per-recipient answers: delivered + refused is 250 listing the refusal, any deferral 451, all
refused their 5xx."""
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


LMTP_SPLIT = harness.fixture_plugin("lmtp_split")


@unittest.skipUnless(os.path.exists(LMTP_SPLIT), f"{LMTP_SPLIT} is not built")
class LmtpUpstreamRepliesTest(ServerTestCase):
    """Recipients starting with "bad" are refused (550) after the dot by the upstream, "later" ones
    deferred (452), the rest delivered (tests/fixtures/plugins/lmtp_split.cpp)."""

    def setUp(self):
        self.upstream = self.start_server(server_config(
            plugins=[{"path": LMTP_SPLIT, "config": {}}], listen=[{"address": HOST, "port": 0, "protocol": "lmtp"}]))
        self.relay = self.start_server(server_config(plugins=[{"name": "proxy", "config": {
            "host": "127.0.0.1", "port": self.upstream.port, "protocol": "lmtp", "timeout": 10,
            "helo": "relay.test"}}]))

    def send(self, rcpts):
        with smtplib.SMTP(HOST, self.relay.port, timeout=20) as c:
            c.ehlo("client.test")
            c.mail("alice@example.org")
            for r in rcpts:
                self.assertEqual(c.rcpt(r)[0], 250)
            return c.data(MESSAGE)

    def test_all_delivered(self):
        code, text = self.send(["one@x.example", "two@x.example"])
        self.assertEqual(code, 250, text)
        self.assertNotIn(b"refused", text)

    def test_delivered_and_refused_is_250_listing_the_refusal(self):
        code, text = self.send(["one@x.example", "bad@x.example"])
        self.assertEqual(code, 250, text)
        self.assertIn(b"refused <bad@x.example>: 550 5.1.1 <bad@x.example> no such user", text)
        self.relay.wait_output(lambda e: "refused <bad@x.example>: 550" in e, which="stderr")

    def test_a_deferral_makes_the_message_451(self):
        code, text = self.send(["one@x.example", "later@x.example", "bad@x.example"])
        self.assertEqual(code, 451, text)
        self.assertIn(b"refused <later@x.example>: 452", text)
        self.assertIn(b"refused <bad@x.example>: 550", text)

    def test_an_lmtp_client_gets_each_recipients_own_reply(self):
        # On an LMTP listener the proxy answers each recipient with the upstream's reply to it
        # (a duplicate recipient twice, in order), never the message's 451 or 250 for all.
        relay = self.start_server(server_config(plugins=[{"name": "proxy", "config": {
            "host": "127.0.0.1", "port": self.upstream.port, "protocol": "lmtp", "timeout": 10,
            "helo": "relay.test"}}], listen=[{"address": HOST, "port": 0, "protocol": "lmtp"}]))
        c = self.connect(relay)
        c.reply()
        c.cmd("LHLO client.test")
        rcpts = ["one@x.example", "later@x.example", "bad@x.example", "one@x.example"]
        c.send("MAIL FROM:<alice@example.org>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts))
        self.assertEqual([c.reply() for _ in range(5)], [["250 OK"]] * 5)
        self.assertEqual(c.cmd("DATA")[0][:3], "354")
        c.send(MESSAGE + b".\r\n")
        codes = [c.reply()[0][:3] for _ in rcpts]
        self.assertEqual(codes, ["250", "452", "550", "250"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_an_unknown_protocol_is_a_config_error(self):
        p = harness.run_binary(["--check-config"], server_config(plugins=[{"name": "proxy", "config": {
            "host": "127.0.0.1", "port": 25, "protocol": "lmpt"}}]))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn('protocol: must be smtp or lmtp, not "lmpt"', p.stderr)

    def test_all_refused_is_their_5xx(self):
        code, text = self.send(["bad1@x.example", "bad2@x.example"])
        self.assertEqual(code, 550, text)
        self.assertIn(b"Upstream accepted no recipient", text)


if __name__ == "__main__":
    harness.main()
