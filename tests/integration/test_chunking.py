# SPDX-License-Identifier: Apache-2.0
"""CHUNKING and BINARYMIME (RFC 3030, server.enable_chunking) on the wire, with a raw-socket
client: off by default (BDAT unknown, as aiosmtpd); EHLO and HELP when on; pipelined BDAT
chunks whose octets look like commands, answered in order; the refusals (need RCPT, size limit,
a failed message's later chunks, DATA after BDAT, DATA with BODY=BINARYMIME, a size that cannot
be read closes); the same message by DATA and by BDAT reaches a Maildir byte for byte, also a
large one streamed through DATA_CHUNK; the Received field and the mail log; LMTP with BDAT (one
reply per recipient after LAST), and an editing plugin's edits. The proxy plugin relays with BDAT when the upstream offers
CHUNKING (seen on the wire by a tap in front of an asiosmtpd upstream), DATA otherwise, and
BODY=BINARYMIME only to an upstream that takes it."""
import os
import re
import socket
import socketserver
import tempfile
import threading
import unittest

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config
from delivery import expected_message, maildir_files, peer_of, rmtree, x_headers

GREETING = f"220 {HOSTNAME} {IDENT}"
EHLO_ON = [f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250-BINARYMIME", "250-CHUNKING", "250 HELP"]


def bdat(chunk, last=False):
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def chunked(message, sizes):
    """BDAT commands carrying `message` in chunks of `sizes` (the rest in the LAST one)."""
    out, at = b"", 0
    for n in sizes:
        out += bdat(message[at:at + n])
        at += n
    return out + bdat(message[at:], last=True)


def stuffed(message):
    """DATA's transparency (RFC 5321 §4.5.2) for a message whose lines end in CRLF."""
    return re.sub(rb"(^|\r\n)\.", rb"\1..", message) + b".\r\n"


def ok_chunk(n):
    return f"250 2.0.0 Ok: {n} octets received"


class ChunkingWireTest(ServerTestCase):
    def test_off_by_default(self):
        server = self.start_server()
        c = self.connect(server)
        self.assertEqual(c.line(), GREETING)
        ehlo = c.cmd("EHLO client.example")
        self.assertNotIn("250-CHUNKING", ehlo)
        self.assertNotIn("250-BINARYMIME", ehlo)
        self.assertEqual(c.cmd("BDAT 4 LAST"), ['500 Error: command "BDAT" not recognized'])
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example> BODY=BINARYMIME"),
                         ["501 Error: BODY can only be one of 7BIT, 8BITMIME"])

    def test_ehlo_help_and_pipelined_chunks(self):
        server = self.start_server(server_config(enable_chunking=True))
        c = self.connect(server)
        self.assertEqual(c.line(), GREETING)
        self.assertEqual(c.cmd("EHLO client.example"), EHLO_ON)
        self.assertEqual(c.cmd("HELP BDAT"), ["250 Syntax: BDAT <size> [LAST]"])
        # Everything in one write: chunks that hold command lines, a chunk split inside a CRLF,
        # "BDAT 0", LAST in lower case, then commands again.
        evil = b"QUIT\r\nRSET\r\nDATA\r\n.\r\n"
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" + bdat(evil) + bdat(b"x\r") +
               b"BDAT 0\r\n" + b"BDAT 1 last\r\n\n" + b"NOOP\r\nMAIL FROM:<e@b.example>\r\nRCPT TO:<f@d.example>\r\n" +
               b"BDAT 0 LAST\r\nQUIT\r\n")
        replies = [c.line() for _ in range(11)]
        self.assertEqual(replies, ["250 OK", "250 OK", ok_chunk(len(evil)), ok_chunk(2), ok_chunk(0), "250 OK",
                                   "250 OK", "250 OK", "250 OK", "250 OK", "221 Bye"])
        # Two messages in the log: the chunks' octets, then an empty one.
        log = server.wait_output(lambda e: e.count("event=message") == 2, which="stderr")
        self.assertRegex(log, rf"event=message .*from=<a@b.example> to=<c@d.example> rcpts=1 size={len(evil) + 3} "
                              r"result=250")
        self.assertRegex(log, r"event=message .*from=<e@b.example> to=<f@d.example> rcpts=1 size=0 result=250")

    def test_refusals(self):
        server = self.start_server(server_config(enable_chunking=True, data_size_limit=100))
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        # No transaction: the chunk is skipped, its octets are not commands.
        c.send(b"BDAT 6\r\nQUIT\r\n")
        self.assertEqual(c.reply(), ["503 Error: need RCPT command"])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        # The size limit: 552 for the chunk that passes it; the pipelined chunks after it 503
        # up to LAST; then a new transaction works.
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" + bdat(b"a" * 60) + bdat(b"b" * 60) +
               bdat(b"RSET\r\n") + bdat(b"c", last=True) + b"NOOP\r\n")
        self.assertEqual([c.line() for _ in range(7)],
                         ["250 OK", "250 OK", ok_chunk(60), "552 Error: Too much mail data",
                          "503 5.5.1 Error: chunk discarded after an earlier BDAT error",
                          "503 5.5.1 Error: chunk discarded after an earlier BDAT error", "250 OK"])
        # DATA after BDAT; DATA with BODY=BINARYMIME.
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" + bdat(b"abc") + b"DATA\r\n" +
               bdat(b"def", last=True))
        self.assertEqual([c.line() for _ in range(5)],
                         ["250 OK", "250 OK", ok_chunk(3), "503 5.5.1 Error: DATA after BDAT", "250 OK"])
        c.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<c@d.example>\r\nDATA\r\n" +
               bdat(b"\x00\xff\r", last=True))
        self.assertEqual([c.line() for _ in range(4)],
                         ["250 OK", "250 OK", "503 5.5.1 Error: BODY=BINARYMIME requires BDAT", "250 OK"])
        # A size that cannot be read: where the chunk ends is unknown, the connection closes.
        c.send(b"BDAT many\r\nNOOP\r\n")
        self.assertEqual(c.expect_eof(), b"521 5.5.4 Syntax: BDAT <size> [LAST]\r\n")
        log = server.wait_output(lambda e: "event=disconnect" in e, which="stderr")
        self.assertIn('command="BDAT 6" reply="503 Error: need RCPT command"', log)
        self.assertRegex(log, r"event=message .* size=60 result=552")

    def test_lmtp_one_reply_per_recipient_after_last(self):
        listen = [{"address": HOST, "port": 0, "protocol": "lmtp"}]
        server = self.start_server(server_config(enable_chunking=True, listen=listen))
        c = self.connect(server)
        c.line()
        lhlo = c.cmd("LHLO client.example")
        self.assertIn("250-CHUNKING", lhlo)
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<one@d.example>\r\nRCPT TO:<two@d.example>\r\n" +
               chunked(b"Subject: lmtp\r\n\r\nhello\r\n", [5]) + b"NOOP\r\n")
        self.assertEqual([c.line() for _ in range(7)],
                         ["250 OK", "250 OK", "250 OK", ok_chunk(5), "250 OK", "250 OK", "250 OK"])


# Messages DATA can carry exactly (lines end in CRLF, none over 998 octets), with what DATA
# treats specially: leading dots, a lone dot line, a bare LF and a bare CR inside lines, NULs,
# 8-bit bytes, no header, empty.
MESSAGES = {
    "plain": b"Subject: hi\r\nFrom: a@b.example\r\n\r\nhello\r\n",
    "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...three\r\nend.\r\n",
    "8bit": b"Subject: caf\xc3\xa9\r\n\r\nbody \xe9\xff\x80 ok\r\n",
    "bare": b"Subject: bare\r\n\r\na\rb\nc\r\n.\nnot a dot line\r\n",
    "nul": b"Subject: n\r\n\r\nx\x00y\r\n",
    "no_headers": b"just a body line\r\n",
    "empty": b"",
    "long": b"Subject: long\r\n\r\n" + b"x" * 998 + b"\r\n" + b"." + b"y" * 997 + b"\r\n",
}


class ChunkingMaildirTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-chunking-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")

    def start(self, before=(), **server):
        plugins = list(before) + [{"name": "maildir", "config": {"path": self.maildir}}]
        return self.start_server(server_config(plugins=plugins, enable_chunking=True, **server))

    def send_both(self, server, name, message, sizes):
        """The message by DATA (as is, dot-stuffed) to <name-data@>, then by BDAT in chunks to
        <name-bdat@>, in one session; returns the client's (address, port)."""
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<%s-data@d.example>\r\nDATA\r\n" % name.encode() +
               stuffed(message))
        self.assertEqual([c.line() for _ in range(4)],
                         ["250 OK", "250 OK", "354 End data with <CR><LF>.<CR><LF>", "250 OK"], name)
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<%s-bdat@d.example>\r\n" % name.encode() + chunked(message, sizes))
        replies = [c.line() for _ in range(3 + len(sizes))]
        self.assertEqual(replies[-1], "250 OK", name)
        c.cmd("QUIT")
        return c.sock.getsockname()

    def stored(self):
        files = {}
        for data in maildir_files(self.maildir).values():
            files[re.search(rb"^X-RcptTo: (.*?)\r?$", data, re.M).group(1).decode()] = data  # CRLF: binary
        return files

    def test_same_message_by_data_and_by_bdat_byte_exact(self):
        server = self.start()
        peers = {}
        for name, message in MESSAGES.items():
            # Chunk borders inside CRLFs, at a dot, one octet long.
            peers[name] = self.send_both(server, name, message, [1, 2, 13] if len(message) > 16 else [])
        files = self.stored()
        self.assertEqual(len(files), 2 * len(MESSAGES))
        for name, message in MESSAGES.items():
            by_data, by_bdat = files[f"{name}-data@d.example"], files[f"{name}-bdat@d.example"]
            self.assertEqual(by_bdat.replace(b"-bdat@", b"-data@"), by_data, name)
            self.assertEqual(by_bdat, expected_message(
                message, x_headers(peer_of(by_bdat), "a@b.example", [f"{name}-bdat@d.example"])), name)
            self.assertEqual(peer_of(by_bdat), tuple(peers[name]))

    def test_large_message_streamed_in_chunks(self):
        # 1.2 MB in uneven chunks: maildir takes it in DATA_CHUNK pieces, as it would by DATA.
        server = self.start()
        line = bytes(range(0x20, 0x7f)) + b"\xc3\xa9" * 100 + b"\r\n"
        message = b"Subject: big\r\n\r\n" + line * (1200000 // len(line))
        self.send_both(server, "big", message, [100000, 333333, 7, 65536, 65536])
        files = self.stored()
        self.assertEqual(files["big-bdat@d.example"].replace(b"-bdat@", b"-data@"), files["big-data@d.example"])

    def test_an_editor_edits_a_bdat_message_as_a_data_one(self):
        # An editing plugin (ABI 1.3) before maildir; pieces of 16 KiB held in a file past 20 KiB.
        edits = [{"op": "insert_header", "index": 0, "name": "X-Edited", "value": "yes"},
                 {"op": "change_header", "name": "Subject", "index": 1, "value": "edited"}]
        server = self.start([{"path": harness.fixture_plugin("editor"), "config": {"tag": "ED", "edits": edits}}],
                            spool_threshold=20000)
        message = b"Subject: original\r\n\r\n" + b"line of the body\r\n" * 3000
        self.send_both(server, "edit", message, [7, 30000])
        files = self.stored()
        by_data, by_bdat = files["edit-data@d.example"], files["edit-bdat@d.example"]
        self.assertIn(b"X-Edited: yes\n", by_data)
        self.assertIn(b"Subject: edited\n", by_data)
        self.assertEqual(by_bdat.replace(b"-bdat@", b"-data@"), by_data)

    def test_received_field_tops_a_bdat_message(self):
        server = self.start(received_header=True)
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@d.example>\r\n" + chunked(b"Subject: r\r\n\r\nhi\r\n", [4]))
        self.assertEqual([c.line() for _ in range(4)], ["250 OK", "250 OK", ok_chunk(4), "250 OK"])
        data = self.stored()["r@d.example"]
        self.assertTrue(data.startswith(b"Received: from client.example ([127.0.0.1])"), data[:80])
        received = b" ".join(data.split(b"\nSubject:")[0].split())
        log = server.wait_output(lambda e: "event=message" in e, which="stderr")
        txn = re.search(r"event=message txn=(\S+) .* size=18 result=250", log).group(1)
        self.assertIn(f"by {HOSTNAME} (asiosmtpd) with ESMTP id {txn} for <r@d.example>; ".encode(), received)

    def test_binarymime(self):
        # Not text at all: any octet, CR and LF alone, no final line end.
        server = self.start()
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        blob = bytes(range(256)) * 4
        c.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<bin@d.example>\r\n" +
               chunked(b"Content-Type: application/octet-stream\r\n\r\n" + blob, [10, 500]))
        self.assertEqual([c.line() for _ in range(5)], ["250 OK", "250 OK", ok_chunk(10), ok_chunk(500), "250 OK"])
        self.assertIn("bin@d.example", self.stored())


class Tap(socketserver.ThreadingTCPServer):
    """A TCP relay on 127.0.0.1 in front of `port` that records what each side sends."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port):
        super().__init__((HOST, 0), _TapHandler)
        self.target = port
        self.sent = b""      # by the client
        self.replies = b""   # by the server
        self.lock = threading.Lock()
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self):
        self.shutdown()
        self.server_close()


class _TapHandler(socketserver.BaseRequestHandler):
    def handle(self):
        up = socket.create_connection((HOST, self.server.target), timeout=10)
        self.request.settimeout(10)

        def back():
            try:
                while data := up.recv(65536):
                    with self.server.lock:
                        self.server.replies += data
                    self.request.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    self.request.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=back, daemon=True)
        t.start()
        try:
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.sent += data
                up.sendall(data)
        except OSError:
            pass
        finally:
            up.close()
            t.join(timeout=10)


class ProxyChunkingTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-chunking-proxy-")
        self.addCleanup(rmtree, self.dir)

    def relay(self, upstream_chunking):
        """A maildir upstream (chunking on or off) behind a tap, and a proxy server in front
        (chunking on); returns (proxy server, tap, upstream maildir)."""
        maildir = os.path.join(self.dir, f"up-{upstream_chunking}")
        upstream = self.start_server(server_config(plugins=[{"name": "maildir", "config": {"path": maildir}}],
                                                   enable_chunking=upstream_chunking))
        tap = Tap(upstream.port)
        self.addCleanup(tap.stop)
        proxy = self.start_server(server_config(
            plugins=[{"name": "proxy", "config": {"host": HOST, "port": tap.port, "timeout": 5}}],
            enable_chunking=True))
        return proxy, tap, maildir

    def send(self, server, wire):
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        c.send(wire)
        return c

    def test_bdat_when_the_upstream_offers_chunking_data_otherwise(self):
        message = b"Subject: relay\r\n\r\n.dot\r\nbare\nlf\r\n"
        for chunking in (True, False):
            proxy, tap, maildir = self.relay(chunking)
            # The client uses DATA for one message and BDAT for the next: the upstream gets
            # both the way it can take them.
            c = self.send(proxy, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<one@d.example>\r\nDATA\r\n" + stuffed(message) +
                          b"MAIL FROM:<a@b.example>\r\nRCPT TO:<two@d.example>\r\n" + chunked(message, [3]))
            self.assertEqual([c.line() for _ in range(8)][-1], "250 OK")
            c.cmd("QUIT")
            files = {re.search(rb"^X-RcptTo: (.*)$", d, re.M).group(1): d for d in maildir_files(maildir).values()}
            self.assertEqual(len(files), 2)
            # smtplib's line ends, X-Peer inserted (as aiosmtpd's Proxy), whichever way it went.
            relayed = b"Subject: relay\r\nX-Peer: 127.0.0.1\r\n\r\n.dot\r\nbare\r\nlf\r\n"
            for rcpt in (b"one@d.example", b"two@d.example"):
                self.assertEqual(files[rcpt], expected_message(relayed, x_headers(peer_of(files[rcpt]), "a@b.example",
                                                                                  [rcpt.decode()])), (chunking, rcpt))
            with tap.lock:
                sent = tap.sent
            if chunking:
                self.assertIn(b"\r\nBDAT %d LAST\r\n" % len(relayed), sent)
                self.assertNotIn(b"\r\nDATA\r\n", sent)
            else:
                self.assertNotIn(b"BDAT", sent)
                self.assertEqual(sent.count(b"\r\nDATA\r\n"), 2)
                self.assertIn(b"\r\n..dot\r\n", sent)

    def test_binarymime_only_to_an_upstream_that_takes_it(self):
        blob = b"Subject: bin\r\n\r\n" + bytes(range(256)) + b"\r\n.\r\nno final line end"
        wire = b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<bin@d.example>\r\n" + chunked(blob, [100])
        proxy, tap, maildir = self.relay(True)
        c = self.send(proxy, wire)
        self.assertEqual([c.line() for _ in range(4)], ["250 OK", "250 OK", ok_chunk(100), "250 OK"])
        with tap.lock:
            sent = tap.sent
        self.assertIn(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n", sent)
        # Sent as it came (X-Peer added), not as lines.
        self.assertIn(b"X-Peer: 127.0.0.1\r\n\r\n" + bytes(range(256)) + b"\r\n.\r\nno final line end", sent)
        self.assertEqual(len(maildir_files(maildir)), 1)

        proxy, tap, maildir = self.relay(False)
        c = self.send(proxy, wire[:wire.index(b"\r\n") + 2])
        self.assertEqual(c.reply(), ["554 5.6.3 The upstream does not accept BODY=BINARYMIME"])
        self.assertEqual(maildir_files(maildir), {})


if __name__ == "__main__":
    harness.main()
