# SPDX-License-Identifier: Apache-2.0
"""TLS: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) with real clients (Python's smtplib,
swaks, openssl s_client, curl), the STARTTLS plaintext-injection attack, require_starttls,
broken and stalled handshakes, and certificate errors at start-up. Certificates are made
with openssl at test time."""
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import harness
from harness import HOST, HOSTNAME, IDENT, Client, ServerTestCase, run_binary, server_config

MESSAGE = b"Subject: tls\r\n\r\nsecret body\r\n"


def make_certificate(folder, name="server", cn="localhost"):
    cert = os.path.join(folder, name + "-cert.pem")
    key = os.path.join(folder, name + "-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-subj", "/CN=" + cn, "-days", "2"], check=True, capture_output=True, timeout=60)
    return cert, key


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TlsTestCase(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="asiosmtpd-tls-")
        cls.cert, cls.key = make_certificate(cls.certs)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def tls_config(self, plugins=None, tls_extra=None, **server):
        listen = server.pop("listen", [{"address": HOST, "port": 0, "tls": "starttls"},
                                       {"address": HOST, "port": 0, "tls": "implicit"}])
        config = server_config(plugins=plugins if plugins is not None else ["debugging"],
                               listen=listen, tls_handshake_timeout=2, **server)
        config["tls"] = {"certificate": self.cert, "private_key": self.key, **(tls_extra or {})}
        return config

    def ports(self, server):
        return [port for (_, port, _) in server.listeners]


class StartTlsTest(TlsTestCase):
    def test_smtplib_starttls_then_a_message(self):
        server = self.start_server(self.tls_config())
        with smtplib.SMTP(HOST, self.ports(server)[0], timeout=10) as s:
            code, text = s.ehlo("client.example")
            self.assertEqual(code, 250)
            self.assertIn(b"STARTTLS", text.split(b"\n"))
            self.assertEqual(s.starttls(context=client_context()), (220, b"Ready to start TLS"))
            code, text = s.ehlo("client.example")
            # After the handshake, STARTTLS is no longer offered.
            self.assertEqual(text, HOSTNAME.encode() + b"\nSIZE 33554432\n8BITMIME\nAUTH LOGIN PLAIN\nHELP")
            s.sendmail("a@b.example", ["c@d.example"], MESSAGE)
        server.wait_output(lambda out: "secret body" in out)
        self.assertIn("event=tls version=TLSv1.3", server.stderr())

    def test_a_new_ehlo_is_needed_after_starttls(self):
        server = self.start_server(self.tls_config())
        with smtplib.SMTP(HOST, self.ports(server)[0], timeout=10) as s:
            s.ehlo("client.example")
            s.mail("a@b.example")
            s.starttls(context=client_context())
            # smtplib forgets the EHLO too; ask the server directly.
            self.assertEqual(s.docmd("MAIL", "FROM:<a@b.example>"), (503, b"Error: send HELO first"))
            self.assertEqual(s.docmd("STARTTLS"), (503, b"5.5.1 Error: TLS already active"))

    def test_plaintext_pipelined_after_starttls_never_runs(self):
        # CVE-2011-0411 / CVE-2024-34083: a man in the middle appends commands to STARTTLS.
        server = self.start_server(self.tls_config())
        raw = socket.create_connection((HOST, self.ports(server)[0]), timeout=10)
        self.addCleanup(raw.close)
        c = Client.__new__(Client)
        c.sock, c.buf = raw, b""
        self.assertEqual(c.line(), f"220 {HOSTNAME} {IDENT}")
        c.cmd("EHLO client.example")
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.example>\r\n")
        self.assertEqual(c.line(), "220 Ready to start TLS")
        self.assertEqual(c.buf, b"", "nothing may follow the 220 in plaintext")
        tls = client_context().wrap_socket(raw, server_hostname="localhost")
        tls.settimeout(5)
        tls.sendall(b"EHLO client.example\r\nRCPT TO:<c@d.example>\r\nQUIT\r\n")
        data = b""
        while b"221 Bye" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        lines = data.decode().split("\r\n")
        # The first reply inside TLS is the EHLO's: the injected RSET/MAIL never ran.
        self.assertEqual(lines[0], f"250-{HOSTNAME}")
        self.assertIn("503 Error: need MAIL command", lines)
        self.assertNotIn("250 OK", lines)

    def test_require_starttls(self):
        server = self.start_server(self.tls_config(require_starttls=True))
        with smtplib.SMTP(HOST, self.ports(server)[0], timeout=10) as s:
            self.assertEqual(s.docmd("HELO", "x"), (530, b"Must issue a STARTTLS command first"))
            self.assertEqual(s.docmd("MAIL", "FROM:<a@b.example>"), (530, b"Must issue a STARTTLS command first"))
            self.assertEqual(s.docmd("NOOP"), (250, b"OK"))
            s.ehlo("client.example")
            s.starttls(context=client_context())
            s.ehlo("client.example")
            self.assertEqual(s.docmd("MAIL", "FROM:<a@b.example>"), (250, b"OK"))
        # The implicit-TLS listener is TLS already: nothing to require.
        with smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=client_context()) as s:
            s.ehlo("client.example")
            self.assertEqual(s.docmd("MAIL", "FROM:<a@b.example>"), (250, b"OK"))

    def test_swaks_tls(self):
        if not shutil.which("swaks"):
            self.skipTest("swaks is not installed")
        server = self.start_server(self.tls_config())
        out = subprocess.run(["swaks", "--server", f"{HOST}:{self.ports(server)[0]}", "--tls", "--from", "a@b.example",
                              "--to", "c@d.example", "--body", "swaks over tls"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("TLS started", out.stdout)
        self.assertIn("<~  250 OK", out.stdout)
        server.wait_output(lambda o: "swaks over tls" in o)

    def test_openssl_s_client_starttls(self):
        server = self.start_server(self.tls_config())
        out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{self.ports(server)[0]}", "-starttls", "smtp",
                              "-quiet", "-ign_eof"], input="EHLO client.example\r\nQUIT\r\n",
                             capture_output=True, text=True, timeout=30)
        self.assertIn(f"250-{HOSTNAME}", out.stdout)
        self.assertIn("221 Bye", out.stdout)
        self.assertNotIn("STARTTLS", out.stdout)


class ImplicitTlsTest(TlsTestCase):
    def test_smtplib_smtp_ssl(self):
        server = self.start_server(self.tls_config())
        with smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=client_context()) as s:
            code, text = s.ehlo("client.example")
            self.assertNotIn(b"STARTTLS", text)
            self.assertEqual(s.docmd("STARTTLS"), (503, b"5.5.1 Error: TLS already active"))
            s.sendmail("a@b.example", ["c@d.example"], MESSAGE)
        server.wait_output(lambda out: "secret body" in out)

    def test_curl_smtps(self):
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        server = self.start_server(self.tls_config())
        with tempfile.NamedTemporaryFile("wb", suffix=".eml", delete=False) as f:
            f.write(b"Subject: curl\r\n\r\ncurl over smtps\r\n")
        self.addCleanup(os.unlink, f.name)
        out = subprocess.run(["curl", "-sS", "-k", "--max-time", "20", f"smtps://{HOST}:{self.ports(server)[1]}",
                              "--mail-from", "a@b.example", "--mail-rcpt", "c@d.example", "-T", f.name],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        server.wait_output(lambda o: "curl over smtps" in o)

    def test_swaks_tls_on_connect(self):
        if not shutil.which("swaks"):
            self.skipTest("swaks is not installed")
        server = self.start_server(self.tls_config())
        out = subprocess.run(["swaks", "--server", f"{HOST}:{self.ports(server)[1]}", "--tlsc", "--from", "a@b.example",
                              "--to", "c@d.example", "--body", "tls on connect"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        server.wait_output(lambda o: "tls on connect" in o)

    def test_min_version_1_3_refuses_tls_1_2(self):
        server = self.start_server(self.tls_config(tls_extra={"min_version": "1.3"}))
        ctx = client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with self.assertRaises((ssl.SSLError, ConnectionResetError, EOFError)):
            smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=ctx).quit()
        with smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=client_context()) as s:
            self.assertEqual(s.noop(), (250, b"OK"))

    def test_tls_1_1_is_never_offered(self):
        server = self.start_server(self.tls_config())
        ctx = client_context()
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises((ssl.SSLError, ConnectionResetError, EOFError, OSError)):
            smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=ctx).quit()


class BrokenHandshakeTest(TlsTestCase):
    def test_garbage_instead_of_a_client_hello_costs_only_that_session(self):
        server = self.start_server(self.tls_config())
        bad = self.connect_to(server, 0)
        bad.line()
        bad.cmd("EHLO x")
        self.assertEqual(bad.cmd("STARTTLS"), ["220 Ready to start TLS"])
        bad.send(b"this is not a TLS ClientHello\r\n" * 10)
        bad.expect_eof(timeout=5)
        garbage = self.connect_to(server, 1)
        garbage.send(b"EHLO plaintext-on-an-implicit-port\r\n")
        garbage.expect_eof(timeout=5)
        with smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=client_context()) as s:
            self.assertEqual(s.noop(), (250, b"OK"))
        server.wait_output(lambda e: "event=tls_failed" in e, which="stderr")

    def test_a_stalled_handshake_times_out(self):
        server = self.start_server(self.tls_config())
        stalled = self.connect_to(server, 1)
        t0 = time.monotonic()
        stalled.expect_eof(timeout=8)  # tls_handshake_timeout: 2
        self.assertLess(time.monotonic() - t0, 7)
        server.wait_output(lambda e: "tls handshake timeout" in e, which="stderr")

    def test_a_client_dropping_mid_handshake(self):
        server = self.start_server(self.tls_config())
        for _ in range(5):
            c = socket.create_connection((HOST, self.ports(server)[1]), timeout=5)
            c.sendall(b"\x16\x03\x01\x00\xff\x01\x00")  # the start of a ClientHello, then gone
            c.close()
        with smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=client_context()) as s:
            self.assertEqual(s.noop(), (250, b"OK"))

    def connect_to(self, server, index):
        client = Client(HOST, self.ports(server)[index], timeout=10)
        self.addCleanup(client.close)
        return client


class CertificateErrorsTest(TlsTestCase):
    def check_fails(self, config, *needles):
        result = run_binary(["--check-config"], config=config)
        self.assertNotEqual(result.returncode, 0)
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        for n in needles:
            self.assertIn(n, lines[0])

    def test_missing_certificate(self):
        config = self.tls_config()
        config["tls"]["certificate"] = os.path.join(self.certs, "nope.pem")
        self.check_fails(config, "tls.certificate", "nope.pem")

    def test_key_not_matching_the_certificate(self):
        other_cert, other_key = make_certificate(self.certs, "other")
        config = self.tls_config()
        config["tls"]["private_key"] = other_key
        self.check_fails(config, "tls.private_key", "does not match")

    def test_not_a_certificate(self):
        config = self.tls_config()
        config["tls"]["certificate"] = self.key
        self.check_fails(config, "tls.certificate", "PEM certificate")

    def test_bad_cipher_list(self):
        self.check_fails(self.tls_config(tls_extra={"ciphers": "NO-SUCH-CIPHER"}), "tls.ciphers")

    def test_tls_listener_without_tls_section(self):
        config = self.tls_config()
        del config["tls"]
        self.check_fails(config, "tls")

    def test_valid_tls_config_checks_ok(self):
        result = run_binary(["--check-config"], config=self.tls_config())
        self.assertEqual(result.returncode, 0, result.stderr)


if __name__ == "__main__":
    harness.main()


class TlsPluginTest(TlsTestCase):
    def scripted(self, hooks):
        return {"path": harness.fixture_plugin("scripted"), "config": {"hooks": hooks}}

    def test_plugins_see_tls_details(self):
        server = self.start_server(self.tls_config(plugins=[self.scripted(
            {"NOOP": {"verdict": "accept", "code": 250, "text": "tls={tls} {tls_version} {tls_cipher}"}})]))
        with smtplib.SMTP(HOST, self.ports(server)[0], timeout=10) as s:
            self.assertEqual(s.noop(), (250, b"tls=0  "))
            s.ehlo("x")
            s.starttls(context=client_context())
            code, text = s.noop()
            self.assertEqual(code, 250)
            self.assertTrue(text.startswith(b"tls=1 TLSv1.3 TLS_"), text)
        with smtplib.SMTP_SSL(HOST, self.ports(server)[1], timeout=10, context=client_context()) as s:
            self.assertTrue(s.noop()[1].startswith(b"tls=1 TLSv1.3"))

    def test_starttls_hook_refusing_the_session(self):
        # aiosmtpd's handle_STARTTLS returning False: 554 for everything but QUIT.
        server = self.start_server(self.tls_config(plugins=[self.scripted({"STARTTLS": {"verdict": "reject"}})]))
        with smtplib.SMTP(HOST, self.ports(server)[0], timeout=10) as s:
            s.ehlo("x")
            s.starttls(context=client_context())
            self.assertEqual(s.docmd("EHLO", "x"), (554, b"Command refused due to lack of security"))
            self.assertEqual(s.docmd("QUIT"), (221, b"Bye"))
