# SPDX-License-Identifier: Apache-2.0
"""Beyond one machine, on loopback: a 3-node nats-server cluster with an R3 stream, HAProxy (TCP
mode) in front of 3 asiosmtpd instances running the jetstream plugin, load from smtplib
threads, and faults: kill -9 one asiosmtpd instance mid-load; kill -9 the stream leader's
nats-server mid-load. After each: every message that got a 250 is in the stream exactly once
(compared by the test's own id in each message, and by Nats-Msg-Id), clients that got a 4xx or
lost their connection retry, and the surviving instances keep serving.

The counts of each fault are printed (stderr) as a table. ctest runs a short load (a few
seconds per fault); the longer run is a separate command (plugins/jetstream/DEPLOYMENT.md):

    ASIOSMTPD_JETSTREAM_FULL=1 /usr/bin/python3 tests/integration/test_jetstream_cluster.py

(env ASIOSMTPD_JETSTREAM_LOAD_SECONDS / _THREADS override the load.) PROXY protocol: the
listener option `proxy_protocol: true` is probed with `asiosmtpd --check-config`; only when it
is accepted does test_send_proxy_gives_the_client_address run (else it is skipped).
"""
import collections
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, ServerTestCase, run_binary, server_config
from test_jetstream import Nats, free_port, jetstream_plugin, missing_prerequisites, send, stream_info, stream_messages

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
FULL = os.environ.get("ASIOSMTPD_JETSTREAM_FULL") == "1"
LOAD_SECONDS = float(os.environ.get("ASIOSMTPD_JETSTREAM_LOAD_SECONDS", "60" if FULL else "8"))
LOAD_THREADS = int(os.environ.get("ASIOSMTPD_JETSTREAM_THREADS", "16" if FULL else "8"))
MAX_ATTEMPTS = 8  # per message, by the load client, after a 4xx or a lost connection


def _why_skip():
    why = missing_prerequisites()
    if why:
        return why
    if not os.path.exists(HAPROXY):
        return f"missing {HAPROXY} (apt-get install haproxy)"
    return None


def proxy_protocol_supported():
    """Whether this asiosmtpd accepts the listener option `proxy_protocol: true` (being
    implemented; probed, not assumed)."""
    cfg = server_config(listen=[{"address": HOST, "port": 0, "proxy_protocol": True}])
    return run_binary(["--check-config"], cfg).returncode == 0


class HAProxy:
    """haproxy in TCP mode on 127.0.0.1: one frontend, round robin over `backends` (ports),
    health checks every 200 ms, a failed connection retried on another backend. Always
    stopped by stop()."""

    def __init__(self, backends, send_proxy=False):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-haproxy-")
        self.port = free_port()
        servers = "\n".join(
            f"    server s{i + 1} {HOST}:{p} check inter 200 fall 1 rise 2{' send-proxy' if send_proxy else ''}"
            for i, p in enumerate(backends))
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config_path, "w") as f:
            f.write(f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
frontend smtp
    bind {HOST}:{self.port}
    default_backend asiosmtpd
backend asiosmtpd
    balance roundrobin
{servers}
""")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([HAPROXY, "-db", "-f", self.config_path], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("haproxy did not start:\n" + self.log())
                time.sleep(0.05)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self):
        harness.stop_process(self.process, 10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Load:
    """LOAD_THREADS smtplib clients through HAProxy for `seconds`. Each thread sends messages
    one after another (a new connection every 10 messages, and after any error); a message
    that gets a 4xx or no reply is retried (up to MAX_ATTEMPTS). Every attempt carries its own
    id in the header X-Test-Id: <message>/<attempt>."""

    def __init__(self, port, seconds, threads, run_id):
        self.port, self.seconds, self.threads, self.run_id = port, seconds, threads, run_id
        self.lock = threading.Lock()
        self.attempts = {}           # attempt id -> "250" | "4xx" | "5xx" | "error"
        self.delivered = {}          # message id -> attempt id that got the 250
        self.undelivered = []        # message ids that never got a 250
        self.after_fault_250 = 0     # 250s whose attempt started after the fault
        self.fault_at = None
        self.ok_times = []           # when each 250 came (monotonic)

    def run(self, fault=None, fault_after=None):
        stop_at = time.monotonic() + self.seconds
        workers = [threading.Thread(target=self._client, args=(t, stop_at), daemon=True) for t in range(self.threads)]
        for w in workers:
            w.start()
        if fault:
            time.sleep(fault_after)
            self.fault_at = time.monotonic()
            fault()
        for w in workers:
            w.join(timeout=self.seconds + 120)
            if w.is_alive():
                raise AssertionError("a load client hangs")

    def _client(self, t, stop_at):
        conn = None
        n = 0
        sent_on_conn = 0
        while time.monotonic() < stop_at:
            n += 1
            mid = f"{self.run_id}-{t}-{n}"
            for attempt in range(1, MAX_ATTEMPTS + 1):
                aid = f"{mid}/{attempt}"
                started = time.monotonic()
                outcome = "error"
                try:
                    if conn is None or sent_on_conn >= 10:
                        if conn is not None:
                            with_quit(conn)
                        conn = smtplib.SMTP(HOST, self.port, timeout=30)
                        conn.ehlo("load.example")
                        sent_on_conn = 0
                    sent_on_conn += 1
                    body = (f"Subject: load {aid}\r\nX-Test-Id: {aid}\r\nMessage-ID: <{aid}@load.example>\r\n\r\n"
                            f"message {aid}\r\n").encode()
                    code, _ = conn.mail("load@example.org")
                    if code == 250:
                        code, _ = conn.rcpt("sink@example.net")
                    if code == 250:
                        code, _ = conn.data(body)
                    outcome = "250" if code == 250 else "4xx" if 400 <= code < 500 else "5xx"
                    if code != 250:
                        with_rset(conn)
                except (OSError, smtplib.SMTPException):
                    outcome = "error"
                    if conn is not None:
                        with_close(conn)
                    conn = None
                with self.lock:
                    self.attempts[aid] = outcome
                    if outcome == "250":
                        self.delivered[mid] = aid
                        self.ok_times.append(time.monotonic())
                        if self.fault_at is not None and started > self.fault_at:
                            self.after_fault_250 += 1
                if outcome == "250":
                    break
                if outcome == "5xx" or attempt == MAX_ATTEMPTS:
                    with self.lock:
                        self.undelivered.append(mid)
                    break
                time.sleep(0.2)
        if conn is not None:
            with_quit(conn)


def with_quit(conn):
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        with_close(conn)


def with_rset(conn):
    try:
        conn.rset()
    except (OSError, smtplib.SMTPException):
        pass


def with_close(conn):
    try:
        conn.close()
    except OSError:
        pass


def tally(load, messages):
    """The counts of one run, from the client's view and the stream's."""
    in_stream = collections.Counter()
    msg_ids = collections.Counter()
    for m in messages:
        found = re.search(rb"^X-Test-Id: (\S+)\r$", m["data"], re.M)
        in_stream[found.group(1).decode() if found else "?"] += 1
        msg_ids[m["headers"].get("Nats-Msg-Id", ["?"])[0]] += 1
    outcomes = collections.Counter(load.attempts.values())
    ok = [a for a, o in load.attempts.items() if o == "250"]
    return {
        "sent": len(load.attempts),
        "250": outcomes["250"],
        "4xx": outcomes["4xx"],
        "5xx": outcomes["5xx"],
        "no reply": outcomes["error"],
        "in stream": len(messages),
        "duplicates": sum(c - 1 for c in in_stream.values() if c > 1) + sum(c - 1 for c in msg_ids.values() if c > 1),
        "lost": sum(1 for a in ok if in_stream[a] == 0),
        "stored, no 250": sum(1 for a, o in load.attempts.items() if o != "250" and in_stream[a] > 0),
        "messages": len(load.delivered) + len(load.undelivered),
        "never 250": len(load.undelivered),
        "250 after fault": load.after_fault_250,
        "longest gap without 250 (s)": round(longest_gap(load), 1),
    }


def longest_gap(load):
    """The longest time after the fault during which no client got a 250."""
    if load.fault_at is None:
        return 0.0
    times = sorted(t for t in load.ok_times if t >= load.fault_at)
    marks = [load.fault_at] + times
    return max((b - a for a, b in zip(marks, marks[1:])), default=0.0)


def print_table(title, counts):
    keys = list(counts)
    sys.stderr.write(f"\n{title} ({LOAD_THREADS} clients, {LOAD_SECONDS:g} s)\n"
                     f"| {' | '.join(keys)} |\n|{'---|' * len(keys)}\n"
                     f"| {' | '.join(str(counts[k]) for k in keys)} |\n")


@unittest.skipIf(_why_skip(), _why_skip() or "")
class JetStreamClusterTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.nats = Nats(3)
        try:
            cls.nats.start().wait_ready(timeout=60)
        except BaseException:
            cls.nats.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.nats.stop()

    def setUp(self):
        # A test that killed a node restarts it; the next one starts from a whole cluster.
        self.nats.start().wait_ready(timeout=60)

    def start_instances(self, stream, n=3, victim=None, **listener):
        servers = []
        for i in range(n):
            cfg = server_config(plugins=[jetstream_plugin(self.nats.urls, stream=stream, replicas=3, timeout=10,
                                                          attempt_timeout=2, workers=16)],
                                listen=[dict({"address": HOST, "port": 0}, **listener)], workers=2)
            servers.append(self.start_server(cfg, check_exit=(i != victim)))
        return servers

    def start_haproxy(self, servers, **kw):
        proxy = HAProxy([s.port for s in servers], **kw)
        self.addCleanup(proxy.stop)
        return proxy

    def check(self, title, load, stream):
        messages = stream_messages(self.nats.urls, stream)
        counts = tally(load, messages)
        print_table(title, counts)
        self.assertGreater(counts["250"], 0)
        self.assertEqual(counts["lost"], 0, "a message that got 250 is not in the stream")
        self.assertEqual(counts["duplicates"], 0, "a message is in the stream more than once")
        self.assertEqual(counts["never 250"], 0, "a client found no instance to take its message")
        return counts

    def assert_still_serving(self, proxy):
        """After the fault, a new client through HAProxy gets a 250 (within 30 s)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                code, text, _ = send(proxy.port, b"Subject: after the fault\r\n\r\nstill here\r\n")
            except (OSError, smtplib.SMTPException) as e:
                code, text = 0, str(e)
            if code == 250:
                return
            if time.monotonic() > deadline:
                self.fail(f"no 250 through HAProxy 30 s after the fault: {code} {text}")
            time.sleep(0.5)

    def test_kill_one_asiosmtpd_instance_mid_load(self):
        stream = "KILLSMTPD"
        servers = self.start_instances(stream, victim=0)
        proxy = self.start_haproxy(servers)
        load = Load(proxy.port, LOAD_SECONDS, LOAD_THREADS, "smtpd")
        load.run(fault=lambda: servers[0].process.kill(), fault_after=LOAD_SECONDS / 4)
        self.assertEqual(stream_info(self.nats.urls, stream)["replicas"], 3)
        self.check("kill -9 one asiosmtpd instance of 3", load, stream)
        self.assert_still_serving(proxy)
        for s in servers[1:]:
            self.assertIsNone(s.process.poll(), "a surviving instance died")

    def test_kill_the_stream_leader_nats_node_mid_load(self):
        stream = "KILLNATS"
        servers = self.start_instances(stream)
        proxy = self.start_haproxy(servers)
        info = stream_info(self.nats.urls, stream)
        self.assertEqual(info["replicas"], 3)
        leader = self.nats.names.index(info["leader"]) if info["leader"] in self.nats.names else 0
        load = Load(proxy.port, LOAD_SECONDS, LOAD_THREADS, "nats")
        load.run(fault=lambda: self.nats.kill(leader), fault_after=LOAD_SECONDS / 4)
        survivors = [u for i, u in enumerate(self.nats.urls) if i != leader]
        self.assertNotEqual(stream_info(survivors, stream)["leader"], self.nats.names[leader])
        self.check(f"kill -9 the stream leader nats-server ({self.nats.names[leader]}) of 3", load, stream)
        self.assert_still_serving(proxy)
        self.nats.start(leader)

    def test_send_proxy_gives_the_client_address(self):
        # PROXY protocol (HAProxy send-proxy): enabled only when this asiosmtpd accepts the
        # listener option `proxy_protocol: true`; without it HAProxy fronts plain TCP above.
        if not proxy_protocol_supported():
            self.skipTest("listener option proxy_protocol not accepted by this asiosmtpd (PROXY protocol not in yet)")
        stream = "PROXYPROTO"
        servers = self.start_instances(stream, n=2, proxy_protocol=True)
        proxy = self.start_haproxy(servers, send_proxy=True)
        peers = []
        for _ in range(4):
            code, text, local = send(proxy.port, b"Subject: proxied\r\n\r\nproxied\r\n")
            self.assertEqual(code, 250, text)
            peers.append(local)
        stored = [m["headers"]["Peer"][0] for m in stream_messages(self.nats.urls, stream)]
        self.assertEqual(sorted(stored), sorted(peers))  # the client's address, not HAProxy's


if __name__ == "__main__":
    harness.main()
