#!/usr/bin/env python3
"""A mail catcher standing in for Mailpit where no image registry is reachable.

    mail-catcher [--smtp-port 1025] [--http-port 8025]

Accepts every message on SMTP (no TLS, no authentication, as Mailpit's default), keeps
them in memory, prints one line per message (from, to, subject), and answers
GET /api/v1/messages on the HTTP port with the part of Mailpit's reply that scripts read:
{"total": N, "messages": [{"ID", "From": {"Address"}, "To": [{"Address"}], "Subject",
"Created"}]}, newest first. Built into an image by scripts/compose-test
(scripts/container/mail-standin.Containerfile).
"""

import argparse
import asyncio
import datetime
import email
import email.policy
import json
import signal
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.smtp import SMTP

MESSAGES = []
LOCK = threading.Lock()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        entry = {
            "ID": str(uuid.uuid4()),
            "From": {"Name": "", "Address": envelope.mail_from},
            "To": [{"Name": "", "Address": r} for r in envelope.rcpt_tos],
            "Subject": str(msg.get("Subject", "")),
            "Created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "Size": len(envelope.content),
        }
        with LOCK:
            MESSAGES.append(entry)
        print(f"received from={envelope.mail_from} to={','.join(envelope.rcpt_tos)} subject={entry['Subject']!r}", flush=True)
        return "250 Message accepted for delivery"


class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?", 1)[0] != "/api/v1/messages":
            self.send_error(404)
            return
        with LOCK:
            messages = list(reversed(MESSAGES))
        body = json.dumps({"total": len(messages), "count": len(messages), "messages": messages}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    args = parser.parse_args()
    http = ThreadingHTTPServer(("0.0.0.0", args.http_port), Api)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    loop = asyncio.get_running_loop()
    # PID 1 in its container: without a handler SIGTERM would be ignored.
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="mail-catcher"), "0.0.0.0", args.smtp_port)
    print(f"mail catcher: SMTP on :{args.smtp_port}, API on :{args.http_port}", flush=True)
    async with server:
        await stop
    http.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
