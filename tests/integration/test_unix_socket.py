# SPDX-License-Identifier: Apache-2.0
"""UNIX socket listeners (server.listen[].path): SMTP and LMTP over the socket (smtplib.LMTP
takes a path), the socket file's mode and owner, its removal at exit, a stale file replaced, a
live one or a plain file refused, reloads (a kept path stays open, a removed one is unlinked, a
new one made), what the log and the Received field say of such a client, and the config errors."""
import os
import pwd
import signal
import smtplib
import socket
import stat
import tempfile

import harness
from harness import HOST, HOSTNAME, IDENT, ServerTestCase, run_binary, server_config, to_yaml
from delivery import rmtree


class UnixClient(harness.Client):
    """harness.Client over a UNIX socket."""

    def __init__(self, path, timeout=harness.IO_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""


class UnixSocketTest(ServerTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="asiosmtpd-unix-")
        self.addCleanup(rmtree, self.dir)
        self.smtp_path = os.path.join(self.dir, "smtp.sock")
        self.lmtp_path = os.path.join(self.dir, "lmtp.sock")

    def listen(self, *extra):
        # A TCP listener first: the harness finds the server by it.
        return [{"address": HOST, "port": 0}] + list(extra)

    def unix_client(self, path):
        c = UnixClient(path)
        self.addCleanup(c.close)
        return c

    def test_smtp_and_lmtp_over_unix_sockets_then_removed_at_exit(self):
        server = self.start_server(server_config(
            plugins=["debugging"], received_header=True,
            listen=self.listen({"path": self.smtp_path}, {"path": self.lmtp_path, "protocol": "lmtp",
                                                           "mode": "0600"})))
        self.assertEqual(stat.S_IMODE(os.stat(self.smtp_path).st_mode), 0o660)  # the default mode
        self.assertEqual(stat.S_IMODE(os.stat(self.lmtp_path).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.lmtp_path).st_mode))
        c = self.unix_client(self.smtp_path)
        self.assertEqual(c.reply(), [f"220 {HOSTNAME} {IDENT}"])
        self.assertEqual(c.cmd("HELO client.example"), [f"250 {HOSTNAME}"])
        self.assertEqual(c.cmd("MAIL FROM:<a@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("RCPT TO:<b@example.org>"), ["250 OK"])
        self.assertEqual(c.cmd("DATA")[0][:3], "354")
        self.assertEqual(c.cmd("Subject: over smtp.sock\r\n\r\nx\r\n."), ["250 OK"])
        self.assertEqual(c.cmd("QUIT"), ["221 Bye"])
        lmtp = smtplib.LMTP(self.lmtp_path, timeout=harness.IO_TIMEOUT)
        try:
            self.assertEqual(lmtp.ehlo("client.example")[0], 250)
            # One reply per recipient (RFC 2033): sendmail raises unless every one was accepted.
            self.assertEqual(lmtp.sendmail("a@example.org", ["b@example.org", "c@example.org"],
                                           b"Subject: over lmtp.sock\r\n\r\ny\r\n"), {})
        finally:
            lmtp.quit()
        out = server.wait_output(lambda t: t.count("X-Peer:") >= 2)
        self.assertIn(f"X-Peer: ('unix:{self.smtp_path}', 0", out)  # debugging's repr, as for IPv6
        self.assertIn(f"Received: from client.example (unix:{self.smtp_path})", out)
        self.assertIn(f"Received: from client.example (unix:{self.lmtp_path})", out)
        self.assertIn("with LMTP id", out)
        err = server.stderr()
        self.assertIn(f"event=listening path={self.lmtp_path} protocol=lmtp tls=none mode=0600", err)
        self.assertRegex(err, rf"event=connect peer=unix:{self.smtp_path} pid={os.getpid()} uid={os.getuid()} ")
        self.assertIn(f"client=unix:{self.lmtp_path} from=<a@example.org> to=<b@example.org>,<c@example.org>", err)
        self.assertEqual(server.stop(), 0)
        self.assertFalse(os.path.exists(self.smtp_path))
        self.assertFalse(os.path.exists(self.lmtp_path))

    def test_stale_socket_replaced_live_one_and_plain_file_refused(self):
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.lmtp_path)
        stale.close()  # the file stays: a process that died without removing it
        server = self.start_server(server_config(listen=self.listen({"path": self.lmtp_path, "protocol": "lmtp"})))
        self.assertIn(f"event=stale_socket_removed path={self.lmtp_path}", server.stderr())
        self.assertEqual(self.unix_client(self.lmtp_path).reply(), [f"220 {HOSTNAME} {IDENT}"])
        # A second server on the same path: the first one answers there.
        config = server_config(listen=[{"path": self.lmtp_path}])
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=self.dir, delete=False) as f:
            f.write(to_yaml(config))
        p = run_binary(["--config", f.name], timeout=15)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"cannot listen on unix:{self.lmtp_path}: another process is listening on it", p.stderr)
        self.assertTrue(os.path.exists(self.lmtp_path), "the running server's socket must stay")
        plain = os.path.join(self.dir, "plain")
        with open(plain, "w", encoding="utf-8") as g:
            g.write("not a socket\n")
        with open(f.name, "w", encoding="utf-8") as g:
            g.write(to_yaml(server_config(listen=[{"path": plain}])))
        p = run_binary(["--config", f.name], timeout=15)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"cannot listen on unix:{plain}: the file exists and is not a socket", p.stderr)

    def test_reload_keeps_removes_and_creates_sockets(self):
        a = os.path.join(self.dir, "a.sock")
        b = os.path.join(self.dir, "b.sock")
        c = os.path.join(self.dir, "c.sock")
        with socket.socket() as probe:  # a fixed port: reloads keep TCP listeners by address and port
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        first = server_config(listen=[{"address": HOST, "port": port}, {"path": a}, {"path": b}])
        server = self.start_server(first)
        inode = os.stat(a).st_ino
        held = self.unix_client(a)
        self.assertEqual(held.reply()[0][:3], "220")
        with open(server.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(server_config(listen=[{"address": HOST, "port": port}, {"path": a, "mode": "0640"},
                                                  {"path": c, "protocol": "lmtp"}])))
        before = server.stderr().count("event=reload ")
        server.signal(signal.SIGHUP)
        server.wait_output(lambda e: e.count("event=reload ") > before, which="stderr", timeout=15)
        self.assertIn("event=reload result=ok", server.stderr())
        self.assertIn("opened=1 closed=1", server.stderr())
        self.assertEqual(os.stat(a).st_ino, inode, "a kept path keeps its socket")
        self.assertEqual(stat.S_IMODE(os.stat(a).st_mode), 0o640)
        self.assertFalse(os.path.exists(b))
        self.assertTrue(stat.S_ISSOCK(os.stat(c).st_mode))
        self.assertEqual(held.cmd("NOOP"), ["250 OK"])  # the open session goes on
        lmtp = smtplib.LMTP(c, timeout=harness.IO_TIMEOUT)
        self.assertEqual(lmtp.ehlo("x")[0], 250)
        lmtp.quit()
        self.assertEqual(self.unix_client(a).reply()[0][:3], "220")
        held.close()
        self.assertEqual(server.stop(), 0)
        self.assertFalse(os.path.exists(a) or os.path.exists(c))

    def test_socket_belongs_to_server_user_after_the_drop(self):
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        if os.geteuid() != 0:
            self.skipTest("needs root (the drop to server.user)")
        public = tempfile.mkdtemp(prefix="asiosmtpd-unix-public-")
        self.addCleanup(rmtree, public)
        os.chmod(public, 0o755)
        plugin = os.path.join(public, "sink.so")
        with open(os.path.join(harness.PLUGIN_DIR, "sink.so"), "rb") as src, open(plugin, "wb") as dst:
            dst.write(src.read())
        os.chmod(plugin, 0o644)
        os.chmod(self.dir, 0o777)  # nobody removes the socket at exit
        server = self.start_server(server_config(plugins=[{"path": plugin}], user="nobody",
                                                 listen=self.listen({"path": self.lmtp_path, "protocol": "lmtp"})))
        st = os.stat(self.lmtp_path)
        self.assertEqual((st.st_uid, st.st_gid), (nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(server.stop(), 0)
        self.assertFalse(os.path.exists(self.lmtp_path))

    def test_proxy_relays_to_an_upstream_on_a_unix_socket(self):
        upstream = self.start_server(server_config(plugins=["debugging"], listen=self.listen({"path": self.smtp_path})))
        front = self.start_server(server_config(plugins=[{"name": "proxy", "config": {
            "host": f"unix:{self.smtp_path}", "xforward": True}}]))
        with smtplib.SMTP(HOST, front.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("client.example")
            self.assertEqual(s.sendmail("a@example.org", ["b@example.org"], b"Subject: via unix\r\n\r\nz\r\n"), {})
        out = upstream.wait_output(lambda t: "Subject: via unix" in t)
        self.assertIn("X-Peer: 127.0.0.1", out)  # the proxy's own header, as aiosmtpd's Proxy
        self.assertIn(f"upstream=unix:{self.smtp_path} reply=\"250 OK\"", front.stderr())
        # Not listening there: the client keeps the message (451), the reason is logged.
        missing = os.path.join(self.dir, "nobody-home.sock")
        down = self.start_server(server_config(plugins=[{"name": "proxy", "config": {"host": f"unix:{missing}"}}]))
        with smtplib.SMTP(HOST, down.port, timeout=harness.IO_TIMEOUT) as s:
            s.ehlo("client.example")
            self.assertEqual(s.docmd("MAIL", "FROM:<a@example.org>"),
                             (451, b"4.4.1 Upstream unavailable, try again later"))
        self.assertIn(f"cannot connect to unix:{missing}: ", down.stderr())

    def test_proxy_config_errors_for_unix_upstreams(self):
        for config, expected in (({"host": "unix:/run/x.sock", "port": 25}, "port: not with host: unix:<path>"),
                                 ({"host": "unix:"}, "host: unix: needs a socket path"),
                                 ({"host": "unix:/" + "x" * 120}, "is too long for a UNIX socket")):
            p = run_binary(["--check-config"], config=server_config(plugins=[{"name": "proxy", "config": config}]))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(expected, p.stderr)

    def test_max_connections_counts_unix_clients(self):
        server = self.start_server(server_config(max_connections=1, listen=self.listen({"path": self.smtp_path})))
        first = self.unix_client(self.smtp_path)
        self.assertEqual(first.reply()[0][:3], "220")
        second = self.unix_client(self.smtp_path)
        self.assertEqual(second.reply(), [f"421 4.7.0 {HOSTNAME} Error: too many connections"])
        self.assertIn("event=refused reason=max_connections client=- limit=1",
                      server.wait_output(lambda t: "event=refused" in t, which="stderr"))

    def test_xclient_counts_a_unix_client_as_localhost(self):
        # As Postfix's smtpd_authorized_xclient_hosts: a local client is 127.0.0.1.
        for networks, trusted in ((["127.0.0.1"], True), (["10.0.0.0/8"], False)):
            with self.subTest(networks=networks):
                server = self.start_server(server_config(
                    plugins=["debugging"], xclient_networks=networks, listen=self.listen({"path": self.smtp_path})))
                c = self.unix_client(self.smtp_path)
                c.reply()
                ehlo = c.cmd("EHLO proxy.example")
                self.assertEqual(any(line.startswith("250-XCLIENT ") for line in ehlo), trusted, ehlo)
                if not trusted:
                    self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.7"), ["550 5.7.0 Error: insufficient authorization"])
                    c.close()
                    server.stop()
                    continue
                self.assertEqual(c.cmd("XCLIENT ADDR=192.0.2.7 PORT=4242")[0][:4], "220 ")
                c.cmd("EHLO client.example")
                c.cmd("MAIL FROM:<a@example.org>")
                c.cmd("RCPT TO:<b@example.org>")
                c.cmd("DATA")
                self.assertEqual(c.cmd("Subject: x\r\n\r\nx\r\n."), ["250 OK"])
                c.close()
                self.assertIn("X-Peer: ('192.0.2.7', 4242)", server.wait_output(lambda t: "X-Peer:" in t))
                server.stop()

    def test_config_errors(self):
        def check(listener, expected):
            p = run_binary(["--check-config"], config=server_config(listen=[listener]))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(expected, p.stderr)

        long_path = os.path.join(self.dir, "x" * 120 + ".sock")
        check({"path": long_path}, f"server.listen[0].path: \"{long_path}\" is too long for a UNIX socket")
        missing = os.path.join(self.dir, "no-such-folder", "lmtp.sock")
        check({"path": missing}, f"server.listen[0].path: the folder \"{os.path.dirname(missing)}\" does not exist")
        check({"path": self.lmtp_path, "port": 24},
              "server.listen[0].port: a listener has either path: (a UNIX socket) or address:/port: (TCP), not both")
        check({"path": self.lmtp_path, "mode": "0999"}, "server.listen[0].mode: expected an octal file mode")
        check({"address": HOST, "port": 0, "mode": "0600"},
              "server.listen[0].mode: applies to a UNIX socket listener (with path:) only")
        check({"path": self.dir}, "is a folder; name the socket file")
        p = run_binary(["--check-config"], config=server_config(
            listen=[{"path": self.lmtp_path}, {"path": self.lmtp_path, "protocol": "lmtp"}]))
        self.assertIn("server.listen[1]: same path as server.listen[0]", p.stderr)


if __name__ == "__main__":
    harness.main()
