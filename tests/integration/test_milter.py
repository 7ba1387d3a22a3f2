# SPDX-License-Identifier: Apache-2.0
"""milter plugin: every milter action against a real libmilter milter (milter_actions.py, written
with Debian's python3-milter) and shown on the mail the maildir plugin after it stores; what the
milter is told (connect, HELO, MAIL with its parameters, RCPT, macros, headers, the body in
chunks); and the faults with a scripted fake milter on 127.0.0.1: down (each default_action),
garbage, stalls past connect_timeout / command_timeout / content_timeout, death mid-message, the
server's own plugin timeout shorter than the milter's. The server always lives on, and nothing
is acknowledged that was not stored. Config errors name their key."""
import json
import os
import shutil
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, HOSTNAME, ServerTestCase, server_config
from delivery import maildir_files

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"


def have_pymilter():
    return subprocess.run([PYTHON, "-c", "import Milter"], capture_output=True).returncode == 0


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class PyMilter:
    """milter_actions.py on a private UNIX socket; stopped (SIGTERM, then SIGKILL) by stop()."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="asiosmtpd-milter-")
        self.socket = os.path.join(self.tmp, "m.sock")
        self.log = os.path.join(self.tmp, "m.log")
        open(self.log, "w").close()
        self.err = open(os.path.join(self.tmp, "stderr"), "wb")
        self.proc = subprocess.Popen([PYTHON, os.path.join(HERE, "milter_actions.py"), "unix:" + self.socket, self.log],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err,
                                     start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(self.socket) or self.proc.poll() is not None, what="the test milter")
            if self.proc.poll() is not None:
                raise RuntimeError("the test milter did not start: " + self.stderr())
        except BaseException:
            self.stop()
            raise

    def stderr(self):
        with open(os.path.join(self.tmp, "stderr"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def records(self):
        with open(self.log, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def clear(self):
        open(self.log, "w").close()

    def stop(self):
        harness.stop_process(self.proc, 2)  # libmilter may take seconds: then SIGKILL
        self.err.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class FakeMilter:
    """A scripted milter on 127.0.0.1: negotiates (all steps, all replies) and continues, but
    `mode` 'garbage' answers the negotiation with junk, 'stall' stops answering at command `at`
    (and holds the connection), 'die' closes the connection at command `at`, 'listen_full' never
    accepts (a backlog of one, filled: connects hang). Commands: 'C' connect, 'H' helo, 'M', 'R',
    'T' data, 'L' header, 'N' end of headers, 'B' body, 'E' end of message."""

    def __init__(self, mode="ok", at=None):
        self.mode, self.at = mode, at
        self.commands = []
        self.lock = threading.Lock()
        self.stopping = False
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.conns = []
        if mode == "listen_full":
            self.listener.listen(0)
            # Fill the accept queue (Linux keeps backlog + 1): further SYNs are dropped.
            for _ in range(3):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect((HOST, self.port))
                except BlockingIOError:
                    pass
                self.conns.append(s)
            time.sleep(0.2)
            self.thread = None
            return
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"inet:{HOST}:{self.port}"

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _recv_exact(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _send(self, conn, cmd, data=b""):
        conn.sendall(struct.pack("!I", len(data) + 1) + cmd + data)

    def _handle(self, conn):
        conn.settimeout(60)
        try:
            while not self.stopping:
                length = struct.unpack("!I", self._recv_exact(conn, 4))[0]
                packet = self._recv_exact(conn, length)
                cmd, data = packet[:1], packet[1:]
                with self.lock:
                    self.commands.append(cmd.decode())
                if cmd == b"O":
                    if self.mode == "garbage":
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        continue
                    self._send(conn, b"O", struct.pack("!III", 6, 0, 0))
                    continue
                if cmd in (b"D", b"A"):
                    continue
                if cmd == b"Q":
                    break
                if cmd.decode() == self.at:
                    if self.mode == "die":
                        break
                    if self.mode == "stall":
                        while not self.stopping and conn.recv(65536):
                            pass
                        break
                self._send(conn, b"c")
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def seen(self):
        with self.lock:
            return list(self.commands)

    def stop(self):
        self.stopping = True
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.listener.close()
        if self.thread:
            self.thread.join(timeout=5)


MESSAGE = b"Subject: hello\r\nFrom: a@example.org\r\nTo: b@example.org\r\n\r\nThe body.\r\n"


class MilterCase(ServerTestCase):
    def milter_server(self, address, maildir=True, timeout=30, server=None, **config):
        cfg = {"address": address}
        cfg.update(config)
        self.maildir = tempfile.mkdtemp(prefix="asiosmtpd-milter-md-")
        self.addCleanup(shutil.rmtree, self.maildir, True)
        plugins = [{"name": "milter", "timeout": timeout, "config": cfg}]
        plugins.append({"name": "maildir", "config": {"path": self.maildir}} if maildir else "sink")
        return self.start_server(server_config(plugins=plugins, **(server or {})), log_level="debug")

    def stored(self):
        return list(maildir_files(self.maildir).values())

    def send(self, server, sender="a@example.org", rcpts=("b@example.org",), msg=MESSAGE):
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("client.example")
            return s.sendmail(sender, list(rcpts), msg)


@unittest.skipUnless(have_pymilter(), "python3-milter (pymilter) is not installed")
class ActionsTest(MilterCase):
    """Every reply and modification of a libmilter milter, shown on the stored mail."""

    @classmethod
    def setUpClass(cls):
        cls.milter = PyMilter()

    @classmethod
    def tearDownClass(cls):
        cls.milter.stop()

    def setUp(self):
        self.milter.clear()
        self.server = self.milter_server("unix:" + self.milter.socket, command_timeout=10, content_timeout=10)

    def test_xclient_and_unix_socket_clients(self):
        # XCLIENT: the milter sees the session end and a new connection from the named client
        # (Postfix sends its milters the same); a UNIX socket client is family UNIX, "localhost".
        sock = os.path.join(self.maildir, "smtp.sock")
        server = self.milter_server("unix:" + self.milter.socket, command_timeout=10, content_timeout=10,
                                    server={"xclient_networks": ["127.0.0.1"],
                                            "listen": [{"address": HOST, "port": 0}, {"path": sock}]})
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("proxy.example")
            self.assertEqual(s.docmd("XCLIENT", "ADDR=192.0.2.7 PORT=4242")[0], 220)
            s.ehlo("client.example")
            s.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(10)
        c.connect(sock)
        c.recv(100)
        c.sendall(b"QUIT\r\n")
        c.recv(100)
        c.close()
        wait_for(lambda: sum(r["event"] == "connect" for r in self.milter.records()) >= 3, what="three connects")
        conns = [r for r in self.milter.records() if r["event"] == "connect"]
        self.assertEqual(conns[0]["addr"][0], "127.0.0.1")
        self.assertEqual((conns[1]["hostname"], conns[1]["addr"]), ("[192.0.2.7]", ["192.0.2.7", 4242]))
        self.assertEqual(conns[2]["hostname"], "localhost")
        self.assertEqual("".join(conns[2]["addr"]), sock)  # the recorder lists the path string

    def subject(self, words, body=b"The body.\r\n", extra=b""):
        return b"Subject: " + words.encode() + b"\r\n" + extra + b"From: a@example.org\r\n\r\n" + body

    def test_connect_helo_mail_rcpt_and_macros(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=30) as s:
            s.ehlo("client.example")
            s.sendmail("a@example.org", ["b@example.org", "c@example.net"], MESSAGE)
            s.sendmail("d@example.org", ["e@example.org"], MESSAGE)
        wait_for(lambda: sum(r["event"] == "eom" for r in self.milter.records()) == 2, what="two messages")
        recs = self.milter.records()
        conn = next(r for r in recs if r["event"] == "connect")
        self.assertEqual(conn["hostname"], "[127.0.0.1]")
        self.assertEqual(conn["addr"][0], "127.0.0.1")
        self.assertTrue(conn["macros"]["j"])
        self.assertEqual(conn["macros"]["{daemon_name}"], conn["macros"]["j"])
        self.assertEqual(conn["macros"]["_"], "unknown [127.0.0.1]")
        self.assertTrue(conn["macros"]["v"].startswith("asiosmtpd "))
        self.assertEqual(conn["macros"]["{daemon_addr}"], "127.0.0.1")
        helo = next(r for r in recs if r["event"] == "helo")
        self.assertEqual(helo["name"], "client.example")
        mails = [r for r in recs if r["event"] == "mail"]
        self.assertEqual([m["sender"] for m in mails], ["<a@example.org>", "<d@example.org>"])
        self.assertIn("SIZE=%d" % len(MESSAGE), mails[0]["params"])
        self.assertEqual(mails[0]["macros"]["{mail_addr}"], "a@example.org")
        rcpts = [r for r in recs if r["event"] == "rcpt"]
        self.assertEqual([r["rcpt"] for r in rcpts], ["<b@example.org>", "<c@example.net>", "<e@example.org>"])
        self.assertEqual(rcpts[1]["macros"]["{rcpt_addr}"], "c@example.net")
        self.assertEqual(rcpts[1]["macros"]["{rcpt_host}"], "example.net")
        # One queue id per transaction, the same at every stage of it.
        eoms = [r for r in recs if r["event"] == "eom"]
        self.assertEqual(mails[0]["macros"]["i"], eoms[0]["macros"]["i"])
        self.assertNotEqual(mails[0]["macros"]["i"], mails[1]["macros"]["i"])
        eoh = next(r for r in recs if r["event"] == "eoh")
        self.assertEqual(eoh["headers"], [["Subject", "hello"], ["From", "a@example.org"], ["To", "b@example.org"]])
        self.assertEqual(eoms[0]["body"], "The body.\r\n")
        self.assertEqual(len(self.stored()), 2)

    def test_folded_header_and_big_body_in_chunks(self):
        body = b"".join(b"line %06d of a long body, padded to be longer than usual..........\r\n" % i
                        for i in range(5000))
        msg = self.subject("big", body=body, extra=b"X-Folded: first\r\n\tsecond\r\n")
        self.send(self.server, msg=msg)
        wait_for(lambda: any(r["event"] == "eom" for r in self.milter.records()))
        recs = self.milter.records()
        eom = next(r for r in recs if r["event"] == "eom")
        self.assertEqual(eom["body_size"], len(body))
        self.assertEqual(eom["chunks"], (len(body) + 65534) // 65535)
        eoh = next(r for r in recs if r["event"] == "eoh")
        self.assertIn(["X-Folded", "first\n\tsecond"], eoh["headers"])
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored[0].endswith(body.replace(b"\r\n", b"\n")))

    def test_reject_and_replycode_for_a_sender(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("reject-mail@example.org"), (550, b"5.7.1 Command rejected"))
            self.assertEqual(s.mail("replycode-mail@example.org"), (553, b"5.1.8 Sender domain refused by policy"))
            self.assertEqual(s.mail("fine@example.org")[0], 250)
        self.server.wait_output(lambda e: "event=milter action=reject stage=mail client=127.0.0.1" in e, "stderr")

    def test_tempfail_and_reject_recipients(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.org")[0], 250)
            self.assertEqual(s.rcpt("tempfail@example.org"), (451, b"4.7.1 Service unavailable - try again later"))
            self.assertEqual(s.rcpt("unknown@example.org"), (550, b"5.1.1 No such user here"))
            self.assertEqual(s.rcpt("b@example.org")[0], 250)
            self.assertEqual(s.data(MESSAGE)[0], 250)
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertIn(b"X-RcptTo: b@example.org\n", stored[0])
        self.server.wait_output(lambda e: "event=milter action=tempfail stage=rcpt" in e, "stderr")

    def test_header_changes(self):
        msg = self.subject("edit-headers", extra=b"X-Change: old\r\nX-Delete: gone\r\nX-Twice: one\r\nX-Twice: two\r\n")
        self.send(self.server, msg=msg)
        stored = self.stored()[0]
        head = stored.split(b"\n\n", 1)[0].split(b"\n")
        self.assertEqual(head[0], b"X-Inserted: inserted at the top")
        self.assertIn(b"X-Change: changed value", head)
        self.assertNotIn(b"X-Change: old", head)
        self.assertFalse(any(h.startswith(b"X-Delete") for h in head))
        self.assertEqual([h for h in head if h.startswith(b"X-Twice")], [b"X-Twice: one", b"X-Twice: second changed"])
        # Added after the message's last header (the maildir's own X- lines come after it).
        self.assertTrue(head[head.index(b"X-Added: added at the end") + 1].startswith(b"X-Peer: "))

    def test_replace_body(self):
        self.send(self.server, msg=self.subject("replace-body"))
        stored = self.stored()[0]
        self.assertTrue(stored.endswith(b"\n\nThe body was replaced.\nSecond piece of the new body.\n"), stored)

    def test_add_and_delete_recipients_and_change_sender(self):
        self.send(self.server, rcpts=("b@example.org", "removed@example.org"), msg=self.subject("rcpts chgfrom"))
        stored = self.stored()[0]
        self.assertIn(b"X-RcptTo: b@example.org, added@example.org, added-par@example.org\n", stored)
        self.assertIn(b"X-MailFrom: changed@example.org\n", stored)

    def test_discard_at_end_of_message_and_at_mail(self):
        self.assertEqual(self.send(self.server, msg=self.subject("discard")), {})
        self.assertEqual(self.send(self.server, sender="discard-mail@example.org"), {})
        self.assertEqual(self.stored(), [])
        self.server.wait_output(lambda e: e.count("event=milter action=discard") == 2, "stderr")

    def test_accept_at_mail_sends_nothing_more(self):
        self.send(self.server, sender="accept-mail@example.org", msg=self.subject("edit-headers reject"))
        stored = self.stored()
        self.assertEqual(len(stored), 1)
        self.assertNotIn(b"X-Added", stored[0])
        self.assertFalse([r for r in self.milter.records() if r["event"] in ("rcpt", "eoh", "eom")])

    def test_multiline_reply(self):
        with harness.Client(self.server.host, self.server.port) as c:
            c.line()
            c.cmd("EHLO client.example")
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>")[0][:3], "250")
            self.assertEqual(c.cmd("RCPT TO:<b@example.org>")[0][:3], "250")
            self.assertEqual(c.cmd("DATA")[0][:3], "354")
            c.send(self.subject("multiline") + b".\r\n")
            self.assertEqual(c.reply(), ["550-5.7.1 Message refused", "550-5.7.1 by the test milter",
                                         "550 5.7.1 on three lines"])
        self.assertEqual(self.stored(), [])

    def test_tempfail_and_reject_at_end_of_message(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=30) as s:
            s.ehlo("client.example")
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@example.org", ["b@example.org"], self.subject("tempfail"))
            self.assertEqual((e.exception.smtp_code, e.exception.smtp_error),
                             (451, b"4.7.1 Service unavailable - try again later"))
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@example.org", ["b@example.org"], self.subject("reject"))
            self.assertEqual((e.exception.smtp_code, e.exception.smtp_error), (550, b"5.7.1 Command rejected"))
        self.assertEqual(self.stored(), [])
        self.server.wait_output(lambda e: "event=milter action=reject stage=end_of_data" in e, "stderr")

    def test_quarantine_is_a_header_and_a_log_line(self):
        self.send(self.server, msg=self.subject("quarantine"))
        self.assertIn(b"X-Quarantine: held for review\n", self.stored()[0])
        self.server.wait_output(lambda e: "event=milter action=quarantine" in e, "stderr")

    def test_skip_stops_the_body(self):
        body = (b"x" * 70 + b"\r\n") * 3000
        self.send(self.server, msg=self.subject("skip", body=body))
        eom = next(r for r in self.milter.records() if r["event"] == "eom")
        self.assertEqual(eom["chunks"], 1)
        self.assertEqual(len(self.stored()), 1)

    def test_rset_aborts_and_a_new_transaction_starts(self):
        with smtplib.SMTP(self.server.host, self.server.port, timeout=30) as s:
            s.ehlo("client.example")
            s.mail("a@example.org")
            s.rcpt("b@example.org")
            s.rset()
            s.sendmail("c@example.org", ["d@example.org"], MESSAGE)
        wait_for(lambda: any(r["event"] == "eom" for r in self.milter.records()))
        events = [r["event"] for r in self.milter.records()]
        self.assertEqual(events[events.index("mail"):events.index("eom") + 1],
                         ["mail", "rcpt", "abort", "mail", "rcpt", "data", "eoh", "eom"])
        self.assertEqual(len(self.stored()), 1)

    def test_progress_keeps_the_exchange_alive(self):
        server = self.milter_server("unix:" + self.milter.socket, content_timeout=1)
        self.send(server, msg=self.subject("progress"))
        self.assertEqual(len(self.stored()), 1)

    def test_slow_milter_past_content_timeout(self):
        server = self.milter_server("unix:" + self.milter.socket, content_timeout=1)
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.send(server, msg=self.subject("slow"))
        self.assertEqual(e.exception.smtp_code, 451)
        self.assertEqual(self.stored(), [])
        server.wait_output(lambda e: "event=milter action=failure stage=end_of_data" in e and "timed out" in e, "stderr")


class FaultsTest(MilterCase):
    """The milter down, confused, slow or dying: default_action decides, the server lives, and no
    message is acknowledged unless stored."""

    def fake(self, mode="ok", at=None):
        f = FakeMilter(mode, at)
        self.addCleanup(f.stop)
        return f

    def closed_port(self):
        s = socket.socket()
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        return f"inet:{HOST}:{port}"

    def test_down_tempfail(self):
        server = self.milter_server(self.closed_port())
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            self.assertEqual(s.ehlo("client.example")[0], 250)
            self.assertEqual(s.mail("a@example.org"), (451, b"4.7.1 Service unavailable - try again later"))
        server.wait_output(lambda e: "event=milter action=failure stage=connect" in e and "default_action=tempfail" in e,
                           "stderr")

    def test_down_accept(self):
        server = self.milter_server(self.closed_port(), default_action="accept")
        self.assertEqual(self.send(server), {})
        self.assertEqual(len(self.stored()), 1)

    def test_down_reject(self):
        server = self.milter_server(self.closed_port(), default_action="reject", hostname=HOSTNAME)
        with harness.Client(server.host, server.port) as c:
            self.assertEqual(c.line(), f"554 {HOSTNAME} ESMTP not accepting connections")
            self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_down_reject_with_a_milter_down_later(self):
        # The milter answers the connection, then dies at MAIL: the rest of the session is refused.
        f = self.fake("die", "M")
        server = self.milter_server(f.address, default_action="reject")
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.org"), (550, b"5.5.0 Service unavailable"))
            self.assertEqual(s.mail("a@example.org"), (550, b"5.5.0 Service unavailable"))

    def test_garbage(self):
        f = self.fake("garbage")
        server = self.milter_server(f.address)
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.org")[0], 451)
        server.wait_output(lambda e: "event=milter action=failure" in e, "stderr")

    def test_connect_timeout(self):
        f = self.fake("listen_full")
        server = self.milter_server(f.address, connect_timeout=1)
        t0 = time.monotonic()
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.org")[0], 451)
        self.assertLess(time.monotonic() - t0, 8)
        server.wait_output(lambda e: "connect timed out" in e, "stderr")

    def test_stall_past_command_timeout(self):
        f = self.fake("stall", "R")
        server = self.milter_server(f.address, command_timeout=1)
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@example.org")[0], 250)
            t0 = time.monotonic()
            self.assertEqual(s.rcpt("b@example.org"), (451, b"4.7.1 Service unavailable - try again later"))
            self.assertLess(time.monotonic() - t0, 5)
            self.assertEqual(s.rcpt("c@example.org")[0], 451)  # the milter is out for this session
        # The server lives: the next session gets as far as the milter lets it.
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            self.assertEqual(s.ehlo("client.example")[0], 250)
            self.assertEqual(s.mail("a@example.org")[0], 250)
        self.assertEqual(self.stored(), [])

    def test_stall_past_content_timeout_in_the_body_and_at_the_end(self):
        for at in ("B", "E", "L"):
            with self.subTest(at=at):
                f = self.fake("stall", at)
                server = self.milter_server(f.address, content_timeout=1)
                with self.assertRaises(smtplib.SMTPDataError) as e:
                    self.send(server)
                self.assertEqual(e.exception.smtp_code, 451)
                self.assertEqual(self.stored(), [])
                server.stop()

    def test_dies_mid_message(self):
        for action, code in (("tempfail", 451), ("reject", 550), ("accept", 250)):
            with self.subTest(default_action=action):
                f = self.fake("die", "B")
                server = self.milter_server(f.address, default_action=action)
                body = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 4000
                if code == 250:
                    self.assertEqual(self.send(server, msg=body), {})
                    self.assertEqual(len(self.stored()), 1)
                else:
                    with self.assertRaises(smtplib.SMTPDataError) as e:
                        self.send(server, msg=body)
                    self.assertEqual(e.exception.smtp_code, code)
                    self.assertEqual(self.stored(), [])
                self.assertIn("B", f.seen())
                server.stop()

    def test_server_timeout_shorter_than_the_milters(self):
        f = self.fake("stall", "E")
        server = self.milter_server(f.address, timeout=1, content_timeout=20)
        with smtplib.SMTP(server.host, server.port, timeout=30) as s:
            s.ehlo("client.example")
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@example.org", ["b@example.org"], MESSAGE)
            self.assertEqual(e.exception.smtp_code, 451)
            # The exchange still runs: the milter counts as failed (default_action).
            self.assertEqual(s.mail("a@example.org")[0], 451)
        self.assertEqual(self.stored(), [])

    def test_all_stages_reach_the_fake_milter(self):
        f = self.fake()
        server = self.milter_server(f.address)
        self.send(server)
        wait_for(lambda: "Q" in f.seen(), what="QUIT")
        seen = "".join(c for c in f.seen() if c != "D")
        self.assertEqual(seen, "OCHMRTLLLNBEAQ")
        self.assertEqual(len(self.stored()), 1)


class ConfigTest(unittest.TestCase):
    def check(self, config):
        cfg = server_config(plugins=[{"name": "milter", "config": config}])
        return harness.run_binary(["--check-config"], config=cfg)

    def test_errors_name_the_key(self):
        cases = [
            ({}, "address: required"),
            ({"address": "tcp:1.2.3.4:5"}, "address: "),
            ({"address": "inet:127.0.0.1"}, "address: "),
            ({"address": "inet:127.0.0.1:70000"}, "address: "),
            ({"address": "inet:127.0.0.1:8891", "default_action": "quarantine"}, "default_action: "),
            ({"address": "inet:127.0.0.1:8891", "command_timeout": 0}, "command_timeout: "),
            ({"address": "inet:127.0.0.1:8891", "content_timeout": "x"}, "content_timeout: "),
            ({"address": "inet:127.0.0.1:8891", "macros": {"body": ["i"]}}, "config.macros.body: unknown key"),
            ({"address": "inet:127.0.0.1:8891", "bogus": 1}, "config.bogus: unknown key"),
        ]
        for config, expected in cases:
            with self.subTest(config=config):
                r = self.check(config)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn(expected, r.stdout + r.stderr)

    def test_valid_addresses(self):
        for address in ("inet:127.0.0.1:8891", "inet:localhost:8891", "inet:8891@127.0.0.1", "inet6:[::1]:8891",
                        "inet6:::1:8891", "unix:/run/milter.sock", "unix:milter.sock"):
            with self.subTest(address=address):
                r = self.check({"address": address, "macros": {"mail": "i {mail_addr}", "rcpt": ["{rcpt_addr}"]}})
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    harness.main()
