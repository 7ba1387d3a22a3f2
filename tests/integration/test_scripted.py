# SPDX-License-Identifier: Apache-2.0
"""The `scripted` test plugin (tests/fixtures/plugins/scripted.cpp), whose behaviour per hook
is its YAML config: rejects with custom text, hooks completed later from another thread,
hooks that never complete (plugin timeout), hooks that throw or answer nonsense, custom
commands and EHLO keywords."""
import os
import signal
import smtplib
import threading
import time
import unittest

import harness
from harness import HOSTNAME, IDENT, ServerTestCase, fixture_plugin, server_config

SCRIPTED = fixture_plugin("scripted")
INTERNAL = "451 4.3.0 Error: internal"


def scripted(config, timeout=None, then_sink=True, **server):
    entry = {"path": SCRIPTED, "config": config}
    if timeout is not None:
        entry["timeout"] = timeout
    return server_config(plugins=[entry] + (["sink"] if then_sink else []), **server)


@unittest.skipUnless(os.path.exists(SCRIPTED), f"{SCRIPTED} is not built")
class ScriptedTest(ServerTestCase):
    def session(self, server):
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    # -- verdicts with custom text --------------------------------------------------------
    def test_mail_reject_custom_text(self):
        server = self.start_server(scripted(
            {"hooks": {"MAIL": {"verdict": "reject", "code": 550, "text": "5.7.1 no thanks, {arg}"}}}))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.mail("a@b.example"), (550, b"5.7.1 no thanks, a@b.example"))
            # The session goes on; nothing was started.
            self.assertEqual(s.rcpt("c@d.example"), (503, b"Error: need MAIL command"))
            self.assertEqual(s.noop(), (250, b"OK"))

    def test_multiline_reply(self):
        server = self.start_server(scripted(
            {"hooks": {"RCPT": {"verdict": "reject", "code": 550, "text": "5.1.1 first line\nsecond line"}}}))
        c = self.session(server)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), ["550-5.1.1 first line", "550 second line"])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_connect_reject_close(self):
        server = self.start_server(scripted(
            {"hooks": {"CONNECT": {"verdict": "reject_close", "code": 554, "text": "5.7.1 go away {arg}"}}}))
        c = self.connect(server)
        self.assertEqual(c.line(), "554 5.7.1 go away 127.0.0.1")
        self.assertEqual(c.expect_eof(timeout=5), b"")

    def test_data_tempfail_with_size(self):
        server = self.start_server(scripted(
            {"hooks": {"DATA": {"verdict": "tempfail", "code": 452, "text": "4.3.1 {size} bytes to {rcpts}"}}}))
        msg = b"Subject: s\r\n\r\nbody\r\n"
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.ehlo("client.example")
            s.mail("a@b.example")
            s.rcpt("c@d.example")
            s.rcpt("e@f.example")
            code, text = s.data(msg)
            self.assertEqual((code, text), (452, f"4.3.1 {len(msg)} bytes to c@d.example,e@f.example".encode()))

    # -- hooks completed from another thread ----------------------------------------------
    def test_rcpt_completed_later_from_another_thread(self):
        server = self.start_server(scripted(
            {"hooks": {"RCPT": {"verdict": "accept", "code": 250, "text": "2.1.5 ok after a while",
                                "delay_ms": 1500, "thread": True}}}))
        slow = self.session(server)
        self.assertEqual(slow.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        started = time.monotonic()
        slow.send("RCPT TO:<c@d.example>\r\n")
        # Meanwhile another session is served at once: the event loop is not blocked.
        other = self.session(server)
        self.assertEqual(other.cmd("NOOP"), ["250 OK"])
        self.assertLess(time.monotonic() - started, 1.2, "another session waited for the suspended hook")
        self.assertEqual(slow.reply(), ["250 2.1.5 ok after a while"])
        self.assertGreaterEqual(time.monotonic() - started, 1.4)
        self.assertEqual(slow.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        slow.send(b"Subject: x\r\n\r\ny\r\n.\r\n")
        self.assertEqual(slow.reply(), ["250 OK"])

    def test_pipelined_commands_wait_for_a_suspended_hook(self):
        server = self.start_server(scripted(
            {"hooks": {"MAIL": {"verdict": "continue", "delay_ms": 300}}}))
        c = self.session(server)
        c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n")
        self.assertEqual([c.line(), c.line(), c.line()], ["250 OK", "250 OK", "250 OK"])

    # -- hooks that misbehave -------------------------------------------------------------
    def test_never_completing_hook_times_out(self):
        server = self.start_server(scripted({"hooks": {"RCPT": {"verdict": "pending_never"}}}, timeout=1))
        c = self.session(server)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        started = time.monotonic()
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), [INTERNAL])
        waited = time.monotonic() - started
        self.assertGreater(waited, 0.5)
        self.assertLess(waited, 5.0)
        # The session continues.
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        self.assertEqual(c.cmd("RSET"), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        self.assertEqual(c.expect_eof(), b"")

    def test_throwing_hook(self):
        server = self.start_server(scripted({"hooks": {"MAIL": {"verdict": "throw"}}}))
        c = self.session(server)
        reply = c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(len(reply), 1, reply)
        self.assertTrue(reply[0].startswith("451 "), reply)
        self.assertEqual(reply, [INTERNAL])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])
        # The server keeps serving other sessions, also at the same time.
        others = [self.session(server) for _ in range(3)]
        for o in others:
            self.assertEqual(o.cmd("NOOP"), ["250 OK"])
            self.assertEqual(o.cmd("MAIL FROM:<x@y.example>"), [INTERNAL])
        self.assertIsNone(server.process.poll(), "the server exited")

    def test_throwing_hook_on_a_worker_thread(self):
        # With a delay the worker drops the suspended call: the host answers 451.
        server = self.start_server(scripted({"hooks": {"RCPT": {"verdict": "throw", "delay_ms": 100}}}))
        c = self.session(server)
        c.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(c.cmd("RCPT TO:<c@d.example>"), [INTERNAL])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_nonsense_verdict(self):
        server = self.start_server(scripted({"hooks": {"MAIL": {"verdict": "nonsense"}}}))
        c = self.session(server)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), [INTERNAL])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_pending_without_suspend(self):
        server = self.start_server(scripted({"hooks": {"MAIL": {"verdict": "pending_no_suspend"}}}, timeout=1))
        c = self.session(server)
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), [INTERNAL])
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def test_many_sessions_with_suspended_hooks(self):
        server = self.start_server(scripted(
            {"hooks": {"RCPT": {"verdict": "accept", "code": 250, "text": "2.1.5 later", "delay_ms": 200}}}))
        errors = []

        def one(n):
            try:
                with smtplib.SMTP(server.host, server.port, timeout=10) as s:
                    s.ehlo(f"c{n}.example")
                    for i in range(3):
                        s.mail("a@b.example")
                        r = s.rcpt(f"r{i}@d.example")
                        if r != (250, b"2.1.5 later"):
                            errors.append(f"session {n}: {r}")
                        s.rset()
            except Exception as e:
                errors.append(f"session {n}: {e!r}")

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(10)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(errors, [])
        # 10 sessions x 3 x 200 ms would be 6 s if the delays were served one at a time.
        self.assertLess(time.monotonic() - started, 4.0)

    # -- suspended hooks versus disconnects and shutdown ------------------------------------
    def test_client_gone_before_the_hook_completes(self):
        server = self.start_server(scripted(
            {"hooks": {"RCPT": {"verdict": "accept", "code": 250, "text": "2.1.5 late", "delay_ms": 500}}}))
        c = self.session(server)
        c.cmd("MAIL FROM:<a@b.example>")
        c.send("RCPT TO:<c@d.example>\r\n")
        time.sleep(0.1)
        c.close()  # the completion arrives for a session that is gone
        time.sleep(0.8)
        other = self.session(server)
        self.assertEqual(other.cmd("NOOP"), ["250 OK"])
        self.assertIsNone(server.process.poll(), "the server exited")

    def test_sigterm_while_a_hook_never_completes(self):
        # A hook stuck for longer than shutdown_grace must not hold the process.
        server = self.start_server(scripted({"hooks": {"RCPT": {"verdict": "pending_never"}}}, timeout=60,
                                            shutdown_grace=1))
        c = self.session(server)
        c.cmd("MAIL FROM:<a@b.example>")
        c.send("RCPT TO:<c@d.example>\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        c.expect_eof(timeout=6)
        rc = server.wait(timeout=6)
        self.assertIsNotNone(rc, "the server did not exit within shutdown_grace (1 s) + 5 s")
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - started, 5.0)

    def test_sigterm_while_a_worker_holds_a_pending_call(self):
        # The plugin's worker thread still holds the suspended call when the server stops:
        # the plugin is destroyed, the pending call is dropped, the process exits cleanly.
        server = self.start_server(scripted(
            {"hooks": {"RCPT": {"verdict": "accept", "code": 250, "delay_ms": 30000}}}, timeout=60,
            shutdown_grace=1))
        c = self.session(server)
        c.cmd("MAIL FROM:<a@b.example>")
        c.send("RCPT TO:<c@d.example>\r\n")
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        c.expect_eof(timeout=6)
        rc = server.wait(timeout=6)
        self.assertIsNotNone(rc, "the server did not exit within shutdown_grace (1 s) + 5 s")
        self.assertEqual(rc, 0)

    # -- commands and keywords ------------------------------------------------------------
    def test_custom_command(self):
        server = self.start_server(scripted({
            "commands": {
                "XECHO": {"verdict": "accept", "code": 250, "text": "echo {arg}", "help": "XECHO text"},
                "XNEED": {"verdict": "accept", "code": 250, "text": "helo was {helo}", "needs_helo": True},
                "XSLOW": {"verdict": "accept", "code": 250, "text": "slow {arg}", "delay_ms": 200},
            },
            "ehlo_keywords": ["XFOO bar"],
        }))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            self.assertEqual(s.docmd("XECHO", "hello world"), (250, b"echo hello world"))
            self.assertEqual(s.docmd("xecho", "lower"), (250, b"echo lower"))
            self.assertEqual(s.docmd("XNEED"), (503, b"Error: send HELO first"))
            code, text = s.ehlo("client.example")
            self.assertEqual(code, 250)
            lines = text.decode().split("\n")
            self.assertIn("XFOO bar", lines)
            self.assertEqual(lines[0], HOSTNAME)
            self.assertEqual(lines[-1], "HELP")
            self.assertEqual(s.docmd("XNEED"), (250, b"helo was client.example"))
            self.assertEqual(s.docmd("XSLOW", "one"), (250, b"slow one"))
            code, text = s.docmd("HELP")
            self.assertEqual(code, 250)
            self.assertIn("XECHO", text.decode().split())
            self.assertEqual(s.docmd("HELP", "XECHO"), (250, b"Syntax: XECHO text"))

    def test_hook_log_lines(self):
        server = self.start_server(scripted({"hooks": {
            "HELO": {"log": "scripted saw helo {arg}"},
            "RCPT": {"log": "scripted saw rcpt {arg} after {mail_from}"},
        }}))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            self.assertEqual(s.helo("client.example")[0], 250)
            s.mail("a@b.example")
            self.assertEqual(s.rcpt("c@d.example"), (250, b"OK"))
        err = server.wait_output(lambda t: "scripted saw rcpt" in t, which="stderr")
        self.assertIn("scripted saw helo client.example", err)
        self.assertIn("scripted saw rcpt c@d.example after a@b.example", err)


if __name__ == "__main__":
    harness.main()
