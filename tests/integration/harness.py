# SPDX-License-Identifier: Apache-2.0
"""Harness for the integration tests: the real asiosmtpd binary on 127.0.0.1, real clients.

Every server is started with a temporary YAML config (``port: 0``); the real port is read from
the ``info event=listening address=... port=NNNNN protocol=...`` line the server prints on
stderr, so there is no free-port race. Every server is always stopped (SIGTERM, bounded wait,
then SIGKILL), also when the test fails, and every wait here is bounded.

Paths come from the environment (set by tests/integration/CMakeLists.txt):
  ASIOSMTPD_BIN                 the server binary
  ASIOSMTPD_PLUGIN_DIR          the bundled plugins (sink.so, debugging.so, ping.so)
  ASIOSMTPD_FIXTURE_PLUGIN_DIR  the test plugins (scripted.so, wrong_abi.so, ...)
  ASIOSMTPD_SOURCE_DIR          the source tree (conf/asiosmtpd.yaml)
When unset (running a file by hand), they default to the dev preset's build tree.

Only the standard library is used (unittest, smtplib, socket, subprocess).
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("ASIOSMTPD_SOURCE_DIR") or os.path.normpath(os.path.join(_HERE, "..", ".."))
_BUILD_DIR = os.path.join(SOURCE_DIR, "build", "dev")
BIN = os.environ.get("ASIOSMTPD_BIN") or os.path.join(_BUILD_DIR, "bin", "asiosmtpd")
PLUGIN_DIR = os.environ.get("ASIOSMTPD_PLUGIN_DIR") or os.path.join(_BUILD_DIR, "plugins")
FIXTURE_PLUGIN_DIR = os.environ.get("ASIOSMTPD_FIXTURE_PLUGIN_DIR") or os.path.join(
    _BUILD_DIR, "tests", "fixtures", "plugins")

HOST = "127.0.0.1"
TEST_ISOLATION = os.environ.get("ASIOSMTPD_TEST_ISOLATION", "")  # "process": plugins of server_config() isolated
HOSTNAME = "mx.test.example"     # server.hostname in the default test config
IDENT = "TestIdent 1.0"           # server.ident in the default test config
START_TIMEOUT = 10.0             # seconds to wait for the listening line
STOP_TIMEOUT = 10.0              # seconds to wait after SIGTERM before SIGKILL
IO_TIMEOUT = 10.0                # default socket timeout of the raw client

_LISTENING = re.compile(r"^(?:\S+ )?info event=listening address=(\S+) port=(\d+) protocol=(\w+)(?: tls=\w+)?\s*$", re.M)
# The same with log.format: json.
_LISTENING_JSON = re.compile(r'"event":"listening","address":"([^"]+)","port":"(\d+)","protocol":"(\w+)"')


def sanitized():
    """True when the binary under test is built with AddressSanitizer (the asan preset):
    memory bounds do not apply to it."""
    try:
        with open(BIN, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def peak_rss_kib(pid):
    """VmHWM of a process (Linux): its peak resident memory so far, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def stop_process(proc, grace, group=False):
    """SIGTERM a helper process a test started (a milter, a DNS server, Postfix's or Dovecot's
    master...), then SIGKILL if it is still there after `grace` seconds; waits for it either way
    (bounded). group: the process leads its own process group (started with
    start_new_session=True), whose other members (the daemons a master forked) must not outlive
    the test: the SIGTERM goes to the whole group, and whatever is left of the group once the
    leader has gone gets SIGKILL. Does nothing for None or a process already reaped."""
    if proc is None:
        return

    def send(signo):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, signo)
            else:
                proc.send_signal(signo)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    if group:
        send(signal.SIGKILL)  # the leader is gone (reaped above): only its group's leftovers


def fixture_plugin(name):
    """Absolute path of a test plugin (tests/fixtures/plugins/<name>.so in the build tree)."""
    return os.path.join(FIXTURE_PLUGIN_DIR, name + ".so")


def server_config(plugins=None, **server):
    """A config mapping: one listener on 127.0.0.1, port 0; hostname/ident fixed; `server`
    keys override or add to the server section. plugins: a list of plugin entries (default:
    the sink plugin) or plain names."""
    srv = {
        "hostname": HOSTNAME,
        "ident": IDENT,
        "listen": [{"address": HOST, "port": 0}],
        "workers": 2,
        "shutdown_grace": 5,
    }
    srv.update(server)
    if plugins is None:
        plugins = ["sink"]
    entries = [{"name": p} if isinstance(p, str) else p for p in plugins]
    if TEST_ISOLATION:
        # ASIOSMTPD_TEST_ISOLATION=process: every plugin of these configs in its own child
        # process (issue 21), unless the test chose for itself.
        entries = [e if "isolation" in e else dict(e, isolation=TEST_ISOLATION) for e in entries]
    return {"server": srv, "plugins": entries}


def to_yaml(config):
    """YAML text for a config mapping. JSON is YAML 1.2, so json.dumps is used when PyYAML is
    not there."""
    if isinstance(config, str):
        return config
    try:
        import yaml  # Debian's python3-yaml; optional
        return yaml.safe_dump(config, default_flow_style=False, sort_keys=False)
    except ImportError:
        return json.dumps(config, indent=2)


def run_binary(args, config=None, timeout=30.0):
    """Runs the binary to completion (for --check-config, --version, failing start-ups).
    config: a mapping or YAML text, written to a temp file whose path is appended as
    `--config FILE`. Returns subprocess.CompletedProcess (text mode). Bounded by `timeout`."""
    with tempfile.TemporaryDirectory(prefix="asiosmtpd-it-") as tmp:
        argv = [BIN] + list(args)
        if config is not None:
            path = os.path.join(tmp, "asiosmtpd.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(to_yaml(config))
            argv += ["--config", path]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout)


class Server:
    """One running asiosmtpd. Use as a context manager or call stop(); stop() is idempotent.

    Attributes: host, port (the first listener), listeners [(address, port, protocol)],
    process (Popen), config_path, tmpdir. stdout()/stderr() return what it printed so far.
    """

    def __init__(self, config, log_level=None, extra_args=(), start_timeout=START_TIMEOUT):
        self._tmp = tempfile.TemporaryDirectory(prefix="asiosmtpd-it-")
        self.tmpdir = self._tmp.name
        self.config_path = os.path.join(self.tmpdir, "asiosmtpd.yaml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(config))
        self._out_path = os.path.join(self.tmpdir, "stdout")
        self._err_path = os.path.join(self.tmpdir, "stderr")
        self.returncode = None
        self.process = None
        argv = [BIN, "--config", self.config_path]
        if log_level:
            argv += ["--log-level", log_level]
        argv += list(extra_args)
        # Files rather than pipes: nothing to drain, nothing to block the server on a full pipe.
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            try:
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                                start_new_session=True)
            except BaseException:
                self._tmp.cleanup()
                raise
        try:
            self.listeners = self._wait_listening(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.host = self.listeners[0][0]
        self.port = self.listeners[0][1]

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        expected = None
        while True:
            err = self.stderr()
            found = [(m.group(1), int(m.group(2)), m.group(3))
                     for m in list(_LISTENING.finditer(err)) + list(_LISTENING_JSON.finditer(err))]
            if found:
                # All listeners print their line before serving; give the others a moment.
                if expected is None:
                    expected = found
                    time.sleep(0.05)
                    continue
                if found == expected:
                    return found
                expected = found
                continue
            if self.process.poll() is not None:
                raise RuntimeError(f"asiosmtpd exited with {self.process.returncode} before listening; "
                                   f"stderr:\n{err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"asiosmtpd printed no listening line within {timeout}s; stderr:\n{err}")
            time.sleep(0.02)

    # -- output ---------------------------------------------------------------------------
    def _read(self, path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        return self._read(self._out_path)

    def stderr(self):
        return self._read(self._err_path)

    def stdout_bytes(self):
        with open(self._out_path, "rb") as f:
            return f.read()

    def wait_output(self, predicate, which="stdout", timeout=10.0):
        """Polls stdout (or stderr) until predicate(text) is true; returns the text.
        Raises AssertionError after `timeout` seconds."""
        read = self.stdout if which == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            text = read()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"server {which} did not show what was expected within {timeout}s:\n{text}")
            time.sleep(0.02)

    # -- lifecycle ------------------------------------------------------------------------
    def signal(self, signo):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signo)

    def wait(self, timeout):
        """Waits for the process to exit; returns its exit code or None on timeout."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code (negative for a
        signal). Idempotent; also removes the temp folder."""
        if self.process is not None and self.returncode is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
                    sys.stderr.write(f"asiosmtpd pid {self.process.pid} ignored SIGTERM for {timeout}s: killed\n")
            self.returncode = self.process.returncode
            self._final_stderr = self.stderr()
            self._final_stdout = self.stdout()
        with contextlib.suppress(Exception):
            self._tmp.cleanup()
            self._out_path = self._err_path = os.devnull
        return self.returncode

    def final_output(self):
        """(stdout, stderr) as they were when the server stopped."""
        return getattr(self, "_final_stdout", ""), getattr(self, "_final_stderr", "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class Client:
    """A raw SMTP client over a socket: exact bytes out, exact lines in; every read bounded."""

    def __init__(self, host, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed by the server; unread: {self.buf!r}")
        self.buf += chunk

    def line(self):
        """One reply line without its CRLF, as str. EOFError on a closed connection,
        socket.timeout when nothing comes."""
        while b"\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n", 1)
        return raw.decode("utf-8", "replace")

    def reply(self):
        """One (possibly multi-line) reply as a list of its lines, e.g. ['250-x', '250 y']."""
        lines = [self.line()]
        while len(lines[-1]) >= 4 and lines[-1][3] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text):
        """Sends one command line (CRLF appended) and returns its reply lines."""
        self.send(text + "\r\n")
        return self.reply()

    def expect_eof(self, timeout=5.0):
        """Reads until the server closes the connection; returns whatever came before.
        Fails (AssertionError) if the connection is still open after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        data = self.buf
        self.buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; received {data!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


class ServerTestCase(unittest.TestCase):
    """Base class: start_server() registers the stop as a cleanup, so it always happens; when
    a test fails the server's stderr and stdout are printed to help the reader."""

    maxDiff = None

    def start_server(self, config=None, check_exit=True, **kw):
        """Starts a server with `config` (default: server_config()); it is stopped when the
        test ends, and then (check_exit) must exit 0: a crash or a hang at shutdown fails the
        test even when every reply was right."""
        server = Server(config if config is not None else server_config(), **kw)
        self.addCleanup(self._stop_and_report, server, check_exit)
        return server

    def connect(self, server, timeout=IO_TIMEOUT):
        client = Client(server.host, server.port, timeout=timeout)
        self.addCleanup(client.close)
        return client

    def _failed(self):
        # Whether this test has failed so far. CPython records a failure in the result as
        # soon as it happens (3.11+: _Outcome.result; earlier: _Outcome.errors), before the
        # cleanups run; cleanups run with _Outcome.success reset, so that is not enough.
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return False
        if not getattr(outcome, "success", True):
            return True
        errors = getattr(outcome, "errors", None)  # CPython < 3.11
        if errors:
            return any(exc is not None for _, exc in errors)
        result = getattr(outcome, "result", None)
        found = list(getattr(result, "failures", [])) + list(getattr(result, "errors", []))
        return any(test is self for test, _ in found)

    def _stop_and_report(self, server, check_exit=True):
        rc = server.stop()
        failed = self._failed()
        bad_exit = check_exit and rc != 0
        if failed or bad_exit:
            out, err = server.final_output()
            sys.stderr.write(f"\n--- asiosmtpd (exit {rc}) stderr ---\n{err}"
                             f"--- asiosmtpd stdout ---\n{out}--- end ---\n")
        if bad_exit and not failed:
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            raise AssertionError(f"asiosmtpd did not stop cleanly on SIGTERM: {how} (its stderr is above)")


_STARTED = time.monotonic()


def main():
    """unittest.main with verbose output and an exit code for ctest. The last line says how
    long the file took and how much CPU it and the processes it waited for (servers, clients,
    peers) used: where the suite's time goes (a file that mostly waits holds a ctest slot)."""
    if not os.path.exists(BIN):
        sys.stderr.write(f"missing {BIN}: build first (cmake --build --preset dev)\n")
        sys.exit(1)
    program = unittest.main(verbosity=2, exit=False)
    import resource
    cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    sys.stderr.write(f"harness: {time.monotonic() - _STARTED:.1f} s, CPU {cpu:.1f} s\n")
    sys.exit(not program.result.wasSuccessful())


def check_prerequisites():
    """What the tests need, present? (ctest's integration.prerequisites runs this.)"""
    import shutil
    needed = [BIN] + [os.path.join(PLUGIN_DIR, p + ".so") for p in ("sink", "debugging", "ping")]
    needed += [fixture_plugin(p) for p in ("scripted", "wrong_abi", "no_entry", "rejects_config", "c_plugin")]
    missing = [p for p in needed if not os.path.exists(p)]
    for p in missing:
        print(f"missing: {p}")
    if not shutil.which("swaks"):
        print("note: swaks is not installed (apt-get install swaks); test_swaks will be skipped")
    if missing:
        print("build first: cmake --build --preset dev")
        return 1
    print(f"ok: {BIN}, plugins in {PLUGIN_DIR}, test plugins in {FIXTURE_PLUGIN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(check_prerequisites())
