# SPDX-License-Identifier: Apache-2.0
"""The python plugin's side inside the interpreter (compiled into python.so).

The C++ side hands every hook call over as a job tuple through `api.take()` (on the event
loop's thread, with the GIL); this module runs the aiosmtpd handler's hook on that loop and
answers with `api.complete(token, verdict, code, text)`. Nothing here blocks the server's
threads: they never take the GIL.

One `Instance` per plugin instance (per config entry and generation): the handler object, the
authenticator, the commands, and the sessions (aiosmtpd's Session objects, by session id).
One `Runner` per event loop thread of that instance.
"""

import asyncio
import importlib
import inspect
import logging
import os
import selectors
import socket
import sys
import traceback

try:  # Debian's python3-aiosmtpd: its very classes, so isinstance() checks hold
    from aiosmtpd.smtp import MISSING, AuthResult, Envelope, LoginPassword, Session
except Exception:  # pragma: no cover - aiosmtpd not installed: the same attributes
    class _Missing:
        def __repr__(self):
            return "MISSING"

    MISSING = _Missing()

    class Session:
        def __init__(self, loop):
            self.peer = None
            self.ssl = None
            self.host_name = None
            self.extended_smtp = False
            self.loop = loop
            self.proxy_data = None
            self._login_data = None
            self.auth_data = None
            self.authenticated = None

        @property
        def login_data(self):
            return self._login_data

        @login_data.setter
        def login_data(self, value):
            self._login_data = value

    class Envelope:
        def __init__(self):
            self.mail_from = None
            self.mail_options = []
            self.smtp_utf8 = False
            self.content = None
            self.original_content = None
            self.rcpt_tos = []
            self.rcpt_options = []

    class AuthResult:
        def __init__(self, *, success, handled=True, message=None, auth_data=None):
            self.success = success
            self.handled = handled
            self.message = message
            self.auth_data = auth_data

    import collections
    LoginPassword = collections.namedtuple("LoginPassword", "login password")

log = logging.getLogger("mail.log")

# Verdicts (plugin.h).
CONTINUE, ACCEPT, REJECT, TEMPFAIL = 0, 1, 2, 3
AUTH_CHALLENGE = 7
# Edit operations (plugin.h).
EDIT_INSERT_HEADER, EDIT_DELETE_HEADER, EDIT_REPLACE_BODY = 2, 4, 5
EDIT_CHANGE_SENDER, EDIT_ADD_RCPT, EDIT_DELETE_RCPT = 6, 7, 8
LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR = 1, 2, 3, 4

# Job kinds (python.cpp: job_kind).
(J_CLOSE, J_HELO, J_EHLO, J_MAIL, J_RCPT, J_DATA, J_RSET, J_NOOP, J_QUIT, J_VRFY, J_AUTH,
 J_COMMAND, J_MECH, J_PROXY) = range(14)

HOOKS = ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "PROXY", "AUTH")
# The replies the server gives when no plugin answers: a hook returning the same text passes on
# (CONTINUE), so that later plugins still run; any other status is the reply (ACCEPT).
DEFAULTS = {"MAIL": "250 OK", "RCPT": "250 OK", "DATA": "250 OK", "RSET": "250 OK",
            "NOOP": "250 OK", "QUIT": "221 Bye",
            "VRFY": "252 Cannot VRFY user, but will accept message and attempt delivery"}


class _Selector(selectors.EpollSelector):
    """The event loop's selector: before the loop looks for events (and maybe sleeps), the
    hook calls answered since its last look are completed together (Runner.flush), so that
    the server's thread is woken once for all of them rather than once each."""
    flush = None

    def select(self, timeout=None):
        if self.flush is not None:
            self.flush()
        return super().select(timeout)


def _start_eagerly(loop, coro):
    """A task for coro whose first step runs now (Python 3.12's eager_start), rather than in
    the loop's next round: a hook that finishes without waiting (or waits once, as for
    asyncio.sleep(0)) is answered a round or two earlier, and each round costs the loop a
    look at its descriptors. The task is the current task during that step, as in any task.
    On 3.11 the step the new task scheduled is taken back from the loop's ready queue and run
    here; if the queue does not end with it (another loop implementation), it stays queued."""
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)
    task = loop.create_task(coro)
    ready = getattr(loop, "_ready", None)
    if ready:
        handle = ready[-1]
        if getattr(getattr(handle, "_callback", None), "__self__", None) is task:
            ready.pop()
            handle._run()
    return task


_EAGER = sys.version_info >= (3, 12)


def _new_loop():
    selector = _Selector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.asiosmtpd_selector = selector
    return loop


class ConfigError(Exception):
    """A bad `handler`, `authenticator` or `commands` entry: `key` names it."""

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


def _resolve(key, spec):
    """'module.path:Name' (or 'module.path.Name') -> the object."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(key, "expected \"module:name\"")
    spec = spec.strip()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(key, f"expected \"module:name\", got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:  # SyntaxError, ImportError, an exception at import, SystemExit
        detail = "".join(traceback.format_exception_only(type(e), e)).strip().replace("\n", " | ")
        raise ConfigError(key, f"cannot import {module_name!r}: {detail}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(key, f"module {module_name!r} has no {attr!r}") from None
    return obj


def _forget_modules(names, folders):
    """Drop the handler's modules from sys.modules so that this generation imports them afresh
    (sessions of the previous one keep the objects they have)."""
    folders = [os.path.realpath(f) + os.sep for f in folders]
    for name in list(sys.modules):
        mod = sys.modules.get(name)
        top = name.split(".")[0]
        drop = name in names or top in names
        if not drop and folders:
            f = getattr(mod, "__file__", None) or ""
            drop = bool(f) and any(os.path.realpath(f).startswith(d) for d in folders)
        if drop:
            sys.modules.pop(name, None)


def _server_settings(config_dir):
    """The server's own settings that handlers see through `server` (hostname, SIZE, ...),
    read from the server's config file (its --config, in this process's command line), best
    effort: {} when it cannot be read (no PyYAML and not JSON, the embedded default config)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0")]
        path = None
        for i, a in enumerate(argv):
            if a in ("-c", "--config") and i + 1 < len(argv):
                path = argv[i + 1]
            elif a.startswith("--config="):
                path = a[len("--config="):]
        if not path:
            return {}
        path = os.path.join(config_dir, os.path.basename(path))
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            import yaml
            data = yaml.safe_load(text) or {}
        except ImportError:  # no PyYAML: a config in JSON (which is YAML) still reads
            import json
            data = json.loads(text)
        server = data.get("server") or {}
        listeners = server.get("listen") or []
        out = {k: server[k] for k in ("hostname", "ident", "data_size_limit", "decode_data",
                                       "enable_smtputf8", "auth_require_tls",
                                       "advertise_pipelining") if server.get(k) is not None}
        out["starttls"] = any(isinstance(l, dict) and l.get("tls") == "starttls" for l in listeners)
        out["tls"] = bool(data.get("tls"))
        return out
    except Exception:
        return {}


class Server:
    """What a hook gets as `server`: aiosmtpd's SMTP object as far as handlers use it."""

    def __init__(self, inst, session):
        self.hostname = inst.hostname
        self.data_size_limit = inst.data_size_limit
        self.enable_SMTPUTF8 = inst.smtputf8
        self._decode_data = inst.decode_data
        self.event_handler = inst.handler
        self.tls_context = inst.tls_context
        self.session = session
        self.envelope = None
        self.loop = None
        self.transport = None
        self.__ident__ = inst.ident
        self._pushed = []
        self._state = None   # the SessionState (AUTH mechanisms)
        self._runner = None  # the Runner of the running hook

    async def push(self, status):
        """A line sent before the hook's reply (it becomes the first lines of that reply)."""
        if isinstance(status, bytes):
            status = status.decode("utf-8", "surrogateescape")
        self._pushed.append(status)

    async def challenge_auth(self, challenge, encode_to_b64=True, log_client_response=False):
        """AUTH mechanisms: sends 334 <base64 of challenge> and returns the client's decoded
        answer. (A client answering '*' is answered 501 by the server; the mechanism is not
        resumed.)"""
        if isinstance(challenge, str):
            challenge = challenge.encode()
        if not encode_to_b64:
            import base64
            challenge = base64.b64decode(challenge)
        st = self._state
        if st is None or st.mech_token is None:
            raise RuntimeError("challenge_auth() outside an AUTH mechanism")
        token, st.mech_token = st.mech_token, None
        st.mech_future = asyncio.get_running_loop().create_future()
        self._runner.complete(token, AUTH_CHALLENGE, 0, challenge)
        return await st.mech_future

    def __getattr__(self, name):
        raise AttributeError(f"'server' has no attribute {name!r} under asiosmtpd "
                             "(see plugins/python/README.md)")


class SessionState:
    __slots__ = ("session", "server", "envelope", "gen", "mech_task", "mech_token", "mech_future", "task")

    def __init__(self, inst, loop):
        self.session = Session(loop)
        self.server = Server(inst, self.session)
        self.server.loop = loop
        self.envelope = Envelope()
        self.server.envelope = self.envelope
        self.server._state = self
        self.gen = 0
        self.mech_task = None    # a running AUTH mechanism
        self.mech_token = None   # the call it answers next
        self.mech_future = None  # what it waits for: the client's next answer
        self.task = None         # the latest hook call's task (cancelled when the session ends)


class Instance:
    def __init__(self, api, handler, args, path, authenticator, commands, config_dir,
                 hostname, data_size_limit, ident, check_only):
        self.api = api
        for p in reversed(path):
            p = os.path.join(config_dir, p)
            if p not in sys.path:
                sys.path.insert(0, p)
        folders = [os.path.join(config_dir, p) for p in path]
        names = set()
        for spec in [handler, authenticator] + list((commands or {}).values()):
            if isinstance(spec, str):
                names.add(spec.partition(":")[0].strip())
        names.discard("")
        _forget_modules(names, folders)
        obj = _resolve("handler", handler)
        # The loop the first Runner runs: current while the handler is made, so that a handler
        # taking asyncio.get_event_loop() in __init__ (aiosmtpd's AsyncMessage) gets it.
        self.first_loop = None if check_only else _new_loop()
        if inspect.isclass(obj):
            if check_only:
                try:  # not made (it might create folders), but its arguments must fit
                    inspect.signature(obj).bind(**(args or {}))
                except TypeError as e:
                    raise ConfigError("args", f"{handler}(**args): {e}") from None
                except ValueError:
                    pass  # no signature to check
                self.handler = None
            else:
                asyncio.set_event_loop(self.first_loop)
                try:
                    obj = obj(**(args or {}))
                except Exception as e:
                    raise ConfigError("args", f"{handler}(**args) failed: "
                                      f"{type(e).__name__}: {e}") from None
                finally:
                    asyncio.set_event_loop(None)
                self.handler = obj
        elif args:
            raise ConfigError("args", f"{handler!r} is not a class: `args` cannot be given")
        else:
            self.handler = obj
        self.handler_type = obj if inspect.isclass(obj) else type(obj)
        target = obj
        self.hooks = {h: getattr(target, "handle_" + h) for h in HOOKS
                      if callable(getattr(target, "handle_" + h, None))}
        if "EHLO" in self.hooks:
            try:
                n = len(inspect.signature(self.hooks["EHLO"]).parameters)
            except (TypeError, ValueError):
                n = 5
            if inspect.isclass(target):
                n -= 1
            if n not in (4, 5):
                raise ConfigError("handler", "handle_EHLO takes (server, session, envelope, "
                                  "hostname, responses)")
            self.ehlo_old = n == 4
        self.exception_hook = getattr(target, "handle_exception", None)
        self.authenticator = None
        if authenticator:
            self.authenticator = _resolve("authenticator", authenticator)
            if not callable(self.authenticator):
                raise ConfigError("authenticator", f"{authenticator!r} is not callable")
        self.commands = {}
        for verb, spec in (commands or {}).items():
            fn = _resolve(f"commands.{verb}", spec)
            if not callable(fn):
                raise ConfigError(f"commands.{verb}", f"{spec!r} is not callable")
            self.commands[verb.upper()] = fn
        self.mechanisms = {}
        for name, fn in inspect.getmembers(target):
            if name.startswith("auth_") and callable(fn):
                mech = getattr(fn, "__auth_mechanism_name__", name[5:].replace("__", "-"))
                if mech.upper() not in ("PLAIN", "LOGIN"):
                    self.mechanisms[mech.upper()] = fn
        server = _server_settings(config_dir)
        self.settings = server
        self.hostname = hostname or server.get("hostname") or socket.getfqdn()
        if data_size_limit is None or data_size_limit < 0:
            data_size_limit = server.get("data_size_limit", 33554432)
        self.data_size_limit = data_size_limit
        self.ident = server.get("ident") or ident
        self.smtputf8 = bool(server.get("enable_smtputf8", False))
        self.decode_data = bool(server.get("decode_data", False))
        self.tls_context = None
        if server.get("tls"):
            import ssl
            # For `if server.tls_context:` checks only: not the server's own TLS context.
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.sessions = {}
        if check_only:
            return
        if self.handler is not None and inspect.isclass(target):
            self.hooks = {h: getattr(self.handler, "handle_" + h) for h in self.hooks}
            self.exception_hook = getattr(self.handler, "handle_exception", None)

    def wants(self):
        """What the C++ side registers: the hooks, commands and mechanisms."""
        commands = [(verb, getattr(fn, "__smtp_syntax__", None) or "")  # aiosmtpd's @syntax
                    for verb, fn in sorted(self.commands.items())]
        return (sorted(self.hooks), self.authenticator is not None, commands, sorted(self.mechanisms))


class Runner:
    """One event loop thread of an instance."""

    def __init__(self, inst, api):
        self.inst = inst
        self.api = api
        self.loop, inst.first_loop = inst.first_loop or _new_loop(), None
        self.done = []  # (token, verdict, code, text): answers not handed to the server yet
        self.loop.asiosmtpd_selector.flush = self.flush
        self.active = 0      # hook calls in progress
        self.beating = None  # the heartbeat's timer, while hook calls are in progress
        self.calls = {J_HELO: self._helo, J_EHLO: self._ehlo, J_MAIL: self._mail, J_RCPT: self._rcpt,
                      J_DATA: self._data, J_RSET: self._rset, J_NOOP: self._noop, J_QUIT: self._quit,
                      J_VRFY: self._vrfy, J_AUTH: self._auth, J_PROXY: self._proxy,
                      J_COMMAND: self._command, J_MECH: self._mechanism}
        self.rcpt_hook = inst.hooks.get("RCPT")

    def run(self, fd):
        asyncio.set_event_loop(self.loop)
        self.loop.add_reader(fd, self._drain)
        try:
            self.loop.run_forever()
        finally:
            self.flush()
            self.loop.remove_reader(fd)
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:
                t.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=1))
            self.loop.close()

    def flush(self):
        """Hand the answers of this loop's last round to the server, in one call."""
        done = self.done
        if done:
            self.done = []
            self.api.complete_many(done)

    def complete(self, token, verdict, code, text):
        self.done.append((token, verdict, code, text))

    def _beat(self):
        """While hook calls are in progress the loop beats every 50 ms (the C++ side takes a
        loop silent for 500 ms with work as blocked); idle, it stops: no wake-ups."""
        busy = self.active > 0
        self.api.beat(busy)
        self.beating = self.loop.call_later(0.05, self._beat) if busy else None

    def _drain(self):
        jobs = self.api.take()
        if jobs is None:
            self.loop.stop()
            return
        loop = self.loop
        sessions = self.inst.sessions
        for job in jobs:
            kind = job[0]
            if kind == J_CLOSE:
                st = self.inst.sessions.pop(job[2], None)
                if st is not None:
                    # As aiosmtpd on a lost connection: the session's hooks still running end.
                    _cancel(st.mech_task, self.loop)
                    _cancel(st.task, self.loop)
                continue
            self.active += 1
            st = sessions.get(job[2])
            task = _start_eagerly(loop, self._run(job))
            if st is not None and not task.done():
                st.task = task  # else _run sets it (the session's first hook call)
        if self.active and self.beating is None:
            self.beating = self.loop.call_later(0.05, self._beat)

    # -- one hook call ------------------------------------------------------------------------

    def _state(self, job):
        sid = job[2]
        sessions = self.inst.sessions
        st = sessions.get(sid)
        if st is None:
            st = sessions[sid] = SessionState(self.inst, self.loop)
        info = job[4]
        if info is not None:  # None: the session's state is as the last job said
            self._session_info(st.session, info)
        server = st.server
        if st.gen != job[3]:
            st.gen = job[3]
            st.envelope = server.envelope = Envelope()
        if server._runner is not self:
            server.loop = self.loop
            server._runner = self
        if server._pushed:
            server._pushed = []
        if st.mech_task is not None and not (job[0] == J_MECH and job[7] > 0):
            st.mech_task.cancel()  # an AUTH exchange the client aborted ('*')
            st.mech_task = st.mech_future = st.mech_token = None
        return st

    def _session_info(self, s, info):
        (peer_addr, peer_port, helo, esmtp, tls, authenticated, tls_version, tls_cipher,
         proxy) = info
        if proxy is not None:
            s.proxy_data = _proxy_data(proxy)
        s.peer = (peer_addr, peer_port) if ":" not in peer_addr else (peer_addr, peer_port, 0, 0)
        s.extended_smtp = bool(esmtp)
        if "HELO" not in self.inst.hooks and "EHLO" not in self.inst.hooks:
            s.host_name = helo or None
        if tls and s.ssl is None:
            s.ssl = {"cipher": (tls_cipher, tls_version, None), "version": tls_version}
        elif not tls:
            s.ssl = None
        if authenticated:
            s.authenticated = True

    async def _run(self, job):
        kind, token = job[0], job[1]
        st = None
        try:
            try:
                st = self._state(job)
                if st.task is None:
                    st.task = asyncio.current_task()
                result = await self.calls[kind](st, job)
            except Exception as error:
                result = await self._exception(st, error, job[2])
            except asyncio.CancelledError:
                return  # an abandoned AUTH exchange, a session gone
            except BaseException as error:  # SystemExit, KeyboardInterrupt in a handler: one session
                result = await self._exception(st, error, job[2])
            if kind == J_MECH and st is not None and result is not None:
                token, st.mech_token = st.mech_token, None  # the call the mechanism answers now
                if token is None:
                    return
            if result is None:
                return  # already completed (AUTH challenge)
            self._finish(token, st, *result)
        finally:
            self.active -= 1

    async def _exception(self, st, error, sid):
        hook = self.inst.exception_hook
        if hook is not None:
            try:
                status = hook(error)
                if hasattr(status, "__await__"):
                    status = await status
                return ("status", status)
            except BaseException as inner:
                self._log_traceback("session=%s exception in handle_exception()" % sid)
                return ("status", "500 Error: ({}) {}".format(type(inner).__name__, inner))
        self._log_traceback("session=%s %r SMTP session exception"
                            % (sid, st.session.peer if st else None))
        return ("status", "500 Error: ({}) {}".format(type(error).__name__, error))

    def _log_traceback(self, what):
        text = what + "\n" + traceback.format_exc()
        self.api.log(LOG_ERROR, text)

    # -- the hooks: (st, job) -> a result for _finish --------------------------------------------

    async def _helo(self, st, job):
        s = st.session
        status = self.inst.hooks["HELO"](st.server, s, st.envelope, job[5])
        if hasattr(status, "__await__"):
            status = await status
        if status is MISSING or _missing(status):
            s.host_name = job[5]
            return ("default", None)
        return ("status", status)

    async def _ehlo(self, st, job):
        inst, s, env, server = self.inst, st.session, st.envelope, st.server
        hostname = job[5]
        tls = s.ssl is not None
        if inst.ehlo_old:
            # aiosmtpd's deprecated 4-argument form: its lines, then the hook's status.
            status = inst.hooks["EHLO"](server, s, env, hostname)
            if hasattr(status, "__await__"):
                status = await status
            if status is MISSING or _missing(status):
                s.host_name = hostname
                return ("default", None)
            return ("lines", self._ehlo_lines(tls)[:-1] + [status])
        responses = self._ehlo_lines(tls)
        original = list(responses)
        out = inst.hooks["EHLO"](server, s, env, hostname, responses)
        if hasattr(out, "__await__"):
            out = await out
        if out == original and not server._pushed:
            return ("default", None)
        if isinstance(out, (str, bytes)):
            out = [out]
        return ("lines", list(out))

    async def _mail(self, st, job):
        env = st.envelope
        address, params = job[5], list(job[6])
        env.smtp_utf8 = "SMTPUTF8" in params
        status = self.inst.hooks["MAIL"](st.server, st.session, env, address, params)
        if hasattr(status, "__await__"):
            status = await status
        if type(status) is not str and (status is MISSING or _missing(status)):
            env.mail_from = address
            env.mail_options.extend(params)
            return ("default", None)
        return ("status", status, "MAIL")

    async def _rcpt(self, st, job):
        env = st.envelope
        if env.mail_from is None:
            self._sync_mail(env, job)
        address = job[5]
        status = self.rcpt_hook(st.server, st.session, env, address, [])
        if hasattr(status, "__await__"):
            status = await status
        if type(status) is not str and (status is MISSING or _missing(status)):
            env.rcpt_tos.append(address)
            return ("default", None)
        return ("status", status, "RCPT")

    def _simple(name, with_arg):
        """RSET, QUIT (no argument), NOOP, VRFY (one): the status, or the server's default."""
        async def call(self, st, job):
            hook = self.inst.hooks[name]
            if with_arg:
                status = hook(st.server, st.session, st.envelope, job[5])
            else:
                status = hook(st.server, st.session, st.envelope)
            if hasattr(status, "__await__"):
                status = await status
            if type(status) is not str and (status is MISSING or _missing(status)):
                return ("default", None)
            return ("status", status, name)
        return call

    _rset = _simple("RSET", False)
    _quit = _simple("QUIT", False)
    _noop = _simple("NOOP", True)
    _vrfy = _simple("VRFY", True)
    del _simple

    async def _proxy(self, st, job):
        # aiosmtpd: a false or MISSING result closes the connection without a reply.
        s = st.session
        status = self.inst.hooks["PROXY"](st.server, s, st.envelope, s.proxy_data)
        if hasattr(status, "__await__"):
            status = await status
        if status is MISSING or _missing(status) or not status:
            return ("verdict", REJECT)
        return ("default", None)

    async def _command(self, st, job):
        server = st.server
        status = self.inst.commands[job[5]](server, job[6])
        if hasattr(status, "__await__"):
            status = await status
        if status is not None and status is not MISSING and not _missing(status):
            server._pushed.append(status)
        if not server._pushed:
            return ("default", None)
        return ("lines", [])

    def _sync_mail(self, env, job):
        """MAIL has no hook here: the envelope gets what aiosmtpd's MISSING stores."""
        if "MAIL" not in self.inst.hooks and env.mail_from is None:
            txn = job[-1]
            if txn is not None and txn[0]:
                env.mail_from = txn[0]
                env.mail_options = list(txn[1])
                env.smtp_utf8 = "SMTPUTF8" in env.mail_options

    def _ehlo_lines(self, tls):
        """The server's EHLO lines as far as its config tells (aiosmtpd's order); another
        plugin's keywords are not among them."""
        inst = self.inst
        cfg = inst.settings
        lines = ["250-" + inst.hostname]
        if inst.data_size_limit:
            lines.append("250-SIZE %d" % inst.data_size_limit)
        if not inst.decode_data:
            lines.append("250-8BITMIME")
        if inst.smtputf8:
            lines.append("250-SMTPUTF8")
        if cfg.get("starttls") and not tls:
            lines.append("250-STARTTLS")
        if not cfg.get("auth_require_tls", True) or tls:
            lines.append("250-AUTH " + " ".join(sorted(["LOGIN", "PLAIN"] + list(inst.mechanisms))))
        if cfg.get("advertise_pipelining"):
            lines.append("250-PIPELINING")
        lines.append("250 HELP")
        return lines

    async def _data(self, st, job):
        s, env, server = st.session, st.envelope, st.server
        content, flags = job[5], job[6]
        self._sync_mail(env, job)
        txn = job[-1]
        if "RCPT" not in self.inst.hooks and txn is not None:
            env.rcpt_tos = list(txn[2])
        decoded, utf8 = bool(flags & 0x4), bool(flags & 0x8)
        env.original_content = content
        if decoded:
            env.content = content.decode("utf-8" if utf8 else "ascii", "surrogateescape")
        else:
            env.content = content
        before_content = env.content
        before_from, before_options = env.mail_from, list(env.mail_options or ())
        before_rcpts = list(env.rcpt_tos or ())
        status = self.inst.hooks["DATA"](server, s, env)
        if hasattr(status, "__await__"):
            status = await status
        edited = False
        if env.content is not before_content:
            new = env.content
            if isinstance(new, str):
                new = new.encode("utf-8" if (utf8 or not decoded) else "ascii", "surrogateescape")
            elif isinstance(new, (bytearray, memoryview)):
                new = bytes(new)
            if isinstance(new, bytes) and new != content:
                self._edit(job[1], content, new)
                edited = True
        if (env.mail_from != before_from or list(env.mail_options or ()) != before_options
                or list(env.rcpt_tos or ()) != before_rcpts):
            edited = self._edit_envelope(job[1], env, before_from, before_options,
                                         before_rcpts) or edited
        if status is MISSING or _missing(status):
            return ("default", None)
        return ("status", status, "DATA", edited)

    def _edit_envelope(self, token, env, before_from, before_options, before_rcpts):
        """handle_DATA changed envelope.mail_from, mail_options or rcpt_tos: the same changes
        to the server's transaction, which the plugins after this one see. True if one was
        recorded."""
        api = self.api
        made = False
        if env.mail_from != before_from or list(env.mail_options or ()) != before_options:
            params = tuple(_wire(o) for o in (env.mail_options or ()))
            made = api.edit(token, EDIT_CHANGE_SENDER, _address(env.mail_from), b"", 0, params,
                            "envelope.mail_from") == 0
        after = [_address(r) for r in (env.rcpt_tos or ())]
        before = [_address(r) for r in before_rcpts]
        for r in before:
            if r not in after:
                made = api.edit(token, EDIT_DELETE_RCPT, r, b"", 0, (), "envelope.rcpt_tos") == 0 or made
        for r in after:
            if r not in before:
                made = api.edit(token, EDIT_ADD_RCPT, r, b"", 0, (), "envelope.rcpt_tos") == 0 or made
        return made

    def _edit(self, token, old, new):
        api = self.api
        oh, ob = _split_message(old)
        nh, nb = _split_message(new)
        if oh != nh:
            p = 0
            while p < len(oh) and p < len(nh) and oh[p] == nh[p]:
                p += 1
            sfx = 0
            while (sfx < len(oh) - p and sfx < len(nh) - p
                   and oh[len(oh) - 1 - sfx] == nh[len(nh) - 1 - sfx]):
                sfx += 1
            kept = [name.lower() for name, _ in oh[:p]]
            for name, _ in oh[p:len(oh) - sfx]:
                api.edit(token, EDIT_DELETE_HEADER, name, b"", kept.count(name.lower()) + 1, (),
                         "envelope.content")
            for k, (name, value) in enumerate(nh[p:len(nh) - sfx]):
                api.edit(token, EDIT_INSERT_HEADER, name, value, p + k, (), "envelope.content")
        if ob != nb:
            api.edit(token, EDIT_REPLACE_BODY, b"", nb, 0, (), "envelope.content")

    async def _auth(self, st, job):
        mechanism, authzid, login, password = job[5], job[6], job[7], job[8]
        s, env, server = st.session, st.envelope, st.server
        if "AUTH" in self.inst.hooks:
            # The server ran the PLAIN/LOGIN exchange already: handle_AUTH gets the credentials
            # as an initial response would carry them.
            response = authzid + b"\0" + login + b"\0" + password if mechanism == "PLAIN" else login
            out = await self._handle_auth(st, [mechanism, _b64(response)])
            if out is not None:
                return out
        if self.inst.authenticator is None:
            return ("default", None)  # as aiosmtpd without one: 535 (unless a later plugin vouches)
        result = self.inst.authenticator(server, s, env, mechanism, LoginPassword(login, password))
        if hasattr(result, "__await__"):
            result = await result
        if isinstance(result, AuthResult) and result.success:
            s.authenticated = True
            s.auth_data = result.auth_data
            s._login_data = getattr(result.auth_data, "login", None)
            if result.message:
                return ("status", result.message, "AUTH")
            return ("verdict", ACCEPT)
        if isinstance(result, AuthResult):
            if not result.handled and result.message:
                return ("status", result.message, "AUTH")
            return ("verdict", REJECT)
        if result is None or result is MISSING or _missing(result) or result is False:
            return ("verdict", REJECT)
        s.authenticated = True  # the old system: the identity itself
        s._login_data = result
        return ("verdict", ACCEPT)

    async def _handle_auth(self, st, args):
        """aiosmtpd's handle_AUTH(server, session, envelope, args) before the mechanism: None
        (MISSING) lets the mechanism run; a status is the reply instead."""
        status = self.inst.hooks["AUTH"](st.server, st.session, st.envelope, args)
        if hasattr(status, "__await__"):
            status = await status
        if status is MISSING or _missing(status):
            return None
        if status is None:
            return ("verdict", REJECT)  # aiosmtpd sends nothing (the client waits): 535 here
        return ("status", status, "AUTH")

    async def _mechanism(self, st, job):
        mech, response, step = job[5], job[6], job[7]
        token = job[1]
        if step > 0:
            fut = st.mech_future
            if fut is None or fut.done():
                raise RuntimeError("AUTH %s: an answer nobody waits for" % mech)
            st.mech_future = None
            st.mech_token = token
            fut.set_result(response)
            return None  # the mechanism's task answers this call
        fn = self.inst.mechanisms[mech]
        args = [mech] if response is None else [mech, _b64(response) or "="]
        st.mech_token = token
        if "AUTH" in self.inst.hooks:
            out = await self._handle_auth(st, list(args))
            if out is not None:
                return out  # _run answers st.mech_token with it; the mechanism does not run
        st.mech_task = asyncio.current_task()
        try:
            result = fn(st.server, args)
            if hasattr(result, "__await__"):
                result = await result
        finally:
            st.mech_task = None
            st.mech_future = None
        token, st.mech_token = st.mech_token, None
        s = st.session
        if isinstance(result, AuthResult):
            if result.success:
                s.authenticated = True
                s.auth_data = result.auth_data
                out = ("verdict", ACCEPT) if not result.message else ("status", result.message, "AUTH")
            elif not result.handled and result.message:
                out = ("status", result.message, "AUTH")
            else:
                out = ("verdict", REJECT)
        elif result is None or result is MISSING or _missing(result) or result is False:
            out = ("verdict", REJECT)
        else:
            s.authenticated = True
            s._login_data = result
            out = ("verdict", ACCEPT)
        if token is not None:
            self._finish(token, st, *out)
        return None

    # -- the answer -----------------------------------------------------------------------------

    def _finish(self, token, st, what, value=None, hook=None, edited=False):
        complete = self.complete
        pushed = st.server._pushed if st is not None else []
        if what == "default" and not pushed:
            complete(token, CONTINUE, 0, b"")
            return
        if what == "verdict":
            complete(token, value, 0, b"")
            return
        if what == "default":
            what, value = "lines", []
        if what == "status":
            if not pushed and hook is not None and not edited and value == DEFAULTS.get(hook):
                complete(token, CONTINUE, 0, b"")
                return
            if (not pushed and type(value) is str and len(value) > 4 and value[3] == " "
                    and value[:3].isdigit() and "\r" not in value and "\n" not in value):
                code = int(value[:3])  # the common case: one line
                verdict = (CONTINUE if edited else ACCEPT) if code < 400 else TEMPFAIL if code < 500 else REJECT
                complete(token, verdict, 0 if edited and code < 400 else code,
                             value[4:].encode("utf-8", "surrogateescape"))
                return
            if isinstance(value, bytes):
                value = value.decode("utf-8", "surrogateescape")
            if not isinstance(value, str):
                # aiosmtpd's push() asserts bytes: the client gets the AssertionError's 500.
                self.api.log(LOG_ERROR, "a hook returned %r, not a status string" % (value,))
                value = "500 Error: (AssertionError) "
            lines = [ln for chunk in pushed + [value] for ln in chunk.split("\r\n")]
        else:
            lines = [ln for chunk in pushed + value for ln in
                     (chunk.decode("utf-8", "surrogateescape") if isinstance(chunk, bytes)
                      else str(chunk)).split("\r\n")]
        code, text = _reply(lines)
        if code is None:
            self.api.log(LOG_ERROR, "the handler's reply %r does not start with a code" % (lines,))
            complete(token, TEMPFAIL, 451, b"4.3.0 Error: internal")
            return
        if code < 400:
            verdict = CONTINUE if edited else ACCEPT
            if edited:
                code = 0
        elif code < 500:
            verdict = TEMPFAIL
        else:
            verdict = REJECT
        complete(token, verdict, code, text.encode("utf-8", "surrogateescape"))


def _cancel(task, loop):
    """Cancel a task of this loop or, thread-safely, of another loop of the instance."""
    if task is None or task.done():
        return
    other = task.get_loop()
    if other is loop:
        task.cancel()
        return
    try:
        other.call_soon_threadsafe(task.cancel)
    except RuntimeError:  # that loop has ended
        pass


def _proxy_data(p):
    """aiosmtpd's ProxyData from the server's PROXY header fields (whole_raw stays empty: the
    server has parsed the header; `rest` holds a v2 header's TLVs)."""
    version, command, family, protocol, src, src_port, dst, dst_port, tlvs = p
    try:
        from aiosmtpd.proxy_protocol import AF, PROTO, V2_CMD, ProxyData
    except Exception:
        import types
        return types.SimpleNamespace(version=version, command=command, family=family,
                                     protocol=protocol, src_addr=src or None, dst_addr=dst or None,
                                     src_port=src_port if src else None,
                                     dst_port=dst_port if dst else None, rest=tlvs, valid=True)
    import ipaddress
    pd = ProxyData(version=version)
    if version == 2:
        pd.command = V2_CMD(command)
    pd.family = AF(family)
    pd.protocol = PROTO(protocol)

    def addr(a):
        try:
            return ipaddress.ip_address(a)
        except ValueError:
            return a

    if src:
        pd.src_addr, pd.src_port = addr(src), src_port
    if dst:
        pd.dst_addr, pd.dst_port = addr(dst), dst_port
    pd.rest = tlvs
    return pd


def _missing(value):
    """aiosmtpd's MISSING, also from another import of aiosmtpd.smtp (a reload may import it
    again) than the one this module holds."""
    return type(value).__name__ == "_Missing"


def _reply(lines):
    """['250-a', '250 b'] -> (250, 'a\\nb'); (None, '') when a line has no code."""
    code = None
    texts = []
    for line in lines:
        if len(line) < 3 or not line[:3].isdigit():
            return None, ""
        code = int(line[:3])
        texts.append(line[4:] if len(line) > 3 else "")
    if code is None:
        return None, ""
    return code, "\n".join(texts)


def _split_message(data):
    """bytes -> ([(name, value-with-its-leading-space, folding kept)], body)."""
    fields = []
    pos = 0
    n = len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = data[pos:end]
        if line in (b"\r\n", b"\n"):
            return fields, data[end:]
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line.rstrip(b"\r\n"))
        else:
            name, colon, value = line.rstrip(b"\r\n").partition(b":")
            if not colon:
                return fields, data[pos:]
            fields.append((name, value))
        pos = end
    return fields, b""


def _wire(value):
    """An envelope value as the server takes it: bytes, text as UTF-8 (surrogateescape)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def _address(value):
    """An envelope address for an edit: None or empty is the null sender."""
    return b"<>" if value is None or value == "" or value == b"" else _wire(value)


def _b64(data):
    import base64
    return base64.b64encode(data).decode("ascii")
