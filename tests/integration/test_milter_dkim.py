# SPDX-License-Identifier: Apache-2.0
"""milter plugin with OpenDKIM (Debian's opendkim): a key made by the test (opendkim-genkey), an
opendkim started by the test on a private UNIX socket (Background no, as the current user), the
milter plugin in front of maildir: the stored message carries a DKIM-Signature that verifies
(python3-dkim, the test's public key, no DNS), with simple and relaxed canonicalization, for a
message with a folded header and a body of many chunks."""
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

import harness
from harness import ServerTestCase, server_config
from delivery import maildir_files

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
GENKEY = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"


def have_dkim():
    if not (os.path.exists(OPENDKIM) and os.path.exists(GENKEY)):
        return False
    return subprocess.run(["/usr/bin/python3", "-c", "import dkim"], capture_output=True).returncode == 0


class OpenDkim:
    def __init__(self, canonicalization):
        self.tmp = tempfile.mkdtemp(prefix="asiosmtpd-dkim-")
        subprocess.run([GENKEY, "-D", self.tmp, "-d", "example.org", "-s", "test", "-b", "1024"], check=True,
                       capture_output=True, timeout=60)
        with open(os.path.join(self.tmp, "test.txt"), encoding="ascii") as f:
            # test._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB..." "..." ) ; comment
            self.txt = "".join(re.findall(r'"([^"]*)"', f.read())).encode("ascii")
        self.socket = os.path.join(self.tmp, "dkim.sock")
        conf = os.path.join(self.tmp, "opendkim.conf")
        with open(conf, "w", encoding="ascii") as f:
            f.write(f"""Background no
Syslog no
Mode s
Domain example.org
Selector test
KeyFile {self.tmp}/test.private
Socket local:{self.socket}
Canonicalization {canonicalization}
InternalHosts 127.0.0.1
PidFile {self.tmp}/opendkim.pid
RequireSafeKeys false
""")
        self.err = open(os.path.join(self.tmp, "stderr"), "wb")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", conf], stdin=subprocess.DEVNULL,
                                     stdout=self.err, stderr=self.err, start_new_session=True)
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("opendkim did not start")
            time.sleep(0.05)

    def stop(self):
        harness.stop_process(self.proc, 2)  # libmilter may take seconds: then SIGKILL
        self.err.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@unittest.skipUnless(have_dkim(), "opendkim, opendkim-tools or python3-dkim is not installed")
class DkimSigningTest(ServerTestCase):
    def sign_and_verify(self, canonicalization):
        import dkim
        signer = OpenDkim(canonicalization)
        self.addCleanup(signer.stop)
        maildir = tempfile.mkdtemp(prefix="asiosmtpd-dkim-md-")
        self.addCleanup(shutil.rmtree, maildir, True)
        server = self.start_server(server_config(plugins=[
            {"name": "milter", "config": {"address": "unix:" + signer.socket}},
            {"name": "maildir", "config": {"path": maildir}},
        ]))
        body = b"".join(b"Line %05d of the body, signed by OpenDKIM.\r\n" % i for i in range(4000))
        msg = (b"From: Sender <sender@example.org>\r\n"
               b"To: rcpt@example.net\r\n"
               b"Subject: a signed message\r\n"
               b"  with a folded subject\r\n"
               b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
               b"Message-ID: <dkim-test@example.org>\r\n"
               b"\r\n" + body)
        with smtplib.SMTP(server.host, server.port, timeout=60) as s:
            s.sendmail("sender@example.org", ["rcpt@example.net"], msg)
        stored = list(maildir_files(maildir).values())
        self.assertEqual(len(stored), 1)
        message = stored[0].replace(b"\n", b"\r\n")
        self.assertTrue(message.startswith(b"DKIM-Signature: "), message[:200])
        self.assertIn(b"d=example.org", message)
        self.assertIn(b"s=test", message)

        def dnsfunc(name, timeout=5):
            self.assertEqual(name, b"test._domainkey.example.org.")
            return signer.txt
        self.assertTrue(dkim.verify(message, dnsfunc=dnsfunc), message[:600])
        # And a change to the body breaks it (the check is real).
        self.assertFalse(dkim.verify(message.replace(b"Line 00042", b"Line 00043"), dnsfunc=dnsfunc))

    def test_simple(self):
        self.sign_and_verify("simple/simple")

    def test_relaxed(self):
        self.sign_and_verify("relaxed/relaxed")


if __name__ == "__main__":
    harness.main()
