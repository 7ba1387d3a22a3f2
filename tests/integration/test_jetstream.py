# SPDX-License-Identifier: Apache-2.0
"""The jetstream plugin against a real nats-server with JetStream (one node here; the 3-node
cluster behind HAProxy with faults is test_jetstream_cluster.py): the versioned encoding
(headers + raw message), 250 only after the ack, 451 when NATS is away and recovery after it
comes back, one stored copy when a publish is retried (Nats-Msg-Id), 552 for a message over
NATS's max_payload, stream creation and the config checks.

Also the helpers of both files: `Nats` runs nats-server nodes on 127.0.0.1 (always stopped),
`stream_info`/`stream_messages` read a stream through tests/jetstream/jetstream_tool (the NATS
C client; Debian has no `nats` CLI and Python no NATS client). Skipped when nats-server, the
plugin or the tool is missing (apt-get install nats-server libnats-dev).
"""
import base64
import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import harness
from harness import HOST, ServerTestCase, run_binary, server_config

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
TOOL = os.path.join(os.path.dirname(harness.BIN), "jetstream_tool")
PLUGIN = os.path.join(harness.PLUGIN_DIR, "jetstream.so")


def missing_prerequisites():
    """Why the JetStream tests cannot run here, or None."""
    for path, hint in ((NATS_SERVER, "apt-get install nats-server"), (PLUGIN, "apt-get install libnats-dev, rebuild"),
                       (TOOL, "apt-get install libnats-dev, rebuild")):
        if not os.path.exists(path):
            return f"missing {path} ({hint})"
    return None


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Nats:
    """n nats-server nodes with JetStream on 127.0.0.1; a cluster (routes between all) when
    n > 1. Every node is always stopped by stop(); every wait is bounded."""

    def __init__(self, n=1, max_payload=None):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-nats-")
        self.n = n
        self.names = [f"n{i + 1}" for i in range(n)]
        self.client_ports = [free_port() for _ in range(n)]
        self.http_ports = [free_port() for _ in range(n)]
        self.cluster_ports = [free_port() for _ in range(n)] if n > 1 else []
        self.max_payload = max_payload
        self.procs = [None] * n
        for i in range(n):
            with open(self._path(i, "conf"), "w") as f:
                f.write(self._config(i))

    def _path(self, i, ext):
        return os.path.join(self.dir, f"{self.names[i]}.{ext}")

    def _config(self, i):
        lines = [f"server_name: {self.names[i]}",
                 f"listen: {HOST}:{self.client_ports[i]}",
                 f"http: {HOST}:{self.http_ports[i]}",
                 "jetstream {",
                 f'  store_dir: "{os.path.join(self.dir, self.names[i])}"',
                 "  max_memory_store: 67108864",
                 "  max_file_store: 1073741824",
                 "}"]
        if self.max_payload:
            lines.append(f"max_payload: {self.max_payload}")
        if self.n > 1:
            routes = ", ".join(f"nats-route://{HOST}:{p}" for p in self.cluster_ports)
            lines += ["cluster {", "  name: asiosmtpd-test", f"  listen: {HOST}:{self.cluster_ports[i]}",
                      f"  routes: [{routes}]", "}"]
        return "\n".join(lines) + "\n"

    @property
    def urls(self):
        return [f"nats://{HOST}:{p}" for p in self.client_ports]

    @property
    def url_list(self):
        return ",".join(self.urls)

    def start(self, i=None):
        for j in range(self.n) if i is None else [i]:
            if self.procs[j] is not None and self.procs[j].poll() is None:
                continue
            with open(self._path(j, "log"), "ab") as log:
                self.procs[j] = subprocess.Popen([NATS_SERVER, "-c", self._path(j, "conf")], stdin=subprocess.DEVNULL,
                                                 stdout=log, stderr=log, start_new_session=True)
        return self

    def running(self):
        return [j for j in range(self.n) if self.procs[j] is not None and self.procs[j].poll() is None]

    def wait_ready(self, timeout=30.0):
        """Every running node answers /healthz 200 (JetStream up, cluster meta leader known) and
        JetStream answers an API request."""
        deadline = time.monotonic() + timeout
        for j in self.running():
            url = f"http://{HOST}:{self.http_ports[j]}/healthz"
            while True:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                if self.procs[j].poll() is not None:
                    raise RuntimeError(f"nats-server {self.names[j]} exited:\n{self.log(j)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {self.names[j]} not healthy within {timeout}s:\n{self.log(j)}")
                time.sleep(0.1)
        left = max(1.0, deadline - time.monotonic())
        r = tool("ready", ",".join(self.urls[j] for j in self.running()), str(left), timeout=left + 10)
        if r.returncode != 0:
            raise RuntimeError(f"JetStream not ready: {r.stderr}")
        return self

    def log(self, i):
        with contextlib.suppress(OSError), open(self._path(i, "log"), errors="replace") as f:
            return f.read()[-4000:]
        return ""

    def kill(self, i):
        """kill -9 node i."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)

    def signal(self, i, signo):
        self.procs[i].send_signal(signo)

    def stop(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def tool(*args, timeout=60):
    return subprocess.run([TOOL] + list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def stream_info(urls, stream):
    """The stream's state as a dict (messages, first_seq, last_seq, leader, replicas,
    duplicate_window_ns), or None when it does not exist."""
    r = tool("info", ",".join(urls) if isinstance(urls, list) else urls, stream)
    if r.returncode == 2:
        return None
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout)


def stream_messages(urls, stream, timeout=120):
    """Every message in the stream: dicts with seq, subject, headers {name: [values]}, data (bytes)."""
    r = tool("dump", ",".join(urls) if isinstance(urls, list) else urls, stream, "--data", timeout=timeout)
    if r.returncode == 2:
        return []
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    out = []
    for line in r.stdout.splitlines():
        m = json.loads(line)
        m["data"] = base64.b64decode(m.pop("data_b64", ""))
        out.append(m)
    return out


def jetstream_plugin(urls, stream="MAIL", **config):
    """A plugin entry for the jetstream plugin."""
    cfg = {"servers": list(urls), "stream": stream, "subjects": [f"{stream.lower()}.>"],
           "subject": f"{stream.lower()}.in", "replicas": 1, "timeout": 5}
    cfg.update(config)
    return {"path": PLUGIN, "config": cfg, "timeout": 30}


def send(port, body, mail_from="sender@example.org", rcpts=("rcpt@example.net",), timeout=20):
    """One transaction; returns (code, text, client address "ip:port") of the final DATA reply
    (or of the first refused command)."""
    with smtplib.SMTP(HOST, port, timeout=timeout) as s:
        local = "%s:%d" % s.sock.getsockname()[:2]
        s.ehlo("client.example")
        code, msg = s.mail(mail_from, ["SIZE=%d" % len(body)] if s.has_extn("size") else [])
        if code != 250:
            return code, msg.decode(), local
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg.decode(), local
        code, msg = s.data(body)
        return code, msg.decode(), local


@unittest.skipIf(missing_prerequisites(), missing_prerequisites() or "")
class JetStreamTest(ServerTestCase):
    def start_nats(self, **kw):
        nats = Nats(1, **kw)
        self.addCleanup(nats.stop)
        return nats.start().wait_ready()

    def test_publishes_envelope_and_content_after_the_ack(self):
        nats = self.start_nats()
        self.assertIsNone(stream_info(nats.urls, "MAIL"))
        server = self.start_server(server_config(plugins=[jetstream_plugin(nats.urls)]))
        body = b"Subject: one\r\nX-Test: 1\r\n\r\nline 1\r\n.dot line\r\n\xc3\xa9t\xc3\xa9\r\n"
        code, _, local = send(server.port, body, rcpts=("a@example.net", "B@Example.NET"))
        self.assertEqual(code, 250)
        code2, _, _ = send(server.port, b"Subject: two\r\n\r\nsecond\r\n", mail_from="<>")
        self.assertEqual(code2, 250)

        info = stream_info(nats.urls, "MAIL")
        self.assertEqual((info["messages"], info["replicas"]), (2, 1))
        first, second = stream_messages(nats.urls, "MAIL")
        self.assertEqual(first["subject"], "mail.in")
        h = first["headers"]
        self.assertEqual(h["Asiosmtpd-Version"], ["1"])
        self.assertEqual(h["Mail-From"], ["sender@example.org"])
        self.assertEqual(h["Rcpt-To"], ["a@example.net", "B@Example.NET"])
        self.assertEqual(h["Peer"], [local])
        self.assertEqual(h["Helo"], ["client.example"])
        self.assertEqual(h["Mail-Param"], ["SIZE=%d" % len(body)])
        self.assertRegex(h["Received-At"][0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(first["data"], body)  # the message as received: CRLF, dot-unstuffed
        self.assertEqual(second["headers"]["Mail-From"], ["<>"])
        ids = [m["headers"]["Nats-Msg-Id"][0] for m in (first, second)]
        self.assertEqual(len(set(ids)), 2)
        self.assertRegex(ids[0], r"^asiosmtpd-[0-9a-f]{16}-\d+$")
        self.assertIn("created stream MAIL", server.stderr())

    def test_dsn_parameters_in_headers(self):
        # server.enable_dsn: RET/ENVID as Mail-Param, NOTIFY/ORCPT as Rcpt-Param with the
        # recipient's position; ENVID and ORCPT values in the client's case.
        nats = self.start_nats()
        server = self.start_server(server_config(plugins=[jetstream_plugin(nats.urls)], enable_dsn=True))
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("dsn"))
            self.assertEqual(s.mail("a@example.org", ["RET=HDRS", "ENVID=Id+2B42"])[0], 250)
            self.assertEqual(s.rcpt("b@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@Example.NET"])[0], 250)
            self.assertEqual(s.rcpt("c@example.net")[0], 250)
            self.assertEqual(s.rcpt("d@example.net", ["NOTIFY=NEVER"])[0], 250)
            self.assertEqual(s.data(b"Subject: dsn\r\n\r\nbody\r\n")[0], 250)
        (message,) = stream_messages(nats.urls, "MAIL")
        h = message["headers"]
        self.assertEqual(h["Mail-Param"], ["RET=HDRS", "ENVID=Id+2B42"])
        self.assertEqual(h["Rcpt-To"], ["b@example.net", "c@example.net", "d@example.net"])
        self.assertEqual(h["Rcpt-Param"], ["0 NOTIFY=SUCCESS,FAILURE", "0 ORCPT=rfc822;B@Example.NET", "2 NOTIFY=NEVER"])

    def test_control_characters_never_reach_a_header(self):
        # The server refuses them in addresses (553), but a HELO name keeps them: its Helo
        # header gets \xNN for each, so a CR never starts a header of the client's choosing.
        nats = self.start_nats()
        server = self.start_server(server_config(plugins=[jetstream_plugin(nats.urls)]))
        with harness.Client(server.host, server.port) as c:
            c.reply()
            c.send(b"EHLO client\rX-Evil: 1\x01.example\r\n")
            self.assertEqual(c.reply()[-1], "250 HELP")
            c.send(b'MAIL FROM:<"x\rX-Evil: 2"@b.example>\r\n')
            self.assertEqual(c.reply(), ["553 5.1.3 Error: malformed address"])
            for line, want in ((b"MAIL FROM:<a@b.example>", "250 OK"), (b"RCPT TO:<d@e.example>", "250 OK"),
                               (b"DATA", "354 End data with <CR><LF>.<CR><LF>")):
                c.send(line + b"\r\n")
                self.assertEqual(c.reply(), [want])
            c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            self.assertEqual(c.reply(), ["250 OK"])
        (m,) = stream_messages(nats.urls, "MAIL")
        h = m["headers"]
        self.assertEqual(h["Helo"], ["client\\x0dX-Evil: 1\\x01.example"])
        self.assertEqual(h["Mail-From"], ["a@b.example"])
        self.assertNotIn("X-Evil", h)

    def test_existing_stream_is_used_and_must_take_the_subject(self):
        nats = self.start_nats()
        with self.start_server(server_config(plugins=[jetstream_plugin(nats.urls)])) as first:
            self.assertEqual(send(first.port, b"Subject: a\r\n\r\na\r\n")[0], 250)
        second = self.start_server(server_config(plugins=[jetstream_plugin(nats.urls, replicas=3)]))
        self.assertEqual(send(second.port, b"Subject: b\r\n\r\nb\r\n")[0], 250)
        self.assertNotIn("created stream", second.stderr())
        self.assertIn("has 1 replica(s), config says 3", second.stderr())
        self.assertEqual(stream_info(nats.urls, "MAIL")["messages"], 2)
        r = run_binary(["--check-config"], server_config(plugins=[jetstream_plugin(
            nats.urls, subjects=["other.>"], subject="other.in")]))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("stream MAIL does not take subject other.in (its subjects: mail.>)", r.stderr)
        r = run_binary(["--check-config"], server_config(plugins=[jetstream_plugin(
            nats.urls, stream="NOPE", create_stream=False)]))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("stream NOPE does not exist (create_stream: false)", r.stderr)
        # Issue 23: --check-config changes nothing, on the broker neither.
        r = run_binary(["--check-config"], server_config(plugins=[jetstream_plugin(nats.urls, stream="FRESH")]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("stream FRESH does not exist; a start creates it", r.stderr)
        self.assertIsNone(stream_info(nats.urls, "FRESH"))

    def test_config_errors_name_the_key(self):
        cases = [
            ({"stream": "MAIL"}, "servers: required"),
            ({"servers": ["nats://127.0.0.1:1"]}, "stream: required"),
            ({"servers": "nats://127.0.0.1:1", "stream": "A.B"}, "stream: a stream name without"),
            ({"servers": "nats://127.0.0.1:1", "stream": "S", "subjects": ["a.>", "b.>"]}, "subject: required"),
            ({"servers": "nats://127.0.0.1:1", "stream": "S", "subject": "a.*"}, "not a NATS subject without wildcards"),
            ({"servers": "nats://127.0.0.1:1", "stream": "S", "subjects": ["a.>"], "subject": "b.c"},
             'subject: "b.c" is not covered by `subjects`'),
            ({"servers": "nats://127.0.0.1:1", "stream": "S", "subject": "s", "timeout": 300},
             "duplicate_window: must be at least `timeout`"),
            ({"servers": "nats://127.0.0.1:1", "stream": "S", "subject": "s", "bogus": 1}, "bogus"),
            ({"servers": f"nats://127.0.0.1:{free_port()}", "stream": "S", "subject": "s", "connect_timeout": 1},
             "cannot connect to NATS"),
        ]
        for cfg, expected in cases:
            with self.subTest(cfg=cfg):
                r = run_binary(["--check-config"], server_config(plugins=[{"path": PLUGIN, "config": cfg}]))
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(expected, r.stderr)

    def test_nats_down_answers_451_and_recovers(self):
        nats = self.start_nats()
        server = self.start_server(server_config(plugins=[jetstream_plugin(nats.urls, timeout=1.5)]))
        self.assertEqual(send(server.port, b"Subject: before\r\n\r\nbefore\r\n")[0], 250)
        nats.kill(0)
        started = time.monotonic()
        code, text, _ = send(server.port, b"Subject: down\r\n\r\ndown\r\n")
        self.assertEqual(code, 451, text)
        self.assertIn("4.3.0 Error: message not stored", text)
        self.assertLess(time.monotonic() - started, 6)
        nats.start(0).wait_ready()
        deadline = time.monotonic() + 20
        while True:
            code, text, _ = send(server.port, b"Subject: after\r\n\r\nafter\r\n")
            if code == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(code, 250, text)
        subjects = [m["data"].split(b"\r\n")[0] for m in stream_messages(nats.urls, "MAIL")]
        self.assertEqual(subjects.count(b"Subject: before"), 1)
        self.assertEqual(subjects.count(b"Subject: after"), 1)
        self.assertNotIn(b"Subject: down", subjects)  # published only while connected
        self.assertIn("disconnected from NATS", server.stderr())
        self.assertIn("reconnected to NATS", server.stderr())

    def test_a_retried_publish_is_stored_once(self):
        """nats-server frozen (SIGSTOP) for longer than attempt_timeout: the plugin publishes
        again with the same Nats-Msg-Id; when the server thaws it stores the first copy, drops
        the others as duplicates and acks; the client gets one 250, the stream one message."""
        nats = self.start_nats()
        server = self.start_server(server_config(plugins=[jetstream_plugin(
            nats.urls, timeout=8, attempt_timeout=0.3)]), log_level="debug")
        self.assertEqual(send(server.port, b"Subject: warm\r\n\r\nwarm\r\n")[0], 250)
        result = {}
        nats.signal(0, signal.SIGSTOP)
        try:
            t = threading.Thread(target=lambda: result.update(r=send(server.port, b"Subject: frozen\r\n\r\nx\r\n")))
            t.start()
            time.sleep(1.5)
        finally:
            nats.signal(0, signal.SIGCONT)
        t.join(timeout=20)
        self.assertEqual(result["r"][0], 250, result)
        msgs = stream_messages(nats.urls, "MAIL")
        self.assertEqual(len(msgs), 2)
        ids = [m["headers"]["Nats-Msg-Id"][0] for m in msgs]
        self.assertEqual(len(set(ids)), 2)
        log = server.stderr()
        self.assertRegex(log, r"stored asiosmtpd-\S+-2 as MAIL seq 2 (\(duplicate of an earlier attempt\) )?after [2-9]\d* attempt")

    def test_message_over_max_payload_is_refused(self):
        nats = self.start_nats(max_payload=65536)
        server = self.start_server(server_config(plugins=[jetstream_plugin(nats.urls)]))
        code, text, _ = send(server.port, b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 1000)
        self.assertEqual(code, 552, text)
        self.assertEqual(send(server.port, b"Subject: small\r\n\r\nsmall\r\n")[0], 250)
        self.assertEqual(stream_info(nats.urls, "MAIL")["messages"], 1)


if __name__ == "__main__":
    harness.main()
