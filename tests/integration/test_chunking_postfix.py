# SPDX-License-Identifier: Apache-2.0
"""CHUNKING with a real Postfix (Debian's package; a private instance: its own config folder,
queue and log in a temp folder, started and stopped by the test, loopback only; needs root):

- Postfix as the upstream of the proxy plugin: asiosmtpd relays with BDAT (Postfix's smtpd
  offers CHUNKING by default) and passes Postfix's BDAT reply ("250 2.0.0 Ok: <n> bytes queued
  as <id>") back to its client;
- Postfix as the client (relayhost = asiosmtpd): it relays into asiosmtpd whether or not
  CHUNKING is offered, and the message arrives intact. Postfix's SMTP client has no BDAT at
  all (its smtp(8) sends DATA; only its smtpd(8) takes BDAT), so it sends DATA either way: a
  tap between the two shows which command went over the wire."""
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

import harness
from harness import HOST, ServerTestCase, server_config
from delivery import free_port, maildir_files, rmtree
from test_chunking import Tap

POSTFIX = "/usr/sbin/postfix"
MASTER = "/usr/lib/postfix/sbin/master"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
default_transport = discard
relay_transport = discard
local_transport = discard
transport_maps = {routes}
"""

MASTER_CF = """\
127.0.0.1:{port} inet n  -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def have_postfix():
    return os.geteuid() == 0 and os.access(POSTFIX, os.X_OK) and os.access(MASTER, os.X_OK)


class PostfixInstance:
    """A private Postfix: smtpd on 127.0.0.1:port; mail for the domains of `routes` relayed by
    its smtp client to their port on 127.0.0.1, any other discarded. stop() always."""

    def __init__(self, routes=None):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-postfix-")
        os.chmod(self.dir, 0o755)  # its daemons run as user postfix below it
        self.process = None
        etc = os.path.join(self.dir, "etc")
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        self.port = free_port()
        with open(os.path.join(etc, "main.cf"), "w") as f:
            maps = ", ".join(f"{d}=smtp:[127.0.0.1]:{p}" for d, p in (routes or {}).items())
            f.write(MAIN_CF.format(dir=self.dir, routes=f"inline:{{{maps}}}" if maps else ""))
        with open(os.path.join(etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        try:
            check = subprocess.run([POSTFIX, "-c", etc, "check"], capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise RuntimeError(f"postfix check failed: {check.stderr}{self.log()}")
            self.process = subprocess.Popen([MASTER, "-c", etc], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Postfix's master exited with {self.process.returncode}: {self.log()}")
            try:
                with smtplib.SMTP(HOST, self.port, timeout=5) as s:
                    s.noop()
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix did not answer on 127.0.0.1:{self.port}: {self.log()}")

    def log(self):
        try:
            with open(os.path.join(self.dir, "maillog"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.1)
        raise AssertionError(f"Postfix's log has no {pattern!r} within {timeout}s:\n{self.log()}")

    def stop(self):
        # The master and its daemons are its process group: none outlives the test.
        harness.stop_process(self.process, 10, group=True)
        rmtree(self.dir)


@unittest.skipUnless(have_postfix(), "needs root and Debian's postfix package")
class PostfixChunkingTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-chunking-postfix-")
        self.addCleanup(rmtree, self.dir)

    def postfix(self, **kw):
        p = PostfixInstance(**kw)
        self.addCleanup(p.stop)
        return p

    def tap(self, port):
        t = Tap(port)
        self.addCleanup(t.stop)
        return t

    def test_proxy_relays_into_postfix_with_bdat(self):
        upstream = self.postfix()
        tap = self.tap(upstream.port)
        server = self.start_server(server_config(
            plugins=[{"name": "proxy", "config": {"host": HOST, "port": tap.port, "timeout": 10}}],
            enable_chunking=True))
        message = b"Subject: to postfix\r\n\r\n.leading dot\r\nbody\r\n"
        with smtplib.SMTP(HOST, server.port, timeout=20) as s:
            s.ehlo("client.example")
            s.mail("a@b.example")
            s.rcpt("c@d.example")
            code, text = s.data(message)
        # Postfix's reply to BDAT LAST, passed on: only BDAT gets "<n> bytes queued as".
        self.assertEqual(code, 250, text)
        m = re.match(rb"2\.0\.0 Ok: (\d+) bytes queued as (\w+)$", text)
        self.assertIsNotNone(m, text)
        with tap.lock:
            sent = tap.sent
        self.assertIn(b"\r\nBDAT %s LAST\r\n" % m.group(1), sent)
        self.assertNotIn(b"\r\nDATA\r\n", sent)
        self.assertIn(b"\r\n.leading dot\r\n", sent)  # no dot-stuffing in a chunk
        upstream.wait_log(rf"{m.group(2).decode()}: from=<a@b\.example>, size=\d+")

    def test_postfix_relays_into_asiosmtpd_with_or_without_chunking(self):
        servers, taps, maildirs = {}, {}, {}
        for chunking in (True, False):
            maildirs[chunking] = os.path.join(self.dir, f"Maildir-{chunking}")
            servers[chunking] = self.start_server(server_config(
                plugins=[{"name": "maildir", "config": {"path": maildirs[chunking]}}], enable_chunking=chunking))
            taps[chunking] = self.tap(servers[chunking].port)
        # Mail for on.example goes to the asiosmtpd that offers CHUNKING, off.example to the other.
        relay = self.postfix(routes={"on.example": taps[True].port, "off.example": taps[False].port})
        body = b"Subject: via postfix\r\n\r\n.dot line\r\n" + b"8-bit \xc3\xa9\r\n" + b"x" * 500 + b"\r\n"
        with smtplib.SMTP(HOST, relay.port, timeout=20) as s:
            s.ehlo("client.example")
            self.assertEqual(s.sendmail("a@b.example", ["c@on.example"], body), {})
            self.assertEqual(s.sendmail("a@b.example", ["c@off.example"], body), {})
        for chunking in (True, False):
            domain = "on" if chunking else "off"
            relay.wait_log(rf"to=<c@{domain}\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent \(250 OK\)")
            server, tap = servers[chunking], taps[chunking]
            files = list(maildir_files(maildirs[chunking]).values())
            self.assertEqual(len(files), 1)
            self.assertIn(b"\n.dot line\n8-bit \xc3\xa9\n" + b"x" * 500 + b"\n", files[0])
            with tap.lock:
                sent, replies = tap.sent, tap.replies
            self.assertEqual(b"\r\n250-CHUNKING\r\n" in replies, chunking)
            # Postfix's smtp client never sends BDAT, CHUNKING offered or not.
            self.assertNotIn(b"BDAT", sent, chunking)
            self.assertIn(b"\r\nDATA\r\n", sent)
            log = server.wait_output(lambda e: "event=message" in e, which="stderr")
            self.assertIn("result=250", log)


if __name__ == "__main__":
    harness.main()
