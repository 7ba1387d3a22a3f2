# SPDX-License-Identifier: Apache-2.0
"""proxy plugin: relays into Postfix's smtp-sink and into a second asiosmtpd with maildir (byte-
exact, X-Peer inserted as aiosmtpd's Proxy), over STARTTLS with a verified certificate; the
upstream's verdict comes back (refused recipients, refused DATA); upstream down or silent → 451.
An upstream that answers with control bytes, over-long lines, nonsense codes or thousands of
refusals still yields a reply the host sends (250 when the upstream took the message, and only
one copy of it); an upstream name that cannot be resolved → 451 within the plugin's timeout."""
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
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


class _ToyHandler(socketserver.StreamRequestHandler):
    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        self.reply("220 toy ESMTP")
        rcpts = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
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

    def proxy_server(self, port, host="127.0.0.1", **extra):
        config = {"host": host, "port": port, "timeout": 5}
        config.update(extra)
        return self.start_server(server_config(plugins=[{"name": "proxy", "config": config}]))

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
        sink = SmtpSink("-f", "RCPT")  # every recipient refused permanently
        self.addCleanup(sink.stop)
        server = self.proxy_server(sink.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code // 100, 5)
        sink2 = SmtpSink("-r", "RCPT")  # temporarily
        self.addCleanup(sink2.stop)
        server2 = self.proxy_server(sink2.port)
        with smtplib.SMTP(HOST, server2.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)

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

    def test_starttls_with_a_verified_certificate(self):
        upstream, maildir = self.upstream_maildir(tls=True)
        server = self.proxy_server(upstream.port, host="localhost", starttls=True, ca_file=self.cert)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: tls\r\n\r\nx\r\n"), {})
        self.assertEqual(len(maildir_files(maildir)), 1)
        # Not trusted (no ca_file, self-signed): 451, nothing relayed.
        untrusted = self.proxy_server(upstream.port, host="localhost", starttls=True)
        with smtplib.SMTP(HOST, untrusted.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"Subject: tls\r\n\r\nx\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
        self.assertEqual(len(maildir_files(maildir)), 1)
        self.assertIn("STARTTLS: handshake failed", untrusted.stderr())

    def test_per_recipient_refusals(self):
        toy = ToyUpstream()
        self.addCleanup(toy.stop)
        server = self.proxy_server(toy.port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            # Some accepted: 250 with the upstream's text, refusals listed in the reply.
            s.ehlo()
            s.mail("a@b.example")
            for r in ("good@d.example", "bad@d.example", "later@d.example"):
                s.rcpt(r)
            code, text = s.data(b"Subject: x\r\n\r\nhi\r\n")
            self.assertEqual(code, 250)
            self.assertIn(b"2.0.0 Ok: queued as TOY1", text)
            self.assertIn(b"refused <bad@d.example>: 550 5.1.1", text)
            self.assertIn(b"refused <later@d.example>: 450 4.2.0", text)
            self.assertEqual(toy.messages[-1][0], ["good@d.example"])
            # None accepted, all permanent: 550; one temporary among them: 451.
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["bad1@d.example", "bad2@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 550)
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["bad1@d.example", "later@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
            # DATA refused: the upstream's 554.
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["good@d.example"], b"reject-me\r\n")
            self.assertEqual(cm.exception.smtp_code, 554)
            self.assertIn(b"content rejected", cm.exception.smtp_error)
        self.assertIn("refused <bad@d.example>", server.stderr())

    def test_upstream_down_answers_451(self):
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = self.proxy_server(port)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
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
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                s.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
            self.assertEqual(cm.exception.smtp_code, 451)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("timed out", server.stderr())

    def wild_server(self, **extra):
        wild = ToyUpstream(_WildHandler)
        self.addCleanup(wild.stop)
        return wild, self.proxy_server(wild.port, **extra)

    def send(self, s, sender, rcpts, body=b"Subject: x\r\n\r\nhi\r\n"):
        """MAIL, RCPT..., DATA on an open smtplib session: the DATA reply (code, text)."""
        self.assertEqual(s.mail(sender)[0], 250)
        for r in rcpts:
            self.assertEqual(s.rcpt(r)[0], 250)
        return s.data(body)

    def test_control_bytes_and_long_lines_from_the_upstream(self):
        wild, server = self.wild_server()
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            # Control bytes in the acceptance and in a refusal: replaced, still 250.
            code, text = self.send(s, "ctl@b.example", ["good@d.example", "bad@d.example"])
            self.assertEqual(code, 250, text)
            reply_lines_ok(self, text)
            lines = text.split(b"\n")
            self.assertEqual(lines[0], b"2.0.0 Ok???[2J queued?as?X?Y?")
            self.assertTrue(lines[1].startswith(b"refused <bad@d.example>: 550 5.1.1 <bad@d.example>?[31m no?such?user"),
                            lines[1])
            self.assertEqual(len(lines), 2)
            # A 1000-byte and a 6000-byte line, 153 lines in all: cut, still 250.
            code, text = self.send(s, "long@b.example", ["good@d.example", "bad@d.example"])
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
        cases = [  # sender, recipients, the client's code, relayed upstream
            ("end299", ["good@d.example"], 250, True),
            ("other", ["good@d.example", "odd@d.example"], 250, True),  # 777 for one recipient: listed
            ("other", ["odd@d.example"], 451, False),                   # ... for the only one: 451
            ("mail099", ["good@d.example"], 451, False),
            ("mail421", ["good@d.example"], 451, False),
            ("data250", ["good@d.example"], 451, False),  # DATA "accepted" without 354: nothing sent
            ("data550", ["good@d.example"], 550, False),
            ("end999", ["good@d.example"], 451, True),    # fate unknown: the client keeps the message
            ("end354", ["good@d.example"], 451, True),
            ("end552", ["good@d.example"], 552, True),
        ]
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo()
            for sender, rcpts, expected, relayed in cases:
                before = len(wild.messages)
                code, text = self.send(s, sender + "@b.example", rcpts)
                self.assertEqual(code, expected, (sender, rcpts, text))
                reply_lines_ok(self, text)
                self.assertEqual(len(wild.messages) - before, 1 if relayed else 0, sender)
                if sender == "other" and code == 250:
                    self.assertIn(b"refused <odd@d.example>: 777 odd", text)
                if sender == "data550":
                    self.assertIn(b"not from you?", text)
                self.assertEqual(s.rset()[0], 250)
        err = server.stderr()
        self.assertIn("end of data: unexpected 999 done?", err)
        self.assertIn("DATA: unexpected 250 no need for data", err)
        self.assertNotIn("4.3.0", err)

    def test_thousands_of_refused_recipients_fit_in_one_reply(self):
        wild, server = self.wild_server(timeout=30)
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
            with self.assertRaises(smtplib.SMTPDataError) as cm:
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
            except smtplib.SMTPDataError as e:
                code = e.smtp_code
            result["messages"].append((code, time.monotonic() - started))
finally:
    result["exit"] = server.stop()
    result["stderr"] = server.final_output()[1]
print(json.dumps(result))
"""


if __name__ == "__main__":
    harness.main()
