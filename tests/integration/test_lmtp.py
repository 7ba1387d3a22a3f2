# SPDX-License-Identifier: Apache-2.0
"""LMTP (RFC 2033) listeners: LHLO, one reply per accepted recipient after DATA, and plugins
answering per recipient (RFC 2033 §4.2; aiosmtpd sends a single reply, its issue #517).

A per-recipient reply the host refuses (set_rcpt_reply / set_rcpt_reply_pending answer
E_INVALID: bad index, code or text) follows set_reply()'s rule (plugin.h, plugin-guide.md "When a
plugin misbehaves"): unless a later call for the same recipient succeeds, the DATA hook's verdict
is a plugin error, every recipient is answered 451 4.3.0 (the one DATA reply on SMTP) and the
host logs event=plugin_error; no per-recipient reply of that call reaches the wire."""
import os
import re
import unittest

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config

SCRIPTED = harness.fixture_plugin("scripted")
INTERNAL = "451 4.3.0 Error: internal"


def split(async_=False):
    return {"path": harness.fixture_plugin("lmtp_split"), "config": {"async": async_}}


class LmtpTest(ServerTestCase):
    def lmtp(self, plugins):
        return self.start_server(server_config(plugins=plugins,
                                               listen=[{"address": HOST, "port": 0, "protocol": "lmtp"}]))

    def transaction(self, server, rcpts):
        c = self.connect(server)
        self.assertEqual(c.line(), f"220 {HOSTNAME} {IDENT}")
        self.assertEqual(c.cmd("LHLO client.example")[0], f"250-{HOSTNAME}")
        self.assertEqual(c.cmd("HELO x"), ['500 Error: command "HELO" not recognized'])
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        for r in rcpts:
            self.assertEqual(c.cmd(f"RCPT TO:<{r}>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send("Subject: lmtp\r\n\r\nhello\r\n.\r\n")
        return [c.line() for _ in rcpts]

    def test_one_reply_per_recipient(self):
        server = self.lmtp(["sink"])
        self.assertEqual(self.transaction(server, ["one@x.example", "two@x.example", "three@x.example"]),
                         ["250 OK"] * 3)

    def test_a_plugin_refusing_one_of_three(self):
        for async_ in (False, True):
            with self.subTest(async_=async_):
                server = self.lmtp([split(async_)])
                replies = self.transaction(server, ["good@x.example", "bad@x.example", "later@x.example"])
                self.assertEqual(replies, ["250 OK",
                                           "550 5.1.1 <bad@x.example> no such user",
                                           "452 4.2.2 <later@x.example> mailbox full"])
                server.wait_output(lambda e: "event=message" in e and "result=250" in e, which="stderr")


def scripted_data(**data):
    """The scripted fixture with this DATA hook spec."""
    return {"path": SCRIPTED, "config": {"hooks": {"DATA": data}}}


def data_errors(err):
    return re.findall(r'event=plugin_error plugin=scripted key=plugins\[0\] hook=DATA reason="([^"]*)"', err)


RCPTS = ["one@x.example", "two@x.example", "three@x.example"]


@unittest.skipUnless(os.path.exists(SCRIPTED), f"{SCRIPTED} is not built")
class RefusedRecipientReplyTest(ServerTestCase):
    lmtp = LmtpTest.lmtp

    def check_after(self, c):
        """The session goes on, and nothing else was sent (no smuggled line before the NOOP)."""
        self.assertEqual(c.cmd("NOOP"), ["250 OK"])

    def lmtp_case(self, spec, expected, reason=None, *plugin_logs):
        server = self.lmtp([scripted_data(**spec)])
        c = self.connect(server)
        self.assertEqual(c.line(), f"220 {HOSTNAME} {IDENT}")
        self.assertEqual(c.cmd("LHLO client.example")[0], f"250-{HOSTNAME}")
        self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
        for r in RCPTS:
            self.assertEqual(c.cmd(f"RCPT TO:<{r}>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        c.send("Subject: lmtp\r\n\r\nhello\r\n.\r\n")
        self.assertEqual([c.line() for _ in RCPTS], expected)
        self.check_after(c)
        if reason is None:
            err = server.wait_output(lambda e: "event=message" in e, which="stderr")
            self.assertEqual(data_errors(err), [])
        else:
            err = server.wait_output(lambda e: "event=plugin_error" in e and all(p in e for p in plugin_logs),
                                     which="stderr")
            self.assertEqual(data_errors(err), [reason])

    def test_a_refused_text_costs_every_recipient_451(self):
        """Recipient 1's reply would smuggle a line: refused, so the whole DATA is a plugin
        error; recipient 0's accepted reply does not go out either."""
        replies = [{"index": 0, "code": 250, "text": "2.0.0 first ok"},
                   {"index": 1, "code": 550, "text": "5.1.1 no{cr}{lf}250 2.0.0 smuggled"}]
        for thread, origin in ((False, "set_rcpt_reply"), (True, "set_rcpt_reply_pending")):
            with self.subTest(thread=thread):
                self.lmtp_case({"verdict": "accept", "thread": thread, "rcpt_replies": replies}, [INTERNAL] * 3,
                               f"{origin}() refused: recipient 1: reply text has CR at byte 8",
                               f"scripted: DATA: {origin}(1) returned E_INVALID")

    def test_a_refused_code_or_index(self):
        cases = {
            "code": ({"index": 2, "code": 199, "text": "x"}, "recipient 2: reply code 199 is outside 200..599"),
            "LF": ({"index": 0, "code": 550, "text": "a{lf}b"}, "recipient 0: reply text has LF at byte 1 (one line only)"),
            "index": ({"index": 3, "code": 550, "text": "5.1.1 x"}, "recipient 3: the transaction has 3 recipients"),
        }
        for name, (reply, reason) in cases.items():
            for thread, origin in ((False, "set_rcpt_reply"), (True, "set_rcpt_reply_pending")):
                with self.subTest(case=name, thread=thread):
                    self.lmtp_case({"verdict": "accept", "thread": thread, "rcpt_replies": [reply]}, [INTERNAL] * 3,
                                   f"{origin}() refused: {reason}",
                                   f"scripted: DATA: {origin}({reply['index']}) returned E_INVALID")

    def test_a_refusal_replaced_for_the_same_recipient_is_forgotten(self):
        """As with set_reply(): a later accepted reply for that recipient replaces the refused
        one (a plugin relaying foreign text may fall back to its own)."""
        replies = [{"index": 1, "code": 550, "text": "5.1.1 {cr}"},
                   {"index": 1, "code": 550, "text": "5.1.1 replaced"}]
        for thread in (False, True):
            with self.subTest(thread=thread):
                self.lmtp_case({"verdict": "accept", "thread": thread, "rcpt_replies": replies},
                               ["250 OK", "550 5.1.1 replaced", "250 OK"])

    def test_a_plugin_error_drops_the_accepted_replies(self):
        """Any plugin error in DATA (here a refused set_reply / complete) answers every recipient
        451 4.3.0: per-recipient replies given before it do not go out."""
        replies = [{"index": 0, "code": 550, "text": "5.1.1 gone"}]
        for thread, reason in ((False, "set_reply() refused: reply code 600 is outside 200..599"),
                               (True, "complete() refused: reply code 600 is outside 200..599")):
            with self.subTest(thread=thread):
                self.lmtp_case({"verdict": "accept", "code": 600, "text": "x", "thread": thread,
                                "rcpt_replies": replies}, [INTERNAL] * 3, reason)

    def test_replies_given_before_suspend(self):
        """Given in the hook before it suspends: kept for the completion, and a refused one
        makes the completion a plugin error (the worker's complete() is what ends the call)."""
        good = [{"index": 2, "code": 452, "text": "4.2.2 full"}]
        self.lmtp_case({"verdict": "accept", "thread": True, "rcpt_replies_in_hook": True, "rcpt_replies": good},
                       ["250 OK", "250 OK", "452 4.2.2 full"])
        bad = [{"index": 2, "code": 452, "text": "4.2.2 {cr}"}]
        # The worker's complete() is what ends the call as the plugin error: E_INVALID.
        self.lmtp_case({"verdict": "accept", "thread": True, "rcpt_replies_in_hook": True, "rcpt_replies": bad},
                       [INTERNAL] * 3, "set_rcpt_reply() refused: recipient 2: reply text has CR at byte 6",
                       "scripted: DATA: set_rcpt_reply(2) returned E_INVALID",
                       "scripted: DATA: complete() returned E_INVALID")

    def test_smtp_answers_the_data_with_451(self):
        """On SMTP the per-recipient replies are not used, but a refused one is the same plugin
        error: the one DATA reply is 451 4.3.0 (not the verdict's 250)."""
        replies = [{"index": 0, "code": 550, "text": "5.1.1 no{nul}"}]
        for thread, origin in ((False, "set_rcpt_reply"), (True, "set_rcpt_reply_pending")):
            with self.subTest(thread=thread):
                server = self.start_server(server_config(plugins=[scripted_data(verdict="accept", thread=thread,
                                                                                rcpt_replies=replies)]))
                c = self.connect(server)
                self.assertEqual(c.line(), f"220 {HOSTNAME} {IDENT}")
                self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
                self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 OK"])
                self.assertEqual(c.cmd("RCPT TO:<one@x.example>"), ["250 OK"])
                self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
                self.assertEqual(c.cmd("hello\r\n."), [INTERNAL])
                self.check_after(c)
                err = server.wait_output(lambda e: "event=plugin_error" in e, which="stderr")
                self.assertEqual(data_errors(err),
                                 [f"{origin}() refused: recipient 0: reply text has control byte 0x00 at byte 8"])


if __name__ == "__main__":
    harness.main()
