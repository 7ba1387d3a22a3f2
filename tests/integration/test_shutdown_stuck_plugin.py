# SPDX-License-Identifier: Apache-2.0
"""SIGTERM while a plugin's synchronous hook never returns: the process still ends, within
shutdown_grace + shutdown_forced_margin (5 s, host/src/net/server.hpp), with exit status 1 and
one error line (event=shutdown_forced). A hook that is slow but returns, or none at all, still
gives the graceful stop: exit 0, no waiting for the deadline.

The `scripted` fixture plugin blocks its event-loop thread on demand (`block_ms`, at most
60 s: "forever" for these tests, which end the server well before).
"""
import re
import signal
import time

import harness
from harness import HOSTNAME, IDENT, ServerTestCase, fixture_plugin, server_config

GRACE = 1
MARGIN = 5          # shutdown_forced_margin in host/src/net/server.hpp
SLACK = 4           # a loaded CI machine (2 cores, sanitizers)
BLOCK_MS = 60000    # the fixture's maximum; far beyond GRACE + MARGIN
FORCED = re.compile(r'^(?:\S+ )?error event=shutdown_forced reason="a plugin hook did not return" '
                    r'sessions=(\d+) waited=(\d+(?:\.\d+)?)s exit=1$', re.M)


def stuck_mail(workers, grace=GRACE, block_ms=BLOCK_MS):
    entry = {"path": fixture_plugin("scripted"),
             "config": {"hooks": {"MAIL": {"verdict": "continue", "block_ms": block_ms}}}}
    return server_config(plugins=[entry, "sink"], workers=workers, shutdown_grace=grace)


class StuckHookTest(ServerTestCase):
    def greeted(self, server):
        c = self.connect(server, timeout=5)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("EHLO client.example")[-1], "250 HELP")
        return c

    def block_a_thread(self, server):
        """A session whose MAIL hook holds its event-loop thread; returns once the host has
        logged the blocking incident (the hook is running)."""
        c = self.greeted(server)
        c.send("MAIL FROM:<a@b.example>\r\n")
        server.wait_output(lambda e: "event=plugin_blocking" in e, which="stderr", timeout=5)
        return c

    def sigterm_and_expect_forced_exit(self, server, sessions):
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        # The signal is seen at once, even with every event-loop thread held.
        server.wait_output(lambda e: "event=signal signal=SIGTERM action=stop" in e, which="stderr", timeout=2)
        rc = server.wait(timeout=GRACE + MARGIN + SLACK)
        elapsed = time.monotonic() - started
        err = server.stderr()
        self.assertIsNotNone(rc, f"still running {GRACE + MARGIN + SLACK} s after SIGTERM:\n{err}")
        self.assertEqual(rc, 1, err)
        self.assertGreaterEqual(elapsed, GRACE + MARGIN - 0.5, "ended before shutdown_grace + margin")
        forced = FORCED.findall(err)
        self.assertEqual(len(forced), 1, err)
        self.assertEqual(int(forced[0][0]), sessions, err)
        self.assertEqual(float(forced[0][1]), GRACE + MARGIN, err)
        self.assertNotIn("event=stopped", err)

    def test_one_worker_held_forever(self):
        # The only event-loop thread is inside the plugin: not even the grace timer can fire.
        server = self.start_server(stuck_mail(workers=1), check_exit=False)
        self.block_a_thread(server)
        self.sigterm_and_expect_forced_exit(server, sessions=1)

    def test_two_workers_one_held_forever(self):
        # The other worker stops the rest gracefully (an idle session gets 421 at once), but
        # run() could never join the held thread.
        server = self.start_server(stuck_mail(workers=2), check_exit=False)
        self.block_a_thread(server)
        idle = self.greeted(server)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        self.assertEqual(idle.line(), f"421 4.3.2 {HOSTNAME} Service shutting down")
        self.assertEqual(idle.expect_eof(timeout=5), b"")
        self.assertLess(time.monotonic() - started, GRACE + 1, "the free worker did not stop the idle session")
        # The clock of the deadline started with the signal, not now.
        rc = server.wait(timeout=GRACE + MARGIN + SLACK)
        elapsed = time.monotonic() - started
        err = server.stderr()
        self.assertEqual(rc, 1, err)
        self.assertGreaterEqual(elapsed, GRACE + MARGIN - 0.5)
        forced = FORCED.findall(err)
        self.assertEqual([int(n) for n, _ in forced], [1], err)

    def test_slow_hook_that_returns_is_a_normal_stop(self):
        # A hook holding the only thread for 2 s, shorter than the grace: the graceful stop
        # goes on once it returns (the session, in a transaction, may finish it), exit 0, no
        # forced exit.
        server = self.start_server(stuck_mail(workers=1, grace=5, block_ms=2000))
        c = self.block_a_thread(server)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        self.assertEqual(c.line(), "250 OK")
        c.send("QUIT\r\n")
        rest = c.expect_eof(timeout=5)
        self.assertIn(rest, (b"221 Bye\r\n", f"421 4.3.2 {HOSTNAME} Service shutting down\r\n".encode()), rest)
        rc = server.wait(timeout=5)
        err = server.stderr()
        self.assertEqual(rc, 0, err)
        self.assertLess(time.monotonic() - started, 4.0)
        self.assertNotIn("event=shutdown_forced", err)
        self.assertIn("event=stopped", err)

    def test_normal_stop_does_not_wait_for_the_deadline(self):
        # The deadline thread is stopped as soon as the server drained: no extra delay.
        server = self.start_server(stuck_mail(workers=1))
        c = self.greeted(server)
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        rc = server.wait(timeout=GRACE + MARGIN + SLACK)
        self.assertEqual(rc, 0, server.stderr())
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertNotIn("event=shutdown_forced", server.stderr())


if __name__ == "__main__":
    harness.main()
