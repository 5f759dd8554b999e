"""What the benchmark scripts share: the local services, psql, a server's health and
login, wrk runs that report one parsable line, and a process's RSS and CPU."""

import os
import shutil
import socket
import subprocess
import sys
import time
import json
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REPORT_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
"""

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services_env():
    subprocess.run([os.path.join(ROOT, "scripts/services"), "up"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([os.path.join(ROOT, "scripts/services"), "env"], check=True, capture_output=True, text=True)
    env = {}
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def psql(url, *commands, capture=False):
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-d", url]
    for c in commands:
        args += ["-c", c]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return out.stdout.strip() if capture else None


def checkpoint(url):
    """Flushes the WAL and dirty pages before a measured start, so a run does not pay for
    the writes of the run before it (the next checkpoint, and the full-page images after
    it, land on whoever runs next). Needs superuser or `pg_checkpoint`; as root on a local
    cluster it asks the `postgres` user. Whether it could."""
    try:
        psql(url, "checkpoint")
        return True
    except subprocess.CalledProcessError:
        pass
    if os.geteuid() == 0 and shutil.which("runuser"):
        port = urllib.parse.urlparse(url).port or 5432
        done = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(port), "-c", "checkpoint"],
                              capture_output=True, check=False)
        return done.returncode == 0
    return False


def wait_health(port, proc, log):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{open(log).read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"no /health within 30 s:\n{open(log).read()}")


def login(port, email):
    body = json.dumps({"email": email, "password": "password123"}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/auth/login", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["data"]["token"]


def wrk(args, duration, connections=32):
    """One wrk run (2 threads) of `duration` seconds; `args` carry a script that writes the
    RESULT line (REPORT_LUA). req/s, p50/p95/p99 in ms, errors and requests, or None."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", *args],
        capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("RESULT"):
            f = line.split()[1:]
            return dict(rps=float(f[0]), p50_ms=float(f[1]), p95_ms=float(f[2]), p99_ms=float(f[3]),
                        errors=int(f[4]), requests=int(f[5]))
    return None


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def settle(pid, limit=120):
    """Waits until the server is idle (under 3 % of a core for two seconds in a row): the
    background work a run leaves (e-mail jobs, the outbox relay, count folding) is done by
    the binary that caused it, not by the next one while it is measured. Seconds waited."""
    hz = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < limit and quiet < 2:
        before = cpu_ticks(pid)
        time.sleep(1)
        quiet = quiet + 1 if (cpu_ticks(pid) - before) / hz < 0.03 else 0
    return time.monotonic() - started


def drop_redis_prefix(redis_url, prefix):
    """Deletes every Redis key under `prefix`, a benchmark run's own (its job data would
    otherwise stay behind, and every later SCAN of the keyspace would walk it)."""
    if not shutil.which("redis-cli"):
        return
    scan = subprocess.Popen(["redis-cli", "-u", redis_url, "--scan", "--pattern", f"{prefix}*"],
                            stdout=subprocess.PIPE)
    subprocess.run(["xargs", "-r", "-n", "1000", "redis-cli", "-u", redis_url, "unlink"],
                   stdin=scan.stdout, stdout=subprocess.DEVNULL, check=False)
    scan.wait()
