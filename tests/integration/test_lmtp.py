"""LMTP (RFC 2033) listeners: LHLO, one reply per accepted recipient after DATA, and plugins
answering per recipient (RFC 2033 §4.2; aiosmtpd sends a single reply, its issue #517)."""
import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, server_config


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


if __name__ == "__main__":
    harness.main()
