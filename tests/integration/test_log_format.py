# SPDX-License-Identifier: Apache-2.0
"""The log's line formats (log.format, log.timestamps): an RFC 3339 UTC timestamp by default;
none with timestamps: false; one JSON object per line with log.format: json (Python's json
parses every line, the message line's fields are there); under systemd's journal
(JOURNAL_STREAM names stderr) "<N>" syslog priorities and no timestamp. A reload changes the
format of the lines after it."""
import datetime
import json
import os
import re
import signal
import smtplib
import subprocess
import tempfile
import unittest

import harness
from harness import BIN, HOST, ServerTestCase, server_config, to_yaml

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (debug|info|warn|error) ")


class LogFormatTest(ServerTestCase):
    def send_one(self, server):
        with smtplib.SMTP(HOST, server.port, timeout=harness.IO_TIMEOUT) as s:
            s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
        return server.wait_output(lambda t: "event=message" in t or '"event":"message"' in t, which="stderr")

    def test_text_lines_start_with_an_rfc3339_timestamp(self):
        server = self.start_server(server_config())
        err = self.send_one(server)
        lines = [l for l in err.splitlines() if l.strip()]
        for line in lines:
            m = STAMP.match(line)
            self.assertIsNotNone(m, line)
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
            self.assertLess(abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()), 60)

    def test_no_timestamps(self):
        config = server_config()
        config["log"] = {"timestamps": False}
        server = self.start_server(config)
        err = self.send_one(server)
        self.assertTrue(all(re.match(r"^(debug|info|warn|error) ", l) for l in err.splitlines() if l.strip()), err)

    def test_json_lines(self):
        config = server_config()
        config["log"] = {"format": "json"}
        server = self.start_server(config)
        err = self.send_one(server)
        objects = [json.loads(l) for l in err.splitlines() if l.strip()]
        message = next(o for o in objects if o.get("event") == "message")
        self.assertEqual(message["level"], "info")
        self.assertEqual(message["from"], "<a@example.org>")
        self.assertEqual(message["to"], "<b@example.org>")
        self.assertEqual(message["result"], "250")
        self.assertRegex(message["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_reload_switches_the_format(self):
        server = self.start_server(server_config())
        config = server_config()
        config["log"] = {"format": "json", "timestamps": False}
        with open(server.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(config))
        os.kill(server.process.pid, signal.SIGHUP)
        err = server.wait_output(lambda t: '"event":"reload","result":"ok"' in t, which="stderr")
        self.assertIn('{"level":"info","event":"reload","result":"ok"', err)

    def test_journal_priorities_without_timestamps(self):
        with tempfile.TemporaryDirectory(prefix="asiosmtpd-journal-") as tmp:
            path = os.path.join(tmp, "asiosmtpd.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(to_yaml(server_config()))
            err_path = os.path.join(tmp, "stderr")
            with open(err_path, "wb") as err:
                st = os.fstat(err.fileno())
                env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
                p = subprocess.run([BIN, "--check-config", "--config", path], stdout=subprocess.PIPE, stderr=err,
                                   env=env, timeout=30)
            self.assertEqual(p.returncode, 0)
            with open(err_path, encoding="utf-8") as f:
                lines = [l for l in f.read().splitlines() if l.strip()]
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^<[3467]>(debug|info|warn|error) ")
        self.assertTrue(any(l.startswith("<6>info event=plugin_loaded") for l in lines), lines)


if __name__ == "__main__":
    unittest.main()
