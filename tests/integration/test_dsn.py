# SPDX-License-Identifier: Apache-2.0
"""DSN (RFC 3461, server.enable_dsn) and ENHANCEDSTATUSCODES (RFC 2034,
server.enable_enhanced_status_codes) on the wire, with smtplib and a raw socket: off, both
switches leave aiosmtpd's replies unchanged; on, EHLO offers them, valid DSN parameters are
taken and kept for plugins, invalid ones get Postfix's 501, and the server's own replies carry
RFC 3463 codes while a plugin's replies are sent as the plugin wrote them."""
import smtplib

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, run_binary, server_config


def scripted(hooks):
    return {"path": harness.fixture_plugin("scripted"), "config": {"hooks": hooks}}


# DATA logs the DSN parameters the plugins see.
LOG_DSN = scripted({"DATA": {"log": "dsn mail=[{params}] rcpts=[{rcpt_params}]"}})


class DsnTest(ServerTestCase):
    def test_off_is_aiosmtpd(self):
        server = self.start_server(server_config())
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertFalse(s.has_extn("dsn"))
            self.assertFalse(s.has_extn("enhancedstatuscodes"))
            self.assertEqual(s.mail("a@example.org", ["RET=HDRS"]),
                             (555, b"MAIL FROM parameters not recognized or not implemented"))
            self.assertEqual(s.mail("a@example.org"), (250, b"OK"))
            self.assertEqual(s.rcpt("b@example.org", ["NOTIFY=NEVER"]),
                             (555, b"RCPT TO parameters not recognized or not implemented"))

    def test_parameters_reach_the_plugins(self):
        server = self.start_server(server_config(plugins=[LOG_DSN, "sink"], enable_dsn=True))
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("dsn"))
            # smtplib passes mail_options (after its own SIZE=) and rcpt_options as a DSN client does.
            refused = s.sendmail("a@example.org", ["b@example.org", "c@example.org"], b"Subject: x\r\n\r\nhi\r\n",
                                 mail_options=["RET=FULL", "ENVID=QQ314159"],
                                 rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Someone@Example.ORG"])
            self.assertEqual(refused, {})
        server.wait_output(lambda e: "dsn mail=[SIZE=18,RET=FULL,ENVID=QQ314159] rcpts=[b@example.org(NOTIFY=SUCCESS,DELAY,"
                           "ORCPT=rfc822;Someone@Example.ORG) c@example.org(NOTIFY=SUCCESS,DELAY,"
                           "ORCPT=rfc822;Someone@Example.ORG)]" in e, which="stderr")

    def test_invalid_parameters_get_501(self):
        server = self.start_server(server_config(enable_dsn=True))
        c = self.connect(server)
        c.reply()
        c.cmd("EHLO client.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org> RET=BODY"), ["501 Bad RET parameter syntax"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org> ENVID=a=b"), ["501 Bad ENVID parameter syntax"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org> ENVID=" + "x" * 101), ["501 Bad ENVID parameter syntax"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org> RET=FULL RET=HDRS"), ["501 Bad RET parameter syntax"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org> RET=HDRS"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER,FAILURE"),
                         ["501 Error: Bad NOTIFY parameter syntax"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org> ORCPT=b@example.org"), ["501 Error: Bad ORCPT parameter syntax"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org> ORCPT=rfc822;b+0D+0Ax@example.org"),
                         ["501 Error: Bad ORCPT parameter syntax"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org> ORCPT=rfc822;" + "b" * 500),
                         ["501 Error: Bad ORCPT parameter syntax"])
        # The longest valid ORCPT fits the line (512 plus RFC 3461's allowance).
        self.assertEqual(c.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;" + "b" * 493),
                         ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])

    def test_config_key_must_be_a_bool(self):
        for key in ("enable_dsn", "enable_enhanced_status_codes"):
            p = run_binary(["--check-config"], server_config(**{key: "maybe"}))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn(f"server.{key}", p.stderr)


class EnhancedStatusCodesTest(ServerTestCase):
    def test_server_replies_carry_codes(self):
        hooks = {"NOOP": {"verdict": "accept", "code": 250, "text": "plugin says hi"}}
        server = self.start_server(server_config(plugins=[scripted(hooks), "sink"], enable_enhanced_status_codes=True,
                                                 enable_dsn=True))
        c = self.connect(server)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])  # RFC 2034 §3: not on the greeting
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["503 5.5.1 Error: send HELO first"])
        self.assertEqual(c.cmd("EHLO client.example"),
                         [f"250-{HOSTNAME}", "250-SIZE 33554432", "250-8BITMIME", "250-ENHANCEDSTATUSCODES",
                          "250-DSN", "250 HELP"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org> RET=X"), ["501 5.5.4 Bad RET parameter syntax"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["250 2.1.0 OK"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org>"), ["250 2.1.5 OK"])
        self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(c.cmd("hi\r\n."), ["250 2.0.0 OK"])
        self.assertEqual(c.cmd("FOO"), ['500 5.5.2 Error: command "FOO" not recognized'])
        self.assertEqual(c.cmd("NOOP"), ["250 plugin says hi"])  # a plugin's reply: as it wrote it
        self.assertEqual(c.cmd("QUIT"), ["221 2.0.0 Bye"])

    def test_smtplib_sees_the_extension(self):
        server = self.start_server(server_config(enable_enhanced_status_codes=True))
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertTrue(s.has_extn("enhancedstatuscodes"))
            self.assertEqual(s.rcpt("b@example.org"), (503, b"5.5.1 Error: need MAIL command"))
            self.assertEqual(s.noop(), (250, b"2.0.0 OK"))


if __name__ == "__main__":
    harness.main()
