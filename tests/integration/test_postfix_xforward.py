# SPDX-License-Identifier: Apache-2.0
"""A real Postfix (Debian's, a private instance: postfix_instance.py; smtpd on a loopback port,
every message discarded after queueing), on both sides of XCLIENT and
XFORWARD:
- the proxy plugin with `xforward: true` relays into it, and Postfix's log names the original
  client (orig_client=), here one set by XCLIENT on asiosmtpd, so the chain front end ->
  asiosmtpd -> Postfix keeps the real client throughout; without `xforward` it does not;
- the same XCLIENT command lines get the same replies from Postfix's smtpd and from asiosmtpd.
Needs root (Postfix's master) and the postfix package; skipped otherwise."""
import os
import re
import smtplib
import socket
import tempfile
import unittest

import harness
import postfix_instance
from delivery import rmtree
from harness import HOST, ServerTestCase, server_config

# Postfix behind the proxy: it takes XFORWARD and XCLIENT from loopback and discards every
# message once queued (its log is the record).
POSTFIX_MAIN = {
    "relay_domains": "",
    "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
    "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
    "default_transport": "discard",
    "relay_transport": "discard",
    "local_transport": "discard",
}


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
@unittest.skipUnless(postfix_instance.available(), "Debian's postfix is not installed")
class PostfixXforwardTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="asiosmtpd-xforward-")
        cls.postfix = postfix_instance.PostfixInstance(cls.tmp, main=POSTFIX_MAIN, smtpd=True)
        try:
            cls.postfix.start()
        except BaseException:
            cls.postfix.stop()
            rmtree(cls.tmp)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.postfix.stop()
        rmtree(cls.tmp)

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
        line = self.postfix.wait_log(re.escape(f"{queue_id}: client="))[0]
        # NAME is not known to the proxy (no reverse lookups): Postfix's "unknown".
        self.assertTrue(line.endswith(f"{queue_id}: client=localhost[127.0.0.1], orig_client=unknown[192.0.2.9]"),
                        line)
        self.postfix.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 xforward=2 mail=1 rcpt=1 (data|bdat)=1")

    def test_without_xforward_postfix_sees_only_the_proxy(self):
        server = self.proxy_server()
        queue_id = self.send_as(server, "192.0.2.10", "no xforward")
        line = self.postfix.wait_log(re.escape(f"{queue_id}: client="))[0]
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
