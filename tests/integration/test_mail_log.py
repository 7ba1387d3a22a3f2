# SPDX-License-Identifier: Apache-2.0
"""Log lines a postmaster (and fail2ban) can use: the message line names the client, the
sender (the null sender as "from=<>") and every recipient; every refused command is one line
with the client, the command and the reply; a failed AUTH names the client, the mechanism and
the login tried (never the password); a connection refused over max_connections names its
client."""
import base64
import smtplib

import harness
from harness import HOST, Client, ServerTestCase, server_config
from test_auth import authfile_plugin


class MessageLineTest(ServerTestCase):
    def test_sender_and_every_recipient_are_in_the_message_line(self):
        server = self.start_server(server_config())
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.sendmail("alice@example.org", ["bob@example.org", "carol@example.net"], "Subject: x\r\n\r\nhi\r\n")
        err = server.wait_output(lambda e: "event=message" in e, which="stderr")
        line = next(l for l in err.splitlines() if "event=message" in l)
        self.assertIn(" client=127.0.0.1 from=<alice@example.org> to=<bob@example.org>,<carol@example.net> rcpts=2 ",
                      line)
        self.assertIn(" result=250 ", line)

    def test_the_null_sender_is_from_empty_brackets(self):
        server = self.start_server(server_config())
        with Client(server.host, server.port) as c:
            c.reply()
            c.cmd("EHLO client.example")
            self.assertEqual(c.cmd("MAIL FROM:<>"), ["250 OK"])
            self.assertEqual(c.cmd("RCPT TO:<postmaster@example.org>"), ["250 OK"])
            c.cmd("DATA")
            self.assertEqual(c.cmd("Subject: bounce\r\n\r\nx\r\n."), ["250 OK"])
            c.cmd("QUIT")
        err = server.wait_output(lambda e: "event=message" in e, which="stderr")
        self.assertIn(" from=<> to=<postmaster@example.org> ", err)
        self.assertNotIn("<<>>", err)


class RejectLineTest(ServerTestCase):
    def test_every_refused_command_is_one_line_with_client_command_and_reply(self):
        plugins = [{"path": harness.fixture_plugin("scripted"),
                    "config": {"hooks": {"RCPT": {"verdict": "reject", "code": 550, "text": "5.1.1 {arg}: unknown"}}}}]
        server = self.start_server(server_config(plugins=plugins))
        with Client(server.host, server.port) as c:
            c.reply()
            c.cmd("EHLO client.example")
            self.assertEqual(c.cmd("RCPT TO:<early@example.org>"), ["503 Error: need MAIL command"])
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["250 OK"])
            self.assertEqual(c.cmd("RCPT TO:<nobody@example.org>"), ["550 5.1.1 nobody@example.org: unknown"])
            c.cmd("NOOP")
            c.cmd("QUIT")
        err = server.wait_output(lambda e: e.count("event=reject") >= 2, which="stderr")
        rejects = [l for l in err.splitlines() if "event=reject" in l]
        self.assertEqual(len(rejects), 2, rejects)
        self.assertRegex(rejects[0], r'event=reject client=127\.0\.0\.1 command="RCPT TO:<early@example\.org>" '
                                     r'reply="503 Error: need MAIL command"$')
        self.assertRegex(rejects[1], r'event=reject client=127\.0\.0\.1 command="RCPT TO:<nobody@example\.org>" '
                                     r'reply="550 5\.1\.1 nobody@example\.org: unknown"$')


class AuthFailureLineTest(ServerTestCase):
    def test_a_failed_auth_names_client_mechanism_and_login_never_the_password(self):
        config = server_config(plugins=[authfile_plugin(self, {"alice": "wonderland"}), "sink"],
                               auth_require_tls=False, auth_failure_delay=0)
        server = self.start_server(config)
        with Client(server.host, server.port) as c:
            c.reply()
            c.cmd("EHLO client.example")
            plain = base64.b64encode(b"\0mallory\0s3cret-guess").decode()
            self.assertEqual(c.cmd(f"AUTH PLAIN {plain}"), ["535 5.7.8 Authentication credentials invalid"])
            self.assertEqual(c.cmd("AUTH LOGIN"), ["334 VXNlcm5hbWU6"])
            self.assertEqual(c.cmd(base64.b64encode(b"alice").decode()), ["334 UGFzc3dvcmQ6"])
            self.assertEqual(c.cmd(base64.b64encode(b"wrong").decode()), ["535 5.7.8 Authentication credentials invalid"])
        err = server.wait_output(lambda e: e.count("event=auth result=failed") >= 2, which="stderr")
        self.assertIn('event=auth result=failed client=127.0.0.1 mechanism=PLAIN login="mallory"', err)
        self.assertIn('event=auth result=failed client=127.0.0.1 mechanism=LOGIN login="alice"', err)
        self.assertNotIn("s3cret-guess", err)
        self.assertNotIn("wrong", err)


class RefusedConnectionLineTest(ServerTestCase):
    def test_a_refused_connection_names_its_client(self):
        server = self.start_server(server_config(max_connections=1))
        first = Client(server.host, server.port)
        self.addCleanup(first.close)
        first.reply()
        with Client(server.host, server.port) as second:
            self.assertTrue(second.reply()[0].startswith("421 "))
        err = server.wait_output(lambda e: "event=refused" in e, which="stderr")
        self.assertRegex(err, r"event=refused reason=max_connections client=127\.0\.0\.1 limit=1")


if __name__ == "__main__":
    harness.main()
