# SPDX-License-Identifier: Apache-2.0
"""Real Postfix on both sides of asiosmtpd (a private instance per test, see postfix_instance.py):
mail submitted with Postfix's own sendmail(1) is relayed by that Postfix into asiosmtpd, which
stores it in a Maildir; the stored message is the one that was submitted (plus the trace
headers Postfix adds), and Postfix's log shows asiosmtpd's 250. With server.enable_dsn, Postfix
passes sendmail's DSN requests (RET, ENVID, NOTIFY, ORCPT) on and the plugins see them. (Postfix's
SMTP client never sends BDAT: test_chunking_postfix.py shows it uses DATA either way.)"""
import glob
import os
import tempfile
import unittest

import harness
import postfix_instance
from harness import ServerTestCase, server_config
from delivery import rmtree

MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: via postfix\r\n\r\n"
           b"first line\r\n.leading dot\r\n\r\nlast line\r\n")


def stored(maildir):
    out = []
    for f in sorted(glob.glob(os.path.join(maildir, "new", "*"))):
        with open(f, "rb") as fh:
            out.append(fh.read())
    return out


@unittest.skipUnless(postfix_instance.available(), "Postfix is not installed (.ci/setup-tests installs it)")
class PostfixClientTest(ServerTestCase):
    """Postfix as the client: its smtp(8) delivers into asiosmtpd."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-postfix-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")

    def relay_through_postfix(self, messages, plugins=(), options=(), **server):
        srv = self.start_server(server_config(
            plugins=list(plugins) + [{"name": "maildir", "config": {"path": self.maildir}}], **server))
        pf = postfix_instance.PostfixInstance(self.dir, relayhost=(srv.host, srv.port))
        pf.start()
        self.addCleanup(pf.stop)
        for sender, rcpts, msg in messages:
            pf.sendmail(sender, rcpts, msg, options)
        sent = pf.wait_log(r"status=sent", len(messages))
        return srv, pf, sent

    def test_sendmail_relayed_into_asiosmtpd(self):
        srv, pf, sent = self.relay_through_postfix([("alice@example.org", ["bob@example.net"], MESSAGE)])
        self.assertRegex(sent[0], r"to=<bob@example.net>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+")
        self.assertIn("(250 OK)", sent[0])
        files = stored(self.maildir)
        self.assertEqual(len(files), 1)
        # Postfix adds its trace headers (Received, Message-Id, Date...); the body arrives byte-exact.
        headers, _, body = files[0].partition(b"\r\n\r\n") if b"\r\n\r\n" in files[0] else files[0].partition(b"\n\n")
        self.assertIn(b"Subject: via postfix", headers)
        self.assertIn(b"by postfix.test (Postfix", headers)
        self.assertTrue(body.replace(b"\r\n", b"\n").startswith(b"first line\n.leading dot\n\nlast line\n"), body)
        self.assertRegex(srv.stderr(), r"from=<alice@example.org>")

    def test_many_recipients_and_messages(self):
        msgs = [(f"s{i}@example.org", [f"r{i}a@example.net", f"r{i}b@example.net"],
                 MESSAGE.replace(b"via postfix", f"number {i}".encode())) for i in range(5)]
        _, pf, sent = self.relay_through_postfix(msgs)
        pf.wait_log(r"status=sent", 10)
        files = stored(self.maildir)
        self.assertEqual(len(files), 5)
        self.assertEqual(sorted(b"number" in f for f in files), [True] * 5)

    def test_dsn_parameters_from_postfix(self):
        # sendmail's -N/-R/-V become NOTIFY/ORCPT, RET and ENVID on Postfix's MAIL and RCPT once
        # asiosmtpd offers DSN; the plugins see them as the client sent them.
        log_dsn = {"path": harness.fixture_plugin("scripted"),
                   "config": {"hooks": {"DATA": {"log": "dsn mail=[{params}] rcpts=[{rcpt_params}]"}}}}
        srv, pf, sent = self.relay_through_postfix(
            [("alice@example.org", ["bob@example.net"], MESSAGE)], plugins=[log_dsn],
            options=("-N", "success,failure", "-R", "hdrs", "-V", "Env.ID-42"), enable_dsn=True)
        self.assertIn("(250 OK)", sent[0])
        srv.wait_output(lambda e: "dsn mail=[" in e, which="stderr")
        line = next(x for x in srv.stderr().splitlines() if "dsn mail=[" in x)
        self.assertIn("RET=HDRS", line)
        self.assertIn("ENVID=Env.ID-42", line)
        self.assertIn("bob@example.net(ORCPT=rfc822;bob@example.net,NOTIFY=SUCCESS,FAILURE)", line)

    def test_without_dsn_postfix_sends_no_parameters(self):
        log_dsn = {"path": harness.fixture_plugin("scripted"),
                   "config": {"hooks": {"DATA": {"log": "dsn mail=[{params}] rcpts=[{rcpt_params}]"}}}}
        srv, pf, sent = self.relay_through_postfix(
            [("alice@example.org", ["bob@example.net"], MESSAGE)], plugins=[log_dsn],
            options=("-N", "success,failure", "-R", "hdrs", "-V", "Env.ID-42"))
        self.assertIn("(250 OK)", sent[0])
        srv.wait_output(lambda e: "dsn mail=[" in e, which="stderr")
        line = next(x for x in srv.stderr().splitlines() if "dsn mail=[" in x)
        self.assertNotIn("RET=", line)
        self.assertNotIn("NOTIFY=", line)


if __name__ == "__main__":
    harness.main()
