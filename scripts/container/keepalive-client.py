#!/usr/bin/env python3
"""An idle keep-alive HTTP client, as a load balancer keeps to its upstreams.

    keepalive-client.py PORT [SECONDS]

Sends one GET /health with `Connection: keep-alive`, prints its status line, then holds
the connection idle and prints when (and whether) the server closed it. Used by
scripts/container-test to show that a SIGTERM drain does not wait for idle connections.
"""

import socket
import sys
import time

port = int(sys.argv[1])
hold = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
print(s.recv(4096).split(b"\r\n", 1)[0].decode(), flush=True)
start = time.time()
s.settimeout(hold)
try:
    rest = s.recv(4096)
    waited = time.time() - start
    print(f"closed by the server after {waited:.1f} s idle" if not rest else "unexpected data", flush=True)
except socket.timeout:
    print(f"still open after {hold:.0f} s", flush=True)
except OSError as e:
    print(f"connection error: {e}", flush=True)
