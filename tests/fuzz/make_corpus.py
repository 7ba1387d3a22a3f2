#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Regenerates the seed corpora in tests/fuzz/corpus/ from the golden transcripts and the
shipped configurations. Seeds are named after their source (engine/<transcript>, ...); inputs
found by fuzzing (crash-*, regression-*) are committed next to them by hand and left alone here.

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", ".."))
TRANSCRIPTS = os.path.join(SRC, "tests", "transcripts")
CORPUS = os.path.join(HERE, "corpus")


def unescape(s):
    out = bytearray()
    b = s.encode("utf-8")
    i = 0
    while i < len(b):
        c = b[i]
        if c != 0x5C or i + 1 == len(b):
            out.append(c)
            i += 1
            continue
        n = chr(b[i + 1])
        i += 2
        if n == "r":
            out += b"\r"
        elif n == "n":
            out += b"\n"
        elif n == "t":
            out += b"\t"
        elif n == "\\":
            out += b"\\"
        elif n == "x":
            out.append(int(b[i:i + 2], 16))
            i += 2
        else:
            out += b"\\" + n.encode()
    return bytes(out)


def load(path):
    settings, client = {}, b""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            if line.startswith("! "):
                key, _, value = line[2:].partition(":")
                settings[key.strip()] = value.strip()
            elif line.startswith("C:"):
                client += unescape(line[3:]) + b"\r\n"
            elif line.startswith("R:"):
                client += unescape(line[3:])
    return settings, client


def engine_header(settings, hooks):
    """engine_fuzz.cpp's 5-byte header for a transcript's settings."""
    t = lambda k: settings.get(k, "false") in ("true", "1", "yes")
    a = (t("enable_smtputf8") * 0x01 | t("decode_data") * 0x02 | t("advertise_pipelining") * 0x04
         | t("lmtp") * 0x08 | ("command_call_limit" in settings) * 0x80)
    b = 0x01  # auth_require_tls (the default)
    limit = settings.get("data_size_limit")
    if limit == "0":
        b |= 0x20
    elif limit is not None:
        b |= 0x10
    if "command_size_limit" in settings:
        b |= 0x40
    return bytes([a, b, hooks & 0xFF, hooks >> 8, 0])


ADDRESS_VERB = re.compile(rb"^(?:MAIL FROM:|RCPT TO:|VRFY )(.*)$", re.I)


# bdat_fuzz.cpp's operations (op byte % 13; 0x80 selects a variant).
CHUNK, LAST, MAIL, RCPT, RSET, DATA, EHLO, BAD, NOOP, UNREADABLE = 0, 3, 5, 6, 7, 8, 9, 10, 11, 12
BINARYMIME_MAIL, BAD_LAST = 135, 140


def chunk(op, payload):
    return bytes([op, len(payload)]) + payload


def bdat_seeds():
    """Conversations for fuzz_bdat: (name, flags, operations, control bytes)."""
    hello, mail = bytes([EHLO, MAIL, RCPT]), bytes([MAIL, RCPT])
    return [
        ("plain", 0x00, hello + chunk(CHUNK, b"hello") + chunk(LAST, b"abc") + bytes([NOOP]), b""),
        ("commands-in-chunks", 0x08, hello + chunk(CHUNK, b"QUIT\r\nRSET\r\n") + chunk(LAST, b"DATA\r\n.\r\n"),
         bytes([0x03, 0x11, 0x01, 0x00])),
        ("streamed-prefix", 0x04 | 0x08 | 0x10 | 0x20 | 0x40,
         hello + chunk(CHUNK, bytes(range(40))) + chunk(CHUNK, b"") + chunk(LAST, bytes(range(200, 256))),
         bytes([0x07, 0x00, 0x41, 0x00])),
        ("whole-prefix", 0x04 | 0x08 | 0x20 | 0x40, hello + chunk(LAST, b"x" * 70), bytes([0x21, 0x01])),
        ("lmtp", 0x01 | 0x08, hello + bytes([RCPT]) + chunk(CHUNK, b"a\r\n") + chunk(LAST, b"b\r\n") + bytes([NOOP]),
         bytes([0x00, 0x04])),
        ("size-limit", 0x02, hello + chunk(CHUNK, b"y" * 60) + chunk(CHUNK, b"z" * 10) + chunk(LAST, b"RSET\r\n") +
         mail + chunk(LAST, b"ok"), b""),
        ("data-after-bdat", 0x08, hello + chunk(CHUNK, b"abc") + bytes([DATA]) + chunk(LAST, b"def") +
         bytes([BINARYMIME_MAIL, RCPT, DATA]) + chunk(LAST, b"\x00\xff") + mail + bytes([DATA]), b""),
        ("bad-marker", 0x00, hello + chunk(CHUNK, b"12") + chunk(BAD, b"QUIT\r\n") + chunk(BAD_LAST, b"x") +
         chunk(LAST, b"y"), b""),
        ("no-transaction", 0x0C, chunk(CHUNK, b"NOOP\r\n") + bytes([EHLO]) + chunk(LAST, b"QUIT\r\n") +
         bytes([MAIL]) + chunk(LAST, b"z") + bytes([RSET, NOOP]), b""),
        ("require-starttls", 0x80, bytes([EHLO]) + chunk(LAST, b"QUIT\r\n") + bytes([UNREADABLE, NOOP]), b""),
        ("unreadable", 0x00, hello + chunk(CHUNK, b"a") + bytes([UNREADABLE, NOOP]), b""),
        ("refusing-hooks", 0x04 | 0x08 | 0x20, hello + chunk(CHUNK, b"p" * 40) + chunk(LAST, b"q") + hello[1:] +
         chunk(LAST, b"r" * 20), bytes([0x00, 0x02, 0x00, 0x04, 0x00, 0x03])),
    ]


def main():
    os.makedirs(os.path.join(CORPUS, "bdat"), exist_ok=True)
    for name, flags, ops, ctl in bdat_seeds():
        with open(os.path.join(CORPUS, "bdat", name), "wb") as f:
            f.write(bytes([flags, len(ctl)]) + ops + ctl)
    for d in ("engine", "address", "config"):
        os.makedirs(os.path.join(CORPUS, d), exist_ok=True)
    seen_addr = set()
    for name in sorted(os.listdir(TRANSCRIPTS)):
        if not name.endswith(".txt"):
            continue
        settings, client = load(os.path.join(TRANSCRIPTS, name))
        stem = name[:-4]
        utf8 = settings.get("enable_smtputf8") == "true"
        # As the transcript runs (no plugins), and once with every hook chained, verdicts from
        # one control byte (0: every hook says CONTINUE, whole stream at once).
        with open(os.path.join(CORPUS, "engine", stem), "wb") as f:
            f.write(engine_header(settings, 0) + client)
        with open(os.path.join(CORPUS, "engine", stem + ".hooks"), "wb") as f:
            f.write(engine_header(settings, 0x0FFF)[:4] + bytes([3]) + client + bytes([0x05, 0x19, 0x01]))
        for line in client.split(b"\r\n"):
            m = ADDRESS_VERB.match(line)
            if m and m.group(1) not in seen_addr:
                seen_addr.add(m.group(1))
                n = len(seen_addr)
                with open(os.path.join(CORPUS, "address", "%s.%d" % (stem, n)), "wb") as f:
                    f.write(bytes([1 if utf8 else 0]) + m.group(1))
    confs = [os.path.join(SRC, "conf", "asiosmtpd.yaml")]
    ex = os.path.join(SRC, "conf", "examples")
    confs += [os.path.join(ex, n) for n in sorted(os.listdir(ex)) if n.endswith(".yaml")]
    for c in confs:
        with open(c, "rb") as f, open(os.path.join(CORPUS, "config", os.path.basename(c)), "wb") as o:
            o.write(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
