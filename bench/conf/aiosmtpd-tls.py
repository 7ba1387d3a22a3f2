#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""aiosmtpd for the TLS scenarios (bench/README.md, "TLS"): the Sink handler on two listeners of
one event loop, STARTTLS on PORT (not required) and implicit TLS on SMTPS_PORT, both with an
SSL context from CERT and KEY, as `python3 -m aiosmtpd --tlscert/--tlskey` and
`--smtpscert/--smtpskey` would set it up (one process, so its CPU is one /proc entry).

usage: aiosmtpd-tls.py CERT KEY HOST PORT SMTPS_PORT   (Debian's /usr/bin/python3, python3-aiosmtpd)
"""
import asyncio
import ssl
import sys

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP


def main() -> None:
    cert, key, host, port, smtps_port = sys.argv[1:6]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Sink()
    loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="bench.local", tls_context=context, require_starttls=False),
        host, int(port)))
    loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="bench.local"), host, int(smtps_port), ssl=context))
    loop.run_forever()


if __name__ == "__main__":
    main()
