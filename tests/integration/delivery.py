# SPDX-License-Identifier: Apache-2.0
"""Helpers for the delivery tests (maildir, mbox, proxy): the expected bytes of a stored message,
Postfix's smtp-source and smtp-sink, reading a Maildir and an mbox."""
import glob
import os
import re
import shutil
import socket
import subprocess
import time

import harness

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"

_HEADER = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_SPLIT = re.compile(rb"\r\n|\r|\n")


def split_lines(content):
    """bytes.splitlines() as (line, had_eol) pairs."""
    out = []
    pos = 0
    for m in _SPLIT.finditer(content):
        out.append((content[pos:m.start()], True))
        pos = m.end()
    if pos < len(content):
        out.append((content[pos:], False))
    return out


def x_headers(peer, mail_from, rcpts):
    """aiosmtpd's Message handler headers: X-Peer (str of session.peer), X-MailFrom, X-RcptTo."""
    return (f"X-Peer: {peer!r}\nX-MailFrom: {mail_from}\nX-RcptTo: {', '.join(rcpts)}\n").encode()


def expected_message(content, headers, mbox=False):
    """The stored form (plugins/maildir/README.md): LF line ends; `headers` appended to the header
    block (up to the first empty line or the first non-header line), then an empty line; every
    other byte kept. mbox: body lines matching >*From  get one more '>', and a final LF."""
    out = []
    in_headers = True
    after_header = False
    last_eol = True
    for line, eol in split_lines(content):
        if in_headers:
            if line == b"":
                out += [headers, b"\n"]
                in_headers = False
                continue
            if (line[:1] in (b" ", b"\t") and after_header) or (line[:1] not in (b" ", b"\t") and _HEADER.match(line)):
                out += [line, b"\n"]
                after_header = True
                continue
            out += [headers, b"\n"]
            in_headers = False
        if mbox and re.match(rb"^>*From ", line):
            line = b">" + line
        out += [line, b"\n" if eol else b""]
        last_eol = eol
    if in_headers:
        out += [headers, b"\n"]
    elif mbox and not last_eol:
        out.append(b"\n")
    return b"".join(out)


def peer_of(data):
    """The (address, port) tuple in a stored message's X-Peer header."""
    m = re.search(rb"^X-Peer: \('([^']+)', (\d+)\)$", data, re.M)
    return (m.group(1).decode(), int(m.group(2))) if m else None


def rcpt_of(data):
    m = re.search(rb"^X-RcptTo: (.*)$", data, re.M)
    return m.group(1).decode() if m else None


def maildir_files(path, sub="new"):
    """{name: bytes} of a Maildir subfolder."""
    out = {}
    for f in sorted(glob.glob(os.path.join(path, sub, "*"))):
        with open(f, "rb") as fh:
            out[os.path.basename(f)] = fh.read()
    return out


def have_postfix_tools():
    return os.access(SMTP_SOURCE, os.X_OK) and os.access(SMTP_SINK, os.X_OK)


def smtp_source(port, *args, timeout=60, **kw):
    """Runs smtp-source against 127.0.0.1:port to completion; returns CompletedProcess (text)."""
    argv = [SMTP_SOURCE] + [str(a) for a in args] + [f"127.0.0.1:{port}"]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                          timeout=timeout, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port (as root it needs -u nobody); stop() always."""

    def __init__(self, *args):
        self.port = None
        self.process = None
        for _ in range(5):  # the port is picked before smtp-sink binds it: retry on a race
            port = free_port()
            argv = [SMTP_SINK]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]
            argv += list(args) + [f"127.0.0.1:{port}", "100"]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, start_new_session=True)
            if self._wait_ready(port):
                self.port = port
                return
            self.stop()
        raise RuntimeError("smtp-sink did not start")

    def _wait_ready(self, port):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.settimeout(2)
                    return s.recv(100).startswith(b"220")
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self):
        harness.stop_process(self.process, 5)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
