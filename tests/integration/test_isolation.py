# SPDX-License-Identifier: Apache-2.0
"""Process isolation (issue 21): `isolation: process` runs the same plugin .so in a child
process (asiosmtpd-plugin-host). The `faulty` fixture (tests/fixtures/plugins/faulty.c) is a
delivering plugin that segfaults, aborts, exits, spins, never completes or completes twice
when a message holds "FAULT", leaks 1 MiB per message, or exits in create().

In process (today's behaviour, documented here): a segfault, abort or exit in a plugin ends
the server with it; a spinning hook holds an event-loop thread for good. Isolated: the server
lives, the session whose message was in flight gets "451 4.3.0 Error: internal", the crash is
one log line with the signal, the child is started again after a backoff and the next message
goes through; after 5 crashes in 60 s the server gives up on the child until a reload.
"""
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import harness
from harness import ServerTestCase, fixture_plugin, run_binary, server_config

FAULTY = fixture_plugin("faulty")
INTERNAL = ["451 4.3.0 Error: internal"]


def code(lines):
    """The reply code of a reply's lines."""
    return int(lines[-1][:3])
MESSAGE = b"Subject: hello\r\n\r\nan ordinary message\r\n"
TRIGGER = b"Subject: boom\r\n\r\nFAULT\r\n"


def fixed_port():
    """A free port: a reload keeps listeners by address and port (port 0 would move)."""
    with socket.socket() as probe:
        probe.bind((harness.HOST, 0))
        return probe.getsockname()[1]


def dead_pid():
    """A pid that no process has."""
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read())
    for pid in range(top - 1, 1, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise unittest.SkipTest("no free pid")


def faulty(mode, isolation="process", timeout=None, port=0, **extra):
    entry = {"path": FAULTY, "config": {"mode": mode}, "isolation": isolation}
    if timeout is not None:
        entry["timeout"] = timeout
    entry.update(extra)
    return server_config(plugins=[entry], listen=[{"address": harness.HOST, "port": port}])


class IsolationTest(ServerTestCase):
    def send(self, server, body, timeout=harness.IO_TIMEOUT, client=None):
        """One message on a new connection (or `client`, after its RCPT): the DATA reply."""
        c = client
        if c is None:
            c = self.connect(server, timeout=timeout)
            self.assertEqual(code(c.reply()), 220)
            self.assertEqual(code(c.cmd("EHLO client.example")), 250)
            self.assertEqual(code(c.cmd("MAIL FROM:<a@example.org>")), 250)
            self.assertEqual(code(c.cmd("RCPT TO:<b@example.org>")), 250)
        self.assertEqual(code(c.cmd("DATA")), 354)
        c.send(body + b".\r\n")
        reply = c.reply()
        if client is None:
            c.cmd("QUIT")
            c.close()
        return reply

    def child_pids(self, server):
        return [int(p) for p in re.findall(r"event=plugin_process_(?:started|restarted) .*pid=(\d+)", server.stderr())]

    def send_until_recovered(self, server) -> list[int]:
        """Messages on one connection (at most 120) until one got 451 and a later one 250; waits
        for the child's restart after each 451. Returns the final replies' codes."""
        c = self.connect(server)
        c.reply()
        c.cmd("EHLO client.example")
        codes: list[int] = []
        for _ in range(120):
            c.cmd("MAIL FROM:<a@example.org>")
            c.cmd("RCPT TO:<b@example.org>")
            codes.append(code(self.send(server, MESSAGE, client=c)))
            if 451 in codes and codes[-1] == 250:
                break
            if codes[-1] == 451:
                self.wait_restarted(server)
        return codes

    def wait_restarted(self, server, count=1):
        server.wait_output(lambda e: e.count("event=plugin_process_restarted") >= count, "stderr", timeout=10)

    # ---- a crash costs the message in flight, not the server --------------------------------------

    def check_contained(self, mode, how):
        config = faulty(mode)
        mport = fixed_port()
        config["metrics"] = {"listen": f"{harness.HOST}:{mport}"}
        server = self.start_server(config)
        self.assertEqual(code(self.send(server, MESSAGE)), 250)
        # Another session, mid-transaction while the child crashes: it goes on afterwards.
        other = self.connect(server)
        other.reply()
        other.cmd("EHLO other.example")
        other.cmd("MAIL FROM:<c@example.org>")
        self.assertEqual(code(other.cmd("RCPT TO:<d@example.org>")), 250)
        self.assertEqual(self.send(server, TRIGGER), INTERNAL)
        err = server.wait_output(lambda e: "event=plugin_process_crash" in e, "stderr")
        self.assertRegex(err, rf"error event=plugin_process_crash plugin=faulty key=plugins\[0\] pid=\d+ {how} "
                              r"in_flight=1 crashes_in_window=1 action=restart")
        self.assertRegex(err, r"event=plugin_error plugin=faulty key=plugins\[0\] hook=DATA "
                              r"reason=\"the plugin process crashed")
        self.wait_restarted(server)
        self.assertEqual(code(self.send(server, MESSAGE, client=other)), 250)
        self.assertEqual(code(self.send(server, MESSAGE)), 250)
        self.assertEqual(server.process.poll(), None)
        self.assertEqual(len(set(self.child_pids(server))), 2)
        with urllib.request.urlopen(f"http://{harness.HOST}:{mport}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        self.assertIn("asiosmtpd_plugin_process_crashes_total 1\n", metrics)
        self.assertIn("asiosmtpd_plugin_process_restarts_total 1\n", metrics)
        self.assertIn("asiosmtpd_plugin_errors_total 1\n", metrics)

    def test_segfault_isolated(self):
        # AddressSanitizer catches the SIGSEGV itself, reports it and exits 1.
        self.check_contained("segv", "(?:signal=SIGSEGV|exit=1)" if harness.sanitized() else "signal=SIGSEGV")

    def test_abort_isolated(self):
        self.check_contained("abort", "signal=SIGABRT")

    def test_exit_isolated(self):
        self.check_contained("exit", "exit=3")

    def check_kills_server(self, mode, returncode):
        """Today's behaviour in process: the fault ends the server (asserted here, in the
        server's own process, not the test runner's)."""
        server = self.start_server(faulty(mode, isolation="none"), check_exit=False)
        self.assertEqual(code(self.send(server, MESSAGE)), 250)
        c = self.connect(server)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@example.org>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        c.send(TRIGGER + b".\r\n")
        c.expect_eof()
        self.assertEqual(server.wait(10), returncode)

    def test_segfault_in_process_kills_the_server(self):
        self.check_kills_server("segv", 1 if harness.sanitized() else -signal.SIGSEGV)

    def test_abort_in_process_kills_the_server(self):
        self.check_kills_server("abort", -signal.SIGABRT)

    def test_exit_in_process_ends_the_server(self):
        self.check_kills_server("exit", 3)

    # ---- hangs -------------------------------------------------------------------------------------

    def test_spin_isolated(self):
        """A hook that never returns: the call times out (451), the child is killed as hung and
        started again."""
        server = self.start_server(faulty("spin", timeout=1))
        started = time.monotonic()
        self.assertEqual(self.send(server, TRIGGER), INTERNAL)
        self.assertLess(time.monotonic() - started, 8)
        err = server.wait_output(lambda e: "event=plugin_process_crash" in e, "stderr")
        self.assertRegex(err, r"event=plugin_process_crash plugin=faulty key=plugins\[0\] pid=\d+ "
                              r"reason=hung hook=DATA timeout_ms=1000")
        self.wait_restarted(server)
        self.assertEqual(code(self.send(server, MESSAGE)), 250)

    def test_spin_in_process_holds_a_thread(self):
        """In process a spinning hook holds its event-loop thread for good: the host can only
        log it (event=plugin_blocking); the session never gets a reply. The server is killed."""
        server = self.start_server(faulty("spin", isolation="none", timeout=1), check_exit=False)
        c = self.connect(server, timeout=3)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@example.org>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        c.send(TRIGGER + b".\r\n")
        server.wait_output(lambda e: "event=plugin_blocking plugin=faulty" in e, "stderr")
        with self.assertRaises(OSError):
            c.reply()
        server.process.kill()
        server.wait(10)

    def test_never_complete(self):
        """Suspended and never completed: the hook timeout answers 451, in process and isolated
        alike; the child is fine (no crash) and serves the next message."""
        for isolation in ("none", "process"):
            with self.subTest(isolation=isolation):
                server = self.start_server(faulty("never_complete", isolation=isolation, timeout=1))
                self.assertEqual(self.send(server, TRIGGER), INTERNAL)
                self.assertIn("did not complete within 1000 ms", server.stderr())
                self.assertEqual(code(self.send(server, MESSAGE)), 250)
                self.assertNotIn("plugin_process_crash", server.stderr())

    def test_complete_twice(self):
        """The first complete() counts, the second answers E_GONE (the plugin aborts if not)."""
        for isolation in ("none", "process"):
            with self.subTest(isolation=isolation):
                server = self.start_server(faulty("complete_twice", isolation=isolation))
                self.assertEqual(code(self.send(server, TRIGGER)), 250)
                self.assertEqual(code(self.send(server, MESSAGE)), 250)
                self.assertNotIn("plugin_process_crash", server.stderr())

    # ---- cpu_limit ---------------------------------------------------------------------------------

    def test_cpu_limit_ends_a_spinning_call(self):
        """cpu_limit: the spinning call gets 451 as soon as it has used its CPU time, long before
        its (wall clock) timeout; the child is ended with SIGXCPU and started again."""
        server = self.start_server(faulty("spin", timeout=60, cpu_limit=0.3))
        self.assertEqual(code(self.send(server, MESSAGE)), 250)  # ordinary calls are far below it
        started = time.monotonic()
        self.assertEqual(self.send(server, TRIGGER), INTERNAL)
        self.assertLess(time.monotonic() - started, 10)
        err = server.wait_output(lambda e: "event=plugin_process_crash" in e, "stderr")
        self.assertRegex(err, r"error event=plugin_process_crash plugin=faulty key=plugins\[0\] pid=\d+ "
                              r"signal=SIGXCPU reason=cpu cpu_limit_ms=300 in_flight=1 crashes_in_window=1 "
                              r"action=restart")
        self.assertIn("went over its cpu_limit", server.stderr())
        self.wait_restarted(server)
        self.assertEqual(code(self.send(server, MESSAGE)), 250)
        self.assertEqual(server.process.poll(), None)

    def test_cpu_limit_is_per_call(self):
        """Many calls, each far below the limit, add up to more than it: none is ended."""
        server = self.start_server(faulty("leak", cpu_limit=0.01))
        c = self.connect(server)
        c.reply()
        c.cmd("EHLO client.example")
        for _ in range(150):  # 1 MiB touched per call (well under 10 ms), 150 MiB of page faults in all
            c.cmd("MAIL FROM:<a@example.org>")
            c.cmd("RCPT TO:<b@example.org>")
            self.assertEqual(code(self.send(server, MESSAGE, client=c)), 250)
        pid = self.child_pids(server)[0]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().split(")")[-1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        self.assertGreater(int(fields[11]) + int(fields[12]), ticks * 0.01)  # utime + stime: more than one limit
        self.assertNotIn("plugin_process_crash", server.stderr())

    def test_cpu_limit_config(self):
        for value, error in ((0.5, "plugins[0].cpu_limit: needs isolation: process"),
                             (0, "plugins[0].cpu_limit: expected seconds > 0"),
                             (0.0001, "plugins[0].cpu_limit: expected at least 0.001 seconds"),
                             ("fast", "plugins[0].cpu_limit: expected seconds")):
            with self.subTest(value=value):
                isolation = "none" if value == 0.5 else "process"
                r = run_binary(["--check-config"], server_config(plugins=[{"name": "sink", "isolation": isolation,
                                                                           "cpu_limit": value}]))
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertRegex(r.stderr, r"asiosmtpd\.yaml:\d+: " + re.escape(error))
        ok = run_binary(["--check-config"], server_config(plugins=[{"name": "sink", "isolation": "process",
                                                                    "cpu_limit": 2.5}]))
        self.assertEqual(ok.returncode, 0, ok.stderr)

    # ---- memory ------------------------------------------------------------------------------------

    @unittest.skipIf(harness.sanitized(), "RLIMIT_AS and AddressSanitizer's shadow memory do not mix")
    def test_leak_isolated_with_memory_limit(self):
        """1 MiB per message under a 64 MiB limit: the child fails at its limit, that message
        gets 451, the child starts again and the messages after it go through."""
        server = self.start_server(faulty("leak", memory_limit="64M"))
        if "by=cgroup" in server.stderr():
            self.skipTest("the memory limit is a cgroup here (test_memory_limit_by_cgroup)")
        self.assertRegex(server.stderr(), r"event=plugin_memory_limit plugin=faulty key=plugins\[0\] limit=67108864 "
                                          r"by=rlimit_as why=\"[^\"]+\"")
        pid = self.child_pids(server)[0]
        with open(f"/proc/{pid}/limits") as f:
            self.assertRegex(f.read(), r"Max address space\s+67108864\s+67108864")
        codes = self.send_until_recovered(server)
        self.assertIn(451, codes)
        self.assertEqual(set(codes), {250, 451})
        self.assertEqual(codes[-1], 250)
        self.assertRegex(server.stderr(), r"event=plugin_process_crash plugin=faulty .*signal=SIGABRT")

    def test_memory_limit_by_cgroup(self):
        """Where the server can make cgroups (cgroup2, the memory controller, a writable cgroup),
        memory_limit is the child's cgroup's memory.max: the leak is ended by the OOM killer
        (reason=memory), the next message goes through, and no cgroup is left behind."""
        try:
            server = self.start_server(faulty("leak", memory_limit="64M"))
        except RuntimeError as e:
            if harness.sanitized() and "Failed to mmap" in str(e):
                self.skipTest("no cgroup here, and RLIMIT_AS and AddressSanitizer's shadow memory do not mix")
            raise
        err = server.stderr()
        why = re.search(r"event=plugin_memory_limit .* by=rlimit_as why=\"([^\"]*)\"", err)
        if why:
            self.skipTest(f"no cgroup for the plugin process on this machine: {why.group(1)}")
        found = re.search(r"event=plugin_memory_limit plugin=faulty key=plugins\[0\] limit=67108864 by=cgroup "
                          r"cgroup=(\S+)", err)
        self.assertTrue(found, err)
        group = found.group(1)
        pid = self.child_pids(server)[0]
        with open(os.path.join(group, "memory.max")) as f:
            self.assertEqual(f.read().strip(), "67108864")
        with open(os.path.join(group, "cgroup.procs")) as f:
            self.assertIn(str(pid), f.read().split())
        with open(f"/proc/{pid}/limits") as f:
            self.assertRegex(f.read(), r"Max address space\s+unlimited")
        codes = self.send_until_recovered(server)
        self.assertIn(451, codes)
        self.assertEqual(codes[-1], 250)
        self.assertRegex(server.stderr(), r"event=plugin_process_crash plugin=faulty .*signal=SIGKILL "
                                          r"reason=memory memory_limit=67108864")
        self.assertFalse(os.path.exists(group))  # the crashed child's cgroup went with it
        parent = os.path.dirname(group)
        server.stop()
        left = [d for d in os.listdir(parent) if d.startswith(f"asiosmtpd-{server.process.pid}-")]
        self.assertEqual(left, [])

    @unittest.skipIf(harness.sanitized(), "LeakSanitizer reports the plugin's leak at the server's exit")
    def test_leak_in_process_grows_the_server(self):
        """In process the leak is the server's own memory (no limit can stop it)."""
        server = self.start_server(faulty("leak", isolation="none"))
        before = harness.peak_rss_kib(server.process.pid)
        c = self.connect(server)
        c.reply()
        c.cmd("EHLO client.example")
        for _ in range(40):
            c.cmd("MAIL FROM:<a@example.org>")
            c.cmd("RCPT TO:<b@example.org>")
            self.assertEqual(code(self.send(server, MESSAGE, client=c)), 250)
        self.assertGreater(harness.peak_rss_kib(server.process.pid) - before, 30 * 1024)

    # ---- create() -------------------------------------------------------------------------------

    def test_exit_in_create(self):
        isolated = run_binary([], faulty("exit_in_create"))
        self.assertEqual(isolated.returncode, 1, isolated.stderr)
        self.assertRegex(isolated.stderr, r"plugins\[0\]: .*faulty\.so: .*the plugin process failed during create\(\)"
                                          r": the plugin process ended \(exit=3\)")
        in_process = run_binary([], faulty("exit_in_create", isolation="none"))
        self.assertEqual(in_process.returncode, 3, in_process.stderr)  # the plugin ended the server
        checked = run_binary(["--check-config"], faulty("exit_in_create"))
        self.assertEqual(checked.returncode, 0, checked.stderr)

    # ---- giving up, reload -------------------------------------------------------------------------

    def test_gives_up_until_reload(self):
        server = self.start_server(faulty("segv", port=fixed_port()))
        for n in range(1, 6):
            self.assertEqual(self.send(server, TRIGGER), INTERNAL)
            if n < 5:
                self.wait_restarted(server, n)
        err = server.wait_output(lambda e: "event=plugin_process_given_up" in e, "stderr")
        self.assertEqual(err.count("event=plugin_process_crash"), 5)
        self.assertIn("action=given_up", err)
        # Every call fails now, ordinary messages too...
        self.assertEqual(self.send(server, MESSAGE), INTERNAL)
        self.assertIn("given up after 5 crashes", server.stderr())
        # ...until a reload starts a new child.
        server.signal(signal.SIGHUP)
        server.wait_output(lambda e: e.count("event=plugin_process_started") >= 2, "stderr")
        self.assertEqual(code(self.send(server, MESSAGE)), 250)

    def test_reload_old_child_ends_with_its_sessions(self):
        config = server_config(plugins=[{"name": "sink", "isolation": "process"}],
                               listen=[{"address": harness.HOST, "port": fixed_port()}])
        server = self.start_server(config)
        old = self.child_pids(server)[0]
        c = self.connect(server)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@example.org>")
        c.cmd("RCPT TO:<b@example.org>")
        server.signal(signal.SIGHUP)
        server.wait_output(lambda e: e.count("event=plugin_process_started") >= 2, "stderr")
        new = self.child_pids(server)[1]
        self.assertNotEqual(old, new)
        self.assertTrue(os.path.exists(f"/proc/{old}"))  # its session is still open
        self.assertEqual(code(self.send(server, MESSAGE)), 250)  # a new session: the new child
        self.assertEqual(code(self.send(server, MESSAGE, client=c)), 250)  # the old one: the old child
        c.cmd("QUIT")
        c.close()
        deadline = time.monotonic() + 10
        while self.old_alive(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(self.old_alive(old))
        self.assertTrue(self.old_alive(new))

    def test_children_outlive_the_threads_that_started_them(self):
        """PR_SET_PDEATHSIG follows the thread that started a child: children started during a
        reload, or by a loop thread a reload retires, must live on (they are started from a
        thread that lives as long as the server)."""
        port = fixed_port()
        config = server_config(plugins=[{"name": "sink", "isolation": "process"}],
                               listen=[{"address": harness.HOST, "port": port}], workers=3)
        server = self.start_server(config)
        for n, workers in ((2, 1), (3, 2)):
            config["server"]["workers"] = workers
            with open(server.config_path, "w", encoding="utf-8") as f:
                f.write(harness.to_yaml(config))
            server.signal(signal.SIGHUP)
            server.wait_output(lambda e, n=n: e.count("event=plugin_process_started") >= n, "stderr")
            time.sleep(0.3)  # retired loop threads and the reload's own have ended by now
            pid = self.child_pids(server)[-1]
            self.assertTrue(self.old_alive(pid), server.stderr())
            self.assertEqual(code(self.send(server, MESSAGE)), 250)
            self.assertTrue(self.old_alive(pid))
        self.assertNotIn("plugin_process_crash", server.stderr())

    @staticmethod
    def old_alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    # ---- the child's surroundings ------------------------------------------------------------------

    def test_child_has_no_sockets_but_its_channel_and_its_own_folder(self):
        # The folder of a plugin process whose server was killed (no process has that pid).
        stale = os.path.join(tempfile.gettempdir(), f"asiosmtpd-plugin-{dead_pid()}-stale")
        os.makedirs(os.path.join(stale, "left"), exist_ok=True)
        config = server_config(plugins=[{"name": "sink", "isolation": "process"}])
        server = self.start_server(config)
        self.assertFalse(os.path.exists(stale))  # removed by the next server
        pid = self.child_pids(server)[0]
        sockets = [fd for fd in os.listdir(f"/proc/{pid}/fd")
                   if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")]
        self.assertEqual(sockets, ["3"])
        cwd = os.readlink(f"/proc/{pid}/cwd")
        self.assertIn(f"asiosmtpd-plugin-{server.process.pid}-", cwd)
        self.assertNotEqual(cwd, os.readlink(f"/proc/{server.process.pid}/cwd"))
        # The server's user (after server.user's drop: plugins load after it, children too).
        def uids(p):
            with open(f"/proc/{p}/status") as f:
                return [line for line in f if line.startswith("Uid:")][0]
        self.assertEqual(uids(pid), uids(server.process.pid))

    def test_registrations_cross(self):
        """Commands and EHLO keywords registered in create() reach the server; the plugin's
        log lines come out as the server's, with the session."""
        config = server_config(plugins=[{"name": "ping", "isolation": "process"}, "sink"])
        server = self.start_server(config)
        c = self.connect(server)
        c.reply()
        self.assertEqual(code(c.cmd("EHLO client.example")), 250)
        self.assertEqual(c.cmd("PING"), ["259 Pong"])

    def test_config_errors_name_the_key(self):
        """A plugin refusing its config in the child: the same message as in process."""
        entry = {"name": "maildir", "config": {"pathh": "/tmp/x"}}
        isolated = run_binary(["--check-config"], server_config(plugins=[dict(entry, isolation="process")]))
        in_process = run_binary(["--check-config"], server_config(plugins=[dict(entry, isolation="none")]))
        self.assertNotEqual(isolated.returncode, 0)
        self.assertEqual(isolated.stderr.replace("\n", " ").split("asiosmtpd.yaml")[-1],
                         in_process.stderr.replace("\n", " ").split("asiosmtpd.yaml")[-1])

    def test_memory_limit_needs_isolation(self):
        r = run_binary(["--check-config"], server_config(plugins=[{"name": "sink", "memory_limit": "64M",
                                                                   "isolation": "none"}]))
        self.assertEqual(r.returncode, 1)
        self.assertIn("plugins[0].memory_limit: needs isolation: process", r.stderr)
        r = run_binary(["--check-config"], server_config(plugins=[{"name": "sink", "memory_limit": "1K",
                                                                   "isolation": "process"}]))
        self.assertEqual(r.returncode, 1)
        self.assertIn("plugins[0].memory_limit: expected a size in bytes", r.stderr)


def account(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


NOBODY = account("nobody")
DAEMON = account("daemon")


def ids(pid):
    """Uid, Gid and Groups lines of /proc/<pid>/status, as lists."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "NoNewPrivs", "CapEff"):
                out[key] = value.split()
    return out


@unittest.skipUnless(os.geteuid() == 0, "needs root: only a server running as root starts a plugin process "
                                        "as another user")
@unittest.skipIf(NOBODY is None or DAEMON is None, "no users nobody and daemon on this system")
class UserTest(ServerTestCase):
    """plugins[].user: the plugin's process runs as that user, the server as root."""
    send = IsolationTest.send
    child_pids = IsolationTest.child_pids
    wait_restarted = IsolationTest.wait_restarted

    @classmethod
    def setUpClass(cls):
        # Readable by nobody wherever the build tree is.
        cls.public = tempfile.mkdtemp(prefix="asiosmtpd-isouser-")
        os.chmod(cls.public, 0o755)
        cls.faulty = os.path.join(cls.public, "faulty.so")
        shutil.copy(FAULTY, cls.faulty)
        os.chmod(cls.faulty, 0o644)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.public, ignore_errors=True)

    def entry(self, mode="leak", **extra):
        return dict({"path": self.faulty, "config": {"mode": mode}, "isolation": "process", "user": "nobody"},
                    **extra)

    def test_child_runs_as_the_user(self):
        server = self.start_server(server_config(plugins=[self.entry()]))
        pid = self.child_pids(server)[0]
        child = ids(pid)
        uid, gid = str(NOBODY.pw_uid), str(NOBODY.pw_gid)
        self.assertEqual(child["Uid"], [uid] * 4, child)
        self.assertEqual(child["Gid"], [gid] * 4, child)
        self.assertEqual(child["Groups"], [], child)
        self.assertEqual(child["NoNewPrivs"], ["1"], child)
        self.assertEqual(int(child["CapEff"][0], 16), 0, child)
        self.assertEqual(ids(server.process.pid)["Uid"][0], "0")
        self.assertEqual(os.stat(os.readlink(f"/proc/{pid}/cwd")).st_uid, NOBODY.pw_uid)
        self.assertEqual(code(self.send(server, MESSAGE)), 250)
        # A restarted child is that user too.
        server2 = self.start_server(server_config(plugins=[self.entry("abort")]))
        self.assertEqual(self.send(server2, TRIGGER), INTERNAL)
        self.wait_restarted(server2)
        self.assertEqual(ids(self.child_pids(server2)[1])["Uid"], [uid] * 4)
        self.assertEqual(code(self.send(server2, MESSAGE)), 250)

    def test_refused_where_it_cannot_work(self):
        cases = (
            (dict(isolation="none"), "plugins[0].user: needs isolation: process"),
            (dict(user="root"), "plugins[0].user: \"root\" is root (uid 0)"),
            (dict(user="no-such-user-x"), "plugins[0].user: unknown user \"no-such-user-x\""),
        )
        for change, error in cases:
            with self.subTest(change=change):
                r = run_binary(["--check-config"], server_config(plugins=[dict(self.entry(), **change)]))
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertRegex(r.stderr, r"asiosmtpd\.yaml:\d+: " + re.escape(error))
        # With server.user, the server gives up root before plugins start: another user is refused...
        r = run_binary(["--check-config"], server_config(plugins=[self.entry(user="daemon")], user="nobody"))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"asiosmtpd\.yaml:\d+: plugins\[0\]\.user: cannot be used with server\.user "
                                   r"\(\S+asiosmtpd\.yaml:\d+\)")
        # ...the same one is nothing to switch.
        r = run_binary(["--check-config"], server_config(plugins=[self.entry()], user="nobody"))
        self.assertNotIn("plugins[0].user", r.stderr)

    def test_refused_when_the_server_is_not_root(self):
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            self.skipTest("no setpriv (util-linux) to start the server as nobody")
        folder = tempfile.mkdtemp(prefix="asiosmtpd-isouser-cfg-")
        try:
            os.chmod(folder, 0o755)
            path = os.path.join(folder, "asiosmtpd.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(harness.to_yaml(server_config(plugins=[self.entry(user="daemon")])))
            os.chmod(path, 0o644)
            r = subprocess.run([setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                                harness.BIN, "--check-config", "--config", path],
                               capture_output=True, text=True, timeout=30)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if "Permission denied" in r.stderr and "plugins[0].user" not in r.stderr:
            self.skipTest(f"the build tree is not readable by nobody: {r.stderr.strip()}")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, rf"asiosmtpd\.yaml:\d+: plugins\[0\]\.user: the server runs as uid "
                                   rf"{NOBODY.pw_uid}, not root: it cannot start the plugin's process as user daemon")


if __name__ == "__main__":
    harness.main()
