# SPDX-License-Identifier: Apache-2.0
"""The Prometheus metrics endpoint (metrics: {listen: ...}), scraped with curl."""
import shutil
import smtplib
import socket
import subprocess

import harness
from harness import HOST, ServerTestCase, server_config


class MetricsTest(ServerTestCase):
    def test_scrape_after_traffic(self):
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        config = server_config(plugins=["sink"])
        config["metrics"] = {"listen": f"{HOST}:{port}"}
        server = self.start_server(config)
        server.wait_output(lambda e: f"event=metrics_listening address={HOST} port={port}" in e, which="stderr")
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            for _ in range(3):
                s.sendmail("a@b.example", ["c@d.example"], b"Subject: m\r\n\r\n12345\r\n")
        url = f"http://{HOST}:{port}/metrics"
        out = subprocess.run(["curl", "-sS", "--max-time", "10", url], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        text = out.stdout
        self.assertIn("# TYPE asiosmtpd_messages_total counter", text)
        self.assertIn('asiosmtpd_messages_total{result="accepted"} 3', text)
        self.assertIn("asiosmtpd_connections_total 1", text)
        self.assertIn('asiosmtpd_hook_duration_seconds_count{plugin="sink",hook="DATA"} 3', text)
        self.assertRegex(text, r"asiosmtpd_message_bytes_total \d+")
        missing = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{HOST}:{port}/"],
                                 capture_output=True, text=True, timeout=30)
        self.assertEqual(missing.stdout, "404")

    def test_bad_listen_value_is_a_config_error(self):
        config = server_config(plugins=["sink"])
        config["metrics"] = {"listen": "nowhere"}
        result = harness.run_binary(["--check-config"], config=config)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("metrics.listen: expected address:port", result.stderr)


if __name__ == "__main__":
    harness.main()
