# SPDX-License-Identifier: Apache-2.0
"""swaks (Debian package `swaks`) against the real server, plain and with --pipeline."""
import re
import shutil
import subprocess
import unittest

import harness
from harness import ServerTestCase, server_config

SWAKS = shutil.which("swaks")


@unittest.skipUnless(SWAKS, "swaks is not installed (apt-get install swaks)")
class SwaksTest(ServerTestCase):
    def swaks(self, server, *extra):
        argv = [SWAKS, "--server", f"{server.host}:{server.port}", "--to", "a@b.example",
                "--from", "c@d.example", "--helo", "client.example", "--timeout", "10",
                "--body", "hello from swaks"] + list(extra)
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout + p.stderr

    def check_delivered(self, server, rc, out):
        self.assertEqual(rc, 0, out)
        # The reply after the end of DATA is a 250.
        self.assertRegex(out, re.compile(r"^ -> \.\n<-  250 OK$", re.M))
        self.assertRegex(out, re.compile(r"^<-  221 Bye$", re.M))
        printed = server.wait_output(lambda t: "END MESSAGE" in t)
        self.assertIn("hello from swaks\n", printed)
        self.assertIn("To: a@b.example\n", printed)

    def test_plain(self):
        server = self.start_server(server_config(plugins=["debugging"]))
        rc, out = self.swaks(server)
        self.check_delivered(server, rc, out)
        self.assertRegex(out, re.compile(r"^<-  220 mx\.test\.example TestIdent 1\.0$", re.M))

    def test_pipeline(self):
        server = self.start_server(server_config(plugins=["debugging"], advertise_pipelining=True))
        rc, out = self.swaks(server, "--pipeline")
        self.check_delivered(server, rc, out)
        self.assertRegex(out, re.compile(r"^<-  250-PIPELINING$", re.M))
        # MAIL, RCPT and DATA went out as one group, then their three replies came in order.
        self.assertRegex(out, re.compile(
            r"^ -> MAIL FROM:<c@d\.example>\n -> RCPT TO:<a@b\.example>\n -> DATA\n"
            r"<-  250 OK\n<-  250 OK\n<-  354 End data with <CR><LF>\.<CR><LF>$", re.M))

    def test_several_recipients_sink(self):
        server = self.start_server(server_config(plugins=["sink"]))
        argv = [SWAKS, "--server", f"{server.host}:{server.port}", "--to", "a@b.example,b@b.example,c@b.example",
                "--from", "c@d.example", "--timeout", "10", "--body", "x"]
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(len(re.findall(r"^ -> RCPT TO:<.*>\n<-  250 OK$", p.stdout, re.M)), 3, p.stdout)


if __name__ == "__main__":
    harness.main()
