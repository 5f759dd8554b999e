"""The test suite's SMTP server: aiosmtpd storing every accepted message in a Maildir.

Run as `python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_handler.ControlledMailbox DIR`
with this folder on PYTHONPATH. Messages land in DIR/maildir/new. Tests steer it with
files in DIR:
- `fail`: every message is refused with 451 (a temporary failure) while it exists;
- `slow`: each RCPT waits as many seconds as the file says before answering;
- `rcpt.log` gets one line per RCPT seen (so a test knows a send has begun).
"""

import asyncio
import os

from aiosmtpd.handlers import Mailbox


class ControlledMailbox(Mailbox):
    def __init__(self, directory):
        self.directory = directory
        super().__init__(os.path.join(directory, "maildir"))

    def _flag(self, name):
        return os.path.join(self.directory, name)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with open(self._flag("rcpt.log"), "a") as log:
            log.write(address + "\n")
        if os.path.exists(self._flag("slow")):
            with open(self._flag("slow")) as f:
                await asyncio.sleep(float(f.read().strip() or "30"))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if os.path.exists(self._flag("fail")):
            return "451 4.3.0 Try again later"
        return await super().handle_DATA(server, session, envelope)
