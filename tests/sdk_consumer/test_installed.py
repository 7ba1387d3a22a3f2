# SPDX-License-Identifier: Apache-2.0
"""The INSTALLED server (packaging.install's prefix) with the bundled plugins found by name and
the example plugins built out of tree (packaging.cmake_examples), driven by smtplib."""
import os
import smtplib
import sys

WORK = os.environ["ASIOSMTPD_WORK_DIR"]
PREFIX = os.path.join(WORK, "prefix")
os.environ["ASIOSMTPD_BIN"] = os.path.join(PREFIX, "bin", "asiosmtpd")
sys.path.insert(0, os.path.join(os.environ["ASIOSMTPD_SOURCE_DIR"], "tests", "integration"))

import harness  # noqa: E402
from harness import ServerTestCase, server_config  # noqa: E402

EXAMPLES = os.path.join(WORK, "cmake")


class InstalledServerTest(ServerTestCase):
    def test_examples_and_bundled_plugins(self):
        plugins = [
            "ping",  # by name: <prefix>/lib/asiosmtpd/plugins/ping.so
            {"path": os.path.join(EXAMPLES, "hello_c", "hello.so"), "config": {"greeting": "Howdy"}},
            {"path": os.path.join(EXAMPLES, "async_policy", "async_policy.so"),
             "config": {"deny": ["spam.example"], "delay_ms": 5}},
            "sink",
        ]
        server = self.start_server(server_config(plugins=plugins))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            code, text = s.ehlo("client.example")
            self.assertEqual(code, 250)
            self.assertIn(b"XHELLO", text.split(b"\n"))
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))
            self.assertEqual(s.docmd("HELLO"), (250, b"Howdy, world"))
            self.assertEqual(s.docmd("HELLO", "Alice"), (250, b"Howdy, Alice"))
            self.assertEqual(s.docmd("HELP", "HELLO"), (250, b"Syntax: HELLO [name]"))
            self.assertEqual(s.mail("a@b.example"), (250, b"OK"))
            self.assertEqual(s.rcpt("x@spam.example"),
                             (550, b"5.7.1 x@spam.example: recipient domain refused"))
            self.assertEqual(s.rcpt("y@ok.example"), (250, b"OK"))
            self.assertEqual(s.data(b"Subject: installed\r\n\r\nhello\r\n"), (250, b"OK"))

    def test_installed_default_config_is_valid(self):
        conf = os.path.join(PREFIX, "etc", "asiosmtpd", "asiosmtpd.yaml")
        r = harness.run_binary(["--check-config", "--config", conf])
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    harness.main()
