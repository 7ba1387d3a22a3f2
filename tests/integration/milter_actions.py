# SPDX-License-Identifier: Apache-2.0
"""A test milter written with pymilter (Debian's python3-milter): every milter action, chosen by
the envelope and the Subject, and a record of what it was told (one JSON object per line in the
file given as the second argument). test_milter.py starts it; run by hand:

    /usr/bin/python3 milter_actions.py unix:/tmp/m.sock /tmp/m.log

Senders: reject-mail@ (REJECT), replycode-mail@ (a 553 reply), discard-mail@ (DISCARD),
accept-mail@ (ACCEPT: no more events for the message). Recipients: tempfail@ (TEMPFAIL),
unknown@ (550 5.1.1 reply). Subject words, at end of message: edit-headers (add, insert at the
top, change, delete), replace-body, rcpts (add added@ and added-par@ with a parameter, delete
removed@), chgfrom, discard, multiline (a 550 reply of three lines), quarantine, tempfail,
reject, progress (PROGRESS, then waits `slow` seconds), slow (waits before answering), skip
(SKIP on the first body chunk)."""
import json
import sys
import threading
import time

import Milter

SLOW = 2.5   # seconds the "slow" and "progress" subjects wait at end of message

_lock = threading.Lock()
_log_path = None


def record(**what):
    with _lock, open(_log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(what) + "\n")


MACROS = ["j", "_", "{daemon_name}", "{daemon_addr}", "v", "i", "{client_addr}", "{client_port}",
          "{client_name}", "{client_ptr}", "{auth_type}", "{auth_authen}", "{tls_version}", "{cipher}",
          "{cipher_bits}", "{mail_addr}", "{mail_mailer}", "{mail_host}", "{rcpt_addr}", "{rcpt_mailer}",
          "{rcpt_host}"]


class Actions(Milter.Base):
    def __init__(self):
        self.headers = []
        self.body_bytes = b""
        self.subject = ""
        self.chunks = 0

    def macros(self):
        out = {}
        for m in MACROS:
            v = self.getsymval(m)
            if v is not None:
                out[m] = v
        return out

    def connect(self, hostname, family, hostaddr):
        record(event="connect", hostname=hostname, family=family, addr=list(hostaddr) if hostaddr else None,
               macros=self.macros())
        return Milter.CONTINUE

    def hello(self, name):
        record(event="helo", name=name, macros=self.macros())
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        record(event="mail", sender=sender, params=list(params), macros=self.macros())
        self.headers = []
        self.body_bytes = b""
        self.subject = ""
        self.chunks = 0
        if sender.startswith("<reject-mail@"):
            return Milter.REJECT
        if sender.startswith("<replycode-mail@"):
            self.setreply("553", "5.1.8", "Sender domain refused by policy")
            return Milter.REJECT
        if sender.startswith("<discard-mail@"):
            return Milter.DISCARD
        if sender.startswith("<accept-mail@"):
            return Milter.ACCEPT
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        record(event="rcpt", rcpt=rcpt, params=list(params), macros=self.macros())
        if rcpt.startswith("<tempfail@"):
            return Milter.TEMPFAIL
        if rcpt.startswith("<unknown@"):
            self.setreply("550", "5.1.1", "No such user here")
            return Milter.REJECT
        return Milter.CONTINUE

    def data(self):
        record(event="data", macros=self.macros())
        return Milter.CONTINUE

    def header(self, name, value):
        self.headers.append([name, value])
        if name.lower() == "subject":
            self.subject = value
        return Milter.CONTINUE

    def eoh(self):
        record(event="eoh", headers=self.headers, macros=self.macros())
        return Milter.CONTINUE

    def body(self, chunk):
        self.chunks += 1
        self.body_bytes += chunk
        if "skip" in self.subject.split():
            return Milter.SKIP
        return Milter.CONTINUE

    def eom(self):
        words = self.subject.split()
        record(event="eom", body=self.body_bytes.decode("utf-8", "replace"), body_size=len(self.body_bytes),
               chunks=self.chunks, macros=self.macros())
        if "slow" in words:
            time.sleep(SLOW)
        if "progress" in words:
            deadline = time.monotonic() + SLOW
            while time.monotonic() < deadline:
                self.progress()
                time.sleep(0.3)
        if "edit-headers" in words:
            self.addheader("X-Added", "added at the end")
            self.addheader("X-Inserted", "inserted at the top", 0)
            self.chgheader("X-Change", 1, "changed value")
            self.chgheader("X-Delete", 1, "")
            self.chgheader("X-Twice", 2, "second changed")
        if "replace-body" in words:
            self.replacebody(b"The body was replaced.\r\n")
            self.replacebody(b"Second piece of the new body.\r\n")
        if "rcpts" in words:
            self.addrcpt("<added@example.org>")
            self.addrcpt("<added-par@example.org>", "NOTIFY=NEVER")
            self.delrcpt("<removed@example.org>")
        if "chgfrom" in words:
            self.chgfrom("<changed@example.org>")
        if "quarantine" in words:
            self.quarantine("held for review")
        if "discard" in words:
            return Milter.DISCARD
        if "multiline" in words:
            self.setreply("550", "5.7.1", "Message refused", "by the test milter", "on three lines")
            return Milter.REJECT
        if "tempfail" in words:
            return Milter.TEMPFAIL
        if "reject" in words:
            return Milter.REJECT
        return Milter.CONTINUE

    def close(self):
        record(event="close")
        return Milter.CONTINUE

    def abort(self):
        record(event="abort")
        return Milter.CONTINUE


def main():
    global _log_path
    socket_name, _log_path = sys.argv[1], sys.argv[2]
    Milter.factory = Actions
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.ADDRCPT_PAR
                     | Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Milter.runmilter("actions", socket_name, 240)


if __name__ == "__main__":
    main()
