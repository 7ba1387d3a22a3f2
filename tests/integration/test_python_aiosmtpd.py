# SPDX-License-Identifier: Apache-2.0
"""python plugin against aiosmtpd itself: aiosmtpd's bundled handlers (Sink, Debugging, Message
and AsyncMessage subclasses, Mailbox, Proxy) and the documentation's ExampleHandler run under
asiosmtpd (the python plugin) and under Debian's aiosmtpd (a Controller in this process), the
same module, the same conversation; the replies, what they print and the files they store
must be the same (the client's port in X-Peer aside)."""
import contextlib
import glob
import importlib
import io
import os
import re
import socket
import sys
import tempfile
import threading
import unittest

import logging

import harness
from harness import HOST, HOSTNAME, IDENT, Client, ServerTestCase, server_config

try:
    from aiosmtpd.controller import Controller
    HAVE_AIOSMTPD = True
except ImportError:  # Debian's python3-aiosmtpd (.ci/setup-tests)
    HAVE_AIOSMTPD = False

# The documentation's ExampleHandler as shipped in conf/examples/handlers/example_handler.py.
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "conf", "examples", "handlers")

HANDLERS = r'''
import asyncio
import os
from aiosmtpd.handlers import AsyncMessage, Message
from example_handler import ExampleHandler  # conf/examples/handlers: the file the project ships


class FileMessage(Message):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def handle_message(self, message):
        with open(self.path, "a") as f:
            f.write(message.as_string() + "\n=====\n")


class AsyncFileMessage(AsyncMessage):
    def __init__(self, path):
        super().__init__()
        self.path = path

    async def handle_message(self, message):
        await asyncio.sleep(0.01)
        with open(self.path, "a") as f:
            f.write(message.as_string() + "\n=====\n")


class Every:
    """Every hook, answering what it saw (aiosmtpd 1.4 awaits every hook: all async)."""
    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        return '250 hello %s from %s' % (hostname, server.hostname)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ['250-XEVERY', responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.startswith('tmp'):
            return '451 try later'
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return '250 sender %s %s' % (address, ' '.join(mail_options))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('boom'):
            raise ValueError('bad %s' % address)
        envelope.rcpt_tos.append(address)
        return '250-first line\r\n250 rcpt %d' % len(envelope.rcpt_tos)

    async def handle_DATA(self, server, session, envelope):
        return '250 got %d bytes from %s for %s, %s' % (
            len(envelope.content), envelope.mail_from, ','.join(envelope.rcpt_tos),
            type(envelope.content).__name__)

    async def handle_RSET(self, server, session, envelope):
        return '250 reset, from=%s' % envelope.mail_from

    async def handle_NOOP(self, server, session, envelope, arg):
        await server.push('250-pushed first')
        return '250 noop %r' % (arg,)

    async def handle_VRFY(self, server, session, envelope, address):
        return '252 maybe %s' % address

    async def handle_QUIT(self, server, session, envelope):
        return '221 see you %s' % session.host_name


class Proxied:
    """handle_PROXY and session.proxy_data: refuses one client, reports the header."""
    async def handle_PROXY(self, server, session, envelope, proxy_data):
        return str(proxy_data.src_addr) != '192.0.2.66'

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        p = session.proxy_data
        envelope.mail_from = address
        return '250 %s %s:%s %s:%s %s %s' % (p.version, p.src_addr, p.src_port, p.dst_addr,
                                             p.dst_port, p.family.name, p.protocol.name)


class ReturnsNone:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return None


class OldEhlo:
    """aiosmtpd's deprecated 4-argument handle_EHLO: its status comes after the keyword lines."""
    async def handle_EHLO(self, server, session, envelope, hostname):
        session.host_name = hostname
        return '250 HELP me, %s' % hostname


class Missing:
    """MISSING: aiosmtpd's default, and its state change."""
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        from aiosmtpd.smtp import MISSING
        return MISSING

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        from aiosmtpd.smtp import MISSING
        return MISSING

    async def handle_DATA(self, server, session, envelope):
        return '250 %s %s %s' % (envelope.mail_from, envelope.mail_options, envelope.rcpt_tos)


class Raises:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        raise RuntimeError('no way: ' + address)

    async def handle_DATA(self, server, session, envelope):
        return 1 / 0


class RaisesHandled(Raises):
    async def handle_exception(self, error):
        return '451 handled %s' % type(error).__name__


class AuthGate:
    """handle_AUTH before the mechanism: refuses one login and XSECRET's initial response,
    lets the rest through (MISSING) to auth_XSECRET or the built-in PLAIN."""
    async def handle_AUTH(self, server, session, envelope, args):
        import base64
        from aiosmtpd.smtp import MISSING
        if args[0] == 'XSECRET' and len(args) > 1:
            return '504 5.5.4 XSECRET takes no initial response'
        if args[0] == 'PLAIN' and len(args) > 1 and base64.b64decode(args[1]).split(b'\0')[1] == b'mallory':
            return '535 5.7.8 not you, %s' % session.host_name
        return MISSING

    async def auth_XSECRET(self, server, args):
        from aiosmtpd.smtp import AuthResult
        answer = await server.challenge_auth('word?')
        return AuthResult(success=answer == b'open sesame', handled=False)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        return '250 authenticated=%s' % session.authenticated
'''

MESSAGE = (b"From: Alice <a@b.example>\r\nTo: c@example.com\r\nSubject: hello there\r\n"
           b"\r\nline one\r\n..a dotted line\r\n8-bit: caf\xc3\xa9\r\n")

CONVERSATION = [
    "EHLO client.example",
    "MAIL FROM:<a@b.example>",
    "RCPT TO:<c@example.com>",
    "RCPT TO:<d@other.org>",
    ("DATA", MESSAGE),
    "MAIL FROM:<e@b.example>",
    "RCPT TO:<f@example.com>",
    "RSET",
    "NOOP",
    "QUIT",
]

logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # aiosmtpd's own tracebacks: expected here

PEER = re.compile(r"\('127\.0\.0\.1', \d+\)")


def converse(port, steps):
    """Each step's reply lines: a command line, or ("DATA", message) for DATA, the message
    (dot-stuffed) and its final dot."""
    out = []
    with Client(HOST, port) as c:
        if steps and isinstance(steps[0], tuple) and steps[0][0] == "RAW":
            c.send(steps[0][1] + "\r\n")  # a PROXY header, before the greeting
            steps = steps[1:]
        out.append(c.reply())
        for step in steps:
            if isinstance(step, tuple):
                r = c.cmd("DATA")
                out.append(r)
                if r[0].startswith("354"):
                    body = re.sub(rb"(?m)^\.", b"..", step[1])
                    c.send(body + b".\r\n")
                    out.append(c.reply())
            else:
                out.append(c.cmd(step))
    return out


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@unittest.skipUnless(HAVE_AIOSMTPD, "aiosmtpd is not installed (apt-get install python3-aiosmtpd)")
@unittest.skipUnless(os.path.exists(os.path.join(harness.PLUGIN_DIR, "python.so")),
                     "the python plugin is not built (it needs python3-dev)")
class HandlersAsAiosmtpd(ServerTestCase):
    """Each test: the same handler under asiosmtpd and under aiosmtpd."""

    def setUp(self):
        self._dir = tempfile.TemporaryDirectory(prefix="asiosmtpd-py-")
        self.dir = self._dir.name
        self.addCleanup(self._dir.cleanup)
        with open(os.path.join(self.dir, "handlers_t.py"), "w") as f:
            f.write(HANDLERS)
        sys.path.insert(0, self.dir)
        self.addCleanup(sys.path.remove, self.dir)
        sys.path.insert(0, EXAMPLES)
        self.addCleanup(sys.path.remove, EXAMPLES)
        sys.modules.pop("handlers_t", None)
        self.mod = importlib.import_module("handlers_t")

    def ours(self, handler, args=None, steps=CONVERSATION, extra_plugins=(), **server):
        config = {"handler": handler, "path": [self.dir, EXAMPLES]}
        if args is not None:
            config["args"] = args
        srv = self.start_server(server_config(
            plugins=[{"name": "python", "config": config}] + list(extra_plugins), **server))
        return srv, converse(srv.port, steps)

    def theirs(self, handler_obj, steps=CONVERSATION, **kw):
        kw.setdefault("enable_SMTPUTF8", False)  # aiosmtpd's SMTP default (its Controller's is True)
        port = free_port()
        controller = Controller(handler_obj, hostname=HOST, port=port, server_hostname=HOSTNAME,
                                ident=IDENT, **kw)
        controller.start()
        try:
            return converse(port, steps)
        finally:
            controller.stop()

    def test_sink(self):
        from aiosmtpd.handlers import Sink
        _, ours = self.ours("aiosmtpd.handlers:Sink")
        self.assertEqual(ours, self.theirs(Sink()))
        self.assertEqual(ours[6], ["250 OK"])

    def test_every_hook_and_status(self):
        steps = ["HELO client.example", "EHLO client.example", "MAIL FROM:<tmp@b.example>",
                 "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME", "RCPT TO:<c@example.com>",
                 "RCPT TO:<boom@example.com>", "RCPT TO:<d@example.com>", ("DATA", MESSAGE),
                 "NOOP", "NOOP  some thing ", "VRFY <x@y.example>", "RSET", "QUIT"]
        _, ours = self.ours("handlers_t:Every", steps=steps)
        theirs = self.theirs(self.mod.Every(), steps=steps)
        self.assertEqual(ours, theirs)
        self.assertIn("250-XEVERY", ours[2])
        self.assertEqual(ours[6], ["500 Error: (ValueError) bad boom@example.com"])

    def test_proxy_protocol(self):
        steps = [("RAW", "PROXY TCP4 192.0.2.1 198.51.100.2 4711 25"), "EHLO c.example",
                 "MAIL FROM:<a@b.example>", "QUIT"]
        _, ours = self.ours("handlers_t:Proxied", steps=steps,
                            listen=[{"address": HOST, "port": 0, "proxy_protocol": True}])
        theirs = self.theirs(self.mod.Proxied(), steps=steps, proxy_protocol_timeout=5)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[2], ["250 1 192.0.2.1:4711 198.51.100.2:25 INET STREAM"])
        # handle_PROXY answering False: closed without a reply, as aiosmtpd.
        srv, _ = self.ours("handlers_t:Proxied", steps=[("RAW", "PROXY TCP4 192.0.2.7 198.51.100.2 1 25")],
                           listen=[{"address": HOST, "port": 0, "proxy_protocol": True}])
        with Client(HOST, srv.port) as c:
            c.send("PROXY TCP4 192.0.2.66 198.51.100.2 4711 25\r\n")
            self.assertEqual(c.expect_eof(), b"")

    def test_hook_returning_none(self):
        steps = ["EHLO c.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@example.com>", "QUIT"]
        _, ours = self.ours("handlers_t:ReturnsNone", steps=steps)
        self.assertEqual(ours, self.theirs(self.mod.ReturnsNone(), steps=steps))
        self.assertEqual(ours[3], ["500 Error: (AssertionError) "])

    def test_old_ehlo(self):
        import warnings
        steps = ["EHLO c.example", "MAIL FROM:<a@b.example>", "QUIT"]
        _, ours = self.ours("handlers_t:OldEhlo", steps=steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = self.theirs(self.mod.OldEhlo(), steps=steps)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[1][-1], "250 HELP me, c.example")

    def test_missing(self):
        steps = ["EHLO c.example", "MAIL FROM:<a@b.example> SIZE=10", "RCPT TO:<c@example.com>",
                 "RCPT TO:<d@example.com>", ("DATA", b"Subject: x\r\n\r\nhi\r\n"), "QUIT"]
        _, ours = self.ours("handlers_t:Missing", steps=steps)
        self.assertEqual(ours, self.theirs(self.mod.Missing(), steps=steps))
        self.assertEqual(ours[-2], ["250 a@b.example ['SIZE=10'] ['c@example.com', 'd@example.com']"])

    def test_decode_data(self):
        steps = ["EHLO c.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@example.com>",
                 ("DATA", b"Subject: x\r\n\r\nascii only\r\n"), "QUIT"]
        _, ours = self.ours("handlers_t:Every", steps=steps, decode_data=True)
        theirs = self.theirs(self.mod.Every(), steps=steps, decode_data=True)
        self.assertEqual(ours, theirs)
        self.assertIn("str", ours[-2][0])

    def test_handle_auth(self):
        import base64
        b64 = lambda b: base64.b64encode(b).decode()
        steps = ["EHLO c.example", "AUTH PLAIN " + b64(b"\0mallory\0pw"), "AUTH PLAIN " + b64(b"\0alice\0pw"),
                 "AUTH XSECRET " + b64(b"early"), "AUTH XSECRET", b64(b"open sesame"),
                 "MAIL FROM:<a@b.example>", "QUIT"]
        # Here a refusal counts as a failed attempt (auth_max_failures, 3 by default; aiosmtpd
        # has no such limit).
        _, ours = self.ours("handlers_t:AuthGate", steps=steps, auth_require_tls=False, auth_max_failures=0)
        theirs = self.theirs(self.mod.AuthGate(), steps=steps, auth_require_tls=False)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[2], ["535 5.7.8 not you, c.example"])
        self.assertEqual(ours[3], ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(ours[4], ["504 5.5.4 XSECRET takes no initial response"])
        self.assertEqual(ours[6], ["235 2.7.0 Authentication successful"])
        self.assertEqual(ours[7], ["250 authenticated=True"])

    def test_exceptions(self):
        steps = ["EHLO c.example", "MAIL FROM:<a@b.example>", "RCPT TO:<c@example.com>", "QUIT"]
        srv, ours = self.ours("handlers_t:Raises", steps=steps)
        self.assertEqual(ours, self.theirs(self.mod.Raises(), steps=steps))
        self.assertEqual(ours[3], ["500 Error: (RuntimeError) no way: c@example.com"])
        srv.wait_output(lambda t: "Traceback" in t and "RuntimeError: no way" in t, "stderr")
        _, ours = self.ours("handlers_t:RaisesHandled", steps=steps)
        self.assertEqual(ours, self.theirs(self.mod.RaisesHandled(), steps=steps))
        self.assertEqual(ours[3], ["451 handled RuntimeError"])

    def test_example_handler_prints_the_same(self):
        srv, ours = self.ours("handlers_t:ExampleHandler")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            theirs = self.theirs(self.mod.ExampleHandler())
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[4], ["550 not relaying to that domain"])
        self.assertEqual(ours[6], ["250 Message accepted for delivery"])
        printed = srv.wait_output(lambda t: "End of message" in t)
        self.assertEqual(printed, buf.getvalue())

    def test_debugging_prints_the_same(self):
        from aiosmtpd.handlers import Debugging
        srv, ours = self.ours("aiosmtpd.handlers:Debugging")
        buf = io.StringIO()
        theirs = self.theirs(Debugging(buf))
        self.assertEqual(ours, theirs)
        printed = srv.wait_output(lambda t: "END MESSAGE" in t)
        self.assertEqual(PEER.sub("PEER", printed), PEER.sub("PEER", buf.getvalue()))
        self.assertIn("X-Peer: ('127.0.0.1', ", printed)

    def _stored(self, path):
        with open(path) as f:
            return PEER.sub("PEER", f.read())

    def test_message_subclass(self):
        ours_file, theirs_file = os.path.join(self.dir, "ours.txt"), os.path.join(self.dir, "theirs.txt")
        _, ours = self.ours("handlers_t:FileMessage", args={"path": ours_file})
        theirs = self.theirs(self.mod.FileMessage(theirs_file))
        self.assertEqual(ours, theirs)
        self.assertEqual(self._stored(ours_file), self._stored(theirs_file))
        self.assertIn("X-RcptTo: c@example.com, d@other.org", self._stored(ours_file))

    def test_async_message_subclass(self):
        ours_file, theirs_file = os.path.join(self.dir, "ours.txt"), os.path.join(self.dir, "theirs.txt")
        _, ours = self.ours("handlers_t:AsyncFileMessage", args={"path": ours_file})
        theirs = self.theirs(self.mod.AsyncFileMessage(theirs_file))
        self.assertEqual(ours, theirs)
        self.assertEqual(self._stored(ours_file), self._stored(theirs_file))

    def test_mailbox(self):
        from aiosmtpd.handlers import Mailbox
        ours_dir, theirs_dir = os.path.join(self.dir, "ours"), os.path.join(self.dir, "theirs")
        _, ours = self.ours("aiosmtpd.handlers:Mailbox", args={"mail_dir": ours_dir})
        theirs = self.theirs(Mailbox(theirs_dir))
        self.assertEqual(ours, theirs)
        files = lambda d: sorted(self._stored(p) for p in glob.glob(os.path.join(d, "new", "*")))
        self.assertEqual(len(files(ours_dir)), 1)
        self.assertEqual(files(ours_dir), files(theirs_dir))

    def test_proxy(self):
        from aiosmtpd.handlers import Proxy

        class Recorder:
            def __init__(self):
                self.got = []

            async def handle_DATA(self, server, session, envelope):
                self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 stored upstream"

        recorder = Recorder()
        up_port = free_port()
        upstream = Controller(recorder, hostname=HOST, port=up_port)
        upstream.start()
        self.addCleanup(upstream.stop)
        _, ours = self.ours("aiosmtpd.handlers:Proxy", args={"remote_hostname": HOST, "remote_port": up_port})
        theirs = self.theirs(Proxy(HOST, up_port))
        self.assertEqual(ours, theirs)
        self.assertEqual(len(recorder.got), 2)
        self.assertEqual(recorder.got[0], recorder.got[1])
        self.assertIn(b"X-Peer: 127.0.0.1\r\n", recorder.got[0][2])


if __name__ == "__main__":
    harness.main()
