# SPDX-License-Identifier: Apache-2.0
"""access plugin end to end: the open-relay suite (a foreign recipient and every classic trick:
the percent hack, a quoted '@', a source route, two '@', bang paths; from outside and from a
relay network, with and without AUTH over STARTTLS) in front of the proxy plugin and a recording
upstream, which must receive nothing an outsider tried to relay; sender_login_map (alice cannot
send as ceo@bank.example); per-client limits with several clients (each a 127.0.0.x source
address); a reload under load that keeps the counters; DNSBL through a real DNS server (Debian's
dnsmasq on 127.0.0.1, started here with a test zone): a listed client refused with the list's
text, a clean one accepted, the server down or silent failing open or closed as configured, and
no session waiting for another's lookup; the open_relay start-up warning and the example
configs."""
import os
import re
import shutil
import signal
import smtplib
import socket
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, Client, ServerTestCase, server_config, to_yaml
from test_auth import authfile_plugin, crypt_hash
from test_tls import client_context, make_certificate

OUTSIDE = "127.0.0.10"      # a client that may not relay
RELAY_NET = "127.0.0.200"   # the relay network of the suite's server
LOCAL = "local.example"

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def smtp_from(source, port, timeout=10):
    """smtplib from a given 127.0.0.x source address (a different client for the server)."""
    return smtplib.SMTP(HOST, port, timeout=timeout, source_address=(source, 0))


def raw_from(source, port, timeout=10):
    """A harness.Client whose socket comes from `source`."""
    c = Client.__new__(Client)
    c.sock = socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))
    c.sock.settimeout(timeout)
    c.buf = b""
    return c


class RecordingUpstream(socketserver.ThreadingTCPServer):
    """An upstream MTA that takes everything and records (sender, recipients) per message."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__((HOST, 0), _RecordingHandler)
        self.port = self.server_address[1]
        self.messages = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()

    def recorded(self):
        with self.lock:
            return list(self.messages)


class _RecordingHandler(socketserver.StreamRequestHandler):
    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        self.reply("220 upstream ESMTP")
        sender, rcpts = "", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                self.reply("250-upstream\r\n250 8BITMIME")
            elif verb == "MAIL":
                sender, rcpts = cmd[cmd.index("<") + 1:cmd.rindex(">")], []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(cmd[cmd.index("<") + 1:cmd.rindex(">")])
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 go ahead")
                while True:
                    chunk = self.rfile.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                with self.server.lock:
                    self.server.messages.append((sender, rcpts))
                self.reply("250 2.0.0 Ok: queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


# The open-relay tests (name, RCPT argument). double_at is refused by the server's address
# parser before any plugin (553), from everyone.
TRICKS = [
    ("foreign", "<user@foreign.example>"),
    ("foreign_upper", "<user@FOREIGN.example>"),
    ("percent", f"<user%foreign.example@{LOCAL}>"),
    ("percent_quoted", f'<"user%foreign.example"@{LOCAL}>'),
    ("quoted_at", f'<"user@foreign.example"@{LOCAL}>'),
    ("source_route", f"<@{LOCAL}:user@foreign.example>"),
    ("source_route_list", f"<@{LOCAL},@{LOCAL}:user@foreign.example>"),
    ("double_at", f"<user@foreign.example@{LOCAL}>"),
    ("bang", f"<foreign.example!user@{LOCAL}>"),
    ("bang_quoted", f'<"foreign.example!user"@{LOCAL}>'),
    ("bang_no_domain", "<foreign.example!user>"),
]


class OpenRelayTest(ServerTestCase):
    """authfile + access + proxy to a recording upstream, STARTTLS and AUTH on 127.0.0.1."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="asiosmtpd-access-")
        cls.cert, cls.key = make_certificate(cls.dir)
        with open(os.path.join(cls.dir, "senders.map"), "w") as f:
            f.write("# test\nalice@local.example: alice\n@bank.example: ceo\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.upstream = RecordingUpstream()
        self.addCleanup(self.upstream.stop)
        access = {"name": "access", "config": {
            "local_domains": [LOCAL],
            "relay_networks": [RELAY_NET + "/32"],
            "sender_login_map": os.path.join(self.dir, "senders.map")}}
        proxy = {"name": "proxy", "config": {"host": HOST, "port": self.upstream.port, "timeout": 10}}
        config = server_config(plugins=[authfile_plugin(self, {"alice": "wonderland", "ceo": "money"}), access, proxy],
                               listen=[{"address": HOST, "port": 0, "tls": "starttls"}], auth_failure_delay=0)
        config["tls"] = {"certificate": self.cert, "private_key": self.key}
        self.server = self.start_server(config)

    def session(self, source, login=None):
        s = smtp_from(source, self.server.port)
        self.addCleanup(s.close)
        s.ehlo("client.example")
        s.starttls(context=client_context())
        s.ehlo("client.example")
        if login:
            s.login(*login)
        return s

    def test_open_relay_suite(self):
        contexts = [("outside", OUTSIDE, None), ("outside+auth", OUTSIDE, ("alice", "wonderland")),
                    ("relay_network", RELAY_NET, None), ("relay_network+auth", RELAY_NET, ("alice", "wonderland"))]
        expected_relayed = []
        for label, source, login in contexts:
            s = self.session(source, login)
            may_relay = login is not None or source == RELAY_NET
            for n, (trick, rcpt) in enumerate(TRICKS):
                with self.subTest(client=label, trick=trick):
                    sender = "alice@local.example" if login else f"probe-{label}-{n}@tester.example"
                    self.assertEqual(s.docmd("MAIL", f"FROM:<{sender}>")[0], 250)
                    code, text = s.docmd("RCPT", "TO:" + rcpt)
                    if trick == "double_at":
                        self.assertEqual((code, text), (553, b"5.1.3 Error: malformed address"))
                    elif may_relay:
                        self.assertEqual(code, 250, text)
                    else:
                        self.assertEqual(code, 554, text)
                        self.assertRegex(text.decode(), r"^5\.7\.1 <.*>: Relay access denied$")
                    if code == 250:
                        self.assertEqual(s.docmd("DATA")[0], 354)
                        s.send(b"Subject: relay test\r\n\r\nbody\r\n.\r\n")
                        self.assertEqual(s.getreply()[0], 250)
                        expected_relayed.append((sender, trick))
                    else:
                        self.assertEqual(s.docmd("DATA")[0], 503)  # no recipient: nothing to send
                        self.assertEqual(s.docmd("RSET")[0], 250)
            # Mail for the local domain is taken from every client.
            self.assertEqual(s.docmd("MAIL", "FROM:<alice@local.example>" if login else "FROM:<x@tester.example>")[0],
                             250)
            self.assertEqual(s.docmd("RCPT", f"TO:<someone@{LOCAL}>")[0], 250)
            self.assertEqual(s.docmd("RSET")[0], 250)
            s.quit()
        got = self.upstream.recorded()
        self.assertEqual(len(got), len(expected_relayed))
        senders = [sender for sender, _ in got]
        self.assertFalse([m for m in senders if m.startswith("probe-outside-")],
                         "an outsider relayed through the server")
        self.assertEqual(sum(1 for m in senders if m.startswith("probe-relay_network-")), len(TRICKS) - 1)
        # What the upstream got from the relay network is the trick as the client wrote it.
        rcpts = {r for _, rr in got for r in rr}
        self.assertIn("user%foreign.example@local.example", rcpts)
        self.assertIn("foreign.example!user@local.example", rcpts)
        denied = [line for line in self.server.stderr().splitlines() if "event=relay_denied" in line]
        self.assertEqual(len(denied), len(TRICKS) - 1)
        self.assertTrue(all(f"client={OUTSIDE}" in line for line in denied), denied)

    def test_sender_login_map(self):
        s = self.session(OUTSIDE, ("alice", "wonderland"))
        self.assertEqual(s.docmd("MAIL", "FROM:<ceo@bank.example>"),
                         (553, b"5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice"))
        self.assertEqual(s.docmd("MAIL", "FROM:<bob@local.example>"),
                         (553, b"5.7.1 <bob@local.example>: Sender address rejected: not owned by user alice"))
        s.sendmail("alice@local.example", ["friend@foreign.example"], b"Subject: mine\r\n\r\nhi\r\n")
        # ceo may send as anyone at bank.example (the @domain entry).
        c = self.session(RELAY_NET, ("ceo", "money"))
        c.sendmail("ceo@bank.example", ["friend@foreign.example"], b"Subject: ceo\r\n\r\nhi\r\n")
        # Not authenticated: not affected by the map (an MX takes mail from anyone, as anyone).
        o = self.session(OUTSIDE)
        o.sendmail("ceo@bank.example", [f"someone@{LOCAL}"], b"Subject: inbound\r\n\r\nhi\r\n")
        self.assertEqual(self.upstream.recorded(),
                         [("alice@local.example", ["friend@foreign.example"]),
                          ("ceo@bank.example", ["friend@foreign.example"]),
                          ("ceo@bank.example", [f"someone@{LOCAL}"])])
        self.assertIn("event=sender_login_mismatch client=127.0.0.10 login=alice sender=ceo@bank.example",
                      self.server.stderr())


def limits_config(port=0, **limits):
    return server_config(plugins=[{"name": "access", "config": {"local_domains": [LOCAL], "limits": limits}},
                                  "sink"], listen=[{"address": HOST, "port": port}])


class LimitsTest(ServerTestCase):
    def greeting(self, client):
        return client.line()

    def test_connections_per_client_with_several_clients(self):
        server = self.start_server(limits_config(connections_per_client=2))
        clients = [f"127.0.0.{n}" for n in range(31, 36)]
        held = []
        for source in clients:
            for _ in range(2):
                c = raw_from(source, server.port)
                self.addCleanup(c.close)
                self.assertTrue(c.line().startswith("220 "), source)
                held.append(c)
        for source in clients:
            c = raw_from(source, server.port)
            self.addCleanup(c.close)
            self.assertEqual(c.line(), f"421 4.7.0 Error: too many connections from {source}")
            c.expect_eof()
        err = server.stderr()
        for source in clients:
            self.assertIn(f"event=limit client={source} key={source} limit=connections_per_client count=3 max=2", err)
        # A connection that ends frees its place at once.
        held[0].cmd("QUIT")
        held[0].expect_eof()
        deadline = time.monotonic() + 5
        while True:
            c = raw_from(clients[0], server.port)
            self.addCleanup(c.close)
            line = c.line()
            if line.startswith("220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(line.startswith("220 "), line)

    def test_rates_and_recipients(self):
        server = self.start_server(limits_config(connections_per_minute=4, messages_per_minute=3,
                                                 recipients_per_message=2))
        for _ in range(4):
            with smtp_from("127.0.0.41", server.port) as s:
                s.noop()
        c = raw_from("127.0.0.41", server.port)
        self.addCleanup(c.close)
        self.assertEqual(c.line(), "421 4.7.0 Error: too many connections from 127.0.0.41")
        with smtp_from("127.0.0.42", server.port) as s:  # another client is not affected
            s.ehlo("x")
            for n in range(3):
                s.sendmail("a@tester.example", [f"u{n}@{LOCAL}"], b"Subject: x\r\n\r\nx\r\n")
            self.assertEqual(s.docmd("MAIL", "FROM:<a@tester.example>"),
                             (450, b"4.7.1 Error: too much mail from 127.0.0.42"))
        with smtp_from("127.0.0.43", server.port) as s:
            s.ehlo("x")
            s.docmd("MAIL", "FROM:<a@tester.example>")
            self.assertEqual(s.docmd("RCPT", f"TO:<a@{LOCAL}>")[0], 250)
            self.assertEqual(s.docmd("RCPT", f"TO:<b@{LOCAL}>")[0], 250)
            self.assertEqual(s.docmd("RCPT", f"TO:<c@{LOCAL}>"), (452, b"4.5.3 Error: too many recipients"))
        err = server.stderr()
        self.assertIn("event=limit client=127.0.0.41 key=127.0.0.41 limit=connections_per_minute count=5 max=4", err)
        self.assertIn("event=limit client=127.0.0.42 key=127.0.0.42 limit=messages_per_minute count=4 max=3", err)
        self.assertIn("event=limit client=127.0.0.43 limit=recipients_per_message max=2", err)


class ReloadTest(ServerTestCase):
    def setUp(self):
        with socket.socket() as probe:  # a fixed port: reloads keep listeners by address and port
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]

    def reload(self, server, config):
        with open(server.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(config))
        before = server.stderr().count("event=reload ")
        server.signal(signal.SIGHUP)
        server.wait_output(lambda e: e.count("event=reload ") > before, which="stderr", timeout=15)
        last = [l for l in server.stderr().splitlines() if "event=reload " in l][-1]
        self.assertIn("result=ok", last)

    def test_reload_under_load_keeps_the_counters(self):
        limits = {"connections_per_client": 2, "connections_per_minute": 30}
        server = self.start_server(limits_config(self.port, **limits))
        # Client A holds its two connections; client B uses up its connections of the minute.
        held = [raw_from("127.0.0.51", self.port) for _ in range(2)]
        for c in held:
            self.addCleanup(c.close)
            self.assertTrue(c.line().startswith("220 "))
        for _ in range(30):
            with smtp_from("127.0.0.52", self.port) as s:
                s.noop()
        # Load: four other clients send messages all along (each well under its limits).
        results = {"ok": 0, "failed": []}
        lock = threading.Lock()
        stop = threading.Event()

        def load(source):
            for _ in range(12):
                if stop.is_set():
                    return
                try:
                    with smtp_from(source, self.port) as s:
                        s.sendmail("a@tester.example", [f"u@{LOCAL}"], b"Subject: load\r\n\r\nbody\r\n")
                    with lock:
                        results["ok"] += 1
                except Exception as e:  # any failure is a finding
                    with lock:
                        results["failed"].append(repr(e))
                time.sleep(0.05)

        threads = [threading.Thread(target=load, args=(f"127.0.0.{n}",)) for n in range(61, 65)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)
            # Same limits, another local domain: the counters go on.
            self.reload(server, server_config(
                plugins=[{"name": "access", "config": {"local_domains": [LOCAL, "other.example"], "limits": limits}},
                         "sink"], listen=[{"address": HOST, "port": self.port}]))
            self.assertIn("event=client_limits counters=kept", server.stderr())
            c = raw_from("127.0.0.51", self.port)
            self.addCleanup(c.close)
            self.assertEqual(c.line(), "421 4.7.0 Error: too many connections from 127.0.0.51")
            c = raw_from("127.0.0.52", self.port)
            self.addCleanup(c.close)
            self.assertEqual(c.line(), "421 4.7.0 Error: too many connections from 127.0.0.52")
            with smtp_from("127.0.0.53", self.port) as s:  # a fresh client is welcome
                self.assertEqual(s.noop()[0], 250)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        self.assertEqual(results["failed"], [])
        self.assertGreater(results["ok"], 8)
        # The sessions open across the reload still count, and their end frees the place.
        held[0].cmd("QUIT")
        held[0].expect_eof()
        deadline = time.monotonic() + 5
        while True:
            c = raw_from("127.0.0.51", self.port)
            self.addCleanup(c.close)
            line = c.line()
            if line.startswith("220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(line.startswith("220 "), line)
        # Other limits: new counters.
        self.reload(server, limits_config(self.port, connections_per_client=2, connections_per_minute=31))
        self.assertIn("event=client_limits counters=new", server.stderr().split("event=reload ")[-2])
        with smtp_from("127.0.0.52", self.port) as s:
            self.assertEqual(s.noop()[0], 250)


# --- DNSBL --------------------------------------------------------------------------------------

def dns_query(port, name, qtype=1, timeout=0.5):
    """One UDP DNS query to 127.0.0.1:port; the response code, or None without an answer."""
    packet = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    packet += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (HOST, port))
        try:
            return s.recv(512)[3] & 0xF
        except (socket.timeout, ConnectionRefusedError):
            return None


def free_dns_port():
    """A port free for UDP and TCP on 127.0.0.1."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port> answering only for the test zone `bl.test` (NXDOMAIN for names
    it does not list; REFUSED for other zones, as it has no upstream)."""

    ZONE = "bl.test"
    LISTED = {"127.0.0.2": "Listed for testing; see https://bl.test/lookup?ip=127.0.0.2",
              "127.0.0.4": "Listed too",
              "127.0.0.5": None}  # listed without a TXT record

    def __init__(self):
        self.port = free_dns_port()
        args = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}", "--pid-file=",
                "--log-facility=-", "--cache-size=0", f"--local=/{self.ZONE}/"]
        if os.geteuid() == 0:
            args += ["--user=root", "--group=root"]  # no switch to an account of its own
        for ip, text in self.LISTED.items():
            name = ".".join(reversed(ip.split("."))) + "." + self.ZONE
            args.append(f"--address=/{name}/127.0.0.2")
            if text:
                args.append(f"--txt-record={name},{text}")
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while dns_query(self.port, "2.0.0.127." + self.ZONE) != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self.log.seek(0)
                raise RuntimeError(f"dnsmasq did not start: {self.log.read().decode(errors='replace')}")
            time.sleep(0.05)

    def stop(self):
        harness.stop_process(self.process, 5)
        self.log.close()


@unittest.skipUnless(os.path.exists(DNSMASQ), "dnsmasq is not installed (apt-get install dnsmasq-base)")
class DnsblTest(ServerTestCase):
    def setUp(self):
        self.dns = Dnsmasq()
        self.addCleanup(self.dns.stop)

    def dnsbl_server(self, servers=None, zones=(Dnsmasq.ZONE,), **extra):
        config = {"local_domains": [LOCAL], "dnsbl": list(zones),
                  "dns_servers": servers or [f"127.0.0.1:{self.dns.port}"], "dnsbl_timeout": 2}
        config.update(extra)
        return self.start_server(server_config(plugins=[{"name": "access", "config": config}, "sink"]))

    def rcpt(self, server, source, rcpt=f"someone@{LOCAL}"):
        with smtp_from(source, server.port) as s:
            s.ehlo("client.example")
            s.docmd("MAIL", "FROM:<sender@tester.example>")
            started = time.monotonic()
            answer = s.docmd("RCPT", f"TO:<{rcpt}>")
            return answer, time.monotonic() - started

    def test_listed_client_refused_with_the_lists_text_clean_one_accepted(self):
        server = self.dnsbl_server(relay_networks=["127.0.0.4/32"])
        (code, text), _ = self.rcpt(server, "127.0.0.2")
        self.assertEqual((code, text.decode()),
                         (554, "5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test; "
                               "Listed for testing; see https://bl.test/lookup?ip=127.0.0.2"))
        (code, text), _ = self.rcpt(server, "127.0.0.5")
        self.assertEqual((code, text), (554, b"5.7.1 Service unavailable; client [127.0.0.5] blocked using bl.test"))
        self.assertEqual(self.rcpt(server, "127.0.0.3")[0], (250, b"OK"))
        # A relay network is not looked up (Postfix: permit_mynetworks before reject_rbl_client).
        self.assertEqual(self.rcpt(server, "127.0.0.4")[0], (250, b"OK"))
        # A foreign recipient from a listed client: the relay refusal comes first.
        self.assertEqual(self.rcpt(server, "127.0.0.2", "x@foreign.example")[0],
                         (554, b"5.7.1 <x@foreign.example>: Relay access denied"))
        with smtp_from("127.0.0.3", server.port) as s:
            s.sendmail("a@tester.example", [f"b@{LOCAL}"], b"Subject: clean\r\n\r\nx\r\n")
        err = server.stderr()
        self.assertIn("event=dnsbl_listed session=1 client=127.0.0.2 zone=bl.test answer=127.0.0.2", err)
        self.assertNotIn("client=127.0.0.4", err.split("event=dnsbl")[-1])

    def test_dns_server_down_fails_open_or_closed(self):
        down = Dnsmasq()
        down.stop()  # a real server, gone: its port answers with ICMP port unreachable
        servers = [f"127.0.0.1:{down.port}"]
        server = self.dnsbl_server(servers=servers)
        (answer, took) = self.rcpt(server, "127.0.0.3")
        self.assertEqual(answer, (250, b"OK"))
        self.assertLess(took, 5)
        server.wait_output(lambda e: "event=dnsbl_failed" in e, which="stderr", timeout=5)
        self.assertRegex(server.stderr(), r"event=dnsbl_failed session=\d+ client=127\.0\.0\.3 zone=bl\.test "
                                          r"reason=\S+ policy=open")
        closed = self.dnsbl_server(servers=servers, dnsbl_fail="closed")
        self.assertEqual(self.rcpt(closed, "127.0.0.3")[0],
                         (451, b"4.7.1 Service unavailable; client [127.0.0.3]: DNSBL lookup failed, try again later"))
        # A zone the server refuses to answer (no upstream for it) is a failure too, not a pass.
        refused = self.dnsbl_server(zones=("elsewhere.test",), dnsbl_fail="closed")
        self.assertEqual(self.rcpt(refused, "127.0.0.3")[0][0], 451)

    def test_silent_server_times_out_without_blocking_other_sessions(self):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
        self.addCleanup(silent.close)
        silent.bind((HOST, 0))
        server = self.dnsbl_server(servers=[f"127.0.0.1:{silent.getsockname()[1]}"], dnsbl_fail="closed",
                                   dnsbl_timeout=1.5, relay_networks=["127.0.0.9/32"])
        # More sessions wait for their lookup than the server has threads (workers: 2).
        waiting = []
        for n in range(4):
            c = raw_from(f"127.0.0.{20 + n}", server.port)
            self.addCleanup(c.close)
            c.line()
            c.cmd("EHLO client.example")
            c.cmd("MAIL FROM:<a@tester.example>")
            c.send(f"RCPT TO:<someone@{LOCAL}>\r\n")
            waiting.append(c)
        started = time.monotonic()
        with smtp_from("127.0.0.9", server.port) as s:  # no lookup for the relay network
            s.ehlo("client.example")
            for _ in range(5):
                self.assertEqual(s.noop()[0], 250)
            self.assertEqual(s.docmd("MAIL", "FROM:<a@tester.example>")[0], 250)
            self.assertEqual(s.docmd("RCPT", f"TO:<someone@{LOCAL}>")[0], 250)
        self.assertLess(time.monotonic() - started, 1.0)
        for c in waiting:
            self.assertEqual(c.reply(), ["451 4.7.1 Service unavailable; client [" + c.sock.getsockname()[0] +
                                         "]: DNSBL lookup failed, try again later"])
        self.assertLess(time.monotonic() - started, 4)
        self.assertIn("reason=timeout policy=closed", server.stderr())


# --- configuration ------------------------------------------------------------------------------

class ConfigTest(unittest.TestCase):
    def check(self, config):
        return harness.run_binary(["--check-config"], config=config)

    def relay_config(self, address, plugins):
        return server_config(plugins=plugins, listen=[{"address": address, "port": 2525}])

    def test_open_relay_warning(self):
        proxy = {"name": "proxy", "config": {"host": HOST, "port": 25}}
        r = self.check(self.relay_config("0.0.0.0", [proxy]))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('warn event=open_relay listener=0.0.0.0:2525 plugin=proxy '
                      'reason="no access plugin before proxy (plugins[0])"', r.stderr)
        everyone = {"name": "access", "config": {"relay_networks": ["127.0.0.0/8", "::/0"]}}
        r = self.check(self.relay_config("::", [everyone, proxy]))
        self.assertIn('warn event=open_relay listener=[::]:2525 plugin=proxy reason="the access plugin (plugins[0]) '
                      'lets everyone relay: relay_networks has ::/0"', r.stderr)
        # access after the relaying plugin does not count.
        safe = {"name": "access", "config": {"local_domains": [LOCAL], "relay_networks": ["127.0.0.0/8"]}}
        r = self.check(self.relay_config("192.0.2.1", [proxy, safe]))
        self.assertIn("event=open_relay listener=192.0.2.1:2525", r.stderr)
        for quiet in (self.relay_config("0.0.0.0", [safe, proxy]), self.relay_config("127.0.0.1", [proxy]),
                      self.relay_config("::1", [proxy]), self.relay_config("localhost", [proxy]),
                      self.relay_config("0.0.0.0", ["sink"])):
            r = self.check(quiet)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("open_relay", r.stderr)

    def example(self, name, folder, replace):
        with open(os.path.join(harness.SOURCE_DIR, "conf", "examples", name)) as f:
            text = f.read()
        for old, new in replace.items():
            self.assertIn(old, text)
            text = text.replace(old, new)
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write(text)
        return subprocess.run([harness.BIN, "--check-config", "--config", path], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)

    def test_example_configs_are_valid(self):
        folder = tempfile.mkdtemp(prefix="asiosmtpd-examples-")
        self.addCleanup(shutil.rmtree, folder, True)
        cert, key = make_certificate(folder)
        shutil.copy(os.path.join(harness.SOURCE_DIR, "conf", "examples", "senders.map"), folder)
        with open(os.path.join(folder, "users.txt"), "w") as f:
            f.write(f"alice:{crypt_hash('wonderland', '$6$')}\n")
        tls = {"/etc/asiosmtpd/cert.pem": cert, "/etc/asiosmtpd/key.pem": key}
        r = self.example("mx.yaml", folder, {**tls, "/var/mail/asiosmtpd/Maildir": os.path.join(folder, "Maildir")})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK, 2 plugin(s)", r.stdout)
        self.assertNotIn("open_relay", r.stderr)
        r = self.example("submission.yaml", folder, {**tls, "/etc/asiosmtpd/users.txt": "users.txt"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK, 3 plugin(s)", r.stdout)
        self.assertIn("event=sender_login_map file=" + os.path.join(folder, "senders.map") + " entries=4", r.stderr)
        self.assertNotIn("open_relay", r.stderr)


if __name__ == "__main__":
    harness.main()
