# SPDX-License-Identifier: Apache-2.0
"""milter plugin with rspamd (Debian's rspamd) in milter mode: its proxy worker with milter = yes
and self_scan, a minimal config written by the test (no Redis, no network, only the
milter_headers module; GTUBE is rspamd's own check), started on 127.0.0.1 and stopped after. The
GTUBE test message is refused with rspamd's reply; a clean one is stored with rspamd's headers
(X-Rspamd-Queue-Id: the `i` macro the plugin sent). rspamd takes about 10 s to start here (it
compiles its expressions); everything else takes well under a second."""
import grp
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest

import harness
from harness import HOST, ServerTestCase, server_config
from delivery import free_port, maildir_files

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
START_TIMEOUT = 90


class Rspamd:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="asiosmtpd-rspamd-")
        self.port = free_port()
        conf = os.path.join(self.tmp, "rspamd.conf")
        with open(conf, "w", encoding="ascii") as f:
            f.write(f"""options {{
  pidfile = "{self.tmp}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 1; }}
  hs_cache_dir = "{self.tmp}";
}}
logging {{ type = "console"; level = "error"; }}
actions {{ reject = 15; add_header = 6; }}
worker "rspamd_proxy" {{
  bind_socket = "{HOST}:{self.port}";
  milter = yes;
  timeout = 120s;
  count = 1;
  upstream "local" {{ default = yes; self_scan = yes; }}
}}
modules {{ path = "${{PLUGINSDIR}}/milter_headers.lua"; }}
milter_headers {{
  use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-status"];
  skip_local = false;
  skip_authenticated = false;
}}
""")
        self.out = open(os.path.join(self.tmp, "output"), "wb")
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        self.proc = subprocess.Popen([RSPAMD, "-f", "-i", "-u", user, "-g", group, "-c", conf,
                                      "--var", f"DBDIR={self.tmp}", "--var", f"RUNDIR={self.tmp}"],
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.out,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError("rspamd did not start:\n" + out)
            time.sleep(0.1)

    def output(self):
        with open(os.path.join(self.tmp, "output"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        # rspamd's workers are in its process group: none may outlive the test.
        harness.stop_process(self.proc, 15, group=True)
        self.out.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@unittest.skipUnless(os.path.exists(RSPAMD), "rspamd is not installed")
class RspamdTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.rspamd = Rspamd()

    @classmethod
    def tearDownClass(cls):
        cls.rspamd.stop()

    def test_gtube_refused_clean_passes_with_headers(self):
        maildir = tempfile.mkdtemp(prefix="asiosmtpd-rspamd-md-")
        self.addCleanup(shutil.rmtree, maildir, True)
        server = self.start_server(server_config(plugins=[
            {"name": "milter", "config": {"address": f"inet:{HOST}:{self.rspamd.port}"}},
            {"name": "maildir", "config": {"path": maildir}},
        ]))
        head = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: %s\r\n\r\n"
        with smtplib.SMTP(server.host, server.port, timeout=60) as s:
            s.ehlo("client.example")
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@example.org", ["b@example.org"], head % b"gtube" + GTUBE + b"\r\n")
            self.assertEqual(e.exception.smtp_code, 554)
            self.assertIn(b"Gtube", e.exception.smtp_error)
            s.sendmail("a@example.org", ["b@example.org"], head % b"lunch" + b"Shall we have lunch at noon?\r\n")
        stored = list(maildir_files(maildir).values())
        self.assertEqual(len(stored), 1)
        self.assertIn(b"Subject: lunch\n", stored[0])
        self.assertIn(b"\nX-Spam-Status: No", stored[0])
        self.assertIn(b"\nX-Spamd-Result: default: False", stored[0])
        self.assertRegex(stored[0], rb"\nX-Rspamd-Queue-Id: [0-9A-F]{12}\n")
        server.wait_output(lambda err: "event=milter action=reject stage=end_of_data" in err, "stderr")


if __name__ == "__main__":
    harness.main()
