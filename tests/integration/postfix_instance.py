# SPDX-License-Identifier: Apache-2.0
"""A private Postfix instance for integration tests: its own config folder, queue and log in a
temp folder, listening (if at all) on a loopback port only, started and stopped by the test.
The machine's own Postfix (if any) is never touched: every command gets `-c <our etc>`.

    with PostfixInstance(tmp, relayhost=("127.0.0.1", port)) as pf:
        pf.sendmail("a@example.org", ["b@example.org"], message)
        pf.wait_log(r"status=sent", 1)

Debian's `postfix` package provides the binaries (.ci/setup-tests installs it with its own
service kept off).
"""

import os
import re
import shutil
import socket
import subprocess
import time

import harness

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
MASTER = "/usr/lib/postfix/sbin/master"

# The services a relaying instance needs: no chroot, no local delivery. `@SMTPD@` becomes an
# smtpd line on a loopback port (or nothing).
_MASTER_CF = """\
@SMTPD@
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available():
    return all(os.access(p, os.X_OK) for p in (POSTFIX, SENDMAIL, MASTER))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostfixInstance:
    """main: extra main.cf settings (they win over the defaults below); smtpd: True to run an
    smtpd on a free loopback port (self.port), smtpd_args: its -o options; relayhost: (host,
    port) every message goes to, over SMTP (or LMTP with lmtp=True)."""

    def __init__(self, workdir, relayhost=None, main=None, smtpd=False, smtpd_args=(), lmtp=False):
        self.dir = os.path.join(workdir, "postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = free_port() if smtpd else None
        self.process = None
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": os.path.join(self.dir, "queue"),
            "data_directory": os.path.join(self.dir, "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "postfix.test",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "delay_warning_time": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
        }
        if relayhost is not None:
            host, port = relayhost
            if lmtp:
                settings["default_transport"] = f"lmtp:inet:[{host}]:{port}"
            else:
                settings["relayhost"] = f"[{host}]:{port}"
        settings.update(main or {})
        self.settings = settings
        smtpd_line = ""
        if smtpd:
            opts = "".join(f"\n  -o {a}" for a in smtpd_args)
            smtpd_line = f"127.0.0.1:{self.port} inet n  -       n       -       -       smtpd{opts}"
        self.master_cf = _MASTER_CF.replace("@SMTPD@", smtpd_line)

    def start(self, timeout=15.0):
        shutil.rmtree(self.dir, ignore_errors=True)
        # Postfix's daemons run as the postfix user: every folder above the queue must be
        # searchable by it (mkdtemp makes 0700 folders).
        parent = os.path.dirname(self.dir)
        while parent not in ("/", "") and os.stat(parent).st_mode & 0o001 == 0:
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
            parent = os.path.dirname(parent)
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, sub))
        shutil.chown(os.path.join(self.dir, "data"), user="postfix")
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.writelines(f"{k} = {v}\n" for k, v in self.settings.items())
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(self.master_cf)
        # Creates the queue's folders with their owners (and refuses a broken config).
        check = subprocess.run([POSTFIX, "-c", self.etc, "check"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {check.stderr}{self.log()[-2000:]}")
        self.process = subprocess.Popen([MASTER, "-d", "-s", "-c", self.etc], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postfix master exited: {self.process.stderr.read()!r} {self.log()[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("postfix did not start")

    def _ready(self):
        if self.port is None:
            return os.path.exists(os.path.join(self.dir, "queue", "public", "pickup"))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.settimeout(2)
                return s.recv(100).startswith(b"220")
        except OSError:
            return False

    def stop(self):
        # The master and the daemons it forked (smtpd, qmgr, smtp...) are its process group.
        harness.stop_process(self.process, 10, group=True)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def sendmail(self, sender, recipients, message, options=()):
        """Submits message (bytes) with Postfix's own sendmail(1) into this instance's queue."""
        argv = [SENDMAIL, "-C", self.etc, "-f", sender, *options, "--", *recipients]
        subprocess.run(argv, input=message, check=True, capture_output=True, timeout=30)

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, count=1, timeout=20.0):
        """Waits until pattern (a regex) matches count lines of the maillog; returns them."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if rx.search(line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x /{pattern}/ not in Postfix's log within {timeout}s:\n"
                                     + self.log()[-3000:])
            time.sleep(0.1)
