# SPDX-License-Identifier: Apache-2.0
"""The Prometheus metrics endpoint (metrics: {listen: ...}), scraped with curl and read with
the Prometheus client library's own parser (Debian's python3-prometheus-client)."""
import os
import shutil
import smtplib
import socket
import subprocess
import time

import harness
from harness import HOST, ServerTestCase, server_config


class MetricsTest(ServerTestCase):
    def start_with_metrics(self):
        """A server with the sink plugin and a metrics listener on a free port: (server, port)."""
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        config = server_config(plugins=["sink"])
        config["metrics"] = {"listen": f"{HOST}:{port}"}
        server = self.start_server(config)
        server.wait_output(lambda e: f"event=metrics_listening address={HOST} port={port}" in e, which="stderr")
        return server, port

    def test_scrape_after_traffic(self):
        server, port = self.start_with_metrics()
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

    def test_a_real_parser_reads_it_and_no_two_families_share_a_name(self):
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            self.skipTest("python3-prometheus-client is not installed (.ci/setup-tests installs it)")
        server, port = self.start_with_metrics()
        with smtplib.SMTP(server.host, server.port, timeout=10) as s:
            s.sendmail("a@b.example", ["c@d.example"], b"Subject: m\r\n\r\nx\r\n")
            text = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://{HOST}:{port}/metrics"],
                                  capture_output=True, text=True, timeout=30).stdout
        families = list(text_string_to_metric_families(text))
        names = [f.name for f in families]
        self.assertEqual(len(names), len(set(names)), f"metric families sharing a name: {sorted(names)}")
        by_name = {f.name: f for f in families}
        # OpenMetrics: a counter's family drops "_total"; the gauge of open sessions is another name.
        self.assertEqual(by_name["asiosmtpd_connections"].type, "counter")
        self.assertEqual(by_name["asiosmtpd_connections_open"].type, "gauge")
        self.assertEqual(by_name["asiosmtpd_connections_open"].samples[0].value, 1)  # this client
        info = by_name["asiosmtpd_build_info"]
        self.assertEqual(info.samples[0].labels, {"version": os.environ.get("ASIOSMTPD_VERSION", info.samples[0].labels["version"])})
        self.assertEqual(info.samples[0].value, 1)
        self.assertEqual(by_name["process_cpu_seconds"].type, "counter")
        self.assertGreater(by_name["process_cpu_seconds"].samples[0].value, 0)
        self.assertGreater(by_name["process_resident_memory_bytes"].samples[0].value, 1 << 20)
        self.assertGreater(by_name["process_open_fds"].samples[0].value, 3)
        started = by_name["process_start_time_seconds"].samples[0].value
        self.assertLess(abs(time.time() - started), 600, f"process_start_time_seconds {started}")

    def test_bad_listen_value_is_a_config_error(self):
        config = server_config(plugins=["sink"])
        config["metrics"] = {"listen": "nowhere"}
        result = harness.run_binary(["--check-config"], config=config)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("metrics.listen: expected address:port", result.stderr)


if __name__ == "__main__":
    harness.main()
