# SPDX-License-Identifier: Apache-2.0
"""maildir plugin: crafted messages byte-exact (dot-stuffing, 8-bit, long lines, empty body, bare
CR/LF, no headers), the same bytes aiosmtpd's Mailbox handler writes for well-formed messages;
1,000 messages from Postfix's smtp-source all present and byte-exact; a failing folder → 451 and
nothing in new/; crash consistency: kill -9 while smtp-source sends, then no partial file in
new/ and every message that got a 250 is there."""
import os
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

import harness
from harness import HOST, ServerTestCase, server_config
from delivery import (SMTP_SOURCE, expected_message, have_postfix_tools, maildir_files, peer_of, rcpt_of,
                      rmtree, smtp_source, x_headers)

CRAFTED = {
    "plain": b"Subject: hi\r\nFrom: a@b.example\r\n\r\nhello\r\n",
    "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...three\r\nend.\r\n",
    "8bit": b"Subject: caf\xc3\xa9\r\n\r\nbody \xe9\xff\x80 ok\r\n",
    "long": b"Subject: long\r\n\r\n" + b"x" * 998 + b"\r\n" + b"." + b"y" * 997 + b"\r\n",
    "empty_body": b"Subject: nothing below\r\n\r\n",
    "empty": b"",
    "headers_only": b"Subject: only\r\nTo: c@d.example\r\n",
    "no_headers": b"just a body line\r\nand another\r\n",
    "bare": b"Subject: bare\r\n\r\na\rb\nc\r\n",
    "no_final_eol": b"Subject: x\r\n\r\nno line end",
    "folded": b"Subject: a\r\n  folded\r\n\tmore\r\n\r\nbody\r\n",
    "from_lines": b"Subject: f\r\n\r\nFrom me\r\n>From you\r\n",
    "nul": b"Subject: n\r\n\r\nx\x00y\r\n",
}
WELL_FORMED = ("plain", "dots", "8bit", "long", "empty_body", "empty", "headers_only", "no_headers",
               "no_final_eol", "folded", "from_lines", "nul", "bare")

# The message smtp-source sends with -F (each line gets CRLF, leading dots are doubled).
SOURCE_MESSAGE = (b"Subject: load\nFrom: <a@b.example>\n\n.starts with a dot\n..two dots\n.\n"
                  b"8-bit: \xc3\xa9\xe9\xff\n" + b"L" * 990 + b"\nlast line\n")


def source_expected(rcpt, peer):
    # smtp-source -F ends the message with one empty line of its own.
    wire = b"".join(line + b"\r\n" for line in SOURCE_MESSAGE.split(b"\n")[:-1]) + b"\r\n"
    return expected_message(wire, x_headers(peer, "a@b.example", [rcpt]))


class MaildirTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-maildir-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")

    def start(self, workers=2, **kw):
        plugins = [{"name": "maildir", "config": {"path": self.maildir, "workers": workers}}]
        return self.start_server(server_config(plugins=plugins), **kw)

    def test_creates_the_folders(self):
        self.start()
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(self.maildir, sub)), sub)

    def test_relative_path_is_relative_to_the_config_file(self):
        server = self.start_server(server_config(plugins=[{"name": "maildir", "config": {"path": "rel/mail"}}]))
        self.assertTrue(os.path.isdir(os.path.join(server.tmpdir, "rel", "mail", "new")))

    def test_crafted_messages_byte_exact(self):
        server = self.start()
        sent = {}
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            for name, content in CRAFTED.items():
                rcpts = [f"{name}@d.example", "second@d.example"]
                self.assertEqual(s.sendmail("a@b.example", rcpts, content), {})
                sent[name] = (content, rcpts)
            self.assertEqual(s.sendmail("", ["nul-sender@d.example"], b"Subject: bounce\r\n\r\nx\r\n"), {})
        files = maildir_files(self.maildir)
        self.assertEqual(len(files), len(CRAFTED) + 1)
        self.assertEqual(maildir_files(self.maildir, "tmp"), {})
        by_rcpt = {rcpt_of(data): data for data in files.values()}
        for name, (content, rcpts) in sent.items():
            data = by_rcpt[", ".join(rcpts)]
            # smtplib sends what we pass, CRLF-terminated (it adds the last CRLF if missing).
            wire = content if content.endswith(b"\r\n") or not content else content + b"\r\n"
            self.assertEqual(data, expected_message(wire, x_headers(peer_of(data), "a@b.example", rcpts)), name)
        bounce = by_rcpt["nul-sender@d.example"]
        self.assertIn(b"\nX-MailFrom: <>\n", bounce)
        for name in files:  # time.MusecPpidQcounter.host, as Python's mailbox.Maildir
            self.assertRegex(name, r"^\d+\.M\d+P\d+Q\d+\.[^/:]+$")

    def test_same_bytes_as_aiosmtpd_mailbox(self):
        try:
            from aiosmtpd.handlers import Mailbox  # Debian's python3-aiosmtpd, when installed
        except ImportError:
            self.skipTest("aiosmtpd is not installed (apt-get install python3-aiosmtpd)")
        from types import SimpleNamespace
        server = self.start()
        ours = {}
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            for name in WELL_FORMED:
                s.sendmail("a@b.example", [f"{name}@d.example"], CRAFTED[name])
        for data in maildir_files(self.maildir).values():
            ours[rcpt_of(data)] = data
        theirs_dir = os.path.join(self.dir, "aiosmtpd")
        box = Mailbox(theirs_dir)
        for name in WELL_FORMED:
            content = CRAFTED[name]
            wire = content if content.endswith(b"\r\n") or not content else content + b"\r\n"
            rcpt = f"{name}@d.example"
            session = SimpleNamespace(peer=peer_of(ours[rcpt]))
            envelope = SimpleNamespace(content=wire, mail_from="a@b.example", rcpt_tos=[rcpt])
            box.handle_message(box.prepare_message(session, envelope))
        theirs = {rcpt_of(d): d for d in maildir_files(theirs_dir).values()}
        for name in WELL_FORMED:
            rcpt = f"{name}@d.example"
            self.assertEqual(ours[rcpt], theirs[rcpt], name)

    def test_a_failing_folder_answers_451_and_leaves_nothing_in_new(self):
        server = self.start()
        rmtree(os.path.join(self.maildir, "tmp"))  # the plugin holds the folder open: writes now fail
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"Subject: x\r\n\r\ny\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
            self.assertIn(b"4.3.0", cm.exception.smtp_error)
            self.assertEqual(s.noop()[0], 250)  # the session goes on
        self.assertEqual(maildir_files(self.maildir), {})
        self.assertIn("answering 451", server.stderr())


@unittest.skipUnless(have_postfix_tools(), "Postfix's smtp-source/smtp-sink are not installed")
class MaildirLoadTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-maildir-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")
        self.message = os.path.join(self.dir, "message.txt")
        with open(self.message, "wb") as f:
            f.write(SOURCE_MESSAGE)

    def start(self, **kw):
        plugins = [{"name": "maildir", "config": {"path": self.maildir, "workers": 4}}]
        return self.start_server(server_config(plugins=plugins, workers=2), **kw)

    def check_files(self, files):
        """Every file is whole and byte-exact; returns the set of recipients (one per file)."""
        rcpts = set()
        for name, data in files.items():
            rcpt = rcpt_of(data)
            self.assertIsNotNone(rcpt, name)
            self.assertEqual(data, source_expected(rcpt, peer_of(data)), name)
            self.assertNotIn(rcpt, rcpts, "delivered twice")
            rcpts.add(rcpt)
        return rcpts

    def test_1000_messages_from_smtp_source(self):
        server = self.start()
        started = time.monotonic()
        r = smtp_source(server.port, "-m", 1000, "-s", 10, "-N", "-F", self.message, "-f", "a@b.example",
                        "-t", "c@d.example", timeout=80)
        elapsed = time.monotonic() - started
        self.assertEqual(r.returncode, 0, r.stderr)
        files = maildir_files(self.maildir)
        self.assertEqual(len(files), 1000)
        self.assertEqual(self.check_files(files), {f"{i}c@d.example" for i in range(1, 1001)})
        self.assertEqual(maildir_files(self.maildir, "tmp"), {})
        sys.stderr.write(f"\n1000 messages via smtp-source into maildir in {elapsed:.2f}s\n")

    def test_kill_9_while_sending(self):
        server = self.start(check_exit=False)
        logs = []
        procs = []
        for k in range(3):  # three sequential senders (-s 1), so that each -v log is in order
            log = open(os.path.join(self.dir, f"source{k}.log"), "w+")
            logs.append(log)
            procs.append(subprocess.Popen(
                [SMTP_SOURCE, "-v", "-m", "400", "-s", "1", "-N", "-F", self.message, "-f", "a@b.example",
                 "-t", f"r{k}@d.example", f"127.0.0.1:{server.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        try:
            deadline = time.monotonic() + 20
            while len(os.listdir(os.path.join(self.maildir, "new"))) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.process.send_signal(signal.SIGKILL)
            server.wait(10)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=5)
        acknowledged = set()
        for log in logs:
            log.seek(0)
            rcpt = None
            after_dot = False
            for line in log:
                m = re.search(r": RCPT TO:<([^>]+)>", line)
                if m:
                    rcpt = m.group(1)
                elif re.search(r": \.$", line.rstrip("\n")):
                    after_dot = True
                elif after_dot and "<<< " in line:
                    if re.search(r"<<< 250 ", line):
                        acknowledged.add(rcpt)
                    after_dot = False
            log.close()
        files = maildir_files(self.maildir)
        present = self.check_files(files)  # also: no partial file in new/
        leftovers = maildir_files(self.maildir, "tmp")
        missing = acknowledged - present
        sys.stderr.write(f"\ncrash consistency: {len(acknowledged)} messages got 250, {len(present)} files in "
                         f"new/ (all whole and byte-exact), {len(present - acknowledged)} delivered without "
                         f"the 250 reaching the client, {len(missing)} acknowledged but missing, "
                         f"{len(leftovers)} leftover file(s) in tmp/\n")
        self.assertGreater(len(acknowledged), 0)
        self.assertEqual(missing, set())
        self.assertEqual(server.process.returncode, -signal.SIGKILL)


if __name__ == "__main__":
    harness.main()
