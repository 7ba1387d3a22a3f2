# SPDX-License-Identifier: Apache-2.0
"""A real Postfix (Debian's, a private instance: its config, queue and log in a temp folder,
smtpd on a loopback port, every message discarded after queueing), on both sides of XCLIENT and
XFORWARD:
- the proxy plugin with `xforward: true` relays into it, and Postfix's log names the original
  client (orig_client=), here one set by XCLIENT on asiosmtpd, so the chain front end ->
  asiosmtpd -> Postfix keeps the real client throughout; without `xforward` it does not;
- the same XCLIENT command lines get the same replies from Postfix's smtpd and from asiosmtpd.
Needs root (Postfix's master) and the postfix package; skipped otherwise."""
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest

import harness
from harness import HOST, ServerTestCase, server_config

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
myhostname = upstream.test
mydomain = upstream.test
myorigin = upstream.test
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtpd_authorized_xclient_hosts = 127.0.0.0/8
default_transport = discard
relay_transport = discard
local_transport = discard
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
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PrivatePostfix:
    """Postfix's master in the foreground, in its own process group, on 127.0.0.1:port."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-postfix-")
        os.chmod(self.dir, 0o755)  # Postfix's daemons run as user postfix
        self.port = free_port()
        etc = os.path.join(self.dir, "etc")
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, sub))
        shutil.chown(os.path.join(self.dir, "data"), user="postfix")
        with open(os.path.join(etc, "main.cf"), "w", encoding="utf-8") as f:
            f.write(MAIN_CF.format(dir=self.dir))
        with open(os.path.join(etc, "master.cf"), "w", encoding="utf-8") as f:
            f.write(MASTER_CF.format(port=self.port))
        self.process = None
        check = subprocess.run([POSTFIX, "-c", etc, "check"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            self.cleanup()
            raise RuntimeError(f"postfix check failed: {check.stderr} {self.log()}")
        self.err = open(os.path.join(self.dir, "master.err"), "wb")
        self.process = subprocess.Popen([MASTER, "-d", "-c", etc], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self.err,
                                        start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                why = f"Postfix did not start; its log:\n{self.log()}{self.master_err()}"
                self.stop()
                raise RuntimeError(why)
            time.sleep(0.1)

    def log(self):
        try:
            with open(os.path.join(self.dir, "maillog"), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def master_err(self):
        with open(os.path.join(self.dir, "master.err"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_log(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in Postfix's log:\n{self.log()}")
            time.sleep(0.1)
        return self.log()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            # master ends its children on SIGTERM; the group signal catches any straggler.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            with_children_gone = time.monotonic() + 5
            while time.monotonic() < with_children_gone:
                try:
                    os.killpg(self.process.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.cleanup()

    def cleanup(self):
        if getattr(self, "err", None):
            self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def replies(port, lines):
    """Each command line's reply (first line, or all lines joined) on one connection."""
    out = []
    with socket.create_connection((HOST, port), timeout=harness.IO_TIMEOUT) as s:
        f = s.makefile("rb")

        def reply():
            got = []
            while True:
                line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
                got.append(line)
                if len(line) < 4 or line[3] != "-":
                    return got
        reply()
        for line in lines:
            s.sendall(line.encode() + b"\r\n")
            out.append(reply())
    return out


@unittest.skipUnless(os.geteuid() == 0, "a private Postfix instance needs root")
@unittest.skipUnless(os.path.exists(POSTFIX) and os.path.exists(MASTER), "Debian's postfix is not installed")
class PostfixXforwardTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.postfix = PrivatePostfix()

    @classmethod
    def tearDownClass(cls):
        cls.postfix.stop()

    def proxy_server(self, **proxy):
        config = {"host": HOST, "port": self.postfix.port}
        config.update(proxy)
        return self.start_server(server_config(plugins=[{"name": "proxy", "config": config}],
                                               xclient_networks=["127.0.0.1"]))

    def send_as(self, server, addr, subject):
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("front.example")
            code, _ = s.docmd("XCLIENT", f"ADDR={addr} PORT=4321 NAME=real.example")
            self.assertEqual(code, 220)
            s.ehlo("real-client.example")
            s.sendmail("a@b.example", ["c@d.example"], f"Subject: {subject}\r\n\r\nx\r\n".encode())
        log = server.wait_output(lambda t: "event=upstream_reply" in t and "queued as" in t, which="stderr")
        return log.rsplit("queued as ", 1)[1].split('"')[0].strip()

    def test_postfix_logs_the_original_client(self):
        server = self.proxy_server(xforward=True)
        queue_id = self.send_as(server, "192.0.2.9", "xforward")
        log = self.postfix.wait_log(f"{queue_id}: client=")
        # NAME is not known to the proxy (no reverse lookups): Postfix's "unknown".
        self.assertIn(f"{queue_id}: client=localhost[127.0.0.1], orig_client=unknown[192.0.2.9]", log)
        self.assertRegex(log, r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 xforward=2 mail=1 rcpt=1 data=1")

    def test_without_xforward_postfix_sees_only_the_proxy(self):
        server = self.proxy_server()
        queue_id = self.send_as(server, "192.0.2.10", "no xforward")
        log = self.postfix.wait_log(f"{queue_id}: client=")
        line = [l for l in log.splitlines() if f"{queue_id}: client=" in l][0]
        self.assertTrue(line.endswith(f"{queue_id}: client=localhost[127.0.0.1]"), line)

    def test_xclient_replies_match_postfix(self):
        server = self.start_server(server_config(xclient_networks=["127.0.0.1"]))
        lines = ["XCLIENT", "XCLIENT ADDR=300.1.1.1", "XCLIENT FOO=1", "XCLIENT ADDR", "XCLIENT NAME=a+ZZ",
                 "XCLIENT NAME=1.2.3.4", "XCLIENT PROTO=HTTP", "XCLIENT HELO=" + "a" * 256,
                 "XCLIENT NAME=x+2Eexample PORT=[UNAVAILABLE]", "HELO x", "MAIL FROM:<a@b.example>",
                 "XCLIENT ADDR=192.0.2.1", "RSET", "XCLIENT ADDR=192.0.2.1", "XCLIENT ADDR=192.0.2.2"]
        theirs = replies(self.postfix.port, lines)
        ours = replies(server.port, lines)

        def shape(reply):
            # The success reply is each server's greeting; HELO, MAIL and RSET texts differ by design.
            code = reply[0][:3]
            return code if code in ("220", "250") else reply
        self.assertEqual([shape(r) for r in ours], [shape(r) for r in theirs])


if __name__ == "__main__":
    harness.main()
