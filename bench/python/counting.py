# SPDX-License-Identifier: Apache-2.0
"""The bench's Python handler (bench/README.md, "Python handlers"): the same class under
asiosmtpd's python plugin and under aiosmtpd. handle_RCPT awaits once (a coroutine that yields
to the loop, as one doing I/O would), handle_DATA counts the message."""
import asyncio


class CountingHandler:
    def __init__(self):
        self.messages = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await asyncio.sleep(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages += 1
        return "250 OK"
