"""proxy plugin: relays into Postfix's smtp-sink and into a second asiosmtpd with maildir (byte-
exact, X-Peer inserted as aiosmtpd's Proxy), over STARTTLS with a verified certificate; the
upstream's verdict comes back (refused recipients, refused DATA); upstream down or silent → 451."""
import os
import smtplib
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

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ToyHandler)
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


if __name__ == "__main__":
    harness.main()
