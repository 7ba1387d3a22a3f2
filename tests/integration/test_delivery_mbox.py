# SPDX-License-Identifier: Apache-2.0
"""mbox plugin: the "From " line, >From quoting and the aiosmtpd Message headers; concurrent
writers (many sessions of one server and two server processes on one file) never interleave;
an unusable file answers 451."""
import os
import re
import smtplib
import tempfile
import threading

import harness
from harness import HOST, ServerTestCase, server_config
from delivery import expected_message, peer_of, rcpt_of, rmtree, x_headers

_FROM_LINE = re.compile(rb"^From (\S+) (\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})\n")


def split_mbox(data):
    """The messages of an mbox: each starts with a "From " line (quoted ones start with '>')."""
    starts = [m.start() for m in re.finditer(rb"^From ", data, re.M)]
    return [data[a:b] for a, b in zip(starts, starts[1:] + [len(data)])]


def body_for(sender, i):
    # Big enough that interleaved writes would show; distinct per message; From lines to quote.
    line = f"{sender} message {i} ".encode() * 8
    return (b"Subject: " + f"{sender} {i}".encode() + b"\r\n\r\nFrom the start\r\n>From quoted\r\n" +
            (line + b"\r\n") * 400)


class MboxTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-mbox-")
        self.addCleanup(rmtree, self.dir)
        self.path = os.path.join(self.dir, "mail.mbox")

    def start(self, **kw):
        plugins = [{"name": "mbox", "config": {"path": self.path, "workers": 4}}]
        return self.start_server(server_config(plugins=plugins), **kw)

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()

    def check(self, message, sender_addr, content, rcpts):
        m = _FROM_LINE.match(message)
        self.assertIsNotNone(m, message[:100])
        self.assertEqual(m.group(1).decode(), sender_addr or "MAILER-DAEMON")
        headers = x_headers(peer_of(message), sender_addr or "<>", rcpts)
        self.assertEqual(message[m.end():], expected_message(content, headers, mbox=True) + b"\n")

    def test_format(self):
        server = self.start()
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.sendmail("a@b.example", ["c@d.example"], b"Subject: one\r\n\r\nFrom here\r\n>From there\r\nend")
            s.sendmail("", ["e@f.example"], b"")
        messages = split_mbox(self.read())
        self.assertEqual(len(messages), 2)
        self.check(messages[0], "a@b.example", b"Subject: one\r\n\r\nFrom here\r\n>From there\r\nend\r\n",
                   ["c@d.example"])
        self.assertIn(b"\n>From here\n>>From there\nend\n\n", messages[0])
        self.check(messages[1], "", b"", ["e@f.example"])

    def test_concurrent_writers_never_interleave(self):
        servers = [self.start(), self.start()]  # two processes appending to one file
        errors = []

        def sender(server, name, count):
            try:
                with smtplib.SMTP(HOST, server.port, timeout=30) as s:
                    for i in range(count):
                        s.sendmail(f"{name}@b.example", [f"{name}-{i}@d.example"], body_for(name, i))
            except Exception as e:  # reported below
                errors.append(f"{name}: {e!r}")

        threads = [threading.Thread(target=sender, args=(servers[k % 2], f"s{k}", 15)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        messages = split_mbox(self.read())
        self.assertEqual(len(messages), 8 * 15)
        seen = set()
        for message in messages:
            rcpt = rcpt_of(message)
            name, i = rcpt.split("@")[0].rsplit("-", 1)
            self.check(message, f"{name}@b.example", body_for(name, int(i)), [rcpt])
            seen.add(rcpt)
        self.assertEqual(len(seen), 8 * 15)

    def test_unusable_file_answers_451(self):
        server = self.start()
        os.unlink(self.path)
        os.mkdir(self.path)  # now a folder: open() fails
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)


if __name__ == "__main__":
    harness.main()
