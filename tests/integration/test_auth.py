# SPDX-License-Identifier: Apache-2.0
"""AUTH (RFC 4954): the authfile plugin (crypt(3) hashes checked on worker threads) with
smtplib, swaks and curl over STARTTLS and implicit TLS; failures, the brute-force limit,
auth_required, auth_require_tls; plugin mechanisms with challenge steps, also completed from
another thread; the identity visible to later hooks."""
import base64
import ctypes
import os
import shutil
import smtplib
import subprocess
import tempfile
import time

import harness
from harness import HOST, HOSTNAME, Client, ServerTestCase, server_config
from test_tls import client_context, make_certificate

_libcrypt = ctypes.CDLL("libcrypt.so.1")
_libcrypt.crypt_gensalt.restype = ctypes.c_char_p
_libcrypt.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
_libcrypt.crypt.restype = ctypes.c_char_p
_libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]


def crypt_hash(password, prefix):
    """A crypt(3) hash made by the system's libcrypt: "$y$" yescrypt, "$6$" SHA-512, "$2b$" bcrypt."""
    setting = _libcrypt.crypt_gensalt(prefix.encode(), 0, None, 0)
    return _libcrypt.crypt(password.encode(), setting).decode()


def authfile_plugin(test, users):
    """The authfile plugin entry for a users file made for this test ({user: password}, SHA-512
    hashes), removed when the test ends."""
    folder = tempfile.mkdtemp(prefix="asiosmtpd-users-")
    test.addCleanup(shutil.rmtree, folder, True)
    path = os.path.join(folder, "users.txt")
    with open(path, "w") as f:
        for user, password in users.items():
            f.write(f"{user}:{crypt_hash(password, '$6$')}\n")
    return {"name": "authfile", "config": {"users_file": path}}


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


USERS = {"alice": ("wonderland", "$y$"), "bob": ("builder", "$6$"), "carol": ("singer", "$2b$")}


class AuthTestCase(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="asiosmtpd-auth-")
        cls.cert, cls.key = make_certificate(cls.dir)
        cls.users = os.path.join(cls.dir, "users.txt")
        with open(cls.users, "w") as f:
            f.write("# test users\n")
            for user, (password, prefix) in USERS.items():
                f.write(f"{user}:{crypt_hash(password, prefix)}\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def auth_config(self, extra_plugins=(), **server):
        server.setdefault("auth_failure_delay", 0)
        listen = server.pop("listen", [{"address": HOST, "port": 0, "tls": "starttls"},
                                       {"address": HOST, "port": 0, "tls": "implicit"}])
        plugins = [{"name": "authfile", "config": {"users_file": self.users}}] + list(extra_plugins) + ["sink"]
        config = server_config(plugins=plugins, listen=listen, **server)
        config["tls"] = {"certificate": self.cert, "private_key": self.key}
        return config

    def starttls_client(self, server, port_index=0):
        s = smtplib.SMTP(HOST, server.listeners[port_index][1], timeout=15)
        self.addCleanup(s.close)
        s.ehlo("client.example")
        s.starttls(context=client_context())
        s.ehlo("client.example")
        return s


class AuthFileTest(AuthTestCase):
    def test_login_with_every_hash_scheme_and_mechanism(self):
        server = self.start_server(self.auth_config())
        for user, (password, _) in USERS.items():
            for mechanism in ("PLAIN", "LOGIN"):
                with self.subTest(user=user, mechanism=mechanism):
                    s = self.starttls_client(server)
                    self.assertIn("auth", s.esmtp_features)
                    self.assertEqual(s.esmtp_features["auth"].split(), ["LOGIN", "PLAIN"])
                    s.user, s.password = user, password
                    code, text = s.auth(mechanism, getattr(s, "auth_" + mechanism.lower()),
                                        initial_response_ok=(mechanism == "PLAIN"))
                    self.assertEqual((code, text), (235, b"2.7.0 Authentication successful"))
                    self.assertEqual(s.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}")),
                                     (503, b"Already authenticated"))
                    s.sendmail("a@b.example", ["c@d.example"], b"Subject: auth\r\n\r\nx\r\n")
                    s.quit()
        self.assertNotIn("wonderland", server.stderr())  # passwords never logged
        self.assertIn('event=auth result=ok login="alice"', server.stderr())

    def test_wrong_password_and_unknown_user_get_535(self):
        server = self.start_server(self.auth_config(auth_max_failures=0))
        s = self.starttls_client(server)
        for user, password in (("alice", "wrong"), ("nobody", "wonderland"), ("", "")):
            self.assertEqual(s.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}")),
                             (535, b"5.7.8 Authentication credentials invalid"))
        # PLAIN's authorization identity must be the user's own.
        self.assertEqual(s.docmd("AUTH", "PLAIN " + b64("bob\0alice\0wonderland")),
                         (535, b"5.7.8 Authentication credentials invalid"))
        self.assertEqual(s.docmd("AUTH", "PLAIN " + b64("alice\0alice\0wonderland"))[0], 235)

    def test_cancel_and_bad_base64(self):
        server = self.start_server(self.auth_config())
        s = self.starttls_client(server)
        self.assertEqual(s.docmd("AUTH", "LOGIN"), (334, b"VXNlcm5hbWU6"))
        self.assertEqual(s.docmd("*"), (501, b"5.7.0 Auth aborted"))
        self.assertEqual(s.docmd("AUTH", "PLAIN !!!"), (501, b"5.5.2 Can't decode base64"))
        self.assertEqual(s.docmd("AUTH", "login " + b64("alice")), (334, b"UGFzc3dvcmQ6"))
        self.assertEqual(s.docmd(b64("wonderland"))[0], 235)

    def test_too_many_failures_close_the_session(self):
        server = self.start_server(self.auth_config(auth_max_failures=2, auth_failure_delay=0.3))
        s = self.starttls_client(server)
        t0 = time.monotonic()
        self.assertEqual(s.docmd("AUTH", "PLAIN " + b64("\0alice\0x"))[0], 535)
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)  # auth_failure_delay
        self.assertEqual(s.docmd("AUTH", "PLAIN " + b64("\0alice\0y"))[0], 535)
        code, text = s.getreply()
        self.assertEqual(code, 421)
        self.assertIn(b"too many failed authentication attempts", text)

    def test_auth_required_blocks_mail_until_login(self):
        server = self.start_server(self.auth_config(auth_required=True))
        s = self.starttls_client(server)
        self.assertEqual(s.docmd("MAIL", "FROM:<a@b.example>"), (530, b"5.7.0 Authentication required"))
        s.login("bob", "builder")
        self.assertEqual(s.docmd("MAIL", "FROM:<a@b.example>"), (250, b"OK"))

    def test_auth_require_tls_on_plaintext(self):
        server = self.start_server(self.auth_config())
        with smtplib.SMTP(HOST, server.listeners[0][1], timeout=10) as s:
            s.ehlo("client.example")
            self.assertNotIn("auth", s.esmtp_features)
            self.assertEqual(s.docmd("AUTH", "PLAIN " + b64("\0alice\0wonderland")),
                             (538, b"5.7.11 Encryption required for requested authentication mechanism"))

    def test_implicit_tls_counts_for_auth(self):
        server = self.start_server(self.auth_config())
        with smtplib.SMTP_SSL(HOST, server.listeners[1][1], timeout=10, context=client_context()) as s:
            s.ehlo("client.example")
            self.assertIn("auth", s.esmtp_features)
            self.assertEqual(s.login("carol", "singer"), (235, b"2.7.0 Authentication successful"))

    def test_swaks_auth(self):
        if not shutil.which("swaks"):
            self.skipTest("swaks is not installed")
        server = self.start_server(self.auth_config())
        for mechanism in ("PLAIN", "LOGIN"):
            out = subprocess.run(["swaks", "--server", f"{HOST}:{server.listeners[0][1]}", "--tls", "--auth", mechanism,
                                  "--auth-user", "alice", "--auth-password", "wonderland", "--from", "alice@b.example",
                                  "--to", "c@d.example"], capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("235 2.7.0 Authentication successful", out.stdout)
        out = subprocess.run(["swaks", "--server", f"{HOST}:{server.listeners[0][1]}", "--tls", "--auth", "LOGIN",
                              "--auth-user", "alice", "--auth-password", "nope", "--from", "a@b.example",
                              "--to", "c@d.example"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("535 5.7.8 Authentication credentials invalid", out.stdout)

    def test_curl_user_over_implicit_tls(self):
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        server = self.start_server(self.auth_config())
        with tempfile.NamedTemporaryFile("wb", suffix=".eml", delete=False) as f:
            f.write(b"Subject: curl auth\r\n\r\nhello\r\n")
        self.addCleanup(os.unlink, f.name)
        ok = subprocess.run(["curl", "-sS", "-k", "--max-time", "20", f"smtps://{HOST}:{server.listeners[1][1]}",
                             "--user", "bob:builder", "--mail-from", "bob@b.example", "--mail-rcpt", "c@d.example",
                             "-T", f.name], capture_output=True, text=True, timeout=60)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        bad = subprocess.run(["curl", "-sS", "-k", "--max-time", "20", f"smtps://{HOST}:{server.listeners[1][1]}",
                              "--user", "bob:wrong", "--mail-from", "bob@b.example", "--mail-rcpt", "c@d.example",
                              "-T", f.name], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(bad.returncode, 0)

    def test_identity_is_visible_to_later_hooks(self):
        scripted = {"path": harness.fixture_plugin("scripted"),
                    "config": {"hooks": {"RCPT": {"verdict": "accept", "code": 250, "text": "rcpt by [{auth_login}]"}}}}
        server = self.start_server(self.auth_config(extra_plugins=[scripted]))
        s = self.starttls_client(server)
        s.mail("a@b.example")
        self.assertEqual(s.rcpt("c@d.example"), (250, b"rcpt by []"))
        s.rset()
        s.login("alice", "wonderland")
        s.mail("a@b.example")
        self.assertEqual(s.rcpt("c@d.example"), (250, b"rcpt by [alice]"))


class AuthFileConfigTest(AuthTestCase):
    def test_a_bad_users_file_stops_start_up_with_the_line(self):
        bad = os.path.join(self.dir, "bad-users.txt")
        with open(bad, "w") as f:
            f.write("alice:$6$ok\n# fine\nbob-without-hash\n")
        config = self.auth_config()
        config["plugins"][0]["config"]["users_file"] = bad
        result = harness.run_binary(["--check-config"], config=config)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("bad-users.txt:1", result.stderr + "")  # "$6$ok" is not a usable hash
        with open(bad, "w") as f:
            f.write(f"alice:{crypt_hash('x', '$6$')}\nbob-without-hash\n")
        result = harness.run_binary(["--check-config"], config=config)
        self.assertIn("bad-users.txt:2: expected user:hash", result.stderr)


class PluginMechanismTest(AuthTestCase):
    def mech_config(self):
        return self.auth_config(extra_plugins=[{"path": harness.fixture_plugin("xmech")}], auth_require_tls=False,
                                listen=[{"address": HOST, "port": 0}])

    def test_ehlo_lists_plugin_mechanisms_sorted(self):
        server = self.start_server(self.mech_config())
        c = self.connect(server)
        c.line()
        self.assertIn("250-AUTH LOGIN PLAIN X-LATER X-ONESHOT X-TEST", c.cmd("EHLO x"))

    def test_challenge_steps(self):
        server = self.start_server(self.mech_config())
        c = self.connect(server)
        c.line()
        c.cmd("EHLO x")
        self.assertEqual(c.cmd("AUTH x-test"), ["334 " + b64("who?")])
        self.assertEqual(c.cmd(b64("dave")), ["334 " + b64("secret?")])
        self.assertEqual(c.cmd(b64("open sesame")), ["235 2.7.0 Authentication successful"])
        self.assertIn('login="dave"', server.wait_output(lambda e: 'login="dave"' in e, which="stderr"))

    def test_steps_completed_from_another_thread(self):
        server = self.start_server(self.mech_config())
        c = self.connect(server)
        c.line()
        c.cmd("EHLO x")
        self.assertEqual(c.cmd("AUTH X-LATER"), ["334 " + b64("later?")])
        self.assertEqual(c.cmd(b64("wrong")), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(c.cmd("AUTH X-LATER"), ["334 " + b64("later?")])
        self.assertEqual(c.cmd(b64("open sesame")), ["235 2.7.0 Authentication successful"])

    def test_initial_response_and_plugin_reply(self):
        server = self.start_server(self.mech_config())
        c = self.connect(server)
        c.line()
        c.cmd("EHLO x")
        self.assertEqual(c.cmd("AUTH X-ONESHOT " + b64("bad")), ["535 5.7.8 token refused"])
        self.assertEqual(c.cmd("AUTH X-ONESHOT " + b64("token-ok")), ["235 2.7.0 Authentication successful"])


if __name__ == "__main__":
    harness.main()
