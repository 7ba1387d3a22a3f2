# SPDX-License-Identifier: Apache-2.0
"""maildir streams (ABI 1.2 DATA_CHUNK): the message goes to tmp/ piece by piece as it arrives.
A 64 MiB message lands byte-exact in new/ while the server's peak memory grows by a small
fraction of it; a message of many pieces is still what aiosmtpd's Mailbox writes; a client that
goes away mid-DATA, and a message over data_size_limit, leave nothing in tmp/ or new/; a full
file system mid-message answers 451 and leaves nothing behind; concurrent sessions each get
their own, whole file."""
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config
from delivery import expected_message, maildir_files, peer_of, rcpt_of, rmtree, x_headers

MIB = 1 << 20
FAILURE = "451 4.3.0 Requested action aborted: local error in processing"


def dot_stuff(body):
    """The wire form of a message of CRLF lines: RFC 5321 §4.5.2 transparency."""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def big_body(size):
    """About `size` bytes: a header block, then a 64 KiB block of varied CRLF lines (dotted
    ones, bare CR and LF, 8-bit bytes) repeated."""
    lines = []
    for i in range(800):
        n = (i * 37) % 160
        line = bytes((0x41 + (i + k) % 58) for k in range(n))
        if i % 9 == 0:
            line = b"." + line
        if i % 31 == 0:
            line += b"\rbare CR\nbare LF \xc3\xa9\xff"
        lines.append(line + b"\r\n")
    block = b"".join(lines)
    head = b"Subject: streaming\r\nFrom: a@b.example\r\nX-Long: " + b"h" * 900 + b"\r\n\r\n"
    return head + block * max(1, (size - len(head)) // len(block))



def bound(kib):
    """A memory bound in KiB; AddressSanitizer's quarantine keeps freed memory."""
    return kib * 32 if harness.sanitized() else kib


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class MaildirStreamingTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-maildir-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")

    def start(self, maildir=None, workers=2, **server):
        plugins = [{"name": "maildir", "config": {"path": maildir or self.maildir, "workers": workers}}]
        return self.start_server(server_config(plugins=plugins, **server))

    def session(self, server, timeout=harness.IO_TIMEOUT):
        c = self.connect(server, timeout=timeout)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    def start_message(self, c, rcpt="c@d.example"):
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd(f"RCPT TO:<{rcpt}>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])

    def tmp_files(self, maildir=None):
        return os.listdir(os.path.join(maildir or self.maildir, "tmp"))

    def test_64_mib_byte_exact_in_little_memory(self):
        server = self.start(data_size_limit=80 * MIB)
        body = big_body(64 * MIB)
        wire = dot_stuff(body) + b".\r\n"
        c = self.session(server, timeout=60)
        self.start_message(c)
        before = harness.peak_rss_kib(server.process.pid)
        started = time.monotonic()
        c.send(wire)
        self.assertEqual(c.reply(), ["250 OK"])
        elapsed = time.monotonic() - started
        grown = harness.peak_rss_kib(server.process.pid) - before
        files = maildir_files(self.maildir)
        self.assertEqual(len(files), 1)
        data = next(iter(files.values()))
        self.assertEqual(data, expected_message(body, x_headers(peer_of(data), "a@b.example", ["c@d.example"])))
        self.assertEqual(self.tmp_files(), [])
        sys.stderr.write(f"\n64 MiB message into maildir in {elapsed:.2f}s, server peak RSS grew by "
                         f"{grown / 1024:.1f} MiB\n")
        self.assertLess(grown, bound(24 * 1024), f"a 64 MiB message grew the server by {grown} KiB")
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_many_pieces_same_bytes_as_aiosmtpd_mailbox(self):
        try:
            from aiosmtpd.handlers import Mailbox  # Debian's python3-aiosmtpd, when installed
        except ImportError:
            self.skipTest("aiosmtpd is not installed (apt-get install python3-aiosmtpd)")
        from types import SimpleNamespace
        server = self.start()
        # Well-formed for Python's email parser: no bare CR/LF, no 8-bit in the headers.
        body = (b"Subject: pieces\r\nFrom: a@b.example\r\n\r\n" +
                b"".join(b"line %d " % i + b"x" * (i % 200) + b"\r\n" + (b".dotted\r\n" if i % 7 == 0 else b"")
                         for i in range(20000)))
        with smtplib.SMTP(HOST, server.port, timeout=30) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], body), {})
        ours = next(iter(maildir_files(self.maildir).values()))
        theirs_dir = os.path.join(self.dir, "aiosmtpd")
        box = Mailbox(theirs_dir)
        session = SimpleNamespace(peer=peer_of(ours))
        envelope = SimpleNamespace(content=body, mail_from="a@b.example", rcpt_tos=["c@d.example"])
        box.handle_message(box.prepare_message(session, envelope))
        theirs = next(iter(maildir_files(theirs_dir).values()))
        self.assertGreater(len(ours), 10 * 64 * 1024)  # many pieces
        self.assertEqual(ours, theirs)

    def test_a_client_gone_mid_data_leaves_nothing(self):
        server = self.start()
        c = self.session(server)
        self.start_message(c)
        part = dot_stuff(big_body(2 * MIB))
        c.send(part[:len(part) // 2])
        # Streaming: the file is in tmp/ (and growing) before the message ends.
        tmp = os.path.join(self.maildir, "tmp")
        self.assertTrue(wait_for(lambda: any(os.path.getsize(os.path.join(tmp, f)) > 0 for f in os.listdir(tmp))),
                        "no file in tmp/ while the message arrives")
        c.close()
        self.assertTrue(wait_for(lambda: self.tmp_files() == []), f"left in tmp/: {self.tmp_files()}")
        self.assertEqual(maildir_files(self.maildir), {})
        # The server goes on.
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: x\r\n\r\ny\r\n"), {})
        self.assertEqual(len(maildir_files(self.maildir)), 1)

    def test_a_message_over_the_size_limit_leaves_nothing(self):
        server = self.start(data_size_limit=MIB)
        c = self.session(server)
        self.start_message(c)  # no SIZE= declared: the limit shows only as the data comes
        c.send(dot_stuff(big_body(3 * MIB)) + b".\r\n")
        self.assertEqual(c.reply()[0][:4], "552 ")
        self.assertTrue(wait_for(lambda: self.tmp_files() == []), f"left in tmp/: {self.tmp_files()}")
        self.assertEqual(maildir_files(self.maildir), {})
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def mount_tiny_tmpfs(self, path, size="1m"):
        """A full file system: a 1 MiB tmpfs at `path` (root only), unmounted at the end."""
        os.makedirs(path)
        if os.geteuid() != 0 or not shutil.which("mount"):
            return False
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            return False
        # Runs after the server's stop (cleanups run last-in first-out): nothing holds it then.
        self.addCleanup(subprocess.run, ["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True

    def test_a_full_file_system_answers_451_and_leaves_nothing(self):
        fs = os.path.join(self.dir, "fs")
        maildir = os.path.join(fs, "Maildir")
        if self.mount_tiny_tmpfs(fs):
            server = self.start(maildir=maildir)
            message = big_body(4 * MIB)  # the writes fail part-way: ENOSPC
            reason = "No space left on device"
        elif os.geteuid() != 0:
            server = self.start(maildir=maildir)
            os.chmod(os.path.join(maildir, "tmp"), 0o500)  # the file cannot even be created
            self.addCleanup(os.chmod, os.path.join(maildir, "tmp"), 0o700)
            message = big_body(MIB)
            reason = "Permission denied"
        else:
            self.skipTest("root without mount(8) for a tmpfs: no way to make writes fail")
        with smtplib.SMTP(HOST, server.port, timeout=30) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], message)
            self.assertEqual(f"{cm.exception.smtp_code} {cm.exception.smtp_error.decode()}", FAILURE)
            self.assertTrue(wait_for(lambda: self.tmp_files(maildir) == []), f"left: {self.tmp_files(maildir)}")
            self.assertEqual(maildir_files(maildir), {})
            self.assertEqual(s.noop()[0], 250)  # the session goes on
            if reason == "No space left on device":
                # The space came back with the removed file: a small message fits.
                self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: x\r\n\r\ny\r\n"), {})
                self.assertEqual(len(maildir_files(maildir)), 1)
        err = server.stderr()
        self.assertIn("answering 451", err)
        self.assertIn(reason, err)

    def test_concurrent_sessions_each_get_their_own_whole_file(self):
        server = self.start(workers=3)
        bodies = {f"r{i}@d.example": big_body((1 + i) * MIB // 2) + b"Last: %d\r\n" % i for i in range(6)}
        failures = []

        def send(rcpt, body):
            try:
                with smtplib.SMTP(HOST, server.port, timeout=30) as s:
                    s.sendmail("a@b.example", [rcpt], body)
            except Exception as e:  # reported below, in the test's thread
                failures.append((rcpt, e))

        threads = [threading.Thread(target=send, args=item) for item in bodies.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertEqual(failures, [])
        files = {rcpt_of(d): d for d in maildir_files(self.maildir).values()}
        self.assertEqual(set(files), set(bodies))
        for rcpt, body in bodies.items():
            data = files[rcpt]
            self.assertEqual(data, expected_message(body, x_headers(peer_of(data), "a@b.example", [rcpt])), rcpt)
        self.assertEqual(self.tmp_files(), [])


if __name__ == "__main__":
    harness.main()
