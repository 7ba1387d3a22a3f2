# SPDX-License-Identifier: Apache-2.0
"""policy plugin: a client of Postfix's SMTP access policy delegation protocol.

Real postgrey (Debian's) greylists end to end: the first attempt is deferred (450 4.2.0), a retry
after the delay is accepted. A small policy server written here answers every action (OK, DUNNO,
REJECT, DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, 4xx/5xx with and without status codes, 421/521,
PREPEND, INFO, WARN, unknown ones) and every fault (server down under each default_action, an
answer slower than the timeout, garbage, no action, a hang-up), over TCP (IPv4, IPv6) and a UNIX
socket; it counts connections, so that reuse (many requests over one connection), reconnecting
after the server closed one, and max_idle are checked too. Every server a test starts it stops."""
import os
import pwd
import grp
import shutil
import smtplib
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, ServerTestCase, run_binary, server_config
from delivery import free_port


def policy_plugin(address, **config):
    config["address"] = address
    return {"name": "policy", "config": config}


class _Handler(socketserver.StreamRequestHandler):
    """Reads requests (name=value lines, then an empty line) and answers each with
    server.answer(attrs): bytes to send, None to hang up, or ("sleep", seconds, bytes)."""

    def handle(self):
        server = self.server
        with server.lock:
            server.connections += 1
            number = server.connections
            server.open += 1
        try:
            while True:
                attrs = {}
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    line = line.rstrip(b"\n").decode("utf-8", "replace")
                    if line == "":
                        break
                    name, _, value = line.partition("=")
                    attrs.setdefault(name, value)
                with server.lock:
                    server.requests.append((number, attrs))
                answer = server.answer(attrs)
                if answer is None:
                    return
                if isinstance(answer, tuple):
                    time.sleep(answer[1])
                    answer = answer[2]
                    if answer is None:
                        return
                close = answer.endswith(b"\0")
                self.wfile.write(answer.rstrip(b"\0"))
                self.wfile.flush()
                if close:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            with server.lock:
                server.open -= 1


# Recipient local part → the raw answer. A trailing NUL (not sent) means "then close".
ANSWERS = {
    "ok": b"action=OK\n\n",
    "dunno": b"action=DUNNO\n\n",
    "reject": b"action=REJECT\n\n",
    "rejecttext": b"action=reject no such user here\n\n",
    "defer": b"action=DEFER\n\n",
    "dip": b"action=DEFER_IF_PERMIT Greylisted, come back later\n\n",
    "dir": b"action=DEFER_IF_REJECT maybe\n\n",
    "c450": b"action=450 4.2.2 mailbox full\n\n",
    "c550": b"action=550 bad sender\n\n",
    "c554": b"action=554 4.7.0 class digit from the code\n\n",
    "c421": b"action=421 4.3.2 shutting down\n\n",
    "c521": b"action=521 go away\n\n",
    "prepend": b"action=PREPEND X-Policy: looked at\n\n",
    "info": b"action=INFO looked at it\n\n",
    "warn": b"action=WARN suspicious\n\n",
    "bogus": b"action=FROBNICATE now\n\n",
    "allnum": b"action=12345\n\n",
    "ctl": b"action=REJECT bad\x01\x7fbytes\n\n",
    "crlf": b"other=1\r\naction=DEFER crlf lines\r\n\r\n",
    "garbage": b"hello world\n\n",
    "noaction": b"foo=bar\n\n",
    "closeafter": b"action=DUNNO\n\n\0",
}


def scripted_answer(attrs):
    rcpt = attrs.get("recipient", "")
    local = rcpt.split("@")[0]
    if local == "stall":
        return ("sleep", 2.5, b"action=REJECT too late\n\n")
    if local == "hangup":
        return None
    return ANSWERS.get(local, b"action=DUNNO\n\n")


class PolicyServer:
    """The scripted policy server on TCP (127.0.0.1 or ::1) or a UNIX socket, in a thread."""

    def __init__(self, answer=scripted_answer, unix_path=None, ipv6=False):
        if unix_path:
            class Srv(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True
            self.server = Srv(unix_path, _Handler)
            self.address = "unix:" + unix_path
        else:
            class Srv(socketserver.ThreadingMixIn, socketserver.TCPServer):
                daemon_threads = True
                allow_reuse_address = True
                address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
            self.server = Srv(("::1" if ipv6 else HOST, 0), _Handler)
            port = self.server.server_address[1]
            self.address = f"inet6:[::1]:{port}" if ipv6 else f"inet:{HOST}:{port}"
        self.server.answer = answer
        self.server.lock = threading.Lock()
        self.server.connections = 0
        self.server.open = 0
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def connections(self):
        return self.server.connections

    @property
    def open_connections(self):
        return self.server.open

    @property
    def requests(self):
        with self.server.lock:
            return list(self.server.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class PolicyTestCase(ServerTestCase):
    def policy_server(self, **kw):
        p = PolicyServer(**kw)
        self.addCleanup(p.stop)
        return p

    def smtp_server(self, policy, store=None, **config):
        """The server with the policy plugin, then sink, or maildir into `store` (a folder)."""
        config.setdefault("timeout", 1)
        after = {"name": "maildir", "config": {"path": store}} if store else "sink"
        return self.start_server(server_config(plugins=[policy_plugin(policy.address if hasattr(policy, "address")
                                                                      else policy, **config), after]))

    def stored(self, store):
        """The messages maildir stored in `store`, oldest first."""
        new = os.path.join(store, "new")
        names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns) if os.path.isdir(new) else []
        out = []
        for n in names:
            with open(os.path.join(new, n), "rb") as f:
                out.append(f.read())
        return out

    def session(self, server, helo="client.example", sender="s@sender.example"):
        c = self.connect(server)
        c.line()
        c.cmd(f"EHLO {helo}")
        self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"), ["250 OK"])
        return c


class ActionTest(PolicyTestCase):
    def test_every_action_over_one_connection(self):
        policy = self.policy_server()
        store = tempfile.mkdtemp(prefix="asiosmtpd-policy-")
        self.addCleanup(shutil.rmtree, store, True)
        server = self.smtp_server(policy, store=store)
        c = self.session(server)
        expected = {
            "ok": "250 OK",
            "dunno": "250 OK",
            "reject": "550 5.7.1 Access denied",
            "rejecttext": "550 5.7.1 no such user here",
            "defer": "450 4.7.1 Access denied",
            "dip": "450 4.7.1 Greylisted, come back later",
            "dir": "250 OK",
            "c450": "450 4.2.2 mailbox full",
            "c550": "550 5.7.1 bad sender",
            "c554": "554 5.7.0 class digit from the code",
            "prepend": "250 OK",
            "info": "250 OK",
            "warn": "250 OK",
            "allnum": "250 OK",
            "ctl": "550 5.7.1 bad??bytes",
            "crlf": "450 4.7.1 crlf lines",
        }
        for local, reply in expected.items():
            with self.subTest(action=local):
                self.assertEqual(c.cmd(f"RCPT TO:<{local}@rcpt.example>"), [reply])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(c.cmd("Subject: x\r\n\r\nhi\r\n."), ["250 OK"])
        c.cmd("QUIT")
        # PREPEND (ABI 1.3 editing): the header tops the stored message.
        [message] = self.stored(store)
        self.assertTrue(message.startswith(b"X-Policy: looked at\n"), message[:200])
        err = server.wait_output(lambda e: "event=policy_warn" in e, which="stderr")
        # One log line per refusing verdict, with the stage and the client.
        self.assertIn("event=policy action=reject stage=rcpt client=127.0.0.1 sender=<s@sender.example> "
                      "rcpt=<reject@rcpt.example> reply=550 5.7.1 Access denied\n", err)
        self.assertIn("event=policy action=defer_if_permit stage=rcpt", err)
        self.assertIn("event=policy action=450 stage=rcpt", err)
        self.assertEqual(err.count("event=policy action="), 9, err)
        self.assertIn('event=policy_info stage=rcpt client=127.0.0.1 sender=<s@sender.example> '
                      'rcpt=<info@rcpt.example> text=looked at it\n', err)
        self.assertIn('event=policy_warn', err)
        # Every request went over the one connection.
        self.assertEqual(policy.connections, 1)
        self.assertEqual(len(policy.requests), len(expected))

    def test_prepend_at_rcpt_and_at_end_of_message_in_order_or_off(self):
        for on in (True, False):
            with self.subTest(prepend=on):
                policy = self.policy_server()
                store = tempfile.mkdtemp(prefix="asiosmtpd-policy-")
                self.addCleanup(shutil.rmtree, store, True)
                server = self.smtp_server(policy, store=store, stages=["rcpt", "data"], prepend=on)
                with smtplib.SMTP(HOST, server.port, timeout=10) as s:
                    s.sendmail("s@sender.example", ["prepend@rcpt.example"], b"Subject: p\r\n\r\nbody\r\n")
                [message] = self.stored(store)
                if on:
                    # The RCPT stage's PREPEND first, the END-OF-MESSAGE one (edited from the
                    # worker thread while the DATA call is suspended) after it.
                    self.assertTrue(message.startswith(b"X-Policy: looked at\nX-Policy: looked at\nSubject: p\n"),
                                    message[:200])
                else:
                    self.assertTrue(message.startswith(b"Subject: p\n"), message[:200])
                    server.wait_output(lambda e: "event=policy_prepend_ignored" in e and "prepend is off" in e,
                                       which="stderr")

    def test_the_request_carries_what_postfix_sends(self):
        policy = self.policy_server()
        server = self.smtp_server(policy, policy_context="mx-in")
        c = self.connect(server)
        c.line()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<s@sender.example> SIZE=1234")
        c.cmd("RCPT TO:<a@rcpt.example>")
        c.cmd("RCPT TO:<b@rcpt.example>")
        c.cmd("RSET")
        c.cmd("MAIL FROM:<>")
        c.cmd("RCPT TO:<c@rcpt.example>")
        reqs = [attrs for _, attrs in policy.requests]
        self.assertEqual(len(reqs), 3)
        first = reqs[0]
        my_port = c.sock.getsockname()[1]
        for name, value in {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
                            "helo_name": "client.example", "sender": "s@sender.example",
                            "recipient": "a@rcpt.example", "recipient_count": "0", "client_address": "127.0.0.1",
                            "client_port": str(my_port), "client_name": "unknown",
                            "reverse_client_name": "unknown", "size": "1234", "etrn_domain": "",
                            "encryption_protocol": "", "encryption_keysize": "0", "sasl_username": "",
                            "policy_context": "mx-in", "server_address": "127.0.0.1",
                            "server_port": str(server.port)}.items():
            self.assertEqual(first.get(name), value, name)
        self.assertEqual(reqs[1]["recipient"], "b@rcpt.example")
        self.assertEqual(reqs[0]["instance"], reqs[1]["instance"])    # one transaction
        self.assertNotEqual(reqs[1]["instance"], reqs[2]["instance"])  # the next one
        self.assertEqual(reqs[2]["sender"], "")                       # the null sender
        self.assertEqual(reqs[2]["size"], "0")

    def test_a_client_on_a_unix_listener_is_localhost(self):
        # As Postfix's smtpd says of a client that is not on the Internet: localhost, 127.0.0.1, 0.
        policy = self.policy_server()
        folder = tempfile.mkdtemp(prefix="asiosmtpd-policy-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "smtp.sock")
        self.start_server(server_config(
            plugins=[policy_plugin(policy.address, timeout=1), "sink"],
            listen=[{"address": HOST, "port": 0}, {"path": path}]))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(harness.IO_TIMEOUT)
        sock.connect(path)
        c = harness.Client.__new__(harness.Client)
        c.sock, c.buf = sock, b""
        self.addCleanup(c.close)
        c.line()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<s@sender.example>")
        self.assertEqual(c.cmd("RCPT TO:<ok@rcpt.example>"), ["250 OK"])
        attrs = policy.requests[-1][1]
        for name, value in {"client_address": "127.0.0.1", "client_port": "0", "client_name": "localhost",
                            "reverse_client_name": "localhost"}.items():
            self.assertEqual(attrs.get(name), value, name)

    def test_421_and_521_close_the_connection(self):
        policy = self.policy_server()
        server = self.smtp_server(policy)
        for local, reply in (("c421", "421 4.3.2 shutting down"), ("c521", "521 5.7.1 go away")):
            with self.subTest(action=local):
                c = self.session(server)
                self.assertEqual(c.cmd(f"RCPT TO:<{local}@rcpt.example>"), [reply])
                self.assertEqual(c.expect_eof(timeout=5), b"")

    def test_other_stages(self):
        def answer(attrs):
            state = attrs["protocol_state"]
            if state == "EHLO" and attrs["helo_name"] == "evil.example":
                return b"action=REJECT go away\n\n"
            if state == "MAIL" and attrs["sender"].startswith("bad@"):
                return b"action=550 5.1.8 sender refused\n\n"
            if state == "END-OF-MESSAGE" and attrs["recipient_count"] == "2":
                return b"action=DEFER_IF_PERMIT 4.7.1 two is too many\n\n"
            if state == "VRFY":
                return b"action=REJECT no VRFY here\n\n"
            return b"action=DUNNO\n\n"
        policy = self.policy_server(answer=answer)
        server = self.smtp_server(policy, stages=["connect", "helo", "mail", "rcpt", "data", "vrfy"])
        c = self.connect(server)
        c.line()
        self.assertEqual(c.cmd("EHLO evil.example"), ["550 5.7.1 go away"])
        self.assertEqual(c.cmd("HELO client.example"), ["250 mx.test.example"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        self.assertEqual(c.cmd("MAIL FROM:<bad@sender.example>"), ["550 5.1.8 sender refused"])
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.example> SIZE=10"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<a@rcpt.example>"), ["250 OK"])
        c.cmd("DATA")
        self.assertEqual(c.cmd("Subject: x\r\n\r\nhello\r\n."), ["250 OK"])
        c.cmd("MAIL FROM:<s@sender.example>")
        c.cmd("RCPT TO:<a@rcpt.example>")
        c.cmd("RCPT TO:<b@rcpt.example>")
        c.cmd("DATA")
        self.assertEqual(c.cmd("Subject: x\r\n\r\nhello\r\n."), ["450 4.7.1 two is too many"])
        self.assertEqual(c.cmd("VRFY someone@rcpt.example"), ["550 5.7.1 no VRFY here"])
        reqs = [attrs for _, attrs in policy.requests]
        states = [r["protocol_state"] for r in reqs]
        self.assertEqual(states, ["CONNECT", "EHLO", "HELO", "EHLO", "MAIL", "MAIL", "RCPT", "END-OF-MESSAGE",
                                  "MAIL", "RCPT", "RCPT", "END-OF-MESSAGE", "VRFY"])
        self.assertEqual([r["protocol_name"] for r in reqs[:4]], ["SMTP", "ESMTP", "SMTP", "ESMTP"])
        self.assertEqual(reqs[2]["helo_name"], "client.example")
        self.assertEqual(reqs[5]["size"], "10")
        eom = reqs[7]
        self.assertEqual((eom["recipient"], eom["recipient_count"], eom["size"]),
                         ("a@rcpt.example", "1", str(len(b"Subject: x\r\n\r\nhello\r\n"))))
        self.assertEqual(eom["recipient_count"], "1")
        self.assertEqual((reqs[11]["recipient"], reqs[11]["recipient_count"]), ("", "2"))  # two: none named
        self.assertEqual(reqs[5]["instance"], eom["instance"])
        self.assertNotEqual(eom["instance"], reqs[8]["instance"])
        self.assertEqual(policy.connections, 1)


class FaultTest(PolicyTestCase):
    def test_server_down_under_each_default_action(self):
        dead = f"inet:{HOST}:{free_port()}"  # nobody listens there
        for default, reply in (("dunno", "250 OK"), ("defer", "451 4.3.5 Server configuration problem"),
                               ("reject", "550 5.7.1 Access denied")):
            with self.subTest(default_action=default):
                server = self.smtp_server(dead, default_action=default)
                c = self.session(server)
                started = time.monotonic()
                self.assertEqual(c.cmd("RCPT TO:<a@rcpt.example>"), [reply])
                self.assertLess(time.monotonic() - started, 2)
                err = server.wait_output(lambda e: "event=policy_error" in e, which="stderr")
                self.assertRegex(err, r"event=policy_error server=inet:127\.0\.0\.1:\d+ stage=rcpt client=127\.0\.0\.1 "
                                      r".* default_action=" + default + r" error=cannot connect to .*Connection refused\n")
                if default != "dunno":
                    self.assertIn(f"event=policy action={default} stage=rcpt", err)
                    self.assertIn("source=default_action", err)

    def test_slow_garbled_and_unknown_answers_take_the_default(self):
        policy = self.policy_server()
        server = self.smtp_server(policy, default_action="defer", timeout=1)
        c = self.session(server)
        deferred = ["451 4.3.5 Server configuration problem"]
        started = time.monotonic()
        self.assertEqual(c.cmd("RCPT TO:<stall@rcpt.example>"), deferred)
        took = time.monotonic() - started
        self.assertGreater(took, 0.9)
        self.assertLess(took, 2.4)  # the answer would come after 2.5 s
        for local in ("garbage", "noaction", "bogus", "hangup"):
            with self.subTest(answer=local):
                self.assertEqual(c.cmd(f"RCPT TO:<{local}@rcpt.example>"), deferred)
                # The next request gets a good answer (on a fresh connection where needed).
                self.assertEqual(c.cmd("RCPT TO:<ok@rcpt.example>"), ["250 OK"])
        err = server.stderr()
        self.assertIn("error=timed out waiting for the answer\n", err)
        self.assertIn("error=garbled answer: a line that is not name=value: hello world\n", err)
        self.assertIn("error=garbled answer: answer without action=\n", err)
        self.assertIn("error=unknown action: FROBNICATE now\n", err)
        self.assertIn("error=the policy server closed the connection without an answer\n", err)
        # A timed-out, garbled or hung-up connection is never reused; a clean one is: stall (1),
        # garbage (2), ok (3, kept), noaction (on 3, dropped), ok (4, kept), bogus and ok (on 4),
        # hangup (on 4, then once more on a fresh connection: 5), ok (6).
        self.assertEqual(policy.connections, 6)


class ConnectionTest(PolicyTestCase):
    def test_requests_of_many_sessions_share_a_connection(self):
        policy = self.policy_server()
        server = self.smtp_server(policy)
        for i in range(4):
            with smtplib.SMTP(HOST, server.port, timeout=10) as s:
                s.ehlo("client.example")
                s.mail("s@sender.example")
                for r in range(3):
                    self.assertEqual(s.rcpt(f"r{r}@rcpt.example")[0], 250)
        self.assertEqual(len(policy.requests), 12)
        self.assertEqual(policy.connections, 1)
        self.assertEqual({n for n, _ in policy.requests}, {1})

    def test_a_connection_the_server_closed_is_replaced(self):
        policy = self.policy_server()
        server = self.smtp_server(policy)
        c = self.session(server)
        self.assertEqual(c.cmd("RCPT TO:<closeafter@rcpt.example>"), ["250 OK"])
        deadline = time.monotonic() + 5
        while policy.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(c.cmd("RCPT TO:<reject@rcpt.example>"), ["550 5.7.1 Access denied"])
        self.assertEqual(policy.connections, 2)

    def test_idle_connections_are_closed_after_max_idle(self):
        policy = self.policy_server()
        server = self.smtp_server(policy, max_idle=0.5)
        c = self.session(server)
        self.assertEqual(c.cmd("RCPT TO:<ok@rcpt.example>"), ["250 OK"])
        self.assertEqual(policy.open_connections, 1)
        deadline = time.monotonic() + 5
        while policy.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(policy.open_connections, 0)  # the plugin closed it
        self.assertEqual(c.cmd("RCPT TO:<reject@rcpt.example>"), ["550 5.7.1 Access denied"])
        self.assertEqual(policy.connections, 2)

    def test_unix_socket_and_ipv6(self):
        folder = tempfile.mkdtemp(prefix="asiosmtpd-policy-")
        self.addCleanup(shutil.rmtree, folder, True)
        servers = [("unix", self.policy_server(unix_path=os.path.join(folder, "policy.sock")))]
        try:
            servers.append(("ipv6", self.policy_server(ipv6=True)))
        except OSError:
            pass  # no IPv6 loopback here
        for name, policy in servers:
            with self.subTest(transport=name):
                server = self.smtp_server(policy)
                c = self.session(server)
                self.assertEqual(c.cmd("RCPT TO:<dip@rcpt.example>"), ["450 4.7.1 Greylisted, come back later"])
                self.assertEqual(c.cmd("RCPT TO:<ok@rcpt.example>"), ["250 OK"])
                self.assertEqual(policy.connections, 1)


class ConfigTest(unittest.TestCase):
    def check_fails(self, config, *words):
        p = run_binary(["--check-config"], server_config(plugins=[{"name": "policy", "config": config}, "sink"]))
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        for w in words:
            self.assertIn(w, p.stderr)

    def test_errors_name_the_key(self):
        self.check_fails({}, "address: required")
        self.check_fails({"address": "127.0.0.1:10023"}, "address:", "unknown kind of address")
        self.check_fails({"address": "inet:policy.example:10023"}, "address:", "must be an IP address")
        self.check_fails({"address": "inet:127.0.0.1:70000"}, "address:", "between 1 and 65535")
        self.check_fails({"address": "inet6:::1:10023"}, "address:", "brackets")
        self.check_fails({"address": "unix:"}, "address:", "no socket path")
        self.check_fails({"address": "inet:127.0.0.1:1", "stages": ["rcpt", "queue"]}, "stages[1]", "unknown stage 'queue'")
        self.check_fails({"address": "inet:127.0.0.1:1", "stages": ["rcpt", "rcpt"]}, "stages[1]", "listed twice")
        self.check_fails({"address": "inet:127.0.0.1:1", "stages": []}, "stages:")
        self.check_fails({"address": "inet:127.0.0.1:1", "timeout": 0}, "timeout:")
        self.check_fails({"address": "inet:127.0.0.1:1", "default_action": "tempfail"}, "default_action:", "tempfail")
        self.check_fails({"address": "inet:127.0.0.1:1", "workers": 0}, "workers:")
        self.check_fails({"address": "inet:127.0.0.1:1", "max_idle": -1}, "max_idle:")
        self.check_fails({"address": "inet:127.0.0.1:1", "color": "red"}, "config.color: unknown key")

    def test_good_addresses(self):
        for address in ("inet:127.0.0.1:10023", "inet:localhost:10023", "inet6:[::1]:10023", "inet:[::1]:1",
                        "unix:/run/postgrey.sock", "unix:relative.sock"):
            with self.subTest(address=address):
                p = run_binary(["--check-config"], server_config(plugins=[policy_plugin(address), "sink"]))
                self.assertEqual(p.returncode, 0, p.stderr)


class Postgrey:
    """Debian's postgrey on a free loopback port, with a private database in a temp folder,
    in the foreground (its log goes to a file); stop() always (SIGTERM, then SIGKILL)."""

    def __init__(self, folder, delay):
        empty = os.path.join(folder, "whitelist")
        open(empty, "w").close()
        dbdir = os.path.join(folder, "db")
        os.mkdir(dbdir)
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        self.log_path = os.path.join(folder, "postgrey.log")
        self.process = None
        for _ in range(5):  # the port is picked before postgrey binds it: retry on a race
            self.port = free_port()
            argv = ["postgrey", f"--inet={HOST}:{self.port}", f"--dbdir={dbdir}", f"--delay={delay}",
                    f"--user={user}", f"--group={group}", f"--whitelist-clients={empty}",
                    f"--whitelist-recipients={empty}"]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                start_new_session=True)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError("postgrey did not start: " + self.log())

    def _wait_ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        harness.stop_process(self.process, 5, group=True)


@unittest.skipUnless(shutil.which("postgrey"), "postgrey is not installed (apt-get install postgrey)")
class PostgreyTest(PolicyTestCase):
    def test_greylisting_end_to_end(self):
        folder = tempfile.mkdtemp(prefix="asiosmtpd-postgrey-")
        self.addCleanup(shutil.rmtree, folder, True)
        delay = 2
        grey = Postgrey(folder, delay)
        self.addCleanup(grey.stop)
        store = os.path.join(folder, "Maildir")
        server = self.smtp_server(f"inet:{HOST}:{grey.port}", store=store, timeout=5)

        def attempt():
            with smtplib.SMTP(HOST, server.port, timeout=10) as s:
                s.ehlo("client.example")
                s.mail("sender@sender.example")
                code, text = s.rcpt("rcpt@rcpt.example")
                if code == 250:
                    self.assertEqual(s.data(b"Subject: greylisted\r\n\r\nhello\r\n")[0], 250)
                return code, text

        code, text = attempt()
        # postgrey counts whole seconds of time.time(): the first attempt was seen at or before
        # this second, so `delay` seconds from now the triplet is surely old enough.
        first_seen = time.time()
        self.assertEqual(code, 450, text)
        self.assertTrue(text.startswith(b"4.2.0 Greylisted, see http://postgrey"), text)
        code, text = attempt()  # too early: still greylisted
        self.assertEqual(code, 450, text)
        time.sleep(max(0.0, first_seen + delay + 0.1 - time.time()))
        code, text = attempt()
        self.assertEqual(code, 250, text)
        self.assertIn("action=greylist, reason=new", grey.log())
        self.assertIn("action=pass, reason=triplet found", grey.log())
        # postgrey's PREPEND tops the message that got through.
        [message] = self.stored(store)
        self.assertRegex(message.split(b"\n", 1)[0], rb"^X-Greylist: delayed \d+ seconds by postgrey")
        err = server.stderr()
        self.assertEqual(err.count("event=policy action=defer_if_permit stage=rcpt client=127.0.0.1 "
                                   "sender=<sender@sender.example> rcpt=<rcpt@rcpt.example> "
                                   "reply=450 4.2.0 Greylisted, see http://postgrey"), 2, err)


if __name__ == "__main__":
    harness.main()
