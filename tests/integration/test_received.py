# SPDX-License-Identifier: Apache-2.0
"""server.received_header (RFC 5321 §4.4): one Received field at the top of every message the
plugins see, checked on mail stored by the real maildir plugin and parsed by Python's email
package: from the HELO name and client address, by the hostname, `with` the RFC 3848 protocol
type (ESMTP, ESMTPSA under STARTTLS + AUTH, LMTP), the transaction id that the log's message
line shows as txn=, `for` with one recipient only, a date that parses. Off by default."""
import email
import email.policy
import email.utils
import os
import re
import smtplib
import tempfile
import time
import unittest

import harness
from harness import HOST, HOSTNAME, ServerTestCase, server_config
from delivery import maildir_files, rmtree
from test_auth import authfile_plugin
from test_tls import client_context, make_certificate


class ReceivedTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-received-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")

    def start(self, plugins=(), **server):
        plugins = list(plugins) + [{"name": "maildir", "config": {"path": self.maildir}}]
        return self.start_server(server_config(plugins=plugins, **server))

    def stored(self):
        files = list(maildir_files(self.maildir).values())
        self.assertEqual(len(files), 1)
        return email.message_from_bytes(files[0], policy=email.policy.default)

    def txn_of_log(self, server):
        log = server.wait_output(lambda t: "event=message" in t, which="stderr")
        return re.search(r"event=message txn=(\S+) ", log).group(1)

    def test_off_by_default(self):
        server = self.start()
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
        self.assertIsNone(self.stored()["Received"])

    def test_one_recipient_plain_esmtp(self):
        server = self.start(received_header=True)
        before = time.time()
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("client.example")
            s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
        msg = self.stored()
        self.assertEqual(len(msg.get_all("Received")), 1)
        received = " ".join(str(msg["Received"]).split())
        txn = self.txn_of_log(server)
        self.assertRegex(received, rf"^from client\.example \(\[127\.0\.0\.1\]\) by {re.escape(HOSTNAME)} "
                                   rf"\(asiosmtpd\) with ESMTP id {re.escape(txn)} for <b@example\.org>; ")
        when = email.utils.parsedate_to_datetime(received.rsplit("; ", 1)[1]).timestamp()
        self.assertLessEqual(abs(when - before), 5)
        self.assertEqual(list(msg.keys())[0], "Received")  # at the top

    def test_two_recipients_have_no_for_and_each_message_its_own_id(self):
        server = self.start(received_header=True)
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.helo("old.example")
            s.sendmail("a@example.org", ["b@example.org", "c@example.org"], b"Subject: 1\r\n\r\ny\r\n")
        received = " ".join(str(self.stored()["Received"]).split())
        self.assertRegex(received, r"^from old\.example \(\[127\.0\.0\.1\]\) by \S+ \(asiosmtpd\) with SMTP id "
                                   r"[0-9A-F]+\.[0-9A-F]+\.1; ")
        self.assertNotIn(" for ", received)

    def test_esmtpsa_under_starttls_and_auth(self):
        cert, key = make_certificate(self.dir)
        plugins = [authfile_plugin(self, {"alice": "secret"})]
        config = server_config(plugins=plugins + [{"name": "maildir", "config": {"path": self.maildir}}],
                               received_header=True, listen=[{"address": HOST, "port": 0, "tls": "starttls"}])
        config["tls"] = {"certificate": cert, "private_key": key}
        server = self.start_server(config)
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("client.example")
            s.starttls(context=client_context())
            s.ehlo("client.example")
            s.login("alice", "secret")
            s.sendmail("alice@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
        received = " ".join(str(self.stored()["Received"]).split())
        self.assertRegex(received, r"^from client\.example \(\[127\.0\.0\.1\]\) \(using TLSv1\.3 with cipher "
                                   r"TLS_\S+\) by \S+ \(asiosmtpd\) with ESMTPSA id ")

    def test_lmtp(self):
        server = self.start(received_header=True, listen=[{"address": HOST, "port": 0, "protocol": "lmtp"}])
        with smtplib.LMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
        self.assertIn(" with LMTP id ", " ".join(str(self.stored()["Received"]).split()))


if __name__ == "__main__":
    unittest.main()
