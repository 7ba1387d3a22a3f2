# SPDX-License-Identifier: Apache-2.0
"""A private Dovecot instance for integration tests and the bench: its own config file, run
folder (base_dir), state folder and log in a temp folder, an LMTP server on a loopback port and
on a UNIX socket, delivering every recipient into one Maildir in that folder. The machine's own
Dovecot (if any) is never touched: every command gets `-c <our config>`, and the instance name,
folders and sockets are our own.

    with DovecotInstance(tmp) as dc:
        ... LMTP to ("127.0.0.1", dc.port) or dc.socket ...
        dc.wait_messages(1)     # files in dc.maildir/new

Debian's `dovecot-core` and `dovecot-lmtpd` provide it (.ci/setup-tests installs them with the
service kept off). `mail_fsync` stays at Dovecot's default (`optimized`: the message file is
fsync'd before the LMTP reply). As root, mail is written as the user `nobody` (Dovecot refuses
uid 0 for mail), and the Maildir belongs to it; otherwise as the user running the test.
"""

import grp
import os
import pwd
import socket
import subprocess
import time

import harness

DOVECOT = "/usr/sbin/dovecot"
LMTP = "/usr/lib/dovecot/lmtp"


def available():
    return os.access(DOVECOT, os.X_OK) and os.access(LMTP, os.X_OK)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CONF = """\
# A private instance (tests/integration/dovecot_instance.py): nothing of /etc/dovecot is read.
instance_name = {instance}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
shutdown_clients = yes
{users}
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{maildir}
mail_fsync = optimized
lmtp_add_received_header = yes
lmtp_rcpt_check_quota = no
passdb {{
  driver = static
  args = nopassword=y
}}
{userdb}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
  process_min_avail = {lmtp_procs}
  {extra_lmtp}
}}
service anvil {{
  unix_listener anvil {{
    mode = 0600
  }}
}}
{extra}
"""


class DovecotInstance:
    """workdir: a temp folder of the test (the instance lives in workdir/dovecot); port: the LMTP
    TCP port (default a free one); lmtp_procs: LMTP processes started at once (Dovecot forks more
    as clients come, up to its default process_limit); extra: more config text, appended;
    users: None (every recipient is a user) or {address: userdb extra fields ("" for none)}:
    only those exist, any other recipient gets Dovecot's 550 at RCPT. Either way every user
    delivers into the one Maildir."""

    def __init__(self, workdir, port=None, lmtp_procs=1, extra="", extra_lmtp="", users=None):
        self.dir = os.path.join(os.path.abspath(workdir), "dovecot")
        self.config = os.path.join(self.dir, "dovecot.conf")
        self.logfile = os.path.join(self.dir, "dovecot.log")
        self.maildir = os.path.join(self.dir, "Maildir")
        self.socket = os.path.join(self.dir, "run", "lmtp")
        self.port = port or free_port()
        self.process = None
        self.users = users
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            internal = ""
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            me = pwd.getpwuid(self.uid).pw_name
            group = grp.getgrgid(self.gid).gr_name
            # Not root: every Dovecot process runs as us, its sockets in our group.
            internal = (f"default_internal_user = {me}\ndefault_login_user = {me}\n"
                        f"default_internal_group = {group}\n")
        self.passwd = os.path.join(self.dir, "users")
        if self.users is None:  # every recipient is a user (the static userdb allows every name)
            userdb = (f"userdb {{\n  driver = static\n  args = uid={self.uid} gid={self.gid} home={self.dir}/home "
                      f"allow_all_users=yes\n}}")
        else:
            userdb = f"userdb {{\n  driver = passwd-file\n  args = {self.passwd}\n}}"
        self.text = _CONF.format(instance=f"asiosmtpd-test-{os.getpid()}-{self.port}", dir=self.dir, users=internal,
                                 userdb=userdb, uid=self.uid, gid=self.gid, maildir=self.maildir, port=self.port,
                                 lmtp_procs=lmtp_procs, extra=extra, extra_lmtp=extra_lmtp)

    def prepare(self):
        """Writes the config and makes the folders; argv() then runs the instance (the bench
        starts it itself, as its other servers)."""
        os.makedirs(self.dir, exist_ok=True)
        for sub in ("run", "state", "home", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        if os.geteuid() == 0:
            # The LMTP process writes as `nobody`: it needs to reach the Maildir (every folder
            # above it searchable: mkdtemp makes 0700 folders) and to own it.
            parent = self.dir
            while parent not in ("/", ""):
                mode = os.stat(parent).st_mode
                if mode & 0o001 == 0:
                    os.chmod(parent, mode | 0o711)
                parent = os.path.dirname(parent)
            for sub in ("home", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
                os.chown(os.path.join(self.dir, sub), self.uid, self.gid)
        with open(self.config, "w") as f:
            f.write(self.text)
        if self.users is not None:
            # name:password:uid:gid:gecos:home:shell:extra fields (readable by Dovecot's auth user).
            with open(self.passwd, "w") as f:
                f.writelines(f"{name}::{self.uid}:{self.gid}::{self.dir}/home::{fields}\n"
                             for name, fields in self.users.items())
            os.chmod(self.passwd, 0o644)

    def argv(self):
        # -F: in the foreground, so that the process we hold is the master.
        return [DOVECOT, "-F", "-c", self.config]

    def start(self, timeout=15.0):
        self.prepare()
        logf = open(os.path.join(self.dir, "dovecot.stderr"), "ab")
        try:
            # Its own process group, so that stop() reaches every child it forked.
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"dovecot exited with {code} at start-up:\n{self.log()[-3000:]}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on 127.0.0.1:{self.port} within {timeout} s:\n{self.log()[-3000:]}")

    def _ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.settimeout(2)
                return s.recv(200).startswith(b"220") and os.path.exists(self.socket)
        except OSError:
            return False

    def stop(self):
        # The master and the children it forked are its process group: none outlives the test.
        harness.stop_process(self.process, 10, group=True)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        out = ""
        for name in ("dovecot.log", "dovecot.stderr"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    out += f.read()
            except FileNotFoundError:
                pass
        return out

    def wait_log(self, text, count=1, timeout=10.0):
        """Waits until text occurs count times in the log (written by Dovecot's log process,
        after the delivery it tells of); returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {text!r} not in Dovecot's log within {timeout} s:\n{log[-3000:]}")
            time.sleep(0.05)

    def messages(self):
        """The delivered files (bytes), oldest name first."""
        new = os.path.join(self.maildir, "new")
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    def wait_messages(self, count, timeout=10.0):
        """Waits until count files are in the Maildir's new/; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} messages in {self.maildir}/new within {timeout} s:\n"
                                     + self.log()[-3000:])
            time.sleep(0.05)

