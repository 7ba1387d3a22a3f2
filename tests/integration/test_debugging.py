# SPDX-License-Identifier: Apache-2.0
"""The default `debugging` plugin through smtplib: a full transaction, and the message with
its envelope printed on the server's stdout in aiosmtpd's Debugging format."""
import smtplib

import harness
from harness import HOSTNAME, ServerTestCase, server_config


def debugging(stream="stdout"):
    return server_config(plugins=[{"name": "debugging", "config": {"stream": stream}}])


class DebuggingTest(ServerTestCase):
    def test_full_transaction_printed(self):
        server = self.start_server(debugging())
        msg = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hello\r\n\r\n"
               b"first line\r\n.starts with a dot\r\n\r\nlast line\r\n")
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            self.assertEqual(s.ehlo("client.example"),
                             (250, f"{HOSTNAME}\nSIZE 33554432\n8BITMIME\nHELP".encode()))
            peer_port = s.sock.getsockname()[1]
            self.assertEqual(s.mail("a@b.example", [f"SIZE={len(msg)}"]), (250, b"OK"))
            self.assertEqual(s.rcpt("c@d.example"), (250, b"OK"))
            self.assertEqual(s.rcpt("e@f.example"), (250, b"OK"))
            self.assertEqual(s.data(msg), (250, b"OK"))
            self.assertEqual(s.quit(), (221, b"Bye"))
        expected = (
            "---------- MESSAGE FOLLOWS ----------\n"
            f"mail options: ['SIZE={len(msg)}']\n"
            "\n"
            "From: a@b.example\n"
            "To: c@d.example\n"
            "Subject: hello\n"
            f"X-Peer: ('127.0.0.1', {peer_port})\n"
            "\n"
            "first line\n"
            ".starts with a dot\n"   # smtplib stuffs it to "..", the server unstuffs it
            "\n"
            "last line\n"
            "------------ END MESSAGE ------------\n")
        out = server.wait_output(lambda t: "END MESSAGE" in t)
        self.assertEqual(out, expected)

    def test_sendmail_without_mail_options(self):
        # HELO session: no SIZE option, so no "mail options:" line and no separator line.
        server = self.start_server(debugging())
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            self.assertEqual(s.helo("client.example"), (250, HOSTNAME.encode()))
            peer_port = s.sock.getsockname()[1]
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: x\r\n\r\nbody\r\n"), {})
        out = server.wait_output(lambda t: "END MESSAGE" in t)
        self.assertEqual(out,
                         "---------- MESSAGE FOLLOWS ----------\n"
                         "Subject: x\n"
                         f"X-Peer: ('127.0.0.1', {peer_port})\n"
                         "\n"
                         "body\n"
                         "------------ END MESSAGE ------------\n")

    def test_two_messages_one_session(self):
        server = self.start_server(debugging())
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.ehlo("client.example")
            for i in range(2):
                self.assertEqual(s.sendmail("a@b.example", ["c@d.example"],
                                            f"Subject: n{i}\r\n\r\nbody {i}\r\n".encode()), {})
        out = server.wait_output(lambda t: t.count("END MESSAGE") == 2)
        self.assertEqual(out.count("---------- MESSAGE FOLLOWS ----------\n"), 2)
        self.assertLess(out.index("Subject: n0"), out.index("Subject: n1"))
        self.assertIn("body 1\n", out)

    def test_stream_stderr(self):
        server = self.start_server(debugging("stderr"))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.ehlo("client.example")
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: err\r\n\r\nx\r\n"), {})
        err = server.wait_output(lambda t: "END MESSAGE" in t, which="stderr")
        self.assertIn("---------- MESSAGE FOLLOWS ----------\n", err)
        self.assertIn("Subject: err\n", err)
        self.assertEqual(server.stdout(), "")


if __name__ == "__main__":
    harness.main()
