# SPDX-License-Identifier: Apache-2.0
"""The proxy plugin relaying into a real Postfix (Debian's, a private instance:
postfix_instance.py) with DSN and BDAT: the client's RET, ENVID, NOTIFY and ORCPT reach Postfix,
which acts on them, and the message goes by BDAT.

Postfix discards the recipients' copies (default_transport = discard) and routes mail for the
sender's domain to a second asiosmtpd with a Maildir, so the success notification Postfix sends
for NOTIFY=SUCCESS is the record: it carries the ENVID (Original-Envelope-Id), the ORCPT
(Original-Recipient), names only the recipient that asked for it (the other said NOTIFY=NEVER),
and returns only the headers (RET=HDRS). Postfix's log shows `bdat=1` for the proxy's session,
and the client gets Postfix's BDAT reply. Needs root (Postfix's master) and the postfix package;
skipped otherwise."""
import os
import re
import tempfile
import time
import unittest

import harness
import postfix_instance
from delivery import maildir_files, rmtree
from harness import HOST, ServerTestCase, server_config

MESSAGE = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: dsn through postfix\r\n\r\n"
           b"the body, which RET=HDRS keeps out of the notification\r\n")


@unittest.skipUnless(os.geteuid() == 0, "a private Postfix instance needs root")
@unittest.skipUnless(postfix_instance.available(), "Debian's postfix is not installed")
class PostfixUpstreamDsnTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-postfix-dsn-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")
        # Where Postfix sends mail for b.example (the sender's notifications).
        self.notices = self.start_server(server_config(plugins=[{"name": "maildir",
                                                                 "config": {"path": self.maildir}}]))
        self.postfix = postfix_instance.PostfixInstance(self.dir, smtpd=True, main={
            "relay_domains": "",
            "default_transport": "discard",
            "relay_transport": "discard",
            "local_transport": "discard",
            "transport_maps": f"inline:{{b.example=smtp:[{HOST}]:{self.notices.port}}}",
        })
        self.addCleanup(self.postfix.stop)
        self.postfix.start()
        self.relay = self.start_server(server_config(
            plugins=[{"name": "proxy", "config": {"host": HOST, "port": self.postfix.port, "timeout": 10}}],
            enable_dsn=True, enable_chunking=True))

    def test_dsn_parameters_and_bdat_reach_postfix(self):
        c = self.connect(self.relay)
        c.line()
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> RET=HDRS ENVID=env+2Bid.42"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Bc@d.example"),
                         ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<e@d.example> NOTIFY=NEVER"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send(MESSAGE + b".\r\n")
        reply = c.reply()
        c.cmd("QUIT")
        # Postfix's reply to BDAT ("<n> bytes queued as"), not DATA's ("queued as").
        m = re.fullmatch(r"250 2\.0\.0 Ok: (\d+) bytes queued as (\w+)", reply[0])
        self.assertIsNotNone(m, reply)
        queue_id = m.group(2)
        self.postfix.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=2 bdat=1")
        self.postfix.wait_log(re.escape(f"{queue_id}: sender delivery status notification: "))

        # The notification, through Postfix's smtp client into the second asiosmtpd.
        notices = self.wait_maildir(1)
        self.assertEqual(len(notices), 1, notices)
        dsn = notices[0].replace(b"\r\n", b"\n")
        self.assertIn(b"X-MailFrom: <>\n", dsn)  # a notification's null sender
        self.assertIn(b"X-RcptTo: a@b.example\n", dsn)
        self.assertIn(b"report-type=delivery-status", dsn)
        self.assertRegex(dsn, rb"\nOriginal-Envelope-Id: env\+id\.42\n")
        self.assertRegex(dsn, rb"\nFinal-Recipient: rfc822; ?c@d\.example\n")
        self.assertRegex(dsn, rb"\nOriginal-Recipient: rfc822; ?orig\+c@d\.example\n")
        self.assertRegex(dsn, rb"\nAction: delivered\n")
        self.assertNotIn(b"e@d.example", dsn)  # NOTIFY=NEVER
        # RET=HDRS: the headers come back, the body does not.
        self.assertIn(b"Content-Type: text/rfc822-headers", dsn)
        self.assertIn(b"Subject: dsn through postfix", dsn)
        self.assertNotIn(b"the body, which", dsn)

    def wait_maildir(self, count, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            files = list(maildir_files(self.maildir).values())
            if len(files) >= count or time.monotonic() > deadline:
                return files
            time.sleep(0.1)


if __name__ == "__main__":
    harness.main()
