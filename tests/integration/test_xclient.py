# SPDX-License-Identifier: Apache-2.0
"""XCLIENT (Postfix's XCLIENT_README; server.xclient_networks): not offered by default; offered
to clients in the networks only; Postfix's refusals; accepted, the session starts over with a new
greeting as the named client: the plugins see it (debugging's X-Peer), the access plugin judges
it (reject_networks at CONNECT, relay_networks at RCPT), the Received field and the log name it."""
import email
import email.policy
import os
import re
import smtplib
import tempfile

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config
from delivery import maildir_files, rmtree

GREETING = f"220 {HOSTNAME} {IDENT}"
KEYWORD = "250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"


class XclientTest(ServerTestCase):
    def test_not_offered_by_default(self):
        server = self.start_server()
        c = self.connect(server)
        c.reply()
        self.assertNotIn(KEYWORD, c.cmd("EHLO proxy.example"))
        self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.1"), ['500 Error: command "XCLIENT" not recognized'])

    def test_client_outside_the_networks(self):
        server = self.start_server(server_config(xclient_networks=["10.0.0.0/8", "2001:db8::/32"]))
        c = self.connect(server)
        c.reply()
        self.assertNotIn(KEYWORD, c.cmd("EHLO proxy.example"))
        self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.1"), ["550 5.7.0 Error: insufficient authorization"])
        self.assertEqual(c.cmd("XCLIENT"), ["501 5.5.4 Syntax: XCLIENT attribute=value..."])
        self.assertRegex(server.wait_output(lambda t: "event=reject" in t, which="stderr"),
                         r'event=reject client=127\.0\.0\.1 command="XCLIENT ADDR=192\.0\.2\.1" '
                         r'reply="550 5\.7\.0 Error: insufficient authorization"')

    def test_session_becomes_the_named_client(self):
        tmp = tempfile.mkdtemp(prefix="asiosmtpd-xclient-")
        self.addCleanup(rmtree, tmp)
        maildir = os.path.join(tmp, "Maildir")
        server = self.start_server(server_config(
            plugins=["debugging", {"name": "maildir", "config": {"path": maildir}}],
            xclient_networks=["127.0.0.0/8"], received_header=True))
        c = self.connect(server)
        c.reply()
        self.assertIn(KEYWORD, c.cmd("EHLO proxy.example"))
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.7"), ["503 5.5.1 Error: MAIL transaction in progress"])
        self.assertEqual(c.cmd("RSET"), ["250 OK"])
        self.assertEqual(c.cmd("XCLIENT NAME=spike.example ADDR=192.0.2.7 PORT=4242 LOGIN=wietse+40example.org"),
                         [GREETING])
        ehlo = c.cmd("EHLO spike.example")
        self.assertEqual(ehlo[-1], "250 HELP")
        self.assertNotIn(KEYWORD, ehlo, "192.0.2.7 is not in xclient_networks")
        self.assertEqual(c.cmd("XCLIENT ADDR=127.0.0.1"), ["550 5.7.0 Error: insufficient authorization"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA")[0][:3], "354")
        self.assertEqual(c.cmd("Subject: via xclient\r\n\r\nbody\r\n."), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        out = server.wait_output(lambda t: "X-Peer:" in t)
        self.assertIn("X-Peer: ('192.0.2.7', 4242)", out)
        files = list(maildir_files(maildir).values())
        self.assertEqual(len(files), 1)
        msg = email.message_from_bytes(files[0], policy=email.policy.default)
        received = " ".join(str(msg["Received"]).split())
        # LOGIN counts as authenticated (Postfix: as if by SASL): ESMTPA.
        self.assertRegex(received, r"^from spike\.example \(spike\.example \[192\.0\.2\.7\]\) "
                                   rf"by {re.escape(HOSTNAME)} \(asiosmtpd\) with ESMTPA id ")
        err = server.wait_output(lambda t: "event=message" in t, which="stderr")
        self.assertRegex(err, r'event=xclient peer=192\.0\.2\.7:4242 name=spike\.example helo=- '
                              r'login="wietse@example\.org" local=127\.0\.0\.1:\d+ was=127\.0\.0\.1:\d+')
        self.assertRegex(err, r"event=message txn=\S+ client=192\.0\.2\.7 from=<a@example\.org>")

    def test_access_rules_judge_the_named_client(self):
        access = {"name": "access", "config": {"local_domains": ["example.org"], "relay_networks": ["127.0.0.0/8"],
                                               "reject_networks": ["198.51.100.0/24"]}}
        server = self.start_server(server_config(plugins=[access, "sink"], xclient_networks=["127.0.0.1"]))
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("proxy.example")
            self.assertTrue(s.has_extn("xclient"))
            # The proxy itself may relay (127.0.0.0/8) ...
            s.docmd("MAIL", "FROM:<a@example.org>")
            self.assertEqual(s.docmd("RCPT", "TO:<x@foreign.example>")[0], 250)
            s.rset()
            # ... the client it names may not.
            self.assertEqual(s.docmd("XCLIENT", "ADDR=203.0.113.5 PROTO=ESMTP HELO=outside.example"),
                             (220, f"{HOSTNAME} {IDENT}".encode()))
            self.assertEqual(s.docmd("MAIL", "FROM:<a@example.org> SIZE=10")[0], 250)
            self.assertEqual(s.docmd("RCPT", "TO:<x@foreign.example>"),
                             (554, b"5.7.1 <x@foreign.example>: Relay access denied"))
            self.assertEqual(s.docmd("RCPT", "TO:<b@example.org>")[0], 250)
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("proxy.example")
            # reject_networks is a CONNECT rule: it answers XCLIENT, then only QUIT is served.
            self.assertEqual(s.docmd("XCLIENT", "ADDR=198.51.100.9"),
                             (554, b"5.7.1 Client host [198.51.100.9] rejected: Access denied"))
            self.assertEqual(s.docmd("EHLO", "x")[0], 503)


if __name__ == "__main__":
    harness.main()
