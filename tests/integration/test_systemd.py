# SPDX-License-Identifier: Apache-2.0
"""systemd's readiness protocol (Type=notify): READY=1 once listening, RELOADING=1 then
READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM, sent to $NOTIFY_SOCKET."""
import os
import signal
import socket
import tempfile

import harness
from harness import ServerTestCase, server_config


class NotifyTest(ServerTestCase):
    def test_ready_reloading_stopping(self):
        folder = tempfile.mkdtemp(prefix="asiosmtpd-notify-")
        path = os.path.join(folder, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(10)
        self.addCleanup(sock.close)
        old = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = path
        try:
            server = self.start_server(server_config(plugins=["sink"]))
        finally:
            if old is None:
                del os.environ["NOTIFY_SOCKET"]
            else:
                os.environ["NOTIFY_SOCKET"] = old
        self.assertIn(b"READY=1", sock.recv(4096))
        server.signal(signal.SIGHUP)
        self.assertIn(b"RELOADING=1", sock.recv(4096))
        self.assertIn(b"READY=1", sock.recv(4096))
        server.signal(signal.SIGTERM)
        self.assertIn(b"STOPPING=1", sock.recv(4096))
        self.assertEqual(server.wait(10), 0)


if __name__ == "__main__":
    harness.main()
