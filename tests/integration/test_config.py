# SPDX-License-Identifier: Apache-2.0
"""Command line and configuration errors (README.md, "Command line"): every error stops start-up
with one clear line naming the file, the key and what is wrong, and a non-zero exit."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import harness
from harness import ServerTestCase, fixture_plugin, run_binary, server_config

VERSION = os.environ.get("ASIOSMTPD_VERSION")  # the CMake project version, when run by ctest


def error_lines(stderr):
    """The lines that are not info/debug log events (what the operator must read)."""
    return [l for l in stderr.splitlines() if l.strip() and not re.match(r"^(?:\S+ )?(debug|info) ", l)]


class CommandLineTest(unittest.TestCase):
    def test_version(self):
        p = run_binary(["--version"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"^asiosmtpd \d+\.\d+\.\d+")
        if VERSION:
            self.assertEqual(p.stdout.split()[1], VERSION)

    def test_help(self):
        p = run_binary(["--help"])
        self.assertEqual(p.returncode, 0, p.stderr)
        for opt in ("--config", "--check-config", "--version"):
            self.assertIn(opt, p.stdout)

    def test_check_shipped_config(self):
        conf = os.path.join(harness.SOURCE_DIR, "conf", "asiosmtpd.yaml")
        p = run_binary(["--check-config", "--config", conf])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("configuration OK", p.stdout)

    def test_check_embedded_default(self):
        # No --config: the embedded conf/asiosmtpd.yaml (debugging plugin).
        p = run_binary(["--check-config"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("configuration OK, 1 plugin(s)", p.stdout)

    def test_check_good_temp_config(self):
        p = run_binary(["--check-config"], server_config(plugins=["ping", "sink", "debugging"]))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_unknown_option(self):
        p = run_binary(["--no-such-option"])
        self.assertNotEqual(p.returncode, 0)


class ConfigErrorTest(unittest.TestCase):
    def check_fails(self, config, *must_name, check_only=True):
        """Runs with the config (--check-config, or a real start) and expects exit != 0 with
        exactly one error line that names each of `must_name`. Returns that line."""
        args = ["--check-config"] if check_only else []
        p = run_binary(args, config, timeout=20)
        self.assertNotEqual(p.returncode, 0, f"accepted a bad config:\n{p.stdout}{p.stderr}")
        lines = error_lines(p.stderr)
        self.assertEqual(len(lines), 1, f"expected one error line, got:\n{p.stderr}")
        for name in must_name:
            self.assertIn(name, lines[0])
        return lines[0]

    def test_port_not_a_number(self):
        line = self.check_fails("server:\n  listen:\n    - address: 127.0.0.1\n      port: notaport\n",
                                "port", "notaport")
        self.assertIn("asiosmtpd.yaml", line)

    def test_unknown_key(self):
        line = self.check_fails("server:\n  hostname: mx.example\n  bogus_key: 1\n", "bogus_key")
        self.assertIn("asiosmtpd.yaml", line)

    def test_unknown_top_level_key(self):
        self.check_fails("servre:\n  hostname: x\n", "servre")

    def test_wrong_type(self):
        self.check_fails(server_config(timeout="soon"), "timeout")

    def test_unknown_key_in_plugin_entry(self):
        self.check_fails(server_config(plugins=[{"name": "sink", "bogus": 1}]), "bogus")

    def test_invalid_yaml(self):
        self.check_fails("server: [unclosed\n", "asiosmtpd.yaml")

    def test_missing_config_file(self):
        p = run_binary(["--check-config", "--config", "/nonexistent/asiosmtpd.yaml"])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("/nonexistent/asiosmtpd.yaml", p.stderr)

    def plugin_fails(self, path, *more):
        entry = {"path": path}
        for check_only in (True, False):
            with self.subTest(check_only=check_only):
                self.check_fails(server_config(plugins=[entry]), path, "plugins[0]", *more,
                                 check_only=check_only)

    def test_plugin_path_missing(self):
        self.plugin_fails("/nonexistent/plugin.so")

    def test_plugin_wrong_abi(self):
        self.plugin_fails(fixture_plugin("wrong_abi"), "ABI")

    def test_not_a_plugin(self):
        self.plugin_fails(fixture_plugin("no_entry"))

    def test_plugin_rejects_its_config(self):
        self.plugin_fails(fixture_plugin("rejects_config"), "threshold must be a number")

    def test_plugin_accepts_its_config(self):
        p = run_binary(["--check-config"],
                       server_config(plugins=[{"path": fixture_plugin("rejects_config"), "config": {"threshold": 5}}]))
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_plugin_by_unknown_name(self):
        self.check_fails(server_config(plugins=["no_such_plugin"]), "no_such_plugin")

    def test_bundled_plugin_rejects_config(self):
        self.check_fails(server_config(plugins=[{"name": "ping", "config": {"x": 1}}]), "ping")

    def test_relative_plugin_path(self):
        # Relative paths are relative to the config file's folder.
        with tempfile.TemporaryDirectory(prefix="asiosmtpd-it-") as tmp:
            os.mkdir(os.path.join(tmp, "lib"))
            shutil.copy(fixture_plugin("c_plugin"), os.path.join(tmp, "lib", "mine.so"))
            conf = os.path.join(tmp, "asiosmtpd.yaml")
            with open(conf, "w") as f:
                f.write(harness.to_yaml(server_config(plugins=[{"path": "lib/mine.so"}])))
            p = subprocess.run([harness.BIN, "--check-config", "--config", conf], capture_output=True,
                               text=True, timeout=20, cwd="/")
            self.assertEqual(p.returncode, 0, p.stderr)


    def test_plugin_by_name_from_plugin_path(self):
        # plugin_path folders (relative to the config file's folder) are searched first.
        with tempfile.TemporaryDirectory(prefix="asiosmtpd-it-") as tmp:
            os.mkdir(os.path.join(tmp, "extra"))
            shutil.copy(fixture_plugin("c_plugin"), os.path.join(tmp, "extra", "c_plugin.so"))
            conf = os.path.join(tmp, "asiosmtpd.yaml")
            cfg = server_config(plugins=["c_plugin", "sink"])
            cfg["plugin_path"] = ["extra"]
            with open(conf, "w") as f:
                f.write(harness.to_yaml(cfg))
            p = subprocess.run([harness.BIN, "--check-config", "--config", conf], capture_output=True,
                               text=True, timeout=20, cwd="/")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("2 plugin(s)", p.stdout)


SERVER_HEAD = "server:\n  hostname: mx.test\n  listen:\n    - {address: 127.0.0.1, port: 0}\n"


class PreciseConfigErrorTest(unittest.TestCase):
    """Issue 23: errors that name the file, the line and the full key, with a suggestion."""

    def error(self, text, check_only=True):
        p = run_binary(["--check-config"] if check_only else [], text, timeout=20)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        lines = error_lines(p.stderr)
        self.assertEqual(len(lines), 1, p.stderr)
        # "asiosmtpd: <tmp>/asiosmtpd.yaml:<line>: ..." -> "asiosmtpd.yaml:<line>: ..."
        return lines[0][lines[0].index("asiosmtpd.yaml"):]

    def test_plugin_config_typo_names_line_key_and_suggestion(self):
        text = SERVER_HEAD + "plugins:\n  - name: maildir\n    config:\n      path: md\n      wrokers: 2\n"
        for check_only in (True, False):
            with self.subTest(check_only=check_only):
                self.assertEqual(self.error(text, check_only),
                                 "asiosmtpd.yaml:9: plugins[0].config.wrokers: unknown key (did you mean 'workers'?)")

    def test_plugin_config_range(self):
        text = SERVER_HEAD + "plugins:\n  - name: maildir\n    config: {path: md, workers: 500}\n"
        self.assertEqual(self.error(text), "asiosmtpd.yaml:7: plugins[0].config.workers: must be between 1 and 64, got 500")

    def test_plugin_name_typo(self):
        line = self.error(SERVER_HEAD + "plugins:\n  - name: sink\n  - name: maildri\n")
        self.assertTrue(line.startswith("asiosmtpd.yaml:7: plugins[1].name: no plugin 'maildri' in "), line)
        self.assertTrue(line.endswith(" (did you mean 'maildir'?)"), line)

    def test_verb_conflict_names_the_owner(self):
        line = self.error(SERVER_HEAD + "plugins:\n  - name: ping\n  - name: ping\n")
        self.assertIn("plugins[1]: ", line)
        self.assertIn("cannot register command PING: registered by plugins[0] (ping) already", line)
        self.assertNotIn("refused its configuration", line)

    def test_tab_in_indentation(self):
        self.assertEqual(self.error("server:\n  hostname: mx.test\n\tident: x\n"),
                         "asiosmtpd.yaml:3: invalid YAML: tab characters are not allowed for indentation in YAML "
                         "(column 1)")

    def test_unclosed_bracket_points_at_its_line(self):
        self.assertEqual(self.error("server:\n  listen: [{port: 0}\nplugins: []\n"),
                         "asiosmtpd.yaml:2: invalid YAML: end of sequence flow not found "
                         "(the '[' at column 11 is never closed)")


class CheckChangesNothingTest(unittest.TestCase):
    """Issue 23: --check-config validates the delivery plugins' paths without creating them."""

    def check(self, tmp, plugins_yaml):
        conf = os.path.join(tmp, "asiosmtpd.yaml")
        with open(conf, "w") as f:
            f.write(SERVER_HEAD + plugins_yaml)
        return subprocess.run([harness.BIN, "--check-config", "--config", conf], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)

    def test_maildir_and_mbox_are_not_created(self):
        with tempfile.TemporaryDirectory(prefix="asiosmtpd-it-") as tmp:
            p = self.check(tmp, "plugins:\n  - name: maildir\n    config: {path: mail/inbox}\n"
                                "  - name: mbox\n    config: {path: spool/box.mbox}\n")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(sorted(os.listdir(tmp)), ["asiosmtpd.yaml"])

    def test_an_impossible_path_is_still_an_error(self):
        with tempfile.TemporaryDirectory(prefix="asiosmtpd-it-") as tmp:
            with open(os.path.join(tmp, "afile"), "w") as f:
                f.write("x")
            p = self.check(tmp, "plugins:\n  - name: maildir\n    config:\n      path: afile/inbox\n")
            self.assertNotEqual(p.returncode, 0, p.stdout)
            lines = error_lines(p.stderr)
            self.assertEqual(len(lines), 1, p.stderr)
            self.assertIn("asiosmtpd.yaml:8: plugins[0].config.path: cannot create", lines[0])
            self.assertIn("is not a folder", lines[0])
            self.assertEqual(sorted(os.listdir(tmp)), ["afile", "asiosmtpd.yaml"])

    def test_a_start_still_creates_the_maildir(self):
        with tempfile.TemporaryDirectory(prefix="asiosmtpd-it-") as tmp:
            conf = os.path.join(tmp, "asiosmtpd.yaml")
            with open(conf, "w") as f:
                # A port in use after loading the plugins: the start fails once the Maildir exists.
                f.write("server:\n  hostname: mx.test\n  listen:\n    - {address: 127.0.0.1, port: 0}\n"
                        "    - {address: 256.0.0.1, port: 1}\n"
                        "plugins:\n  - name: maildir\n    config: {path: mail/inbox}\n")
            p = subprocess.run([harness.BIN, "--config", conf], capture_output=True, text=True, timeout=20,
                               stdin=subprocess.DEVNULL)
            self.assertNotEqual(p.returncode, 0, p.stderr)
            self.assertTrue(os.path.isdir(os.path.join(tmp, "mail", "inbox", "new")), p.stderr)


class StartupErrorTest(ServerTestCase):
    def test_port_in_use(self):
        first = self.start_server()
        p = run_binary([], server_config(listen=[{"address": "127.0.0.1", "port": first.port}]), timeout=20)
        self.assertNotEqual(p.returncode, 0)
        lines = error_lines(p.stderr)
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn(str(first.port), lines[0])
        # Issue 23: the listener's key and line (the config written by to_yaml).
        self.assertRegex(lines[0], r"asiosmtpd\.yaml:\d+: server\.listen\[0\]: cannot listen on 127\.0\.0\.1:%d: "
                                   r"Address already in use" % first.port)
        # The first server is untouched.
        c = self.connect(first)
        self.assertTrue(c.line().startswith("220 "))


class NoDeliveryWarningTest(unittest.TestCase):
    def test_a_chain_that_keeps_no_message_is_named(self):
        cases = [
            (["debugging"], True),
            ([], True),
            (["debugging", {"name": "ping"}], True),
            (["sink"], False),  # discarding on purpose
            ([{"path": fixture_plugin("scripted")}], False),  # any other plugin may deliver
        ]
        for plugins, warned in cases:
            with self.subTest(plugins=plugins):
                r = run_binary(["--check-config"], server_config(plugins=plugins))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual("event=no_delivery" in r.stderr, warned, r.stderr)
        r = run_binary(["--check-config"], server_config(plugins=["debugging", "ping"]))
        self.assertIn('event=no_delivery plugins="debugging,ping" ', r.stderr)


if __name__ == "__main__":
    harness.main()
