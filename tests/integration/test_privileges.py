# SPDX-License-Identifier: Apache-2.0
"""Privileges (issue 9): started as root with `server.user`, asiosmtpd binds its listeners (a
port below 1024 here) and loads its TLS key (root-only here) as root, then drops to that user
for good (no supplementary groups left, no capabilities, root not regainable) before any
plugin code runs; plugin files must be readable by that user; SIGHUP reloads run as that
user and refuse, with a clear line, what it cannot do (a new port below 1024, a root-only
key) while service goes on. `server.allow_root: false` refuses to start as root without a
user; an unknown user is a config error naming its line.

Most tests need root and are skipped otherwise. Plugins are copied from $ASIOSMTPD_PLUGIN_DIR
into a world-readable temp folder and named by `path:`: the build tree may be under a folder
that the unprivileged user cannot enter.
"""
import grp
import http.client
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import unittest

import harness
from harness import HOST, ServerTestCase, run_binary, server_config, to_yaml

IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = ("needs root: asiosmtpd drops privileges only when started as root "
                   "(run ctest as root to cover issue 9)")
try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None
MESSAGE = b"Subject: privileges\r\n\r\nsent to a server running as nobody\r\n"


def free_privileged_port(exclude=()):
    """A port in 1000..1023 that nothing listens on (tried by binding it, as root)."""
    for port in range(1023, 999, -1):
        if port in exclude:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise unittest.SkipTest("no free port in 1000..1023 on 127.0.0.1")


def proc_ids(pid):
    """{'Uid': [...], 'Gid': [...], 'Groups': [...], 'CapEff': '...', 'NoNewPrivs': '...'} of a process."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = value.split()
            elif key in ("CapEff", "CapPrm", "NoNewPrivs"):
                out[key] = value.strip()
    return out


def last_reload(server, before):
    """Waits (bounded) for reload line number `before`+1 and returns it."""
    server.wait_output(lambda e: e.count("event=reload ") > before, which="stderr", timeout=15)
    return [l for l in server.stderr().splitlines() if "event=reload " in l][before]


@unittest.skipUnless(IS_ROOT, NOT_ROOT_REASON)
@unittest.skipIf(NOBODY is None, "no user nobody on this system")
class DropTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        # World-readable: plugins, and configs a reload must read as nobody.
        cls.public = tempfile.mkdtemp(prefix="asiosmtpd-priv-")
        os.chmod(cls.public, 0o755)
        cls.plugins = {}
        for name in ("sink", "ping"):
            dst = os.path.join(cls.public, name + ".so")
            shutil.copy(os.path.join(harness.PLUGIN_DIR, name + ".so"), dst)
            os.chmod(dst, 0o644)
            cls.plugins[name] = dst
        # Root only: the TLS key (and its folder), as in /etc/ssl/private; the certificate is public.
        cls.private = tempfile.mkdtemp(prefix="asiosmtpd-priv-key-")
        os.chmod(cls.private, 0o700)
        cls.cert = os.path.join(cls.public, "cert.pem")
        cls.key = os.path.join(cls.private, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cls.key,
                        "-out", cls.cert, "-subj", "/CN=localhost", "-days", "2"],
                       check=True, capture_output=True, timeout=60)
        os.chmod(cls.key, 0o600)
        os.chmod(cls.cert, 0o644)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.public, ignore_errors=True)
        shutil.rmtree(cls.private, ignore_errors=True)

    def config(self, port, plugins=("sink",), **server):
        return server_config(plugins=[{"path": self.plugins[p]} for p in plugins],
                             listen=[{"address": HOST, "port": port}], user="nobody", **server)

    def make_readable(self, server):
        """The config a reload reads, readable by nobody (the harness writes it in a 0700 folder)."""
        os.chmod(server.tmpdir, 0o755)
        os.chmod(server.config_path, 0o644)

    def rewrite(self, server, config):
        with open(server.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(config))
        os.chmod(server.config_path, 0o644)

    def assert_runs_as_nobody(self, pid):
        ids = proc_ids(pid)
        uid, gid = str(NOBODY.pw_uid), str(NOBODY.pw_gid)
        self.assertEqual(ids["Uid"], [uid] * 4, ids)   # real, effective, saved, filesystem
        self.assertEqual(ids["Gid"], [gid] * 4, ids)
        self.assertEqual(ids["Groups"], [], ids)       # no supplementary group (root's are gone)
        self.assertEqual(int(ids["CapEff"], 16), 0, ids)
        self.assertEqual(int(ids["CapPrm"], 16), 0, ids)
        self.assertEqual(ids["NoNewPrivs"], "1", ids)

    def test_binds_a_privileged_port_then_serves_as_nobody(self):
        port = free_privileged_port()
        metrics_port = free_privileged_port(exclude=(port,))
        config = self.config(port)
        config["metrics"] = {"listen": f"{HOST}:{metrics_port}"}
        server = self.start_server(config)
        self.assertEqual(server.port, port)
        self.assert_runs_as_nobody(server.process.pid)
        with smtplib.SMTP(HOST, port, timeout=10) as s:
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], MESSAGE), {})
        # The metrics listener, below 1024 too, was opened before the drop and serves.
        conn = http.client.HTTPConnection(HOST, metrics_port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            self.assertIn(b"asiosmtpd_", response.read())
        finally:
            conn.close()
        err = server.wait_output(lambda e: "event=message" in e, which="stderr")
        self.assertRegex(err, r"event=message .*result=250 decided_by=sink")
        # The order: listeners opened as root, then the drop, and only then the plugin code.
        listening = err.index("event=listening")
        dropped = err.index(f"event=privileges_dropped user=nobody uid={NOBODY.pw_uid}")
        loaded = err.index("event=plugin_loaded")
        self.assertLess(listening, dropped)
        self.assertLess(dropped, loaded)
        self.assertNotIn("event=running_as_root", err)

    def test_root_only_tls_key_is_loaded_before_the_drop(self):
        config = self.config(0)
        config["server"]["listen"] = [{"address": HOST, "port": 0, "tls": "starttls"}]
        config["tls"] = {"certificate": self.cert, "private_key": self.key}
        server = self.start_server(config)
        self.assert_runs_as_nobody(server.process.pid)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.starttls(context=ctx)
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], MESSAGE), {})
        # A reload runs as nobody: the root-only key cannot be read again. Refused, named, and
        # the running configuration goes on.
        self.make_readable(server)
        server.signal(signal.SIGHUP)
        line = last_reload(server, 0)
        self.assertIn("result=failed", line)
        self.assertIn("tls.private_key: cannot read", line)
        self.assertIn("Permission denied (asiosmtpd runs as user nobody", line)
        self.assertIn("keeping the running configuration", line)
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            s.starttls(context=ctx)
            self.assertEqual(s.noop()[0], 250)

    def test_sighup_reload_works_as_nobody_and_refuses_a_new_privileged_port(self):
        port = free_privileged_port()
        server = self.start_server(self.config(port))
        # Unreadable config (0700 folder): refused with a clear line, service goes on.
        server.signal(signal.SIGHUP)
        line = last_reload(server, 0)
        self.assertIn("result=failed", line)
        self.assertIn("cannot read: Permission denied (asiosmtpd runs as user nobody", line)
        # Readable: a new plugin chain is loaded as nobody and serves new sessions.
        self.make_readable(server)
        self.rewrite(server, self.config(port, plugins=("ping", "sink")))
        server.signal(signal.SIGHUP)
        self.assertIn("result=ok", last_reload(server, 1))
        self.assert_runs_as_nobody(server.process.pid)
        with smtplib.SMTP(HOST, port, timeout=10) as s:
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], MESSAGE), {})
        # A second port below 1024 cannot be opened any more: the whole reload is refused (the
        # running listener stays), and the line says why and what to do.
        second = free_privileged_port(exclude=(port,))
        config = self.config(port, plugins=("sink",))
        config["server"]["listen"].append({"address": HOST, "port": second})
        self.rewrite(server, config)
        server.signal(signal.SIGHUP)
        line = last_reload(server, 2)
        self.assertIn("result=failed", line)
        self.assertIn(f"cannot listen on {HOST}:{second}: Permission denied", line)
        self.assertIn("dropped its privileges to user nobody", line)
        self.assertIn("restart", line)
        with smtplib.SMTP(HOST, port, timeout=10) as s:
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))  # still the previous generation
        with self.assertRaises(OSError):
            socket.create_connection((HOST, second), timeout=2).close()

    def test_plugin_file_must_be_readable_by_the_user(self):
        locked = os.path.join(self.public, "locked")
        os.makedirs(locked, exist_ok=True)
        os.chmod(locked, 0o755)
        plugin = os.path.join(locked, "sink.so")
        shutil.copy(self.plugins["sink"], plugin)
        os.chmod(plugin, 0o600)  # root only
        config = server_config(plugins=[{"path": plugin}], user="nobody")
        for args in ([], ["--check-config"]):
            with self.subTest(args=args):
                r = run_binary(args, config=config, timeout=30)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertRegex(r.stderr, r"asiosmtpd: \S+: plugins\[0\]: plugin file " + re.escape(plugin) +
                                 r" not readable by user nobody: Permission denied")
        # By name, in a plugin folder nobody cannot enter: the folder is named.
        os.chmod(plugin, 0o644)
        os.chmod(locked, 0o700)
        config = server_config(plugins=["sink"], user="nobody")
        config["plugin_path"] = [locked]
        r = run_binary([], config=config, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"plugins[0].name: plugin folder {locked} not accessible by user nobody", r.stderr)

    def test_allow_root_false(self):
        # Without a user: refused before anything is opened, naming the key and the fix.
        r = run_binary([], config=server_config(plugins=["sink"], allow_root=False), timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"asiosmtpd: \S+:\d+: server\.allow_root: false without server\.user: "
                                   r"refusing to start as root .*set server\.user")
        self.assertNotIn("event=listening", r.stderr)
        # With a user it starts (as that user).
        server = self.start_server(self.config(0, allow_root=False))
        self.assert_runs_as_nobody(server.process.pid)

    def test_root_without_user_warns_once(self):
        server = self.start_server(server_config(plugins=["sink"]))
        err = server.wait_output(lambda e: "event=running_as_root" in e, which="stderr")
        self.assertEqual(err.count("event=running_as_root"), 1, err)
        self.assertRegex(err, r"(?m)^(?:\S+ )?warn event=running_as_root .*set server\.user")
        self.assertEqual(proc_ids(server.process.pid)["Uid"][1], "0")

    def test_user_set_while_not_root(self):
        # Started as nobody: server.user nobody is fine, another user is a clear error.
        def as_nobody(config):
            path = os.path.join(self.public, "not-root.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(to_yaml(config))
            os.chmod(path, 0o644)
            try:
                return subprocess.run([harness.BIN, "--check-config", "--config", path], capture_output=True,
                                      text=True, timeout=30, user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                                      extra_groups=[], stdin=subprocess.DEVNULL)
            except PermissionError:
                self.skipTest(f"{harness.BIN} cannot be run by nobody (the build tree is not world-readable)")
        ok = as_nobody(server_config(plugins=[{"path": self.plugins["sink"]}], user="nobody"))
        if "error while loading shared libraries" in ok.stderr or ok.returncode == 126:
            self.skipTest("the binary cannot be run by nobody here: " + ok.stderr.strip())
        self.assertEqual(ok.returncode, 0, ok.stderr)
        other = "daemon" if _exists("daemon") else "root"
        bad = as_nobody(server_config(plugins=[{"path": self.plugins["sink"]}], user=other))
        self.assertEqual(bad.returncode, 1, bad.stderr)
        if other != "root":
            self.assertRegex(bad.stderr, r"server\.user: cannot switch to user daemon \(uid \d+\): asiosmtpd runs "
                                         r"as user nobody \(uid \d+\), not as root")


def _exists(user):
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


class ConfigErrorTest(unittest.TestCase):
    """Config errors: checked when the file is read, root or not."""

    def test_unknown_user_and_group(self):
        for args in ([], ["--check-config"]):
            with self.subTest(args=args):
                r = run_binary(args, config=server_config(plugins=["sink"], user="asiosmtpd-no-such-user"),
                               timeout=30)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertRegex(r.stderr, r"^asiosmtpd: \S+:\d+: server\.user: unknown user "
                                           r"\"asiosmtpd-no-such-user\" \(not in the user database\)\n$")
        if NOBODY is not None:
            try:
                grp.getgrnam("asiosmtpd-no-such-group")
            except KeyError:
                r = run_binary([], config=server_config(plugins=["sink"], user="nobody",
                                                        group="asiosmtpd-no-such-group"), timeout=30)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertRegex(r.stderr, r"server\.group: unknown group \"asiosmtpd-no-such-group\"")


if __name__ == "__main__":
    harness.main()
