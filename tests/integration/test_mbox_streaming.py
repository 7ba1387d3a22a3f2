# SPDX-License-Identifier: Apache-2.0
"""mbox streams (ABI 1.2 DATA_CHUNK): the message is prepared and quoted piece by piece into an
unnamed spool file, and appended at DATA. The mbox gets the same bytes as through the
whole-message path (">From " lines crossing the pieces' cuts included); a 64 MiB message lands
byte-exact while the server's peak memory grows by a small fraction of it; a client that goes
away mid-DATA, and a message over data_size_limit, leave the mbox untouched and nothing in its
folder; concurrent sessions append whole messages, never interleaved; a server that may write
its mbox but not create files in its folder (a /var/mail) spools in /tmp instead."""
import os
import pwd
import shutil
import smtplib
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config
from delivery import expected_message, peer_of, rcpt_of, rmtree, x_headers
from test_delivery_mbox import _FROM_LINE, split_mbox
from test_maildir_streaming import big_body, bound, dot_stuff, wait_for

MIB = 1 << 20


def from_heavy_body(size):
    """About `size` bytes of CRLF lines, most of them "From " lines (some already quoted), so
    that some sit on the cuts between the engine's 64 KiB pieces."""
    lines = [b"Subject: quoting\r\nFrom: a@b.example\r\n\r\n"]
    total = len(lines[0])
    i = 0
    while total < size:
        line = b">" * (i % 4) + (b"From " if i % 3 else b"Fro") + bytes([0x61 + i % 26]) * (i % 97) + b"\r\n"
        if i % 11 == 0:
            line += b".dotted " + str(i).encode() + b"\r\n"
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


class MboxStreamingTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-mbox-")
        self.addCleanup(rmtree, self.dir)
        self.path = os.path.join(self.dir, "mail.mbox")

    def start(self, whole=False, workers=2, **server):
        plugins = [{"name": "mbox", "config": {"path": self.path, "workers": workers}}]
        if whole:  # a DATA hook that takes no pieces: every DATA hook gets the whole message
            plugins.insert(0, {"name": "debugging", "config": {"stream": "stdout"}})
        return self.start_server(server_config(plugins=plugins, **server))

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()

    def session(self, server, timeout=harness.IO_TIMEOUT):
        c = self.connect(server, timeout=timeout)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    def start_message(self, c, rcpt="c@d.example"):
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd(f"RCPT TO:<{rcpt}>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])

    def check(self, message, content, rcpt="c@d.example"):
        m = _FROM_LINE.match(message)
        self.assertIsNotNone(m, message[:100])
        self.assertEqual(m.group(1), b"a@b.example")
        headers = x_headers(peer_of(message), "a@b.example", [rcpt])
        self.assertEqual(message[m.end():], expected_message(content, headers, mbox=True) + b"\n")

    def folder(self):
        return sorted(os.listdir(self.dir))

    def spools(self, server):
        """The server's open files in the mbox's folder other than the mbox: its spools
        (unnamed: /proc shows them as "(deleted)")."""
        fds = f"/proc/{server.process.pid}/fd"
        out = []
        for fd in os.listdir(fds):
            try:
                target = os.readlink(os.path.join(fds, fd))
            except OSError:  # closed meanwhile
                continue
            if target.startswith(self.dir + "/") and target != self.path:
                out.append(target)
        return out

    def deliver(self, server, bodies):
        with smtplib.SMTP(HOST, server.port, timeout=30) as s:
            for body in bodies:
                self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], body), {})
        data = self.read()
        os.truncate(self.path, 0)
        return data

    def test_same_bytes_as_the_whole_message_path(self):
        bodies = [from_heavy_body(300 * 1024), from_heavy_body(70 * 1024) + b"From no line end",
                  b"Subject: small\r\n\r\nFrom here\r\n>From there\r\n"]
        streamed = split_mbox(self.deliver(self.start(), bodies))
        whole = split_mbox(self.deliver(self.start(whole=True), bodies))
        self.assertEqual(len(streamed), len(bodies))
        self.assertEqual(len(whole), len(bodies))

        def comparable(message):  # the date of the From line and the client's port differ
            lines = message.split(b"\n")
            return b"\n".join([lines[0][:len(b"From a@b.example")]] +
                              [b"X-Peer: -" if line.startswith(b"X-Peer: ") else line for line in lines[1:]])

        for ours, theirs, body in zip(streamed, whole, bodies):
            self.check(ours, body)
            self.check(theirs, body)
            self.assertEqual(comparable(ours), comparable(theirs))
        self.assertGreater(len(streamed[0]), 4 * 64 * 1024)  # several pieces
        self.assertEqual(self.folder(), ["mail.mbox"])

    def test_64_mib_byte_exact_in_little_memory(self):
        server = self.start(data_size_limit=80 * MIB)
        body = big_body(64 * MIB)
        c = self.session(server, timeout=60)
        self.start_message(c)
        before = harness.peak_rss_kib(server.process.pid)
        started = time.monotonic()
        c.send(dot_stuff(body) + b".\r\n")
        self.assertEqual(c.reply(), ["250 OK"])
        elapsed = time.monotonic() - started
        grown = harness.peak_rss_kib(server.process.pid) - before
        messages = split_mbox(self.read())
        self.assertEqual(len(messages), 1)
        self.check(messages[0], body)
        self.assertEqual(self.folder(), ["mail.mbox"])
        sys.stderr.write(f"\n64 MiB message into mbox in {elapsed:.2f}s, server peak RSS grew by "
                         f"{grown / 1024:.1f} MiB\n")
        self.assertLess(grown, bound(8 * 1024), f"a 64 MiB message grew the server by {grown} KiB")
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_a_client_gone_mid_data_leaves_the_mbox_untouched(self):
        server = self.start()
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.sendmail("a@b.example", ["c@d.example"], b"Subject: before\r\n\r\nFrom x\r\n")
        before = self.read()
        c = self.session(server)
        self.start_message(c)
        part = dot_stuff(from_heavy_body(2 * MIB))
        c.send(part[:len(part) // 2])
        # Streaming: the spool is open (and unnamed) before the message ends.
        self.assertTrue(wait_for(lambda: self.spools(server) != []), "no spool while the message arrives")
        self.assertTrue(all(f.endswith(" (deleted)") for f in self.spools(server)), self.spools(server))
        c.close()
        self.assertTrue(wait_for(lambda: self.spools(server) == []), f"spools left open: {self.spools(server)}")
        self.assertEqual(self.read(), before)
        self.assertEqual(self.folder(), ["mail.mbox"])
        # The server goes on.
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: after\r\n\r\ny\r\n"), {})
        self.assertEqual(len(split_mbox(self.read())), 2)

    def test_a_message_over_the_size_limit_leaves_the_mbox_untouched(self):
        server = self.start(data_size_limit=MIB)
        c = self.session(server)
        self.start_message(c)  # no SIZE= declared: the limit shows only as the data comes
        c.send(dot_stuff(from_heavy_body(3 * MIB)) + b".\r\n")
        self.assertEqual(c.reply()[0][:4], "552 ")
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        self.assertTrue(wait_for(lambda: self.spools(server) == []), f"spools left open: {self.spools(server)}")
        self.assertEqual(self.read(), b"")
        self.assertEqual(self.folder(), ["mail.mbox"])

    def test_concurrent_sessions_never_interleave(self):
        server = self.start(workers=3)
        bodies = {f"r{i}@d.example": from_heavy_body((1 + i) * MIB // 2) + b"Last: %d\r\n" % i for i in range(6)}
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
        messages = {rcpt_of(m): m for m in split_mbox(self.read())}
        self.assertEqual(set(messages), set(bodies))
        for rcpt, body in bodies.items():
            self.check(messages[rcpt], body, rcpt)
        self.assertEqual(self.folder(), ["mail.mbox"])


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@unittest.skipUnless(os.geteuid() == 0, "needs root: the server drops to user nobody")
@unittest.skipIf(_nobody() is None, "no user nobody on this system")
class MboxSpoolFallbackTest(ServerTestCase):
    def test_a_folder_it_may_not_write_spools_in_tmp(self):
        # As /var/mail: the folder is root's (0755), only the mbox file is the server's user's.
        nobody = _nobody()
        folder = tempfile.mkdtemp(prefix="asiosmtpd-mbox-ro-")
        self.addCleanup(rmtree, folder)
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "nobody")
        with open(path, "wb"):
            pass
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(path, 0o600)
        # The plugin file must be readable by nobody (the build folder may not be).
        public = tempfile.mkdtemp(prefix="asiosmtpd-mbox-so-")
        self.addCleanup(rmtree, public)
        os.chmod(public, 0o755)
        plugin = os.path.join(public, "mbox.so")
        shutil.copy(os.path.join(harness.PLUGIN_DIR, "mbox.so"), plugin)
        os.chmod(plugin, 0o644)
        server = self.start_server(server_config(plugins=[{"path": plugin, "config": {"path": path}}],
                                                 user="nobody"))
        body = from_heavy_body(300 * 1024)  # several pieces: a spool is needed
        with smtplib.SMTP(HOST, server.port, timeout=30) as s:
            s.sendmail("a@b.example", ["c@d.example"], body)
        with open(path, "rb") as f:
            messages = split_mbox(f.read())
        self.assertEqual(len(messages), 1)
        m = _FROM_LINE.match(messages[0])
        headers = x_headers(peer_of(messages[0]), "a@b.example", ["c@d.example"])
        self.assertEqual(messages[0][m.end():], expected_message(body, headers, mbox=True) + b"\n")
        self.assertEqual(sorted(os.listdir(folder)), ["nobody"])


if __name__ == "__main__":
    harness.main()
