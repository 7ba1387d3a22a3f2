# SPDX-License-Identifier: Apache-2.0
"""python plugin: its config (bad handler, import failure, bad args: clear config errors, also
on reload), `def` hooks, a hook that raises, blocks (time.sleep) or never returns costing one
session while other sessions are served, reload importing the handler afresh (old sessions
finish on the old objects), envelope.content edits reaching the next plugin, extra commands,
the authenticator and an auth_ mechanism."""
import base64
import glob
import os
import signal
import socket
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, Client, ServerTestCase, run_binary, server_config

try:
    import aiosmtpd  # noqa: F401 (Debian's python3-aiosmtpd)
    HAVE_AIOSMTPD = True
except ImportError:
    HAVE_AIOSMTPD = False

HANDLERS = r'''
import asyncio
import time


class Plain:
    """def hooks (aiosmtpd awaits them; the plugin takes both)."""
    def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return '250 def ok %s' % address

    def handle_DATA(self, server, session, envelope):
        return '250 def data %d %s' % (len(envelope.content), session.peer[0])


class Slow:
    """RCPT to sleep@ blocks the loop thread; to forever@ never returns; to wait@ awaits forever."""
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('sleep'):
            time.sleep(3)
        elif address.startswith('forever'):
            while True:
                time.sleep(0.2)
        elif address.startswith('wait'):
            await asyncio.Event().wait()
        envelope.rcpt_tos.append(address)
        await asyncio.sleep(0)
        return '250 fine'


class Editor:
    """Adds a header, drops one, changes the body: the next plugin stores the edit."""
    async def handle_DATA(self, server, session, envelope):
        head, _, body = envelope.content.partition(b'\r\n\r\n')
        lines = [l for l in head.split(b'\r\n') if not l.startswith(b'X-Drop:')]
        lines.insert(1, b'X-Python: edited')
        envelope.content = b'\r\n'.join(lines) + b'\r\n\r\n' + body.upper()
        return '250 OK'


class Rewriter:
    """Changes the envelope in handle_DATA: a new sender (with a parameter), one recipient
    dropped, one added (the next plugin delivers to what it sees)."""
    async def handle_DATA(self, server, session, envelope):
        envelope.mail_from = 'new@b.example'
        envelope.mail_options = ['BODY=8BITMIME']
        envelope.rcpt_tos.remove('x@y.example')
        envelope.rcpt_tos.append('added@y.example')
        return '250 OK'


class BadRewriter:
    """An address the server cannot take: the edit is refused and logged, the message goes on."""
    async def handle_DATA(self, server, session, envelope):
        envelope.rcpt_tos.append('not an address')
        return '250 OK'


def authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult
    if auth_data.login == b'alice' and auth_data.password == b'secret':
        return AuthResult(success=True, auth_data=auth_data)
    return AuthResult(success=False, handled=False)


PLAIN = Plain()  # a handler object rather than a class


class NoCode:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return 'hello there'


try:
    from aiosmtpd.smtp import syntax
except ImportError:  # the plugin works without aiosmtpd (HELP then has no text)
    def syntax(text):
        return lambda f: f


@syntax('PING [text]')
async def smtp_PING(server, arg):
    await server.push('259 Pong %s' % (arg or ''))


class Mech:
    """An AUTH mechanism of the handler (aiosmtpd's auth_<NAME>): a 334 round trip."""
    async def auth_XSECRET(self, server, args):
        from aiosmtpd.smtp import AuthResult
        answer = await server.challenge_auth('word?')
        return AuthResult(success=answer == b'open sesame', handled=False)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        return '250 authenticated=%s' % session.authenticated
'''


@unittest.skipUnless(os.path.exists(os.path.join(harness.PLUGIN_DIR, "python.so")),
                     "the python plugin is not built (it needs python3-dev)")
class PythonPluginTest(ServerTestCase):
    def setUp(self):
        self._dir = tempfile.TemporaryDirectory(prefix="asiosmtpd-py-")
        self.dir = self._dir.name
        self.addCleanup(self._dir.cleanup)
        self.write("handlers_p.py", HANDLERS)

    def write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def entry(self, handler, **config):
        return {"name": "python", "config": dict(handler=handler, path=[self.dir], **config)}

    def start(self, handler, extra=(), entry=None, **server):
        plugins = [entry or self.entry(handler)] + list(extra)
        return self.start_server(server_config(plugins=plugins, **server))

    def check(self, config):
        return run_binary(["--check-config"], config=server_config(plugins=[config]))

    # -- configuration ------------------------------------------------------------------------

    def test_config_errors_name_the_key(self):
        self.write("broken.py", "import no_such_module_here\n")
        self.write("syntax.py", "def x(:\n")
        cases = [
            (self.entry("broken:X"), "handler", "No module named 'no_such_module_here'"),
            (self.entry("syntax:X"), "handler", "SyntaxError"),
            (self.entry("handlers_p:Nope"), "handler", "has no 'Nope'"),
            (self.entry("nocolon"), "handler", 'expected "module:name"'),
            (self.entry("handlers_p:Plain", args={"x": 1}), "args", "unexpected keyword"),
            (self.entry("handlers_p:Plain", authenticator="handlers_p:missing"), "authenticator", "has no"),
            (self.entry("handlers_p:Plain", commands={"PING": "handlers_p:nothing"}), "commands.PING", "has no"),
            (self.entry("handlers_p:Plain", hanlder="x"), "hanlder", "unknown key"),
            ({"name": "python", "config": {"path": [self.dir]}}, "handler", "required"),
        ]
        for entry, key, text in cases:
            with self.subTest(key=key, text=text):
                r = self.check(entry)
                self.assertNotEqual(r.returncode, 0, r.stderr)
                self.assertIn("plugins[0].config." + key, r.stderr)
                self.assertIn(text, r.stderr)
        # Classes are not instantiated by --check-config (a Mailbox would make its folder).
        self.write("mkdir_handler.py", "import os\nclass Box:\n    def __init__(self, mail_dir):\n"
                   "        os.makedirs(mail_dir)\n")
        r = self.check(self.entry("mkdir_handler:Box", args={"mail_dir": os.path.join(self.dir, "mb")}))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "mb")))

    # -- hooks ----------------------------------------------------------------------------------

    def test_def_hooks(self):
        server = self.start("handlers_p:PLAIN")
        with Client(HOST, server.port) as c:
            c.reply()
            c.cmd("EHLO c.example")
            c.cmd("MAIL FROM:<a@b.example>")
            self.assertEqual(c.cmd("RCPT TO:<x@y.example>"), ["250 def ok x@y.example"])
            c.cmd("DATA")
            c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            self.assertEqual(c.reply(), ["250 def data 20 127.0.0.1"])

    def test_status_without_a_code(self):
        server = self.start("handlers_p:NoCode")
        self.assertEqual(self._transaction(server.port, "x@y.example"), ["451 4.3.0 Error: internal"])
        server.wait_output(lambda t: "does not start with a code" in t, "stderr")

    def _transaction(self, port, rcpt):
        with Client(HOST, port, timeout=15) as c:
            c.reply()
            c.cmd("EHLO c.example")
            c.cmd("MAIL FROM:<a@b.example>")
            return c.cmd(f"RCPT TO:<{rcpt}>")

    def _costs_one_session(self, rcpt, timeout):
        server = self.start("handlers_p:Slow", entry={**self.entry("handlers_p:Slow"), "timeout": timeout})
        got = {}
        t0 = time.monotonic()
        t = threading.Thread(target=lambda: got.setdefault("slow", self._transaction(server.port, rcpt)))
        t.start()
        time.sleep(0.3)
        # Meanwhile other sessions get their Python hooks answered, within a second or so.
        for i in range(3):
            t1 = time.monotonic()
            self.assertEqual(self._transaction(server.port, f"ok{i}@y.example"), ["250 fine"])
            self.assertLess(time.monotonic() - t1, 2.0)
        t.join(15)
        self.assertEqual(got["slow"], ["451 4.3.0 Error: internal"])
        self.assertLess(time.monotonic() - t0, timeout + 3)
        return server

    def test_blocking_hook_costs_one_session(self):
        server = self._costs_one_session("sleep@y.example", 1)
        server.wait_output(lambda t: "starting another" in t, "stderr")

    def test_never_returning_hook_costs_one_session(self):
        self._costs_one_session("forever@y.example", 1)

    def test_never_completing_coroutine_costs_one_session(self):
        self._costs_one_session("wait@y.example", 1)

    # -- reload ---------------------------------------------------------------------------------

    def test_reload_imports_the_handler_afresh(self):
        version = "class V:\n    async def handle_RCPT(self, server, session, envelope, address, o):\n" \
                  "        envelope.rcpt_tos.append(address)\n        return '250 version %s'\n"
        self.write("versioned.py", version % 1)
        with socket.socket() as s:  # a fixed port: the reload opens the listener again
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        server = self.start("versioned:V", listen=[{"address": HOST, "port": port}])
        old = Client(HOST, server.port)
        self.addCleanup(old.close)
        old.reply()
        old.cmd("EHLO c.example")
        old.cmd("MAIL FROM:<a@b.example>")
        self.assertEqual(old.cmd("RCPT TO:<x@y.example>"), ["250 version 1"])
        self.write("versioned.py", version % 2)
        server.signal(signal.SIGHUP)
        server.wait_output(lambda t: "event=reload result=ok" in t, "stderr")
        self.assertEqual(self._transaction(server.port, "z@y.example"), ["250 version 2"])
        self.assertEqual(old.cmd("RCPT TO:<w@y.example>"), ["250 version 1"])  # the old objects
        # A module that no longer imports: the reload is refused, version 2 goes on.
        self.write("versioned.py", "raise RuntimeError('broken on purpose')\n")
        server.signal(signal.SIGHUP)
        server.wait_output(lambda t: "event=reload result=failed" in t and "broken on purpose" in t, "stderr")
        self.assertEqual(self._transaction(server.port, "v@y.example"), ["250 version 2"])

    # -- editing ----------------------------------------------------------------------------------

    def test_edited_content_reaches_the_next_plugin(self):
        box = os.path.join(self.dir, "box")
        server = self.start("handlers_p:Editor", extra=[{"name": "maildir", "config": {"path": box}}])
        with Client(HOST, server.port) as c:
            c.reply()
            c.cmd("EHLO c.example")
            c.cmd("MAIL FROM:<a@b.example>")
            c.cmd("RCPT TO:<x@y.example>")
            c.cmd("DATA")
            c.send(b"Subject: hi\r\nX-Drop: me\r\nTo: x@y.example\r\n\r\nhello body\r\n.\r\n")
            self.assertEqual(c.reply()[0][:3], "250")
        files = glob.glob(os.path.join(box, "new", "*"))
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            stored = f.read().replace(b"\r\n", b"\n")
        head, _, body = stored.partition(b"\n\n")
        self.assertEqual(head.split(b"\n")[:3], [b"Subject: hi", b"X-Python: edited", b"To: x@y.example"])
        self.assertNotIn(b"X-Drop", head)
        self.assertEqual(body, b"HELLO BODY\n")

    def _deliver(self, server, rcpts):
        with Client(HOST, server.port) as c:
            c.reply()
            c.cmd("EHLO c.example")
            c.cmd("MAIL FROM:<a@b.example>")
            for r in rcpts:
                self.assertEqual(c.cmd(f"RCPT TO:<{r}>")[0][:3], "250")
            c.cmd("DATA")
            c.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
            return c.reply()

    def _stored_headers(self, box):
        files = glob.glob(os.path.join(box, "new", "*"))
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            return f.read().replace(b"\r\n", b"\n").partition(b"\n\n")[0].split(b"\n")

    def test_edited_envelope_reaches_the_next_plugin(self):
        box = os.path.join(self.dir, "box")
        server = self.start("handlers_p:Rewriter", extra=[{"name": "maildir", "config": {"path": box}}])
        self.assertEqual(self._deliver(server, ["x@y.example", "z@y.example"])[0][:3], "250")
        head = self._stored_headers(box)
        self.assertIn(b"X-MailFrom: new@b.example", head)
        self.assertIn(b"X-RcptTo: z@y.example, added@y.example", head)

    def test_refused_envelope_edit_is_logged(self):
        box = os.path.join(self.dir, "box")
        server = self.start("handlers_p:BadRewriter", extra=[{"name": "maildir", "config": {"path": box}}])
        self.assertEqual(self._deliver(server, ["x@y.example"])[0][:3], "250")
        self.assertIn(b"X-RcptTo: x@y.example", self._stored_headers(box))
        server.wait_output(lambda t: "envelope.rcpt_tos: an edit was refused" in t, "stderr")

    # -- idle -------------------------------------------------------------------------------------

    def _plugin_wakeups(self, pid):
        """Context switches of the plugin's threads (py-loop, py-watch) so far."""
        total = 0
        for task in glob.glob(f"/proc/{pid}/task/*"):
            try:
                with open(os.path.join(task, "comm")) as f:
                    if not f.read().startswith("py-"):
                        continue
                with open(os.path.join(task, "status")) as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            total += int(line.split()[1])
            except OSError:
                continue
        return total

    def test_idle_plugin_does_not_wake_up(self):
        server = self.start("handlers_p:Slow")
        self.assertEqual(self._transaction(server.port, "x@y.example"), ["250 fine"])
        time.sleep(0.5)  # the last heartbeat and watchdog look after the work
        before = self._plugin_wakeups(server.process.pid)
        time.sleep(1.0)
        self.assertLessEqual(self._plugin_wakeups(server.process.pid) - before, 2)

    # -- commands and AUTH ----------------------------------------------------------------------------

    def test_command(self):
        server = self.start(None, entry=self.entry("handlers_p:Plain", commands={"PING": "handlers_p:smtp_PING"}))
        with Client(HOST, server.port) as c:
            c.reply()
            self.assertEqual(c.cmd("PING hello"), ["259 Pong hello"])
            self.assertEqual(c.cmd("PING"), ["259 Pong "])
            self.assertEqual(c.cmd("HELP PING"), ["250 Syntax: PING [text]"])

    @unittest.skipUnless(HAVE_AIOSMTPD, "the handler uses aiosmtpd's AuthResult (apt-get install python3-aiosmtpd)")
    def test_authenticator(self):
        server = self.start(None, entry=self.entry("handlers_p:Mech", authenticator="handlers_p:authenticator"),
                            auth_require_tls=False)
        plain = lambda u, p: base64.b64encode(b"\0" + u + b"\0" + p).decode()
        with Client(HOST, server.port) as c:
            c.reply()
            self.assertIn("250-AUTH LOGIN PLAIN XSECRET", c.cmd("EHLO c.example"))
            self.assertEqual(c.cmd("AUTH PLAIN " + plain(b"alice", b"wrong")),
                             ["535 5.7.8 Authentication credentials invalid"])
            self.assertEqual(c.cmd("AUTH PLAIN " + plain(b"alice", b"secret")),
                             ["235 2.7.0 Authentication successful"])
            self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 authenticated=True"])
        with Client(HOST, server.port) as c:
            c.reply()
            c.cmd("EHLO c.example")
            self.assertEqual(c.cmd("AUTH XSECRET"), ["334 " + base64.b64encode(b"word?").decode()])
            self.assertEqual(c.cmd(base64.b64encode(b"open sesame").decode()),
                             ["235 2.7.0 Authentication successful"])
            self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 authenticated=True"])
        with Client(HOST, server.port) as c:
            c.reply()
            c.cmd("EHLO c.example")
            c.cmd("AUTH XSECRET")
            self.assertEqual(c.cmd(base64.b64encode(b"nope").decode()),
                             ["535 5.7.8 Authentication credentials invalid"])
            c.cmd("AUTH XSECRET")
            self.assertEqual(c.cmd("*"), ["501 5.7.0 Auth aborted"])
            self.assertEqual(c.cmd("MAIL FROM:<a@b.example>"), ["250 authenticated=None"])


if __name__ == "__main__":
    harness.main()
