# SPDX-License-Identifier: Apache-2.0
"""proxy plugin: relays into Postfix's smtp-sink and into a second asiosmtpd with maildir (byte-
exact, X-Peer inserted as aiosmtpd's Proxy), over STARTTLS with a verified certificate; the
upstream's verdict comes back at the command it answers (a refused sender at MAIL, a refused
recipient at RCPT, a refused message at DATA); upstream down or silent → 451. One upstream
connection per client session (RSET between transactions, QUIT at the end); an upstream that
closes between commands is connected again, the transaction rebuilt. What the server accepted
and what the upstream accepted are reconciled at DATA (a recipient another plugin accepted
without the proxy; one another plugin refused after the upstream took it; 8-bit content). An
upstream that answers with control bytes, over-long lines, nonsense codes or thousands of
refusals still yields a reply the host sends (250 when the upstream took the message, and only
one copy of it); an upstream name that cannot be resolved → 451 within the plugin's timeout;
more than max_hops Received: lines → 554 5.4.6, not relayed."""
import json
import os
import shutil
import smtplib
import subprocess
import sys
import socket
import socketserver
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, ServerTestCase, server_config
from delivery import (SmtpSink, expected_message, have_postfix_tools, maildir_files, peer_of, rmtree,
                      x_headers)
from test_tls import make_certificate


def proxied(wire, peer_ip):
    """What aiosmtpd's Proxy hands upstream: X-Peer before the first empty line (else before the
    last line), then smtplib's CRLF line ends."""
    lines = wire.splitlines(keepends=True)
    at, ending = 0, b"\r\n"
    for at, line in enumerate(lines):
        if line[:1] in (b"\r", b"\n"):
            ending = line
            break
    lines.insert(at, b"X-Peer: " + peer_ip.encode() + ending)
    data = b"".join(lines)
    import re
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


class ToyUpstream(socketserver.ThreadingTCPServer):
    """A scripted upstream: RCPT to bad* → 550, later* → 450; DATA text 'reject-me' → 554."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler=None):
        super().__init__(("127.0.0.1", 0), handler or _ToyHandler)
        self.port = self.server_address[1]
        self.messages = []
        self.commands = []      # every command line, in order, over all connections
        self.connections = 0
        self.dropped = False    # drop*: the first one closes the connection after its 250
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


class _ToyHandler(socketserver.StreamRequestHandler):
    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        self.server.connections += 1
        self.reply("220 toy ESMTP")
        rcpts = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
            self.server.commands.append(cmd)
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                self.reply("250-toy\r\n250-8BITMIME\r\n250 SIZE 1000000")
            elif verb == "MAIL":
                rcpts = []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = cmd[cmd.index("<") + 1:cmd.index(">")]
                if addr.startswith("bad"):
                    self.reply("550 5.1.1 <%s>: no such user" % addr)
                elif addr.startswith("later"):
                    self.reply("450 4.2.0 <%s>: try later" % addr)
                elif addr.startswith("die"):
                    return  # the connection ends without a reply
                elif addr.startswith("drop") and not self.server.dropped:
                    self.server.dropped = True
                    rcpts.append(addr)
                    self.reply("250 2.1.5 Ok")
                    return  # then the connection ends, between commands
                else:
                    rcpts.append(addr)
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 go ahead")
                data = b""
                while True:
                    chunk = self.rfile.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                    data += chunk
                if b"reject-me" in data:
                    self.reply("554 5.7.1 content rejected")
                else:
                    self.server.messages.append((rcpts, data))
                    self.reply("250 2.0.0 Ok: queued as TOY1")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


class _WildHandler(socketserver.StreamRequestHandler):
    """An upstream with bad manners, chosen per message by the sender's local part (see
    WILD_SENDERS) and per recipient (bad*: a 550 with control bytes and a long text; odd*: the
    code 777). Every message whose data arrive is recorded, whatever the final reply says."""

    def reply(self, raw):
        self.wfile.write(raw + b"\r\n")

    def handle(self):
        self.reply(b"220 wild ESMTP")
        sender, rcpts = b"", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.reply(b"250-wild\r\n250-8BITMIME\r\n250 SIZE 100000000")
            elif verb == b"MAIL":
                sender, rcpts = line[line.index(b"<") + 1:line.index(b"@")], []
                self.reply(WILD_SENDERS.get(sender, {}).get("mail", b"250 2.1.0 Ok"))
            elif verb == b"RCPT":
                addr = line[line.index(b"<") + 1:line.index(b">")]
                if addr.startswith(b"bad"):
                    self.reply(b"550 5.1.1 <" + addr + b">\x1b[31m no\x00such\x08user " + b"n" * 1000)
                elif addr.startswith(b"odd"):
                    self.reply(b"777 odd")
                else:
                    rcpts.append(addr.decode())
                    self.reply(b"250 2.1.5 Ok")
            elif verb == b"DATA":
                answer = WILD_SENDERS.get(sender, {}).get("data", b"354 go ahead")
                self.reply(answer)
                if not answer.startswith(b"354"):
                    continue
                data = b""
                while True:
                    chunk = self.rfile.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                    data += chunk
                self.server.messages.append((sender.decode(), rcpts, data))
                self.reply(WILD_SENDERS.get(sender, {}).get("end", b"250 2.0.0 Ok: queued as WILD1"))
            elif verb == b"QUIT":
                self.reply(b"221 bye")
                return
            else:
                self.reply(b"250 ok")


# sender local part → the upstream's raw replies (without the final CRLF) that differ.
WILD_SENDERS = {
    b"ctl": {"end": b"250 2.0.0 Ok\x01\x07\x1b[2J queued\x00as\x7fX\rY\x0b"},
    b"long": {"end": b"250-" + b"x" * 1000 + b"\r\n250-" + b"y" * 6000 + b"\r\n" +
              b"".join(b"250-line %d\r\n" % i for i in range(150)) + b"250 2.0.0 Ok"},
    b"utf8": {"end": "250 2.0.0 Ok ".encode() + "é".encode() * 600},
    b"end299": {"end": b"299 2.0.0 fine, I guess"},
    b"mail099": {"mail": b"099 what?"},
    b"mail421": {"mail": b"421 4.3.2 going down"},
    b"data250": {"data": b"250 no need for data"},
    b"data550": {"data": b"550 5.7.1 not from you\x00"},
    b"end999": {"end": b"999 done?"},
    b"end354": {"end": b"354 more please"},
    b"end552": {"end": b"552-5.3.4 too big\x07\r\n552 5.3.4 really"},
}


def reply_lines_ok(testcase, text):
    """The reply lines as smtplib returns them (b"\n"-joined): what the host's rules allow."""
    for line in text.split(b"\n"):
        testcase.assertLessEqual(len(line), 506, line[:60])
        testcase.assertFalse(any(c < 0x20 and c != 0x09 or c == 0x7f for c in line), line)


class ProxyTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-proxy-")
        self.addCleanup(rmtree, self.dir)

    def proxy_server(self, port, host="127.0.0.1", before=(), after=(), **extra):
        config = {"host": host, "port": port, "timeout": 5}
        config.update(extra)
        return self.start_server(server_config(plugins=list(before) + [{"name": "proxy", "config": config}] +
                                               list(after)))

    def upstream_maildir(self, tls=False):
        maildir = os.path.join(self.dir, "upstream-Maildir")
        listen = {"address": HOST, "port": 0}
        config = server_config(plugins=[{"name": "maildir", "config": {"path": maildir}}], listen=[listen])
        if tls:
            cert, key = make_certificate(self.dir)
            listen["tls"] = "starttls"
            config["tls"] = {"certificate": cert, "private_key": key}
            self.cert = cert
        return self.start_server(config), maildir

    @unittest.skipUnless(have_postfix_tools(), "Postfix's smtp-sink is not installed")
    def test_into_smtp_sink(self):
        sink = SmtpSink()
        self.addCleanup(sink.stop)
        server = self.proxy_server(sink.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            for i in range(20):
                s.mail("a@b.example")
                s.rcpt("c@d.example")
                code, text = s.data(b"Subject: %d\r\n\r\nhello\r\n.dot\r\n" % i)
                self.assertEqual(code, 250, text)

    @unittest.skipUnless(have_postfix_tools(), "Postfix's smtp-sink is not installed")
    def test_smtp_sink_refusals(self):
        # The upstream's refusal is the RCPT's own reply (the client never gets to DATA).
        sink = SmtpSink("-f", "RCPT")  # every recipient refused permanently
        self.addCleanup(sink.stop)
        server = self.proxy_server(sink.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.recipients["c@d.example"][0] // 100, 5)
        sink2 = SmtpSink("-r", "RCPT")  # temporarily
        self.addCleanup(sink2.stop)
        server2 = self.proxy_server(sink2.port)
        with smtplib.SMTP(HOST, server2.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.recipients["c@d.example"][0] // 100, 4)

    def test_into_asiosmtpd_with_maildir_byte_exact(self):
        upstream, maildir = self.upstream_maildir()
        server = self.proxy_server(upstream.port)
        contents = [b"Subject: one\r\n\r\nhello\r\n..dots\r\n.\r\n", b"Subject: 8\r\n\r\n\xc3\xa9\xff\r\n",
                    b"no headers at all\r\nsecond\r\n", b"", b"Subject: long\r\n\r\n" + b"z" * 998 + b"\r\n"]
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            for i, content in enumerate(contents):
                self.assertEqual(s.sendmail("" if i == 3 else "a@b.example", [f"m{i}@d.example", "x@d.example"],
                                            content), {})
        files = {}
        for data in maildir_files(maildir).values():
            files[data.split(b"X-RcptTo: ")[1].split(b",")[0].decode()] = data
        self.assertEqual(len(files), len(contents))
        for i, content in enumerate(contents):
            data = files[f"m{i}@d.example"]
            relayed = proxied(content if not content or content.endswith(b"\r\n") else content + b"\r\n", "127.0.0.1")
            headers = x_headers(peer_of(data), "<>" if i == 3 else "a@b.example", [f"m{i}@d.example", "x@d.example"])
            self.assertEqual(data, expected_message(relayed, headers), i)

    def dsn_upstream(self):
        """An asiosmtpd upstream with DSN on that logs the DSN parameters each message came with."""
        log = {"path": harness.fixture_plugin("scripted"),
               "config": {"hooks": {"DATA": {"log": "dsn mail=[{params}] rcpts=[{rcpt_params}]"}}}}
        return self.start_server(server_config(plugins=[log], enable_dsn=True))

    def send_with_dsn(self, server):
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("dsn"))
            self.assertEqual(s.mail("a@example.org", ["RET=HDRS", "ENVID=Id+2B42"])[0], 250)
            self.assertEqual(s.rcpt("b@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.NET"])[0], 250)
            self.assertEqual(s.rcpt("c@example.net")[0], 250)
            self.assertEqual(s.rcpt("d@example.net", ["NOTIFY=NEVER"])[0], 250)
            code, text = s.data(b"Subject: dsn\r\n\r\nbody\r\n")
            self.assertEqual(code, 250, text)

    def test_dsn_passed_to_an_upstream_that_offers_it(self):
        # RFC 3461 §5.2.1: the relay passes RET/ENVID and NOTIFY/ORCPT on, values as sent.
        upstream = self.dsn_upstream()
        server = self.start_server(server_config(
            plugins=[{"name": "proxy", "config": {"host": "127.0.0.1", "port": upstream.port, "timeout": 5}}],
            enable_dsn=True))
        self.send_with_dsn(server)
        want = ("dsn mail=[RET=HDRS,ENVID=Id+2B42] rcpts=[b@example.net(NOTIFY=SUCCESS,FAILURE,"
                "ORCPT=rfc822;B@Example.NET) c@example.net() d@example.net(NOTIFY=NEVER)]")
        upstream.wait_output(lambda e: want in e, which="stderr")

    def test_dsn_of_recipients_sent_only_at_data(self):
        # A plugin before the proxy accepts every RCPT: the proxy sends them at DATA, with the
        # parameters the server kept for each (txn_rcpt_param_at).
        upstream = self.dsn_upstream()
        accept_rcpt = {"path": harness.fixture_plugin("scripted"), "config": {"hooks": {"RCPT": {"verdict": "accept"}}}}
        server = self.start_server(server_config(
            plugins=[accept_rcpt, {"name": "proxy", "config": {"host": "127.0.0.1", "port": upstream.port,
                                                                "timeout": 5}}],
            enable_dsn=True))
        self.send_with_dsn(server)
        want = ("dsn mail=[RET=HDRS,ENVID=Id+2B42] rcpts=[b@example.net(NOTIFY=SUCCESS,FAILURE,"
                "ORCPT=rfc822;B@Example.NET) c@example.net() d@example.net(NOTIFY=NEVER)]")
        upstream.wait_output(lambda e: want in e, which="stderr")

    def test_dsn_dropped_for_an_upstream_without_it(self):
        # As Postfix: an upstream that does not offer DSN gets no DSN parameters.
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        server = self.start_server(server_config(
            plugins=[{"name": "proxy", "config": {"host": "127.0.0.1", "port": toy.port, "timeout": 5}}],
            enable_dsn=True))
        self.send_with_dsn(server)
        self.assertIn("MAIL FROM:<a@example.org>", toy.commands)
        self.assertEqual([c for c in toy.commands if c.startswith("RCPT")],
                         ["RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "RCPT TO:<d@example.net>"])

    def test_starttls_with_a_verified_certificate(self):
        upstream, maildir = self.upstream_maildir(tls=True)
        server = self.proxy_server(upstream.port, host="localhost", starttls=True, ca_file=self.cert)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: tls\r\n\r\nx\r\n"), {})
        self.assertEqual(len(maildir_files(maildir)), 1)
        # Not trusted (no ca_file, self-signed): 451 (to MAIL: the upstream is asked then), nothing relayed.
        untrusted = self.proxy_server(upstream.port, host="localhost", starttls=True)
        with smtplib.SMTP(HOST, untrusted.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"Subject: tls\r\n\r\nx\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
        self.assertEqual(len(maildir_files(maildir)), 1)
        self.assertIn("STARTTLS: handshake failed", untrusted.stderr())

    def test_per_recipient_refusals(self):
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        server = self.proxy_server(toy.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            # Each recipient is asked upstream at RCPT time: a refusal is that RCPT's reply.
            s.ehlo()
            self.assertEqual(s.mail("a@b.example"), (250, b"OK"))
            self.assertEqual(s.rcpt("good@d.example"), (250, b"OK"))
            self.assertEqual(s.rcpt("bad@d.example"), (550, b"5.1.1 <bad@d.example>: no such user"))
            self.assertEqual(s.rcpt("later@d.example"), (450, b"4.2.0 <later@d.example>: try later"))
            self.assertEqual(s.data(b"Subject: x\r\n\r\nhi\r\n"), (250, b"2.0.0 Ok: queued as TOY1"))
            self.assertEqual(toy.messages[-1][0], ["good@d.example"])
            # None accepted: the client never gets to DATA.
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                s.sendmail("a@b.example", ["bad1@d.example", "later@d.example"], b"x\r\n")
            self.assertEqual({r: c for r, (c, _) in cm.exception.recipients.items()},
                             {"bad1@d.example": 550, "later@d.example": 450})
            # DATA refused: the upstream's 554.
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["good@d.example"], b"reject-me\r\n")
            self.assertEqual(cm.exception.smtp_code, 554)
            self.assertIn(b"content rejected", cm.exception.smtp_error)
        self.assertIn("refused <bad@d.example>: 550 5.1.1", server.stderr())

    def test_one_upstream_connection_per_session(self):
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        server = self.proxy_server(toy.port, helo="relay.test")
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            self.assertEqual(s.sendmail("a@b.example", ["x@d.example"], b"Subject: 1\r\n\r\none\r\n"), {})
            # An abandoned transaction: the upstream's is reset before the next MAIL.
            s.mail("c@b.example")
            s.rcpt("y@d.example")
            s.rset()
            self.assertEqual(s.sendmail("e@b.example", ["z@d.example"], b"Subject: 2\r\n\r\ntwo\r\n"), {})
        server.wait_output(lambda e: "event=disconnect" in e, which="stderr")
        deadline = time.monotonic() + 5
        while "QUIT" not in toy.commands and time.monotonic() < deadline:
            time.sleep(0.02)
        # (smtplib's sendmail gives SIZE=, the proxy passes it on.)
        self.assertEqual(toy.commands, ["EHLO relay.test", "MAIL FROM:<a@b.example> SIZE=19", "RCPT TO:<x@d.example>",
                                        "DATA", "MAIL FROM:<c@b.example>", "RCPT TO:<y@d.example>", "RSET",
                                        "MAIL FROM:<e@b.example> SIZE=19", "RCPT TO:<z@d.example>", "DATA", "QUIT"])
        self.assertEqual(toy.connections, 1)
        self.assertEqual([m[0] for m in toy.messages], [["x@d.example"], ["z@d.example"]])

    def test_upstream_lost_between_commands(self):
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        server = self.proxy_server(toy.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            s.mail("a@b.example")
            # The upstream closes the connection right after accepting drop@: the next RCPT
            # connects again and opens the transaction anew; DATA sends drop@ again there.
            self.assertEqual(s.rcpt("drop@d.example")[0], 250)
            deadline = time.monotonic() + 5
            while toy.commands[-1:] != ["RCPT TO:<drop@d.example>"] and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)
            self.assertEqual(s.rcpt("good@d.example")[0], 250)
            self.assertEqual(s.data(b"Subject: x\r\n\r\nhi\r\n")[0], 250)
            self.assertEqual(toy.messages[-1][0], ["good@d.example", "drop@d.example"])
            self.assertEqual(toy.connections, 2)
            # The upstream ends the connection without answering a RCPT: tried once more on a
            # fresh connection, then 451 for that recipient; the next one goes through.
            s.mail("a@b.example")
            code, text = s.rcpt("die@d.example")
            self.assertEqual((code, text), (451, b"4.4.1 Upstream unavailable, try again later"))
            self.assertEqual(s.rcpt("good@d.example")[0], 250)
            self.assertEqual(s.data(b"Subject: y\r\n\r\nhi\r\n")[0], 250)
            self.assertEqual(toy.messages[-1][0], ["good@d.example"])
        self.assertIn("connection closed by the upstream on the kept connection; connecting again", server.stderr())

    def test_the_upstream_transaction_follows_the_server(self):
        from test_policy import PolicyServer
        policy = PolicyServer(answer=lambda a: b"action=REJECT not here\n\n" if a["recipient"].startswith("nope")
                              else b"action=DUNNO\n\n")
        self.addCleanup(policy.stop)
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        # The policy plugin after the proxy refuses nope@ after the upstream took it: at DATA the
        # upstream transaction starts over without it.
        server = self.proxy_server(toy.port, after=[{"name": "policy", "config": {"address": policy.address}}])
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            s.mail("a@b.example")
            self.assertEqual(s.rcpt("good@d.example")[0], 250)
            self.assertEqual(s.rcpt("nope@d.example"), (550, b"5.7.1 not here"))
            self.assertEqual(s.data(b"Subject: x\r\n\r\nhi\r\n")[0], 250)
            # 8-bit content without BODY=8BITMIME: MAIL is sent again with it.
            self.assertEqual(s.sendmail("a@b.example", ["good@d.example"], "Subject: é\r\n\r\nété\r\n".encode()), {})
        self.assertEqual([m[0] for m in toy.messages], [["good@d.example"], ["good@d.example"]])
        deadline = time.monotonic() + 5  # the session's end sends QUIT upstream, a moment later
        while "QUIT" not in toy.commands and time.monotonic() < deadline:
            time.sleep(0.02)
        cmds = [c for c in toy.commands if not c.startswith("EHLO")]
        # SIZE= is the size of the message as sent when MAIL is sent at DATA (RFC 1870: without
        # the dot-stuffing and the final ".\r\n").
        size1 = len(proxied(b"Subject: x\r\n\r\nhi\r\n", "127.0.0.1"))
        size2 = len(proxied("Subject: é\r\n\r\nété\r\n".encode(), "127.0.0.1"))
        self.assertEqual(cmds, ["MAIL FROM:<a@b.example>", "RCPT TO:<good@d.example>", "RCPT TO:<nope@d.example>",
                                "RSET", "MAIL FROM:<a@b.example> SIZE=%d" % size1, "RCPT TO:<good@d.example>", "DATA",
                                "MAIL FROM:<a@b.example> SIZE=22", "RCPT TO:<good@d.example>",
                                "RSET", "MAIL FROM:<a@b.example> SIZE=%d BODY=8BITMIME" % size2,
                                "RCPT TO:<good@d.example>", "DATA", "QUIT"])

    def test_max_hops(self):
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        server = self.proxy_server(toy.port, max_hops=3)
        hop = b"Received: from a.example by b.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        folded = b"received : from c.example\r\n\tby d.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], hop * 2 + folded + b"Subject: 3\r\n\r\nx\r\n"), {})
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], hop * 3 + folded + b"Subject: 4\r\n\r\nx\r\n")
            self.assertEqual((cm.exception.smtp_code, cm.exception.smtp_error), (554, b"5.4.6 Too many hops"))
            # Received: lines in the body are not hops.
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: b\r\n\r\n" + hop * 10), {})
        self.assertEqual(len(toy.messages), 2)
        self.assertIn("more than max_hops (3) Received: header fields", server.stderr())
        # The default is 50, as Postfix's hopcount_limit.
        server = self.proxy_server(toy.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], hop * 50 + b"\r\nx\r\n"), {})
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], hop * 51 + b"\r\nx\r\n")
            self.assertEqual(cm.exception.smtp_code, 554)
        self.assertEqual(len(toy.messages), 3)

    def test_upstream_down_answers_451(self):
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = self.proxy_server(port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:  # MAIL asks the upstream
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
            self.assertIn(b"4.4.1", cm.exception.smtp_error)
            self.assertEqual(s.noop()[0], 250)

    def test_silent_upstream_times_out_with_451(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)  # accepts (in the kernel) and never says a word
        server = self.proxy_server(silent.getsockname()[1], timeout=1)
        started = time.monotonic()
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("timed out", server.stderr())

    def wild_server(self, **extra):
        wild = ToyUpstream(_WildHandler)
        self.addCleanup(wild.stop)
        return wild, self.proxy_server(wild.port, **extra)

    def send(self, s, sender, rcpts, body=b"Subject: x\r\n\r\nhi\r\n", refused=None):
        """MAIL, RCPT..., DATA on an open smtplib session: the DATA reply (code, text). Every
        recipient must be accepted, but those named in `refused`, whose RCPT replies (code,
        text) are stored there (they must be refusals the host's rules allow)."""
        self.assertEqual(s.mail(sender)[0], 250)
        for r in rcpts:
            code, text = s.rcpt(r)
            if refused is not None and r in refused:
                self.assertNotEqual(code, 250, r)
                reply_lines_ok(self, text)
                refused[r] = (code, text)
            else:
                self.assertEqual(code, 250, (r, text))
        return s.data(body)

    def test_control_bytes_and_long_lines_from_the_upstream(self):
        wild, server = self.wild_server()
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            # Control bytes in a refusal (the RCPT's reply) and in the acceptance: replaced, still 250.
            refused = {"bad@d.example": None}
            code, text = self.send(s, "ctl@b.example", ["good@d.example", "bad@d.example"], refused=refused)
            self.assertEqual(code, 250, text)
            reply_lines_ok(self, text)
            self.assertEqual(text, b"2.0.0 Ok???[2J queued?as?X?Y?")
            self.assertEqual(refused["bad@d.example"][0], 550)
            self.assertTrue(refused["bad@d.example"][1].startswith(b"5.1.1 <bad@d.example>?[31m no?such?user nnn"),
                            refused["bad@d.example"])
            # A 1000-byte and a 6000-byte line, 153 lines in all: cut, still 250.
            code, text = self.send(s, "long@b.example", ["good@d.example", "bad@d.example"], refused={"bad@d.example": None})
            self.assertEqual(code, 250, text[:200])
            reply_lines_ok(self, text)
            self.assertTrue(text.startswith(b"x" * 100), text[:200])
            # Multi-byte characters are cut whole.
            code, text = self.send(s, "utf8@b.example", ["good@d.example"])
            self.assertEqual(code, 250)
            reply_lines_ok(self, text)
            self.assertTrue(text.decode("utf-8").startswith("2.0.0 Ok éé"))
            self.assertEqual(s.noop()[0], 250)
        # One copy of each message upstream, and every one answered 250: nothing to retry.
        self.assertEqual([m[0] for m in wild.messages], ["ctl", "long", "utf8"])
        self.assertTrue(all(m[1] == ["good@d.example"] for m in wild.messages))
        self.assertNotIn("4.3.0", server.stderr())
        self.assertNotIn("refused the completion", server.stderr())

    def test_nonsense_codes_from_the_upstream_map_to_sane_replies(self):
        wild, server = self.wild_server()
        cases = [  # sender, recipients, the client's MAIL code, RCPT codes, DATA code, relayed upstream
            ("end299", ["good@d.example"], 250, [250], 250, True),
            ("other", ["good@d.example", "odd@d.example"], 250, [250, 451], 250, True),  # 777 to a RCPT: 451
            ("other", ["odd@d.example"], 250, [451], None, False),
            ("mail099", ["good@d.example"], 451, [], None, False),
            ("mail421", ["good@d.example"], 451, [], None, False),
            ("data250", ["good@d.example"], 250, [250], 451, False),  # DATA "accepted" without 354: nothing sent
            ("data550", ["good@d.example"], 250, [250], 550, False),
            ("end999", ["good@d.example"], 250, [250], 451, True),    # fate unknown: the client keeps the message
            ("end354", ["good@d.example"], 250, [250], 451, True),
            ("end552", ["good@d.example"], 250, [250], 552, True),
        ]
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            for sender, rcpts, mail_code, rcpt_codes, data_code, relayed in cases:
                before = len(wild.messages)
                code, text = s.mail(sender + "@b.example")
                self.assertEqual(code, mail_code, (sender, text))
                reply_lines_ok(self, text)
                for r, expected in zip(rcpts, rcpt_codes):
                    code, text = s.rcpt(r)
                    self.assertEqual(code, expected, (sender, r, text))
                    reply_lines_ok(self, text)
                if data_code is not None:
                    code, text = s.data(b"Subject: x\r\n\r\nhi\r\n")
                    self.assertEqual(code, data_code, (sender, rcpts, text))
                    reply_lines_ok(self, text)
                    if sender == "data550":
                        self.assertIn(b"not from you?", text)
                self.assertEqual(len(wild.messages) - before, 1 if relayed else 0, sender)
                self.assertEqual(s.rset()[0], 250)
        err = server.stderr()
        self.assertIn("end of data: unexpected 999 done?", err)
        self.assertIn("DATA: unexpected 250 no need for data", err)
        self.assertIn("refused <odd@d.example>: 777 odd", err)
        self.assertNotIn("4.3.0", err)

    def test_thousands_of_refused_recipients_fit_in_one_reply(self):
        # A plugin before the proxy accepts every RCPT (so the proxy's RCPT hook never runs):
        # the proxy asks the upstream about them at DATA and lists the refusals there.
        accept_all = {"path": harness.fixture_plugin("scripted"), "config": {"hooks": {"RCPT": {"verdict": "accept"}}}}
        wild = ToyUpstream(_WildHandler)
        self.addCleanup(wild.stop)
        server = self.proxy_server(wild.port, timeout=30, before=[accept_all])
        bad = ["bad%04d@d.example" % i for i in range(3000)]
        with smtplib.SMTP(HOST, server.port, timeout=30) as s:
            s.ehlo()
            code, text = self.send(s, "many@b.example", ["good@d.example"] + bad)
            self.assertEqual(code, 250, text[:200])
            reply_lines_ok(self, text)
            self.assertLessEqual(len(text), 65536)
            lines = text.split(b"\n")
            self.assertEqual(lines[0], b"2.0.0 Ok: queued as WILD1")
            self.assertTrue(lines[1].startswith(b"refused <bad0000@d.example>: 550 5.1.1"), lines[1][:80])
            self.assertEqual(lines[-1], b"... and 2900 more")
            self.assertEqual(len(lines), 1 + 100 + 1)
            # Nobody accepted: the 550, with the same capped list.
            code, text = self.send(s, "many@b.example", bad)
            self.assertEqual(code, 550, text[:200])
            reply_lines_ok(self, text)
            self.assertEqual(text.split(b"\n")[-1], b"... and 2900 more")
        self.assertEqual([(m[0], m[1]) for m in wild.messages], [("many", ["good@d.example"])])
        # The log keeps every refusal (it is the only record of who did not get the message).
        self.assertEqual(server.stderr().count("refused <bad2999@d.example>"), 2)

    def test_unresolvable_upstream_name_answers_451_within_timeout(self):
        # A name under .invalid (RFC 6761) never resolves: NXDOMAIN at once, or, without a
        # working DNS server, the lookup's deadline. Either way 451 within `timeout`.
        server = self.proxy_server(25, host="no-such-upstream.invalid", timeout=2)
        started = time.monotonic()
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
            self.assertIn(b"4.4.1", cm.exception.smtp_error)
            self.assertEqual(s.noop()[0], 250)
        self.assertLess(time.monotonic() - started, 6)
        err = server.wait_output(lambda t: "answering 451" in t, which="stderr", timeout=5)
        self.assertRegex(err, r"(cannot resolve|resolving) no-such-upstream\.invalid(: | timed out)")

    def test_dead_dns_server_costs_no_more_than_timeout(self):
        # Needs a private mount and network namespace (root, or unprivileged user namespaces):
        # there /etc/resolv.conf names 127.0.0.1, where a socket takes the queries and never
        # answers. No packet leaves the namespace; without one the test is skipped.
        unshare, ip = shutil.which("unshare"), shutil.which("ip")
        if not unshare or not ip:
            self.skipTest("needs unshare(1) and ip(8)")
        argv = [unshare, "--mount", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
        probe = subprocess.run(argv + ["true"], capture_output=True, timeout=10)
        if probe.returncode != 0:
            self.skipTest("no namespaces here: " + probe.stderr.decode(errors="replace").strip())
        resolv = os.path.join(self.dir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:3 attempts:1\n")
        script = (f"{ip} link set lo up && mount --bind {resolv} /etc/resolv.conf && "
                  f"exec {sys.executable} -c \"$0\"")
        child = subprocess.run(argv + ["sh", "-c", script, _DEAD_DNS_CHILD], capture_output=True,
                               timeout=90, cwd=os.path.dirname(os.path.abspath(__file__)))
        out = child.stdout.decode(errors="replace")
        self.assertEqual(child.returncode, 0, out + child.stderr.decode(errors="replace"))
        result = json.loads(out.strip().splitlines()[-1])
        self.assertGreater(result["getaddrinfo"], 2.5)  # the resolver really waits ~3 s ...
        for code, took in result["messages"]:
            self.assertEqual(code, 451)
            self.assertLess(took, 2.5)                 # ... the client 1 s (timeout: 1)
        self.assertEqual(result["exit"], 0)            # unloading waits for the lookup thread
        self.assertIn("resolving upstream.example timed out after", result["stderr"])


# Runs inside the namespaces of test_dead_dns_server_costs_no_more_than_timeout; prints JSON.
_DEAD_DNS_CHILD = r"""
import json, smtplib, socket, time
import harness
dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dead.bind(("127.0.0.1", 53))  # takes the queries, never answers
started = time.monotonic()
try:
    socket.getaddrinfo("upstream.example", 25)
except OSError:
    pass
result = {"getaddrinfo": time.monotonic() - started, "messages": []}
config = {"host": "upstream.example", "port": 25, "timeout": 1}
server = harness.Server(harness.server_config(plugins=[{"name": "proxy", "config": config}]))
try:
    with smtplib.SMTP(harness.HOST, server.port, timeout=10) as s:
        for _ in range(2):
            started = time.monotonic()
            try:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
                code = 250
            except smtplib.SMTPResponseException as e:  # MAIL asks the upstream: SMTPSenderRefused
                code = e.smtp_code
            result["messages"].append((code, time.monotonic() - started))
finally:
    result["exit"] = server.stop()
    result["stderr"] = server.final_output()[1]
print(json.dumps(result))
"""


if __name__ == "__main__":
    harness.main()
