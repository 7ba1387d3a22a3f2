# SPDX-License-Identifier: Apache-2.0
"""The SDK test kit answers as the server: every golden transcript (tests/transcripts/*.txt)
is replayed through the kit (kit_replay, testkit.hpp over the server's core) and through the
real asiosmtpd binary over a socket, with the transcript's settings and the bundled sink
plugin in both, and every reply byte and the close must be equal. Each is also checked
against the transcript's own S: lines, so both follow the golden file.

All client bytes go in at once (pipelined), as tests/transcripts/verify_aiosmtpd.py does.
Transcripts the kit cannot express are skipped, each with its reason (SKIPPED below); run
with -v to see them.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from harness import BIN, HOST, PLUGIN_DIR, SOURCE_DIR, Server, main

KIT_REPLAY = os.environ.get("ASIOSMTPD_KIT_REPLAY") or os.path.join(
    os.path.dirname(BIN), "kit_replay")
TRANSCRIPTS = os.path.join(SOURCE_DIR, "tests", "transcripts")
SINK = os.path.join(PLUGIN_DIR, "sink.so")

# Transcripts the kit cannot express, and why: none at present. (A STARTTLS that is accepted
# would be one if the transcript went on after it: the kit pretends the handshake where the
# server waits for a real one; the transcripts stop there, as the handshake never happens.)
SKIPPED = {}

_ESCAPE = re.compile(rb"\\(r|n|t|\\|x[0-9a-fA-F]{2})")


def unescape(text):
    def repl(m):
        code = m.group(1)
        return {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}.get(code) or bytes([int(code[1:], 16)])
    return _ESCAPE.sub(repl, text.encode("utf-8"))


def item_text(line):
    rest = line[2:]
    return rest[1:] if rest.startswith(" ") else rest


def parse(path):
    """(settings, client bytes, expected reply bytes, expects close) of a transcript."""
    settings, client, replies, close = {}, b"", b"", False
    with open(path, encoding="utf-8") as f:
        for raw in f.read().split("\n"):
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line.strip() or line[0] == "#":
                continue
            if line[0] == "!":
                m = re.match(r"!\s*([A-Za-z0-9_]+)\s*:\s*(.*)$", line)
                settings[m.group(1)] = m.group(2).strip()
            elif line[0] in "CR":
                client += unescape(item_text(line)) + (b"\r\n" if line[0] == "C" else b"")
            elif line[0] == "S":
                replies += unescape(item_text(line)) + b"\r\n"
            elif line[0] == "X":
                close = True
    return settings, client, replies, close


def flag(v):
    return v.strip().lower() in ("true", "yes", "1", "on")


def call_limits(value):
    """command_call_limit (JSON int or map with "*") as kit_replay arguments."""
    v = json.loads(value)
    if v is None:
        return []
    if isinstance(v, int):
        return [f"call_limit_default={v}"]
    args = [f"call_limit_default={v.get('*', 20)}"]
    args += [f"call_limit={verb.upper()}:{n}" for verb, n in v.items() if verb != "*"]
    return args


def kit_arguments(settings):
    args = [f"hostname={settings.get('hostname', 'mx.test')}", f"ident={settings.get('ident', 'asiosmtpd test')}"]
    for key in ("data_size_limit", "command_size_limit", "auth_max_failures"):
        if key in settings:
            args.append(f"{key}={int(settings[key])}")
    for key in ("enable_smtputf8", "decode_data", "advertise_pipelining", "lmtp", "require_starttls",
                "auth_require_tls", "auth_required"):
        if key in settings:
            args.append(f"{key}={'true' if flag(settings[key]) else 'false'}")
    if flag(settings.get("starttls", "false")):
        args.append("starttls_available=true")
    if "command_call_limit" in settings:
        args += call_limits(settings["command_call_limit"])
    return args


def server_config(settings, certs):
    srv = {
        "hostname": settings.get("hostname", "mx.test"),
        "ident": settings.get("ident", "asiosmtpd test"),
        "listen": [{"address": HOST, "port": 0}],
        "workers": 1,
        "shutdown_grace": 1,
        "auth_failure_delay": 0,
    }
    listener = srv["listen"][0]
    for key in ("data_size_limit", "command_size_limit", "auth_max_failures"):
        if key in settings:
            srv[key] = int(settings[key])
    for key in ("enable_smtputf8", "decode_data", "advertise_pipelining", "require_starttls", "auth_require_tls",
                "auth_required"):
        if key in settings:
            srv[key] = flag(settings[key])
    if "command_call_limit" in settings:
        srv["command_call_limit"] = json.loads(settings["command_call_limit"])
    if flag(settings.get("lmtp", "false")):
        listener["protocol"] = "lmtp"
    config = {"server": srv, "plugins": [{"name": "sink"}]}
    if flag(settings.get("starttls", "false")):
        listener["tls"] = "starttls"
        config["tls"] = {"certificate": certs[0], "private_key": certs[1]}
    return config


def converse(port, data, expected, quiet=0.3, limit=10.0):
    """All of `data` at once; the replies until the server closes, or for `quiet` seconds
    after at least len(expected) bytes came (at most `limit` seconds in all)."""
    received, closed = b"", False
    deadline = time.monotonic() + limit
    with socket.create_connection((HOST, port), timeout=limit) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # closed early (a refused greeting): what came is still read below
        while time.monotonic() < deadline:
            enough = len(received) >= len(expected)
            sock.settimeout(quiet if enough else max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                if enough:
                    break
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return received, closed


def run_kit(settings, client):
    r = subprocess.run([KIT_REPLAY, "--plugin", SINK] + kit_arguments(settings), input=client, capture_output=True,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"kit_replay failed: {r.stderr.decode(errors='replace')}")
    closed = r.stderr.decode().strip().splitlines()[-1] == "closed=1"
    return r.stdout, closed


class KitVersusServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="asiosmtpd-kit-")
        cert, key = os.path.join(cls.tmp.name, "cert.pem"), os.path.join(cls.tmp.name, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-subj", "/CN=localhost", "-days", "1"], check=True, capture_output=True, timeout=60)
        cls.certs = (cert, key)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_every_transcript(self):
        names = sorted(n for n in os.listdir(TRANSCRIPTS) if n.endswith(".txt"))
        self.assertGreater(len(names), 50)
        compared = 0
        for name in names:
            with self.subTest(transcript=name):
                if name in SKIPPED:
                    print(f"SKIP {name}: {SKIPPED[name]}", file=sys.stderr)
                    continue
                settings, client, expected, expect_close = parse(os.path.join(TRANSCRIPTS, name))
                kit, kit_closed = run_kit(settings, client)
                with Server(server_config(settings, self.certs)) as server:
                    got, closed = converse(server.port, client, expected)
                self.assertEqual(kit, got, f"{name}: the kit and the server answer differently")
                self.assertEqual(kit, expected, f"{name}: the kit's replies are not the transcript's")
                if expect_close:
                    self.assertTrue(closed and kit_closed, f"{name}: the server closes here")
                compared += 1
        print(f"{compared} transcripts compared, {len(SKIPPED)} skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
