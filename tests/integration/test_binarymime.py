# SPDX-License-Identifier: Apache-2.0
"""BODY=BINARYMIME (RFC 3030) messages in the delivering plugins, never silently changed:
- maildir stores one byte for byte (bare CR, bare LF, NUL, every octet, no final line end,
  dot lines, "From " lines), under its three trace headers written with CRLF, whether it fits in
  one DATA_CHUNK piece or streams in many; a text message by BDAT is still stored as before;
- mbox refuses one (its format cannot hold arbitrary octets): 555 5.6.3 at MAIL, or 554 5.6.3 at
  the first chunk when an earlier plugin accepted MAIL before mbox was asked; the mbox file stays
  untouched and the session goes on."""
import os
import tempfile

import harness
from harness import ServerTestCase, server_config
from delivery import maildir_files, rmtree
from test_chunking import chunked, ok_chunk

REFUSED = "5.6.3 BODY=BINARYMIME not supported: an mbox file cannot hold a binary message"


def binary_message(body_size):
    """A header section (CRLF lines) and a body of every octet: NUL, bare CR and LF, CR LF dot
    CR LF, a "From " line, 8-bit bytes, and no line end at the end."""
    body = (bytes(range(256)) + b"\r\n.\r\n" + b"\nFrom me\r" + b"\x00\x00\r\r\n\n")
    body = (body * (body_size // len(body) + 1))[:body_size] + b"\x00no line end"
    return b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n" + body


def trace_headers(port, rcpt):
    return f"X-Peer: ('127.0.0.1', {port})\r\nX-MailFrom: a@b.example\r\nX-RcptTo: {rcpt}\r\n".encode()


class BinaryMaildirTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-binarymime-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")
        self.server = self.start_server(server_config(
            plugins=[{"name": "maildir", "config": {"path": self.maildir}}], enable_chunking=True))

    def send(self, rcpt, message, sizes, body="BINARYMIME"):
        c = self.connect(self.server)
        c.line()
        c.cmd("EHLO client.example")
        c.send(b"MAIL FROM:<a@b.example> BODY=%s\r\nRCPT TO:<%s>\r\n" % (body.encode(), rcpt.encode()) +
               chunked(message, sizes))
        self.assertEqual([c.line() for _ in range(3 + len(sizes))],
                         ["250 OK", "250 OK"] + [ok_chunk(n) for n in sizes] + ["250 OK"])
        port = c.sock.getsockname()[1]
        c.cmd("QUIT")
        return port

    def stored(self, rcpt):
        found = [d for d in maildir_files(self.maildir).values() if f"X-RcptTo: {rcpt}\r\n".encode() in d]
        self.assertEqual(len(found), 1, rcpt)
        return found[0]

    def test_one_piece_byte_exact(self):
        message = binary_message(1000)
        port = self.send("small@d.example", message, [3, 40])
        self.assertEqual(self.stored("small@d.example"), trace_headers(port, "small@d.example") + message)

    def test_many_pieces_byte_exact(self):
        # 300 kB: several 64 KiB DATA_CHUNK pieces, chunk borders inside CR LF and elsewhere.
        message = binary_message(300000)
        cr = message.index(b"\r\n", 1000) + 1
        port = self.send("big@d.example", message, [cr, 70000, 1, 65536])
        self.assertEqual(self.stored("big@d.example"), trace_headers(port, "big@d.example") + message)

    def test_text_by_bdat_keeps_the_text_form(self):
        # Not binary: the lines are stored with LF ends, the headers appended, as for DATA.
        self.send("text@d.example", b"Subject: t\r\n\r\nline\r\n", [5], body="8BITMIME")
        data = self.stored_text("text@d.example")
        self.assertTrue(data.startswith(b"Subject: t\nX-Peer: "), data)
        self.assertTrue(data.endswith(b"X-RcptTo: text@d.example\n\nline\n"), data)

    def stored_text(self, rcpt):
        found = [d for d in maildir_files(self.maildir).values() if f"X-RcptTo: {rcpt}\n".encode() in d]
        self.assertEqual(len(found), 1, rcpt)
        return found[0]


class BinaryMboxTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-binarymime-")
        self.addCleanup(rmtree, self.dir)
        self.mbox = os.path.join(self.dir, "mbox")

    def start(self, before=()):
        plugins = list(before) + [{"name": "mbox", "config": {"path": self.mbox}}]
        return self.start_server(server_config(plugins=plugins, enable_chunking=True))

    def mbox_bytes(self):
        with open(self.mbox, "rb") as f:
            return f.read()

    def test_refused_at_mail(self):
        server = self.start()
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> BODY=BINARYMIME"), [f"555 {REFUSED}"])
        # The client re-encodes it and sends it as text: delivered.
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" + chunked(b"Subject: s\r\n\r\nok\r\n", []))
        self.assertEqual([c.line() for _ in range(3)], ["250 OK", "250 OK", "250 OK"])
        c.cmd("QUIT")
        data = self.mbox_bytes()
        self.assertTrue(data.startswith(b"From a@b.example "), data)
        self.assertEqual(data.count(b"\nFrom "), 0)
        self.assertTrue(data.endswith(b"\n\nok\n\n"), data)

    def test_refused_at_the_first_chunk_when_mail_was_accepted_before(self):
        # An earlier plugin accepts MAIL, so mbox's MAIL hook is not asked: the message is
        # refused at its first piece (BDAT's reply), its later chunks discarded.
        accept_mail = {"path": harness.fixture_plugin("scripted"), "config": {"hooks": {"MAIL": {"verdict": "accept"}}}}
        server = self.start([accept_mail])
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        message = binary_message(200000)
        c.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<c@d.example>\r\n" +
               chunked(message, [100000]))
        replies = [c.line() for _ in range(4)]
        self.assertEqual(replies[:3], ["250 OK", "250 OK", f"554 {REFUSED}"])
        self.assertEqual(replies[3], "503 5.5.1 Error: chunk discarded after an earlier BDAT error")
        self.assertEqual(c.cmd("RSET"), ["250 OK"])
        c.cmd("QUIT")
        self.assertEqual(self.mbox_bytes(), b"")


if __name__ == "__main__":
    harness.main()
