# SPDX-License-Identifier: Apache-2.0
"""Streaming DATA (ABI 1.2, DATA_CHUNK) against the real server, driven by the `scripted`
fixture plugin (tests/fixtures/plugins/scripted.cpp), whose DATA_CHUNK and DATA hooks log what
the host passed: each piece's size, the LAST_CHUNK and STREAMED flags, message_size, and a
running CRC-32 of the pieces kept in a transaction slot ({digest}), which Python recomputes
with zlib.crc32 over the unstuffed message.

The rules under test (plugin.h, "DATA_CHUNK (1.2)"):
  - the pieces, in order, are the unstuffed message; each is at least 64 KiB but the last,
    which carries LAST_CHUNK; then DATA runs;
  - a plugin with DATA_CHUNK gets its DATA with no content and STREAMED, unless another
    plugin's DATA hook takes no chunks: then every DATA hook gets the whole message;
  - a refused piece: the rest is read and dropped, no more pieces, no DATA, and the final dot
    gets that reply (the *_CLOSE verdicts close after it); a piece never completed costs
    451 4.3.0 after the plugin's timeout;
  - a pending piece stops the reading (backpressure): a client pushing 64 MiB through slow
    chunk hooks blocks in send(), and the server's memory stays small;
  - a message over data_size_limit stops the pieces and gets 552 without DATA.
"""
import math
import os
import random
import re
import threading
import time
import unittest
import zlib

import harness
from harness import HOSTNAME, IDENT, ServerTestCase, fixture_plugin, server_config

SCRIPTED = fixture_plugin("scripted")
INTERNAL = "451 4.3.0 Error: internal"
CHUNK = 64 * 1024  # the host's minimum piece (all but the last)
MIB = 1 << 20

# What the DATA_CHUNK and DATA hooks log; `tag` tells instances apart.
CHUNK_LOG = "{tag} chunk n={{chunks}} size={{chunk}} last={{last}} total={{message_size}} digest={{digest}}"
DATA_LOG = ("{tag} data streamed={{streamed}} size={{size}} total={{message_size}} chunks={{chunks}} "
            "digest={{digest}} content={{content_digest}}")
_CHUNK_LINE = r"{tag} chunk n=(\d+) size=(\d+) last=([01]) total=(\d+) digest=([0-9a-f]{{8}})"
_DATA_LINE = (r"{tag} data streamed=([01]) size=(\d+) total=(\d+) chunks=(\d+) digest=([0-9a-f]{{8}}) "
              r"content=([0-9a-f]{{8}})")


def scripted(hooks, timeout=None):
    """A plugins[] entry of the scripted fixture with these hooks."""
    entry = {"path": SCRIPTED, "config": {"hooks": hooks}}
    if timeout is not None:
        entry["timeout"] = timeout
    return entry


def logging_hooks(tag, chunk=None, data=None):
    """DATA_CHUNK and DATA specs that log under `tag`, merged with extra keys."""
    return {"DATA_CHUNK": dict({"log": CHUNK_LOG.format(tag=tag)}, **(chunk or {})),
            "DATA": dict({"log": DATA_LOG.format(tag=tag)}, **(data or {}))}


def crc(data, running=0):
    return zlib.crc32(data, running) & 0xFFFFFFFF


def hex8(value):
    return f"{value:08x}"


def chunk_lines(err, tag):
    """[(n, size, last, total, digest)] of the DATA_CHUNK log lines of `tag`, in order."""
    return [(int(n), int(size), last == "1", int(total), digest)
            for n, size, last, total, digest in re.findall(_CHUNK_LINE.format(tag=tag), err)]


def data_lines(err, tag):
    """[(streamed, size, total, chunks, digest, content_digest)] of the DATA log lines of `tag`."""
    return [(streamed == "1", int(size), int(total), int(chunks), digest, content)
            for streamed, size, total, chunks, digest, content in re.findall(_DATA_LINE.format(tag=tag), err)]


def dot_stuff(body):
    """The wire form of a message (CRLF lines): RFC 5321 §4.5.2 transparency."""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def varied_body(size, seed=293):
    """About `size` bytes of CRLF lines of 0..300 bytes, many starting with a dot (".", "..",
    ". x", ".Subject"), deterministic."""
    rng = random.Random(seed)
    pool = bytes(rng.randrange(0x21, 0x7F) for _ in range(8192)).replace(b".", b"-")
    dotted = [b".", b"..", b". leading space", b".Subject: not a header", b"...", b".\t"]
    parts = [b"Subject: streaming\r\n\r\n"]
    total = len(parts[0])
    i = 0
    while total < size:
        n = rng.randrange(0, 300)
        start = rng.randrange(0, len(pool) - n)
        line = pool[start:start + n]
        if i % 5 == 0:
            line = dotted[(i // 5) % len(dotted)] + line[:n // 2]
        parts.append(line + b"\r\n")
        total += len(parts[-1])
        i += 1
    return b"".join(parts)


def fixed_body(lines, width=100):
    """`lines` lines of `width` bytes (CRLF included): pieces fall at known places, every
    ceil(64 KiB / width) lines."""
    return (b"x" * (width - 2) + b"\r\n") * lines



def bound(kib):
    """A memory bound in KiB; AddressSanitizer's quarantine keeps freed memory."""
    return kib * 32 if harness.sanitized() else kib


@unittest.skipUnless(os.path.exists(SCRIPTED), f"{SCRIPTED} is not built")
class StreamingTest(ServerTestCase):
    def session(self, server, timeout=harness.IO_TIMEOUT):
        c = self.connect(server, timeout=timeout)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    def start_message(self, c):
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])

    def send_message(self, c, body):
        """A whole transaction with `body` (unstuffed); returns the reply to the final dot."""
        self.start_message(c)
        c.send(dot_stuff(body) + b".\r\n")
        return c.reply()

    def assert_pieces(self, pieces, body):
        """The logged pieces are `body`, cut as plugin.h promises."""
        self.assertGreater(len(pieces), 0)
        self.assertEqual([p[0] for p in pieces], list(range(1, len(pieces) + 1)))
        running, total = 0, 0
        for i, (n, size, last, logged_total, digest) in enumerate(pieces):
            final = i == len(pieces) - 1
            self.assertEqual(last, final, f"piece {n}: LAST_CHUNK")
            if not final:
                # At least 64 KiB; the host cuts at the first line end past it.
                self.assertGreaterEqual(size, CHUNK, f"piece {n}")
                self.assertLess(size, CHUNK + 1000, f"piece {n}")
            running = crc(body[total:total + size], running)
            total += size
            self.assertEqual(logged_total, total, f"piece {n}: message_size is the bytes so far")
            self.assertEqual(digest, hex8(running), f"piece {n}: the pieces so far are the message so far")
        self.assertEqual(total, len(body))

    # -- (a) the pieces are the unstuffed message ----------------------------------------------
    def test_pieces_concatenate_to_the_unstuffed_message(self):
        server = self.start_server(server_config(plugins=[scripted(logging_hooks(
            "S1", data={"verdict": "accept", "code": 250,
                        "text": "2.0.0 streamed={streamed} size={size} total={message_size} digest={digest}"}))]))
        body = varied_body(3 * MIB)
        wire = dot_stuff(body)
        self.assertGreater(len(wire), len(body) + 2000, "the test message must have many dot-stuffed lines")
        c = self.session(server)
        self.assertEqual(self.send_message(c, body),
                         [f"250 2.0.0 streamed=1 size=0 total={len(body)} digest={hex8(crc(body))}"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        pieces = chunk_lines(err, "S1")
        self.assert_pieces(pieces, body)
        self.assertGreaterEqual(len(pieces), len(body) // (CHUNK + 1000))
        self.assertEqual(data_lines(err, "S1"),
                         [(True, 0, len(body), len(pieces), hex8(crc(body)), hex8(crc(b"")))])

        # A second message in the session starts from nothing (the transaction slot is new);
        # one under 64 KiB is a single, last piece.
        small = b"Subject: two\r\n\r\n.one dot\r\n..two dots\r\n.\r\n"
        self.assertEqual(self.send_message(c, small),
                         [f"250 2.0.0 streamed=1 size=0 total={len(small)} digest={hex8(crc(small))}"])
        err = server.wait_output(lambda t: len(data_lines(t, "S1")) == 2, which="stderr")
        self.assertEqual(chunk_lines(err, "S1")[len(pieces):], [(1, len(small), True, len(small), hex8(crc(small)))])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_an_empty_last_piece_ends_a_message_of_whole_pieces(self):
        # 656 lines of 100 bytes are one piece of 65600 bytes; the final dot then sends an
        # empty LAST_CHUNK (plugin.h: "may be empty").
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1")), "sink"]))
        body = fixed_body(656)
        c = self.session(server)
        self.assertEqual(self.send_message(c, body), ["250 OK"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        self.assertEqual(chunk_lines(err, "S1"), [(1, 65600, False, 65600, hex8(crc(body))),
                                                  (2, 0, True, 65600, hex8(crc(body)))])

    # -- (b) DATA gets the message only when some DATA hook needs it ----------------------------
    def test_data_is_streamed_when_every_data_hook_takes_pieces(self):
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1")), "sink"]))
        body = varied_body(300 * 1024)
        c = self.session(server)
        self.assertEqual(self.send_message(c, body), ["250 OK"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        pieces = chunk_lines(err, "S1")
        self.assert_pieces(pieces, body)
        # STREAMED, no content, message_size the whole size.
        self.assertEqual(data_lines(err, "S1"),
                         [(True, 0, len(body), len(pieces), hex8(crc(body)), hex8(crc(b"")))])

    def test_a_data_hook_without_pieces_gives_everyone_the_whole_message(self):
        body = varied_body(300 * 1024)
        # A second scripted instance with only a DATA hook ...
        only_data = scripted({"DATA": {"log": DATA_LOG.format(tag="S2")}})
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1")), only_data, "sink"]))
        c = self.session(server)
        self.assertEqual(self.send_message(c, body), ["250 OK"])
        err = server.wait_output(lambda t: "S2 data " in t, which="stderr")
        pieces = chunk_lines(err, "S1")
        self.assert_pieces(pieces, body)  # the pieces still come
        digest = hex8(crc(body))
        # Not STREAMED: the content is the whole message (and S2 had no pieces).
        self.assertEqual(data_lines(err, "S1"), [(False, len(body), len(body), len(pieces), digest, digest)])
        self.assertEqual(data_lines(err, "S2"), [(False, len(body), len(body), 0, hex8(0), digest)])
        server.stop()

        # ... or the bundled `debugging` plugin (DATA only) does the same.
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1")), "debugging", "sink"]))
        c = self.session(server)
        self.assertEqual(self.send_message(c, body), ["250 OK"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        self.assertEqual(data_lines(err, "S1"), [(False, len(body), len(body), len(pieces), digest, digest)])
        out = server.wait_output(lambda t: "END MESSAGE" in t)
        self.assertIn("Subject: streaming", out)
        self.assertIn("\n. leading space", out)  # unstuffed

    # -- (c) a refused piece -----------------------------------------------------------------
    def test_a_refused_piece_answers_the_final_dot(self):
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1", chunk={
            "verdict": "reject", "code": 554, "from_chunk": 3,
            "text": "5.6.0 refused at piece {chunks} after {message_size} bytes"})), "sink"]))
        c = self.session(server)
        body = fixed_body(16 * 656)  # 16 pieces of 65600 bytes
        self.assertEqual(self.send_message(c, body), ["554 5.6.0 refused at piece 3 after 196800 bytes"])
        # The rest was read and dropped: the session goes on, in step.
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        err = server.wait_output(lambda t: "result=554" in t, which="stderr")
        self.assertEqual([p[0] for p in chunk_lines(err, "S1")], [1, 2, 3])
        self.assertEqual(data_lines(err, "S1"), [], "DATA ran for a refused message")
        self.assertIn("decided_by=scripted", err)

        # A later message is fine (one piece: the refusal applies from the third).
        small = b"Subject: later\r\n\r\nfine\r\n"
        self.assertEqual(self.send_message(c, small), ["250 OK"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        self.assertEqual(chunk_lines(err, "S1")[3:], [(1, len(small), True, len(small), hex8(crc(small)))])
        self.assertEqual(data_lines(err, "S1"), [(True, 0, len(small), 1, hex8(crc(small)), hex8(0))])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_tempfail_close_on_a_piece_closes_after_the_reply(self):
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1", chunk={
            "verdict": "tempfail_close", "code": 421, "text": "4.3.2 closing at piece {chunks}",
            "from_chunk": 2})), "sink"]))
        c = self.session(server)
        self.start_message(c)
        c.send(dot_stuff(fixed_body(8 * 656)) + b".\r\n")
        self.assertEqual(c.reply(), ["421 4.3.2 closing at piece 2"])
        self.assertEqual(c.expect_eof(timeout=5), b"")
        err = server.wait_output(lambda t: "event=disconnect" in t, which="stderr")
        self.assertEqual([p[0] for p in chunk_lines(err, "S1")], [1, 2])
        self.assertEqual(data_lines(err, "S1"), [])

    # -- (d) backpressure --------------------------------------------------------------------
    def test_slow_pieces_stop_the_reading(self):
        delay_ms = 3
        server = self.start_server(server_config(plugins=[scripted({
            "DATA_CHUNK": {"delay_ms": delay_ms, "thread": True},
            "DATA": {"log": DATA_LOG.format(tag="S1")}}), "sink"], data_size_limit=80 * MIB))
        c = self.session(server, timeout=30)
        lines = 64 * MIB // 100
        body = fixed_body(lines)
        pieces = lines // math.ceil(CHUNK / 100) + 1  # the last one holds the rest
        self.start_message(c)
        before = harness.peak_rss_kib(server.process.pid)
        sent = [0]
        failure = []

        def push():
            try:
                view = memoryview(body + b".\r\n")
                for at in range(0, len(view), MIB):
                    c.sock.sendall(view[at:at + MIB])
                    sent[0] = at + len(view[at:at + MIB])
            except OSError as e:
                failure.append(e)

        started = time.monotonic()
        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        time.sleep(1.0)
        # In one second the hooks let through at most 1000 / 3 pieces (21 MB); the rest of
        # what the client managed to send sits in socket buffers.
        early = sent[0]
        self.assertLess(early, 48 * MIB, "the client was not held back")
        pusher.join(timeout=30)
        self.assertFalse(pusher.is_alive(), "the client could not send the message within 30 s")
        self.assertEqual(failure, [])
        self.assertEqual(c.reply(), ["250 OK"])
        elapsed = time.monotonic() - started
        # Every piece waited for its hook, one after the other.
        self.assertGreater(elapsed, (pieces - 1) * delay_ms / 1000)
        grown = harness.peak_rss_kib(server.process.pid) - before
        self.assertLess(grown, bound(8 * 1024), f"64 MiB through slow hooks grew the server by {grown} KiB")
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        self.assertEqual(data_lines(err, "S1"), [(True, 0, len(body), pieces, hex8(crc(body)), hex8(0))])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    # -- (e) a piece never completed ---------------------------------------------------------
    def test_a_piece_never_completed_times_out(self):
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1", chunk={
            "verdict": "pending_never", "from_chunk": 2}), timeout=1), "sink"]))
        c = self.session(server)
        self.start_message(c)
        started = time.monotonic()
        c.send(dot_stuff(fixed_body(8 * 656)) + b".\r\n")
        self.assertEqual(c.reply(), [INTERNAL])
        waited = time.monotonic() - started
        self.assertGreater(waited, 0.9)
        self.assertLess(waited, 5.0)
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        err = server.wait_output(lambda t: "result=451" in t, which="stderr")
        self.assertRegex(err, r"event=plugin_error plugin=scripted key=plugins\[0\] hook=DATA_CHUNK "
                              r"reason=\"did not complete within 1000 ms\"")
        self.assertEqual([p[0] for p in chunk_lines(err, "S1")], [1, 2])
        self.assertEqual(data_lines(err, "S1"), [])
        # The session survives: one piece, before the stalling one.
        small = b"Subject: after\r\n\r\nok\r\n"
        self.assertEqual(self.send_message(c, small), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    # -- (f) too much data -------------------------------------------------------------------
    def test_a_message_over_the_size_limit_stops_the_pieces(self):
        limit = 300000
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1")), "sink"],
                                                 data_size_limit=limit))
        c = self.session(server)
        self.assertEqual(self.send_message(c, fixed_body(16 * 656)), ["552 Error: Too much mail data"])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        err = server.wait_output(lambda t: "result=552" in t, which="stderr")
        pieces = chunk_lines(err, "S1")
        # 4 x 65600 bytes fit in 300000; the fifth would not: no more pieces, none LAST.
        self.assertEqual([(p[0], p[1], p[2]) for p in pieces], [(n, 65600, False) for n in (1, 2, 3, 4)])
        self.assertEqual(data_lines(err, "S1"), [], "DATA ran for a message over the limit")
        small = b"Subject: small\r\n\r\nok\r\n"
        self.assertEqual(self.send_message(c, small), ["250 OK"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        self.assertEqual(chunk_lines(err, "S1")[4:], [(1, len(small), True, len(small), hex8(crc(small)))])

    def test_an_accepted_piece_still_reaches_later_plugins(self):
        # plugin.h: "CONTINUE or ACCEPT: go on". ACCEPT on a piece must not end its chain:
        # a later plugin's DATA is STREAMED, so the pieces are all it ever sees.
        server = self.start_server(server_config(plugins=[
            scripted(logging_hooks("S1", chunk={"verdict": "accept"})), scripted(logging_hooks("S2")), "sink"]))
        body = varied_body(200 * 1024)
        c = self.session(server)
        self.assertEqual(self.send_message(c, body), ["250 OK"])
        err = server.wait_output(lambda t: "S2 data " in t, which="stderr")
        self.assert_pieces(chunk_lines(err, "S1"), body)
        self.assert_pieces(chunk_lines(err, "S2"), body)

    def test_a_message_refused_before_data_leaves_no_pieces_behind(self):
        # decode_data without SMTPUTF8: a non-ASCII message gets its pieces, then "500 Error:
        # strict ASCII mode" without DATA, and aiosmtpd keeps the envelope. The transaction's
        # slots end there all the same, so the next message's pieces start afresh.
        server = self.start_server(server_config(plugins=[scripted(logging_hooks("S1")), "sink"],
                                                 decode_data=True))
        c = self.session(server)
        self.start_message(c)
        c.send("caf\u00e9\r\n.\r\n")
        self.assertEqual(c.reply(), ["500 Error: strict ASCII mode"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        plain = b"plain\r\n"
        c.send(plain + b".\r\n")
        self.assertEqual(c.reply(), ["250 OK"])
        err = server.wait_output(lambda t: "S1 data " in t, which="stderr")
        self.assertEqual(data_lines(err, "S1"), [(True, 0, len(plain), 1, hex8(crc(plain)), hex8(0))])


if __name__ == "__main__":
    harness.main()
