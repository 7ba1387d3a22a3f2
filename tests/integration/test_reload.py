# SPDX-License-Identifier: Apache-2.0
"""Reload on SIGHUP: new sessions get the new plugins and settings, open sessions finish on
the generation they started with, a broken config is refused while service goes on, a plugin
file replaced on disk is picked up, listeners come and go, keys only a restart can apply are
named in a warn line, worker loops are added and retired; and a reload under load drops
nothing."""
import os
import shutil
import signal
import smtplib
import socket
import threading
import time

import harness
from harness import HOST, ServerTestCase, server_config, to_yaml


def noop_says(text):
    return {"path": harness.fixture_plugin("scripted"),
            "config": {"hooks": {"NOOP": {"verdict": "accept", "code": 250, "text": text}}}}


class ReloadTest(ServerTestCase):
    def rewrite(self, server, config):
        with open(server.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(config))

    def reload(self, server, expect="result=ok"):
        before = server.stderr().count("event=reload ")
        server.signal(signal.SIGHUP)
        server.wait_output(lambda e: e.count("event=reload ") > before, which="stderr", timeout=15)
        last = [l for l in server.stderr().splitlines() if "event=reload " in l][-1]
        self.assertIn(expect, last)
        return last

    def config(self, plugins, listen=None, **server):
        return server_config(plugins=plugins, listen=listen or [{"address": HOST, "port": self.port}], **server)

    def setUp(self):
        with socket.socket() as probe:  # a fixed port: reloads keep listeners by address and port
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]

    def test_new_sessions_see_new_plugins_open_ones_keep_theirs(self):
        server = self.start_server(self.config([noop_says("generation one"), "sink"]))
        old = smtplib.SMTP(HOST, self.port, timeout=10)
        self.addCleanup(old.close)
        old.ehlo("x")
        old.mail("a@b.example")
        self.assertEqual(old.noop(), (250, b"generation one"))
        self.rewrite(server, self.config([noop_says("generation two"), "sink"], data_size_limit=1000))
        self.assertIn("sessions_open=1", self.reload(server))
        with smtplib.SMTP(HOST, self.port, timeout=10) as new:
            self.assertEqual(new.noop(), (250, b"generation two"))
            self.assertEqual(new.ehlo("x")[1].split(b"\n")[1], b"SIZE 1000")
        # The session open across the reload finishes its transaction on its own generation.
        self.assertEqual(old.noop(), (250, b"generation one"))
        old.rcpt("c@d.example")
        # 2 KB: over the new generation's 1000-byte limit, fine for the old one.
        self.assertEqual(old.data(b"Subject: x\r\n\r\n" + (b"y" * 98 + b"\r\n") * 20), (250, b"OK"))
        old.quit()

    def test_restart_only_keys_are_named_not_silently_dropped(self):
        # The user, the metrics listener and the log level are set up at start: a reload
        # applies the rest and says, key by key, what waits for a restart.
        server = self.start_server(self.config([noop_says("one"), "sink"]))
        self.rewrite(server, self.config([noop_says("two"), "sink"], workers=3, log_level="debug"))
        self.assertIn("workers=3 workers_before=2", self.reload(server))  # workers is reloadable
        ignored = [l for l in server.stderr().splitlines() if "event=reload_ignored" in l]
        self.assertEqual(len(ignored), 1, ignored)
        self.assertIn('key=server.log_level started="info" configured="debug"', ignored[0])
        with smtplib.SMTP(HOST, self.port, timeout=10) as s:
            self.assertEqual(s.noop(), (250, b"two"))  # the rest of the reload took effect
        # A reload that changes only what a reload can change names nothing.
        self.rewrite(server, self.config([noop_says("three"), "sink"], data_size_limit=1000))
        self.reload(server)
        self.assertEqual(server.stderr().count("event=reload_ignored"), 1)

    def loops(self, server):
        """The names of the worker loops' threads ("smtp-loop-N")."""
        task = f"/proc/{server.process.pid}/task"
        names = []
        for t in os.listdir(task):
            try:
                with open(f"{task}/{t}/comm", encoding="utf-8") as f:
                    names.append(f.read().strip())
            except OSError:
                pass  # a thread that just ended
        return sorted(n for n in names if n.startswith("smtp-loop-"))

    def wait_loops(self, server, want):
        deadline = time.monotonic() + 10
        while self.loops(server) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.loops(server), want)

    def test_workers_grow_and_shrink_without_cutting_a_session(self):
        # Worker loops are threads of their own; a reload adds some, or retires them: a retired
        # loop takes no new session, its open ones finish there, then its thread ends.
        server = self.start_server(self.config([noop_says("one"), "sink"], workers=2))
        self.wait_loops(server, ["smtp-loop-1", "smtp-loop-2"])
        open_ = []
        for _ in range(4):  # the fewest sessions first: two on each loop
            s = smtplib.SMTP(HOST, self.port, timeout=10)
            self.addCleanup(s.close)
            s.ehlo("x")
            s.mail("a@b.example")
            open_.append(s)
        self.rewrite(server, self.config([noop_says("two"), "sink"], workers=3))
        self.assertIn("workers=3 workers_before=2", self.reload(server))
        self.wait_loops(server, ["smtp-loop-1", "smtp-loop-2", "smtp-loop-3"])
        # workers: 1: the home loop serves again; the worker loops keep their open sessions.
        self.rewrite(server, self.config([noop_says("three"), "sink"], workers=1))
        self.assertIn("workers=1 workers_before=3", self.reload(server))
        with smtplib.SMTP(HOST, self.port, timeout=10) as s:
            self.assertEqual(s.noop(), (250, b"three"))
        self.wait_loops(server, ["smtp-loop-1", "smtp-loop-2"])  # loop 3 had no session
        for s in open_:
            self.assertEqual(s.noop(), (250, b"one"))
            s.rcpt("c@d.example")
            self.assertEqual(s.data(b"Subject: x\r\n\r\nbody\r\n"), (250, b"OK"))
            s.quit()
        self.wait_loops(server, [])
        # Back to two: the retired loops come back (no new thread names), and serve.
        self.rewrite(server, self.config([noop_says("four"), "sink"], workers=2))
        self.reload(server)
        self.wait_loops(server, ["smtp-loop-1", "smtp-loop-2"])
        for _ in range(3):
            with smtplib.SMTP(HOST, self.port, timeout=10) as s:
                self.assertEqual(s.noop(), (250, b"four"))

    def test_a_broken_config_is_refused_and_service_goes_on(self):
        server = self.start_server(self.config([noop_says("still me"), "sink"]))
        self.rewrite(server, "server: {listen: [{port: notaport}]}\n")
        self.assertIn("port", self.reload(server, expect="result=failed"))
        self.rewrite(server, self.config([{"path": harness.fixture_plugin("wrong_abi")}]))
        self.assertIn("wrong_abi.so", self.reload(server, expect="result=failed"))
        with smtplib.SMTP(HOST, self.port, timeout=10) as s:
            self.assertEqual(s.noop(), (250, b"still me"))

    def test_a_plugin_file_replaced_on_disk_is_picked_up(self):
        folder = server_dir = None
        import tempfile
        folder = tempfile.mkdtemp(prefix="asiosmtpd-reload-")
        self.addCleanup(shutil.rmtree, folder, True)
        plugin = os.path.join(folder, "policy.so")
        shutil.copy(harness.fixture_plugin("c_plugin"), plugin)  # NOOP -> "250 C plugin"
        config = self.config([{"path": plugin}, "sink"])
        server = self.start_server(config)
        with smtplib.SMTP(HOST, self.port, timeout=10) as s:
            self.assertEqual(s.noop(), (250, b"C plugin"))
        # "Rebuild" in place: same path, new contents (written over the old file).
        shutil.copy(harness.fixture_plugin("scripted"), plugin)
        config["plugins"][0]["config"] = {"hooks": {"NOOP": {"verdict": "accept", "code": 250, "text": "rebuilt"}}}
        self.rewrite(server, config)
        self.reload(server)
        with smtplib.SMTP(HOST, self.port, timeout=10) as s:
            self.assertEqual(s.noop(), (250, b"rebuilt"))

    def test_listeners_added_and_removed(self):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            second = probe.getsockname()[1]
        server = self.start_server(self.config(["sink"]))
        self.rewrite(server, self.config(["sink"], listen=[{"address": HOST, "port": second}]))
        last = self.reload(server)
        self.assertIn("opened=1 closed=1", last)
        with smtplib.SMTP(HOST, second, timeout=10) as s:
            self.assertEqual(s.noop()[0], 250)
        with self.assertRaises(OSError):
            socket.create_connection((HOST, self.port), timeout=2).close()

    def test_reload_under_load(self):
        server = self.start_server(self.config([noop_says("one"), "sink"]))
        results = {"ok": 0, "failed": 0, "errors": []}
        lock = threading.Lock()
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    with smtplib.SMTP(HOST, self.port, timeout=10) as s:
                        s.sendmail("a@b.example", ["c@d.example"], b"Subject: load\r\n\r\nbody\r\n")
                    with lock:
                        results["ok"] += 1
                except Exception as e:  # any failure is a finding
                    with lock:
                        results["failed"] += 1
                        results["errors"].append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            for i in range(5):
                time.sleep(0.3)
                self.rewrite(server, self.config([noop_says(f"gen {i}"), "sink"]))
                self.reload(server)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        print(f"reload under load: {results['ok']} messages accepted, {results['failed']} failed, 5 reloads")
        self.assertEqual(results["failed"], 0, results["errors"][:5])
        self.assertGreater(results["ok"], 20)


if __name__ == "__main__":
    harness.main()
