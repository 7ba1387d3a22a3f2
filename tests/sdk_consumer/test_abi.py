# SPDX-License-Identifier: Apache-2.0
"""The ABI promise against the real server (tests/sdk_consumer/abi): a plugin built against
the frozen 1.0 header loads and works; a plugin needing a newer minor, and one of another
major, are refused at start-up with a clear message."""
import os
import re
import smtplib
import sys

sys.path.insert(0, os.path.join(os.environ["ASIOSMTPD_SOURCE_DIR"], "tests", "integration"))

import harness  # noqa: E402
from harness import HOSTNAME, ServerTestCase, server_config  # noqa: E402

ABI_DIR = os.environ["ASIOSMTPD_ABI_PLUGIN_DIR"]


def abi_plugin(name):
    return os.path.join(ABI_DIR, name + ".so")


def current_minor():
    header = os.path.join(os.environ["ASIOSMTPD_SOURCE_DIR"], "sdk", "include", "asiosmtpd", "plugin.h")
    with open(header, encoding="utf-8") as f:
        return int(re.search(r"#define ASIOSMTPD_ABI_MINOR (\d+)u", f.read()).group(1))


class AbiTest(ServerTestCase):
    def test_a_plugin_built_against_the_frozen_1_0_header_works(self):
        server = self.start_server(server_config(plugins=[{"path": abi_plugin("frozen_v1_0")}, "sink"]))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.ehlo("old.example")
            self.assertEqual(s.docmd("FROZEN"), (250, b"abi 1.0 helo old.example"))
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"x\r\n"), {})

    def test_abi_1_3_from_c_beside_the_frozen_1_0_plugin(self):
        # The 1.0 plugin runs before the editor, the maildir plugin after it: it stores the
        # edited message for the edited recipients, and TXN_END reaches the C plugin.
        import tempfile
        sys.path.insert(0, os.path.join(os.environ["ASIOSMTPD_SOURCE_DIR"], "tests", "integration"))
        from delivery import maildir_files, rmtree
        tmp = tempfile.mkdtemp(prefix="asiosmtpd-abi13-")
        self.addCleanup(rmtree, tmp)
        plugins = [{"path": abi_plugin("frozen_v1_0")}, {"path": abi_plugin("c_editor_v1_3")},
                   {"name": "maildir", "config": {"path": os.path.join(tmp, "Maildir")}}]
        server = self.start_server(server_config(plugins=plugins))
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.ehlo("new.example")
            self.assertEqual(s.docmd("FROZEN"), (250, b"abi 1.0 helo new.example"))
            self.assertEqual(s.sendmail("a@b.example", ["c@d.example"], b"Subject: s\r\n\r\nx\r\n"), {})
        stored = list(maildir_files(os.path.join(tmp, "Maildir")).values())
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored[0].startswith(b"X-C-Editor: v1.3\nSubject: s\n"), stored[0])
        self.assertIn(b"X-RcptTo: c@d.example, archive@example.org\n", stored[0])
        server.wait_output(lambda t: "txn_end outcome=1 code=250 rcpts=1" in t, which="stderr")

    def test_a_newer_minor_is_refused(self):
        minor = current_minor()
        r = harness.run_binary(["--check-config"], server_config(plugins=[{"path": abi_plugin("newer_minor")}]))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"needs plugin ABI 1.{minor + 1}, this host has 1.{minor}", r.stderr)
        self.assertIn("newer_minor.so", r.stderr)

    def test_another_major_is_refused(self):
        r = harness.run_binary(["--check-config"], server_config(plugins=[{"path": abi_plugin("other_major")}]))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("not an asiosmtpd plugin: no asiosmtpd_plugin_entry_v1 (built for another ABI major?)",
                      r.stderr)


if __name__ == "__main__":
    harness.main()
