#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Replay transcript files against the real aiosmtpd and compare its replies.

Run with Debian's interpreter, which has python3-aiosmtpd installed:

    /usr/bin/python3 tests/transcripts/verify_aiosmtpd.py            # every *.txt here
    /usr/bin/python3 tests/transcripts/verify_aiosmtpd.py a.txt b.txt
    /usr/bin/python3 tests/transcripts/verify_aiosmtpd.py -v -j 1 x.txt

For each transcript an aiosmtpd SMTP (or LMTP) server with the transcript's settings and a
handler without hooks (aiosmtpd.handlers.Sink) is started through aiosmtpd.controller.Controller
on 127.0.0.1 and a free port. All client bytes are sent at once; the replies are read until
the server closes or nothing arrives for --quiet seconds, then compared byte for byte with the
expected replies. The server is always stopped.

Lines that asiosmtpd answers differently on purpose are marked in the transcript with a
comment block containing "# differs from aiosmtpd: <why>". That block applies to the next
run of S:/X: lines, which are then not expected from aiosmtpd; instead the verifier expects
whatever the same comment block lists as "# aiosmtpd: S: <text>" / "# aiosmtpd: X:" lines
(none listed = aiosmtpd sends nothing there). See README.md for the file format.

Prints PASS/FAIL/SKIP per file; exits 1 if any file fails, 2 on usage or format errors.
"""

import argparse
import collections
import concurrent.futures
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import warnings

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink
    from aiosmtpd.lmtp import LMTP
    from aiosmtpd.smtp import SMTP
except ImportError:  # pragma: no cover
    sys.exit("aiosmtpd is not importable; run this with /usr/bin/python3 "
             "(Debian's python3-aiosmtpd)")

HERE = os.path.dirname(os.path.abspath(__file__))

KNOWN_KEYS = {
    "hostname", "ident", "data_size_limit", "command_size_limit", "enable_smtputf8",
    "decode_data", "command_call_limit", "advertise_pipelining", "lmtp", "aiosmtpd",
    "starttls", "require_starttls", "auth_require_tls", "auth_required", "auth_max_failures",
}


def tls_context():
    """A server context for aiosmtpd's tls_context (the listener offers STARTTLS); the
    transcripts never complete a handshake, so a throw-away self-signed certificate will do."""
    import ssl
    import subprocess
    import tempfile
    folder = tempfile.mkdtemp(prefix="verify-tls-")
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-subj", "/CN=localhost", "-days", "1"],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx

_ESCAPE = re.compile(rb"\\(r|n|t|\\|x[0-9a-fA-F]{2})")


class FormatError(Exception):
    pass


def unescape(text: str) -> bytes:
    """Decode \\r \\n \\t \\\\ \\xNN; everything else is literal (UTF-8)."""
    def repl(m):
        code = m.group(1)
        if code == b"r":
            return b"\r"
        if code == b"n":
            return b"\n"
        if code == b"t":
            return b"\t"
        if code == b"\\":
            return b"\\"
        return bytes([int(code[1:], 16)])
    return _ESCAPE.sub(repl, text.encode("utf-8"))


def parse_bool(key, value):
    v = value.strip().lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    raise FormatError(f"setting {key}: not a boolean: {value!r}")


def _item_text(line, lineno):
    """'S: text' -> 'text' ('S:' -> ''); exactly one space after the colon is dropped."""
    if len(line) < 2 or line[1] != ":":
        raise FormatError(f"line {lineno}: expected '<K>: ...', got {line!r}")
    rest = line[2:]
    if rest.startswith(" "):
        rest = rest[1:]
    return rest


class Transcript:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        self.settings = {}
        self.client = b""           # all client bytes
        self.ours = []              # expected replies from asiosmtpd: list of (kind, bytes)
        self.theirs = []            # expected replies from aiosmtpd
        self.differs = []           # (lineno, reason) of every documented difference
        self.skip_reason = None
        self._parse()

    def _parse(self):
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        pending = None              # (reason, [aiosmtpd items]) waiting for a run of S:/X:
        active = None               # the difference that the current S:/X: run belongs to
        seen_conversation = False
        for lineno, raw in enumerate(lines, 1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line.strip():
                continue
            kind = line[0]
            if kind == "#":
                active = None           # a comment ends a run of differing replies
                m = re.match(r"#\s*differs from aiosmtpd\s*:?\s*(.*)$", line, re.I)
                if m:
                    if pending is not None:
                        raise FormatError(f"line {lineno}: two 'differs' comments for one run")
                    pending = (m.group(1).strip(), [])
                    self.differs.append((lineno, m.group(1).strip()))
                    continue
                m = re.match(r"#\s*aiosmtpd\s*:\s*(.*)$", line)
                if m:
                    if pending is None:
                        raise FormatError(
                            f"line {lineno}: '# aiosmtpd:' line without a preceding "
                            "'# differs from aiosmtpd' line in the same comment block")
                    alt = m.group(1)
                    if alt.startswith("S:"):
                        pending[1].append(("S", unescape(_item_text(alt, lineno))))
                    elif alt.strip() == "X:":
                        pending[1].append(("X", b""))
                    else:
                        raise FormatError(f"line {lineno}: '# aiosmtpd:' must be followed "
                                          "by 'S: text' or 'X:'")
                continue
            if kind == "!":
                if seen_conversation:
                    raise FormatError(f"line {lineno}: setting after the conversation started")
                m = re.match(r"!\s*([A-Za-z0-9_]+)\s*:\s*(.*)$", line)
                if not m:
                    raise FormatError(f"line {lineno}: bad setting line {line!r}")
                key, value = m.group(1), m.group(2).strip()
                if key not in KNOWN_KEYS:
                    raise FormatError(f"line {lineno}: unknown setting {key!r}")
                if key in self.settings:
                    raise FormatError(f"line {lineno}: setting {key!r} given twice")
                self.settings[key] = value
                continue
            seen_conversation = True
            if kind in "CR":
                if pending is not None:
                    raise FormatError(f"line {lineno}: 'differs' comment not followed by S:/X:")
                active = None
                data = unescape(_item_text(line, lineno))
                self.client += data + (b"\r\n" if kind == "C" else b"")
                continue
            if kind in "SX":
                if kind == "X" and line.strip() != "X:":
                    raise FormatError(f"line {lineno}: X: takes no text")
                item = ("S", unescape(_item_text(line, lineno))) if kind == "S" else ("X", b"")
                if pending is not None:
                    active = pending
                    pending = None
                    self.theirs.extend(active[1])
                self.ours.append(item)
                if active is None:
                    self.theirs.append(item)
                continue
            raise FormatError(f"line {lineno}: unknown line kind {line!r}")
        if pending is not None:
            raise FormatError("'differs' comment at the end of the file")
        for seq, who in ((self.ours, "expected"), (self.theirs, "aiosmtpd")):
            if not seq or seq[0][0] != "S" or not seq[0][1].startswith(b"220 "):
                raise FormatError(f"{who} replies must start with the 220 greeting")
            closes = [i for i, (k, _) in enumerate(seq) if k == "X"]
            if len(closes) > 1 or (closes and closes[0] != len(seq) - 1):
                raise FormatError(f"{who} replies: X: must be the last reply item")
        skip = self.settings.get("aiosmtpd")
        if skip is not None:
            m = re.match(r"skip\b\s*(.*)$", skip)
            if not m:
                raise FormatError(f"'! aiosmtpd:' supports only 'skip [reason]', got {skip!r}")
            self.skip_reason = m.group(1) or "marked '! aiosmtpd: skip'"

    # ---- what aiosmtpd should say -------------------------------------------------
    def expected_bytes(self):
        return b"".join(t + b"\r\n" for k, t in self.theirs if k == "S")

    def expected_close(self):
        return any(k == "X" for k, _ in self.theirs)

    # ---- server configuration -------------------------------------------------------
    def server_kwargs(self):
        s = self.settings
        kw = {
            "hostname": s.get("hostname", "mx.test"),
            "ident": s.get("ident", "asiosmtpd test"),
            # Controller turns SMTPUTF8 on by default; asiosmtpd's default is off.
            "enable_SMTPUTF8": parse_bool("enable_smtputf8", s.get("enable_smtputf8", "false")),
            "decode_data": parse_bool("decode_data", s.get("decode_data", "false")),
        }
        if "data_size_limit" in s:
            v = s["data_size_limit"]
            kw["data_size_limit"] = None if v.lower() in ("null", "none") else int(v)
        if "command_call_limit" in s:
            v = json.loads(s["command_call_limit"])
            if not (isinstance(v, int) or isinstance(v, dict) or v is None):
                raise FormatError("command_call_limit must be an int or a JSON object")
            if v is not None:
                kw["command_call_limit"] = v
        # advertise_pipelining has no aiosmtpd equivalent: its effect must be written
        # as a documented difference (or the file skipped).
        if "advertise_pipelining" in s:
            parse_bool("advertise_pipelining", s["advertise_pipelining"])
        if parse_bool("starttls", s.get("starttls", "false")):
            kw["tls_context"] = tls_context()
        if "require_starttls" in s:
            kw["require_starttls"] = parse_bool("require_starttls", s["require_starttls"])
        for key in ("auth_require_tls", "auth_required"):
            if key in s:
                kw[key] = parse_bool(key, s[key])
        # auth_max_failures has no aiosmtpd equivalent: write its effect as a difference.
        if "auth_max_failures" in s:
            int(s["auth_max_failures"])
        return kw

    def server_class(self):
        base = LMTP if parse_bool("lmtp", self.settings.get("lmtp", "false")) else SMTP
        limit = int(self.settings.get("command_size_limit", "512"))
        # A fresh subclass per run: aiosmtpd keeps the per-verb limits in a class-level
        # dict that every instance clears and every EHLO grows (an aiosmtpd quirk). A private
        # dict per run keeps concurrent runs apart and still shows that quirk within one
        # connection. The dict's default follows command_size_limit (aiosmtpd's own dict
        # would stay at 512 in ESMTP sessions for a subclass that only sets the int).
        attrs = {
            "command_size_limit": limit,
            "command_size_limits": collections.defaultdict(lambda x=limit: x),
        }
        return type("Verify" + base.__name__, (base,), attrs)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def converse(port, data, quiet):
    """Send data all at once; return (received bytes, closed_by_server)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    received = bytearray()
    closed = False

    def sender():
        try:
            sock.sendall(data)
        except OSError:
            pass            # the server may close before it has read everything

    t = threading.Thread(target=sender, daemon=True)
    try:
        t.start()
        sock.settimeout(quiet)
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        t.join(5)
        sock.close()
    return bytes(received), closed


class VerifyController(Controller):
    def __init__(self, cls, *args, **kwargs):
        self._cls = cls
        super().__init__(*args, **kwargs)

    def factory(self):
        return self._cls(self.handler, **self.SMTP_kwargs)


def run_one(tr, quiet, tries=5):
    kwargs = tr.server_kwargs()
    cls = tr.server_class()
    last_error = None
    for _ in range(tries):
        port = free_port()
        # Controller's own "hostname" is the bind address; the SMTP hostname is
        # passed as server_hostname.
        smtp_kwargs = dict(kwargs)
        server_hostname = smtp_kwargs.pop("hostname")
        controller = VerifyController(cls, Sink(), hostname="127.0.0.1", port=port,
                                      server_hostname=server_hostname, **smtp_kwargs)
        try:
            controller.start()
        except OSError as e:      # port taken between free_port() and bind: try another
            last_error = e
            try:
                controller.stop(no_assert=True)
            except Exception:
                pass
            continue
        try:
            return converse(port, tr.client, quiet)
        finally:
            controller.stop()
    raise RuntimeError(f"could not start aiosmtpd: {last_error}")


def show_lines(b: bytes):
    parts = b.split(b"\r\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [repr(p)[2:-1] for p in parts]


def check(path, quiet, verbose):
    try:
        tr = Transcript(path)
    except (FormatError, ValueError, OSError) as e:
        return "ERROR", os.path.basename(path), [f"format error: {e}"]
    if tr.skip_reason:
        return "SKIP", tr.name, [tr.skip_reason]
    got, closed = run_one(tr, quiet)
    want, want_close = tr.expected_bytes(), tr.expected_close()
    notes = []
    if got != want:
        import difflib
        notes.extend(difflib.unified_diff(show_lines(want), show_lines(got),
                                          "expected (aiosmtpd view)", "aiosmtpd", lineterm=""))
    if closed != want_close:
        notes.append("server %s the connection, transcript says it %s"
                     % ("closed" if closed else "did not close",
                        "closes" if want_close else "stays open"))
    if notes:
        return "FAIL", tr.name, notes
    info = []
    if verbose and tr.differs:
        info = [f"documented difference (line {n}): {why}" for n, why in tr.differs]
    return "PASS", tr.name, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="transcripts (default: every *.txt beside this script)")
    ap.add_argument("--quiet", type=float, default=2.0,
                    help="seconds without data after which the reply is complete (default 2)")
    ap.add_argument("-j", "--jobs", type=int, default=8, help="transcripts run in parallel")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show aiosmtpd's log and the documented differences")
    args = ap.parse_args(argv)

    if args.verbose:
        logging.basicConfig(level=logging.INFO)
    else:
        logging.getLogger("mail.log").setLevel(logging.CRITICAL)
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.simplefilter("ignore")

    files = args.files or sorted(
        os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".txt"))
    if not files:
        print("no transcripts found", file=sys.stderr)
        return 2

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda p: check(p, args.quiet, args.verbose), files))
    counts = collections.Counter()
    for status, name, notes in results:
        counts[status] += 1
        print(f"{status} {name}")
        for n in notes:
            print(f"    {n}")
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped, "
          f"{counts['ERROR']} format errors ({time.monotonic() - started:.1f} s)")
    if counts["ERROR"]:
        return 2
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
