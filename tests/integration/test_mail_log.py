# SPDX-License-Identifier: Apache-2.0
"""Log lines a postmaster (and fail2ban) can use: the message line names the client, the
sender (the null sender as "from=<>") and every recipient; every refused command is one line
with the client, the command and the reply; a failed AUTH names the client, the mechanism and
the login tried (never the password); a connection refused over max_connections names its
client."""
import base64
import re
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


class TransactionIdTest(ServerTestCase):
    def test_a_days_traffic_answers_who_sent_what_to_whom_and_who_was_refused_why_with_grep(self):
        # A plugin that says something about every recipient.
        plugins = [{"path": harness.fixture_plugin("scripted"), "config": {"hooks": {"RCPT": {"log": "checked {arg}"}}}},
                   "sink"]
        server = self.start_server(server_config(plugins=plugins))
        with Client(server.host, server.port) as c:
            c.reply()
            c.cmd("EHLO client.example")
            # Transaction 1: one good recipient, one refused by the server (a control byte).
            self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), ["250 OK"])
            self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), ["250 OK"])
            self.assertEqual(c.cmd("RCPT TO:<bad\x01@example.org>")[0][:3], "553")
            self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
            self.assertEqual(c.cmd("Subject: 1\r\n\r\nx\r\n."), ["250 OK"])
            # Transaction 2, abandoned; then transaction 3 with another sender.
            self.assertEqual(c.cmd("MAIL FROM:<mallory@example.net>"), ["250 OK"])
            self.assertEqual(c.cmd("RSET"), ["250 OK"])
            self.assertEqual(c.cmd("MAIL FROM:<carol@example.org>"), ["250 OK"])
            self.assertEqual(c.cmd("RCPT TO:<dave@example.org>"), ["250 OK"])
            self.assertEqual(c.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"])
            self.assertEqual(c.cmd("Subject: 3\r\n\r\ny\r\n."), ["250 OK"])
            c.cmd("QUIT")
        err = server.wait_output(lambda e: e.count("event=message") >= 2, which="stderr")
        lines = err.splitlines()
        messages = [l for l in lines if "event=message" in l]
        txn1 = re.search(r" txn=(\S+) ", messages[0]).group(1)
        txn3 = re.search(r" txn=(\S+) ", messages[1]).group(1)
        self.assertNotEqual(txn1, txn3)
        self.assertTrue(txn1.endswith(".1") and txn3.endswith(".3"), (txn1, txn3))
        # grep txn1: the plugin's line, the refusal and the message, and nothing of the others.
        first = [l for l in lines if f"txn={txn1} " in l]
        self.assertEqual(len(first), 3, first)
        self.assertIn("plugin=scripted checked bob@example.org", first[0])
        self.assertRegex(first[1], r'event=reject client=127\.0\.0\.1 command="RCPT TO:<bad\\x01@example\.org>" reply="553 ')
        self.assertIn("from=<alice@example.org> to=<bob@example.org> rcpts=1", first[2])
        self.assertNotIn("mallory", "\n".join(first))
        # grep the sender: its message line names the transaction, which names the rest.
        carol = next(l for l in messages if "from=<carol@example.org>" in l)
        self.assertIn(f"txn={txn3} ", carol)
        self.assertIn("to=<dave@example.org>", carol)
        # A command refused outside a transaction carries no txn.
        self.assertFalse(any("txn=" in l for l in lines if "event=connect" in l or "event=disconnect" in l))


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
