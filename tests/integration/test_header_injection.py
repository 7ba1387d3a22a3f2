# SPDX-License-Identifier: Apache-2.0
"""Header injection through the envelope: control characters (CR, NUL, DEL, TAB, ...) inside a
MAIL/RCPT/VRFY address or an ESMTP parameter, sent over a raw socket to a server with the maildir
plugin. Each is refused (553 for an address, 501 for a parameter, 502 for VRFY) and nothing is
delivered, however the client goes on with the transaction; a normal message still is.

Before the fix, MAIL FROM:<"x\\rX-RcptTo: ceo@corp.example\\rX-Foo: "@b.example> got 250 and the
Maildir file's X-MailFrom header carried the CRs: Python's email parser then read a forged
X-RcptTo: ceo@corp.example before the real one."""
import os
import smtplib
import tempfile

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config
from delivery import maildir_files, rmtree

GREETING = f"220 {HOSTNAME} {IDENT}"
MALFORMED = "553 5.1.3 Error: malformed address"
SYNTAX_MAIL = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
SYNTAX_RCPT = "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
MESSAGE = b"Subject: injected?\r\n\r\nbody\r\n.\r\n"

# (name, MAIL line, RCPT lines, expected replies to MAIL then each RCPT)
ATTACKS = [
    ("mail_cr_forged_rcpt_to",
     b'MAIL FROM:<"x\rX-RcptTo: ceo@corp.example\rX-Foo: "@b.example>', [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_cr_forged_from",
     b'MAIL FROM:<"x\rFrom: ceo@corp.example\r"@b.example>', [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_nul", b"MAIL FROM:<a\x00b@c.example>", [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_nul_bare", b"MAIL FROM:a\x00b@c.example", [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_del", b"MAIL FROM:<a\x7fb@c.example>", [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_tab_quoted", b'MAIL FROM:<"a\tb"@c.example>', [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_encoded_word_cr", b"MAIL FROM:<=?utf-8?q?a=0DX-Foo:_b?=@c.example>", [b"RCPT TO:<d@e.example>"],
     [MALFORMED, "503 Error: need MAIL command"]),
    ("mail_param", b"MAIL FROM:<a@b.example> SIZE=1\x01", [b"RCPT TO:<d@e.example>"],
     [SYNTAX_MAIL, "503 Error: need MAIL command"]),
    ("rcpt_cr_spam_flag", b"MAIL FROM:<a@b.example>", [b'RCPT TO:<"x\rX-Spam-Flag: NO"@b.example>'],
     ["250 OK", MALFORMED]),
    ("rcpt_nul", b"MAIL FROM:<a@b.example>", [b"RCPT TO:<d\x00e@f.example>"], ["250 OK", MALFORMED]),
    ("rcpt_param", b"MAIL FROM:<a@b.example>", [b"RCPT TO:<d@e.example> X=\x02"], ["250 OK", SYNTAX_RCPT]),
]


class HeaderInjectionTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-inject-")
        self.addCleanup(rmtree, self.dir)
        self.maildir = os.path.join(self.dir, "Maildir")
        plugins = [{"name": "maildir", "config": {"path": self.maildir, "workers": 1}}]
        self.server = self.start_server(server_config(plugins=plugins))

    def session(self):
        c = self.connect(self.server)
        self.addCleanup(c.close)
        self.assertEqual(c.reply(), [GREETING])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    def attempt(self, c, mail, rcpts):
        """MAIL, the RCPTs and DATA whatever the replies (as an attacker would), the message too
        if DATA says 354; returns the first reply line of each command, DATA's last."""
        got = []
        for line in [mail] + rcpts:
            c.send(line + b"\r\n")
            got.append(c.reply()[0])
        data = c.cmd("DATA")[0]
        if data.startswith("354"):
            c.send(MESSAGE)
            data = c.reply()[0]
        got.append(data)
        self.assertEqual(c.cmd("RSET"), ["250 OK"])
        return got

    def test_control_characters_are_refused_and_nothing_is_delivered(self):
        c = self.session()
        for name, mail, rcpts, expected in ATTACKS:
            with self.subTest(name):
                got = self.attempt(c, mail, rcpts)
                self.assertEqual(got[:-1], expected)
                self.assertEqual(got[-1], "503 Error: need RCPT command")
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        self.assertEqual(maildir_files(self.maildir), {})
        self.assertEqual(maildir_files(self.maildir, "tmp"), {})

    def test_vrfy_with_control_characters_is_502_and_not_echoed_raw(self):
        c = self.session()
        c.send(b'VRFY <"x\rX-Foo: y"@b.example>\r\n')
        self.assertEqual(c.reply(), ['502 Could not VRFY <"x?X-Foo: y"@b.example>'])
        c.send(b"VRFY a\x00b@c.example\r\n")
        self.assertEqual(c.reply(), ["502 Could not VRFY a?b@c.example"])
        self.assertEqual(c.cmd("VRFY a@b.example"),
                         ["252 Cannot VRFY user, but will accept message and attempt delivery"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_a_refused_recipient_leaves_the_others_and_the_message_clean(self):
        # One good recipient next to a refused one: the message goes to the good one only, and
        # its headers are the three aiosmtpd writes, nothing forged.
        c = self.session()
        got = self.attempt(c, b"MAIL FROM:<a@b.example>",
                           [b'RCPT TO:<"x\rX-Spam-Flag: NO"@b.example>', b"RCPT TO:<d@e.example>"])
        self.assertEqual(got, ["250 OK", MALFORMED, "250 OK", "250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        files = list(maildir_files(self.maildir).values())
        self.assertEqual(len(files), 1)
        data = files[0]
        self.assertNotIn(b"\r", data)
        self.assertNotIn(b"\x00", data)
        headers = data.split(b"\n\n", 1)[0].split(b"\n")
        self.assertEqual([h for h in headers if h.startswith(b"X-")][1:],
                         [b"X-MailFrom: a@b.example", b"X-RcptTo: d@e.example"])
        self.assertNotIn(b"X-Spam-Flag", data)

    def test_a_normal_message_is_still_delivered(self):
        with smtplib.SMTP(HOST, self.server.port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["d@e.example"], b"Subject: hi\r\n\r\nhello\r\n"), {})
        files = list(maildir_files(self.maildir).values())
        self.assertEqual(len(files), 1)
        self.assertIn(b"\nX-MailFrom: a@b.example\nX-RcptTo: d@e.example\n\nhello\n", files[0])


if __name__ == "__main__":
    harness.main()
