# SPDX-License-Identifier: Apache-2.0
"""The fail2ban filter in packaging/fail2ban (filter.d/asiosmtpd.conf) on real log lines: a
server with the authfile plugin gets failed and successful AUTH attempts; Debian's
fail2ban-regex, run on its stderr, finds exactly the failures, with the client's address and
the login tried, and none of the successes."""
import os
import re
import shutil
import smtplib
import subprocess
import unittest

import harness
from harness import HOST, ServerTestCase, server_config
from test_auth import authfile_plugin

FILTER = os.path.join(harness.SOURCE_DIR, "packaging", "fail2ban", "filter.d", "asiosmtpd.conf")
REGEX = shutil.which("fail2ban-regex")


@unittest.skipUnless(REGEX, "fail2ban is not installed (apt-get install fail2ban)")
class Fail2banTest(ServerTestCase):
    def test_the_filter_matches_every_failed_auth_and_nothing_else(self):
        config = server_config(plugins=[authfile_plugin(self, {"alice": "secret"}), "sink"], auth_require_tls=False,
                               auth_failure_delay=0, auth_max_failures=0)
        server = self.start_server(config)
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("client.example")
            for login in ("mallory", "root", "admin"):
                with self.assertRaises(smtplib.SMTPAuthenticationError):
                    s.login(login, "guess")
            s.login("alice", "secret")
        # smtplib tries PLAIN, then LOGIN: two failed attempts per login.
        server.wait_output(lambda t: t.count("event=auth result=failed") == 6 and "result=ok" in t, which="stderr")
        log = os.path.join(server.tmpdir, "stderr")
        r = subprocess.run([REGEX, "--print-all-matched", log, FILTER], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"Failregex: 6 total", r.stdout)
        section = r.stdout.split("Matched line(s):", 1)[1].split("`-", 1)[0]
        matched = [l for l in section.splitlines() if "event=auth" in l]
        self.assertEqual(len(matched), 6, r.stdout)
        self.assertTrue(all("result=failed client=127.0.0.1 " in l for l in matched), matched)
        self.assertEqual({re.search(r'login="([^"]*)"', l).group(1) for l in matched}, {"mallory", "root", "admin"})
        self.assertNotIn("result=ok", section)


if __name__ == "__main__":
    unittest.main()
