"""Shared pieces of the cluster tests: the cluster (scripts/cluster), the database and
Redis of its own services, an HTTP client on keep-alive connections, latency figures and
the per-test report. Standard library only."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = str(ROOT / "scripts" / "cluster")


def log(msg: str) -> None:
    print(f"[cluster-test] {msg}", file=sys.stderr, flush=True)


def now() -> float:
    return time.monotonic()


# --- the cluster ----------------------------------------------------------------------


class Cluster:
    """scripts/cluster with own services (CLUSTER_OWN_SERVICES=1), in CLUSTER_DIR."""

    def __init__(self) -> None:
        self.dir = Path(os.environ["CLUSTER_DIR"])
        self.bin = os.environ["CLUSTER_BIN"]
        self.env: dict[str, str] = {}
        self.settings: dict[str, str] = {}

    def run(self, *args: str, check: bool = True, quiet: bool = True, extra_env=None, timeout=180):
        env = dict(os.environ)
        if extra_env:
            env.update(extra_env)
        p = subprocess.run(
            [CLUSTER, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            sys.stderr.write(p.stderr)
            raise RuntimeError(f"scripts/cluster {' '.join(args)} failed ({p.returncode})")
        if not quiet:
            sys.stderr.write(p.stderr)
        return p

    def up(self, common: dict[str, str], api: dict[str, str] | None = None, worker: dict[str, str] | None = None):
        """A fresh cluster (database dropped, Redis emptied, logs and mail cleared)."""
        self.run("down", check=False)
        envd = self.dir / "test-env"
        envd.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, values in (("common", common), ("api", api or {}), ("worker", worker or {})):
            f = envd / f"{name}.env"
            f.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
            files[name] = str(f)
        self.settings = {**common}
        t = now()
        extra = {
            "CLUSTER_FRESH": "1",
            "CLUSTER_ENV_FILE": files["common"],
            "CLUSTER_API_ENV_FILE": files["api"],
            "CLUSTER_WORKER_ENV_FILE": files["worker"],
        }
        self.run("up", extra_env=extra)
        out = self.run("env").stdout
        self.env = {}
        for line in out.splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            self.env[k] = v.strip("'")
        self.url = self.env["CLUSTER_URL"]
        self.db_url = self.env["DATABASE_URL"]
        self.redis_url = self.env["REDIS_URL"]
        self.prefix = self.env["REDIS_PREFIX"]
        self.mail_dir = Path(self.env["MAIL_DIR"])
        self.log_dir = self.dir / "log"
        self.api_urls = {n: f"http://127.0.0.1:{self.port(n)}" for n in ("api1", "api2")}
        log(f"cluster up in {now() - t:.1f}s: {self.url} (api1 {self.api_urls['api1']}, api2 {self.api_urls['api2']})")

    def down(self) -> None:
        self.run("down", check=False)

    def port(self, name: str) -> int:
        return int(self.run("port", name).stdout.strip())

    def pid(self, name: str) -> int | None:
        p = self.run("pid", name, check=False)
        return int(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip() else None

    def upstream(self, name: str) -> str:
        return f"127.0.0.1:{self.port(name)}"

    # the cluster's processes as scripts/cluster names them
    def kill(self, name: str, sig: str = "KILL"):
        self.run("kill", name, sig)

    def start(self, *names: str):
        self.run("start", *names)

    def stop(self, *names: str):
        self.run("stop", *names)

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/"),
            "NO_DOTENV": "1",
            "APP_ENV": "development",
            "LOG_LEVEL": "warn",
            "DATABASE_URL": self.db_url,
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix,
        }

    def storefront(self, *args: str, stdin: str | None = None, env=None) -> subprocess.CompletedProcess:
        e = self.base_env()
        if env:
            e.update(env)
        return subprocess.run(
            [self.bin, *args], env=e, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )

    def check(self) -> tuple[bool, str]:
        """`storefront check`: (all hold, its output)."""
        p = self.storefront("check")
        out = p.stdout.rstrip()
        if p.returncode != 0 and p.stderr.strip():
            out += "\n" + "\n".join("        " + l for l in p.stderr.strip().splitlines()[-3:])
        return p.returncode == 0, out

    # --- database and Redis of the own services
    def sql(self, query: str, timeout: float = 30) -> list[list[str]]:
        p = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", self.db_url, "-c", query],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        if p.returncode != 0:
            raise RuntimeError(f"psql failed: {p.stderr.strip()}\n{query}")
        return [line.split("\t") for line in p.stdout.splitlines() if line != ""]

    def sql1(self, query: str) -> str:
        rows = self.sql(query)
        return rows[0][0] if rows else ""

    def redis(self, *args: str) -> str:
        u = urlsplit(self.redis_url)
        p = subprocess.run(
            ["redis-cli", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
        return p.stdout.strip()

    def redis_used_memory(self) -> int:
        for line in self.redis("info", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        return -1

    def logs(self, name: str) -> list[dict]:
        """The JSON log lines of a process (LOG_FORMAT=json)."""
        out = []
        f = self.log_dir / f"{name}.log"
        if not f.exists():
            return out
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def access_log(self) -> list[dict]:
        out = []
        f = self.log_dir / "nginx.access.log"
        if f.exists():
            for line in f.read_text(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def rss_kb(self, pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def nginx_rss_kb(self) -> int:
        """nginx master plus its workers."""
        master = self.pid("nginx")
        if not master:
            return 0
        total = self.rss_kb(master)
        for child in children(master):
            total += self.rss_kb(child)
        return total


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


# --- HTTP -----------------------------------------------------------------------------


@dataclass
class Resp:
    label: str
    t0: float  # monotonic, at send
    dt: float  # seconds to the answer (or the failure)
    status: int | None  # None: no HTTP answer (connection failed, timed out)
    code: str | None = None  # the envelope's error.code
    body: object = None
    headers: dict = field(default_factory=dict)
    error: str | None = None
    envelope: bool = False  # the body is the API's JSON envelope
    target: str = ""

    @property
    def outcome(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        return f"{self.status} {self.code}" if self.code else str(self.status)

    def data(self):
        return self.body.get("data") if isinstance(self.body, dict) else None


class Client:
    """One keep-alive HTTP/1.1 connection to one base URL (reopened after a failure)."""

    def __init__(self, base: str, source_ip: str | None = None, timeout: float = 60.0, token: str | None = None):
        u = urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.base = base
        self.source_ip = source_ip
        self.timeout = timeout
        self.token = token
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self):
        self.conn = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout, source_address=(self.source_ip, 0) if self.source_ip else None
        )
        self.conn.connect()

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body=None, headers=None, label: str | None = None, token=None) -> Resp:
        h = {"Accept": "application/json"}
        tok = token or self.token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if headers:
            h.update(headers)
        t0 = now()
        try:
            if self.conn is None:
                self._connect()
            self.conn.request(method, path, body=data, headers=h)
            r = self.conn.getresponse()
            raw = r.read()
            dt = now() - t0
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            if hdrs.get("connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return Resp(label or path, t0, now() - t0, None, error=type(e).__name__, target=self.base)
        parsed = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw[:200].decode(errors="replace")
        code = None
        envelope = isinstance(parsed, dict) and "success" in parsed
        if envelope and parsed.get("success") is False:
            code = (parsed.get("error") or {}).get("code")
        return Resp(label or path, t0, dt, r.status, code, parsed, hdrs, envelope=envelope, target=self.base)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)


def unique(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class ApiError(RuntimeError):
    pass


def expect(r: Resp, *statuses: int) -> Resp:
    if r.status not in statuses:
        raise ApiError(f"{r.label}: expected {statuses}, got {r.outcome}: {str(r.body)[:300]}")
    return r


def register(c: Client, email: str, password: str = "cluster-test-pw1") -> tuple[str, str]:
    """Registers `email`; (access token, user id)."""
    r = expect(c.post("/api/v1/auth/register", {"email": email, "password": password}, label="register"), 201)
    d = r.data()
    return d["token"], d["user"]["id"]


def register_many(base: str, n: int, prefix: str, threads: int = 8, password: str = "cluster-test-pw1"):
    """n users registered in parallel; list of (email, token, user id)."""
    out: list = [None] * n
    errors: list[str] = []

    def work(k: int):
        c = Client(base)
        for i in range(k, n, threads):
            email = f"{prefix}-{i}-{uuid.uuid4().hex[:6]}@example.com"
            try:
                token, uid = register(c, email, password)
                out[i] = (email, token, uid)
            except ApiError as e:
                errors.append(str(e))
        c.close()

    run_threads(work, threads)
    if errors:
        raise ApiError(f"{len(errors)} registrations failed, e.g. {errors[0]}")
    return out


def admin_token(cluster: Cluster, base: str) -> str:
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    pw = "cluster-test-admin-pw"
    p = cluster.storefront("create-admin", "--email", email, env={"ADMIN_PASSWORD": pw})
    if p.returncode != 0:
        raise RuntimeError(f"create-admin failed: {p.stderr.strip()}")
    r = expect(Client(base).post("/api/v1/auth/login", {"email": email, "password": pw}, label="login"), 200)
    return r.data()["token"]


def create_product(base: str, admin: str, stock: int, price: int = 1250, name: str = "Cluster test product") -> str:
    sku = unique("CT-")
    r = expect(
        Client(base, token=admin).post(
            "/api/v1/products", {"sku": sku, "name": name, "priceCents": price, "stock": stock}, label="create product"
        ),
        201,
    )
    return r.data()["id"]


def run_threads(fn, n: int, *args) -> None:
    ts = [threading.Thread(target=fn, args=(i, *args), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# --- figures --------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def counts(rs: list[Resp]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rs:
        out[r.outcome] = out.get(r.outcome, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(rs: list[Resp]) -> str:
    if not rs:
        return "no requests"
    lat = [r.dt for r in rs]
    c = ", ".join(f"{v} x {k}" for k, v in counts(rs).items())
    return f"{len(rs)} requests: {c}; p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}, worst {ms(max(lat))}"


# --- the report -----------------------------------------------------------------------


class Test:
    """One test: what was done, the expectation, what clients saw, the invariants, PASS/FAIL."""

    def __init__(self, title: str, expectation: str):
        self.title = title
        self.expectation = expectation
        self.lines: list[str] = []
        self.failures: list[str] = []
        self.check_output: str | None = None
        self.started = now()

    def did(self, line: str) -> None:
        self.lines.append(f"  did:      {line}")

    def saw(self, line: str) -> None:
        self.lines.append(f"  saw:      {line}")

    def note(self, line: str) -> None:
        self.lines.append(f"  note:     {line}")

    def require(self, ok: bool, what: str) -> bool:
        self.lines.append(f"  {'ok' if ok else 'FAILED'}:{' ' * (8 if ok else 4)}{what}")
        if not ok:
            self.failures.append(what)
        return ok

    def run_check(self, cluster: Cluster) -> bool:
        ok, out = cluster.check()
        self.check_output = out
        return self.require(ok, "storefront check: every invariant holds")

    def error(self, e: BaseException) -> None:
        self.require(False, f"the test could not run to its end: {type(e).__name__}: {e}")

    @property
    def passed(self) -> bool:
        return not self.failures

    def print(self) -> None:
        print()
        print(f"=== {self.title}")
        print(f"  expect:   {self.expectation}")
        for l in self.lines:
            print(l)
        if self.check_output is not None:
            print("  storefront check:")
            for l in self.check_output.splitlines():
                print(f"    {l}")
        print(f"  {'PASS' if self.passed else 'FAIL'}  {self.title} ({now() - self.started:.1f}s)")
        sys.stdout.flush()
