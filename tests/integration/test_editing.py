# SPDX-License-Identifier: Apache-2.0
"""Message editing (ABI 1.3) end to end: an editor plugin (the `editor` test fixture) in front of
the real `maildir` plugin. The stored message carries the editor's header and body edits, and
maildir's X-MailFrom / X-RcptTo show the edited envelope, while the client's reply and the mail
log show what the client sent. A large message held for the plugins after the editor goes to a
file (server.spool_threshold) and the server's memory stays small; an unwritable spool folder
refuses the message with 451 and stores nothing. TXN_END reaches plugins for every outcome."""
import os
import smtplib
import tempfile
import unittest

import harness
from harness import HOST, ServerTestCase, server_config
from delivery import expected_message, maildir_files, peer_of, rmtree, x_headers

MIB = 1 << 20


def editor(tag, **config):
    return {"path": harness.fixture_plugin("editor"), "config": {"tag": tag, **config}}



EDITS = [
    {"op": "insert_header", "index": 0, "name": "X-Signed", "value": "by the editor"},
    {"op": "change_header", "name": "Subject", "index": 1, "value": "edited"},
    {"op": "delete_header", "name": "X-Secret", "index": 1},
    {"op": "replace_body", "pieces": ["replaced\r\n", "body\r\n"]},
    {"op": "change_sender", "address": "bounces@example.net"},
    {"op": "add_rcpt", "address": "archive@example.org"},
    {"op": "delete_rcpt", "address": "b@example.org"},
]


class EditingTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-editing-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")

    def start(self, plugins, **server):
        plugins = plugins + [{"name": "maildir", "config": {"path": self.maildir}}]
        return self.start_server(server_config(plugins=plugins, **server))

    def stored(self):
        files = maildir_files(self.maildir)
        self.assertEqual(len(files), 1, files.keys())
        return next(iter(files.values()))

    def test_the_delivering_plugin_stores_the_edited_message_and_envelope(self):
        server = self.start([editor("ED", edits=EDITS, worker=True)])
        msg = b"Subject: original\r\nX-Secret: s3cret\r\nFrom: a@example.org\r\n\r\noriginal body\r\n"
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.org")[0], 250)
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            self.assertEqual(s.rcpt("c@example.org")[0], 250)
            self.assertEqual(s.data(msg), (250, b"OK"))
        data = self.stored()
        head, _, body = data.partition(b"\n\n")
        self.assertEqual(body, b"replaced\nbody\n")
        lines = head.split(b"\n")
        self.assertEqual(lines[0], b"X-Signed: by the editor")
        self.assertIn(b"Subject: edited", lines)
        self.assertNotIn(b"s3cret", data)
        self.assertIn(b"X-MailFrom: bounces@example.net", lines)
        self.assertIn(b"X-RcptTo: c@example.org, archive@example.org", lines)
        # The mail log is the client's transaction.
        log = server.wait_output(lambda t: "event=message" in t, which="stderr")
        line = next(l for l in log.splitlines() if "event=message" in l)
        self.assertIn("from=<a@example.org> to=<b@example.org>,<c@example.org>", line)

    def test_a_large_message_is_held_in_a_file_not_in_memory(self):
        spool = os.path.join(self.dir, "spool")
        os.mkdir(spool)
        # The editor takes the message in pieces, so the engine streams and the host holds it.
        server = self.start([editor("ED", chunks=True, edits=[EDITS[0]])], spool_threshold=0,
                            spool_directory=spool, data_size_limit=64 * MIB)
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (32 * MIB // len(line))
        before = harness.peak_rss_kib(server.process.pid)
        with smtplib.SMTP(HOST, server.port, timeout=60) as s:
            self.assertEqual(s.sendmail("a@example.org", ["b@example.org"], body), {})
        grown = harness.peak_rss_kib(server.process.pid) - before
        data = self.stored()
        edited = b"X-Signed: by the editor\r\n" + body
        self.assertEqual(data, expected_message(edited, x_headers(peer_of(data), "a@example.org", ["b@example.org"])))
        self.assertEqual(os.listdir(spool), [])  # unlinked, and gone with the message
        bound = 24 * 1024 * (32 if harness.sanitized() else 1)
        self.assertLess(grown, bound, f"a 32 MiB message held for the plugins grew the server by {grown} KiB")

    def test_an_unwritable_spool_refuses_the_message(self):
        server = self.start([editor("ED", chunks=True, edits=[EDITS[0]])], spool_threshold=0,
                            spool_directory=os.path.join(self.dir, "missing"))
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
            self.assertEqual(e.exception.smtp_code, 451)
            self.assertEqual(s.noop()[0], 250)
        self.assertEqual(maildir_files(self.maildir), {})
        server.wait_output(lambda t: "event=host_error hook=DATA_CHUNK" in t and "cannot create a spool file" in t,
                           which="stderr")

    def test_txn_end_for_every_outcome(self):
        server = self.start([editor("TXN", txn_end=True)])
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            self.assertEqual(s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n"), {})
            self.assertEqual(s.mail("r@example.org")[0], 250)
            self.assertEqual(s.rset()[0], 250)
            self.assertEqual(s.mail("gone@example.org")[0], 250)
        # smtplib's QUIT closed the session with a transaction open.
        log = server.wait_output(lambda t: t.count("TXN txn_end") >= 3, which="stderr")
        ends = [l.split("TXN txn_end ", 1)[1] for l in log.splitlines() if "TXN txn_end" in l]
        self.assertEqual(ends, [
            "outcome=1 code=250 reply=250 OK reason= from=a@example.org rcpts=1 size=17 slot=1",
            "outcome=3 code=0 reply= reason=rset from=r@example.org rcpts=0 size=0 slot=1",
            "outcome=3 code=0 reply= reason=quit from=gone@example.org rcpts=0 size=0 slot=1",
        ])


if __name__ == "__main__":
    unittest.main()
