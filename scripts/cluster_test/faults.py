"""The fault tests: Postgres and Redis restarted under load, kill -9 of an API
instance during an order storm and of the worker mid-job, MAIL_DIR full or read-only,
refunds through a failing payment provider and a killed worker."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from . import mail
from .multi import Standin, signed, succeeded
from .common import (
    Client,
    Cluster,
    Resp,
    Test,
    admin_token,
    counts,
    create_product,
    expect,
    log,
    ms,
    now,
    pct,
    register,
    register_many,
    summary,
    unique,
)

REQUEST_TIMEOUT = 10.0
ACQUIRE_TIMEOUT = "1s"
HEARTBEAT = "1s"
MISSED = 3
COMMON = {
    "LOG_FORMAT": "json",
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "1000000",
    "RATE_LIMIT_AUTH_PER_MINUTE": "100000",
    # The load places many unpaid orders per user.
    "ORDER_MAX_PENDING_PER_USER": "0",
    "REQUEST_TIMEOUT": f"{int(REQUEST_TIMEOUT)}s",
    # The first requests of a database outage wait DB_ACQUIRE_TIMEOUT before their 503
    # (docs/operations.md, Shutdown and outages; 5 s by default); "503 within about a second" needs it at 1 s.
    "DB_ACQUIRE_TIMEOUT": ACQUIRE_TIMEOUT,
    # Short heartbeats, so a killed worker's jobs are rescued within seconds (docs/jobs.md:
    # JOBS_HEARTBEAT_INTERVAL x JOBS_MISSED_HEARTBEATS, 30 s by default).
    "JOBS_HEARTBEAT_INTERVAL": HEARTBEAT,
    "JOBS_MISSED_HEARTBEATS": str(MISSED),
}

ORDER_BODY = lambda product: {"items": [{"productId": product, "quantity": 1}]}  # noqa: E731


class Load:
    """Orders and product reads through nginx at a fixed total rate (open loop: every
    thread keeps its own schedule; a late request is sent at once)."""

    def __init__(self, base: str, users: list, product: str, rate: float, threads: int = 10, reads: float = 0.5):
        self.base, self.users, self.product = base, users, product
        self.rate, self.threads, self.reads = rate, threads, reads
        self.results: list[Resp] = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.ths: list[threading.Thread] = []
        self.keys: dict[int, tuple[str, str]] = {}

    def _run(self, k: int):
        email, token, _ = self.users[k % len(self.users)]
        c = Client(self.base, token=token, timeout=REQUEST_TIMEOUT + 30)
        interval = self.threads / self.rate
        nxt = now() + k * interval / self.threads
        i = 0
        while not self.stop_ev.is_set():
            d = nxt - now()
            if d > 0:
                time.sleep(d)
            nxt += interval
            read = (i * self.threads + k) % 100 < self.reads * 100
            i += 1
            if read:
                path = f"/api/v1/products/{self.product}" if i % 2 else "/api/v1/products?limit=20"
                r = c.get(path, label="GET product" if i % 2 else "GET products")
            else:
                key = unique("load-")
                r = c.post("/api/v1/orders", ORDER_BODY(self.product), headers={"Idempotency-Key": key}, label="POST /orders")
                r.key, r.token = key, token  # type: ignore[attr-defined]
            with self.lock:
                self.results.append(r)
        c.close()

    def start(self):
        for k in range(self.threads):
            th = threading.Thread(target=self._run, args=(k,), daemon=True)
            th.start()
            self.ths.append(th)
        return self

    def stop(self) -> list[Resp]:
        self.stop_ev.set()
        for th in self.ths:
            th.join(timeout=REQUEST_TIMEOUT + 40)
        return sorted(self.results, key=lambda r: r.t0)


def ok2xx(r: Resp) -> bool:
    return r.status is not None and 200 <= r.status < 300


def unavailable(r: Resp) -> bool:
    return r.status == 503 and r.envelope and r.code == "SERVICE_UNAVAILABLE"


def wait_drained(cluster: Cluster, timeout: float = 90.0) -> tuple[bool, float]:
    """Until the outbox holds no unsent row and every e-mail row has its ledger row."""
    t0 = now()
    while True:
        try:
            unsent = int(cluster.sql1("select count(*) from outbox where sent_at is null"))
        except RuntimeError:
            unsent = -1
        if unsent == 0:
            ok, _ = mail.wait_sent(cluster, max(1.0, timeout - (now() - t0)))
            return ok, now() - t0
        if now() - t0 > timeout:
            return False, now() - t0
        time.sleep(0.5)


def phases(rs: list[Resp], down_at: float, back_at: float):
    """Answered before the stop began; sent before the service was back (a request still
    in flight when the stop began may rightly fail); sent after it was back."""
    before = [r for r in rs if r.t0 + r.dt < down_at]
    during = [r for r in rs if r.t0 + r.dt >= down_at and r.t0 < back_at]
    after = [r for r in rs if r.t0 >= back_at]
    return before, during, after


def recovery(after: list[Resp], back_at: float) -> float:
    """Seconds from `back_at` to the answer of the last failed request sent after it."""
    bad = [r for r in after if not ok2xx(r)]
    return max((r.t0 + r.dt - back_at for r in bad), default=0.0)


# --- Postgres -------------------------------------------------------------------------


def pg_restart(cluster: Cluster, users, product) -> Test:
    t = Test(
        "faults: Postgres restarted under load",
        "requests in the outage answer 503 SERVICE_UNAVAILABLE in the envelope within about a second; nothing hangs past "
        f"REQUEST_TIMEOUT ({REQUEST_TIMEOUT:.0f} s); every request answers 200/201 again within 5 s of Postgres being back; invariants hold",
    )
    rate = 40.0
    load = Load(cluster.url, users, product, rate).start()
    time.sleep(4)
    down_at = now()
    cluster.run("pg-stop", "fast")
    stopped = now()
    time.sleep(4)
    start_at = now()
    cluster.run("pg-start")
    back_at = now()
    time.sleep(10)
    rs = load.stop()
    t.did(
        f"DB_ACQUIRE_TIMEOUT={ACQUIRE_TIMEOUT} (default 5s), REQUEST_TIMEOUT={REQUEST_TIMEOUT:.0f}s; "
        f"{rate:.0f} req/s through nginx (half POST /orders, half product reads) from 10 keep-alive clients; after 4 s "
        f"`scripts/cluster pg-stop fast` (took {ms(stopped - down_at)}), 4 s down, `pg-start` (accepting after {ms(back_at - start_at)}), 10 s more"
    )
    before, during, after = phases(rs, down_at, back_at)
    t.saw(f"all: {summary(rs)}")
    t.saw(f"answered before the stop: {summary(before)}")
    t.saw(f"in flight at the stop or sent before Postgres was back ({back_at - down_at:.1f} s): {summary(during)}")
    t.saw(f"after Postgres was back: {summary(after)}")
    t.require(all(ok2xx(r) for r in before), "before the outage: every request 2xx")
    odd = [r for r in during + after if not ok2xx(r) and not unavailable(r)]
    t.require(not odd, f"every failure is a 503 SERVICE_UNAVAILABLE envelope ({len(odd)} others{': ' + odd[0].outcome if odd else ''})")
    fails = [r for r in rs if unavailable(r)]
    lat = [r.dt for r in fails]
    if lat:
        slow = [r for r in fails if r.dt > 1.5]
        t.saw(
            f"503 answers: {len(lat)}, p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}, worst {ms(max(lat))}; "
            f"{len(slow)} took longer than 1.5 s"
        )
        t.require(max(lat) <= 1.5, "each 503 arrives within about a second (<= 1.5 s)")
    worst = max((r.dt for r in rs), default=0)
    t.require(worst < REQUEST_TIMEOUT, f"nothing hangs past REQUEST_TIMEOUT (worst {ms(worst)})")
    rec = recovery(after, back_at)
    t.saw(f"last failure answered {rec:.2f} s after Postgres accepted connections again")
    t.require(rec <= 5.0 and all(ok2xx(r) for r in after if r.t0 > back_at + 5), "200/201 again within 5 s of Postgres being back")
    ok, waited = wait_drained(cluster)
    t.require(ok, f"outbox drained and every e-mail sent afterwards ({waited:.1f} s)")
    t.run_check(cluster)
    return t


# --- Redis ----------------------------------------------------------------------------


def wrong_logins(cs, email: str, alternate: bool, tries: int):
    seq = []
    for i in range(tries):
        name = "api2" if alternate and i % 2 else "api1"
        r = cs[name].post("/api/v1/auth/login", {"email": email, "password": "wrong-password-1"}, label="login")
        seq.append((i + 1, name, r))
        if r.status == 429 and i + 1 >= 3:
            if len([s for s in seq if s[2].status == 429]) >= 2:
                break
    return seq


def first_429(seq) -> int | None:
    return next((n for n, _, r in seq if r.status == 429), None)


def redis_restart(cluster: Cluster, users, product) -> Test:
    limit = 10
    t = Test(
        "faults: Redis restarted under load",
        "no 5xx outside the outage (orders and reads need only Postgres); rate limits degrade as docs/api.md says "
        "(counted in process per instance while Redis is down: weaker across instances, never no limit); the outbox drains "
        "afterwards; no e-mail lost or duplicated; invariants hold",
    )
    # the accounts for the limit probes exist before the outage (registering needs no Redis, but keep it apart)
    since, since_wall = mail.db_now(cluster), time.time()
    a_email = f"probe-a-{unique()}@example.com"
    b_email = f"probe-b-{unique()}@example.com"
    register(Client(cluster.url), a_email)
    register(Client(cluster.url), b_email)
    cs = {"api1": Client(cluster.api_urls["api1"]), "api2": Client(cluster.api_urls["api2"])}
    rate = 40.0
    load = Load(cluster.url, users, product, rate).start()
    time.sleep(4)
    down_at = now()
    cluster.run("redis-stop")
    time.sleep(1.0)
    one = wrong_logins(cs, a_email, alternate=False, tries=limit + 2)
    two = wrong_logins(cs, b_email, alternate=True, tries=2 * limit + 4)
    ready = Client(cluster.api_urls["api1"]).get("/health/ready")
    left = 5.0 - (now() - down_at)
    if left > 0:
        time.sleep(left)
    start_at = now()
    cluster.run("redis-start")
    back_at = now()
    time.sleep(10)
    rs = load.stop()
    t.did(
        f"{rate:.0f} req/s through nginx (orders + product reads); `scripts/cluster redis-stop` (SHUTDOWN; the own Redis keeps an "
        f"append-only file), {back_at - down_at:.1f} s down, `redis-start`, 10 s more; during the outage wrong-password logins for "
        "two fresh accounts: one only on api1, one alternating api1/api2"
    )
    before, during, after = phases(rs, down_at, back_at)
    t.saw(f"before: {summary(before)}")
    t.saw(f"outage ({back_at - down_at:.1f} s): {summary(during)}")
    t.saw(f"after: {summary(after)}")
    t.saw(f"/health/ready during the outage: {ready.status} {str(ready.body)[:120]}")
    five = [r for r in before + after if r.status is None or r.status >= 500]
    t.require(not five, f"no 5xx (or unanswered request) outside the outage window ({len(five)})")
    t.require(
        not [r for r in during if r.status is None or r.status >= 500],
        "no 5xx inside the outage either (orders and reads do not need Redis)",
    )
    t.saw("api1 only: " + ", ".join(f"#{n} {r.outcome}" for n, _, r in one))
    t.saw("alternating: " + ", ".join(f"#{n} {name} {r.outcome}" for n, name, r in two))
    f1, f2 = first_429(one), first_429(two)
    t.require(f1 == limit + 1, f"one instance: attempt {limit + 1} answers 429 (in-process count, never no limit): first 429 at #{f1}")
    t.require(
        f2 is not None and limit + 1 <= f2 <= 2 * limit + 2,
        f"alternating: limited, but only per instance (first 429 between #{limit + 1} and #{2 * limit + 2}): first 429 at #{f2}",
    )
    ok, waited = wait_drained(cluster, 120)
    t.require(ok, f"outbox drained and every e-mail sent after Redis came back ({waited:.1f} s; the relay backs off up to 30 s)")
    a = mail.account(cluster, since, since_wall)
    mail.report_accounting(t, a, "no e-mail lost or duplicated")
    t.run_check(cluster)
    return t


# --- kill -9 of an API instance -------------------------------------------------------


def kill_api(cluster: Cluster, users, product) -> Test:
    t = Test(
        "faults: kill -9 of api1 during an order storm through nginx",
        "nginx routes around the dead instance; no half-written order (invariants); every client that got 201 finds its "
        "order with GET /orders/{id}; a client whose request was cut off can retry with its Idempotency-Key",
    )
    stop = threading.Event()
    results: list[Resp] = []
    lock = threading.Lock()

    def storm(k: int):
        email, token, _ = users[k % len(users)]
        c = Client(cluster.url, token=token, timeout=REQUEST_TIMEOUT + 30)
        while not stop.is_set():
            key = unique("storm-")
            r = c.post("/api/v1/orders", ORDER_BODY(product), headers={"Idempotency-Key": key}, label="POST /orders")
            r.key, r.token = key, token  # type: ignore[attr-defined]
            with lock:
                results.append(r)
        c.close()

    ths = [threading.Thread(target=storm, args=(k,), daemon=True) for k in range(16)]
    for th in ths:
        th.start()
    time.sleep(3)
    pid = cluster.pid("api1")
    kill_at = now()
    cluster.kill("api1")
    time.sleep(4)
    stop.set()
    for th in ths:
        th.join()
    rs = sorted(results, key=lambda r: r.t0)
    t.did(f"16 clients sending POST /orders back to back through nginx; after 3 s `scripts/cluster kill api1` (SIGKILL to pid {pid}); 4 s more")
    before = [r for r in rs if r.t0 + r.dt < kill_at]
    around = [r for r in rs if r.t0 < kill_at <= r.t0 + r.dt]
    after = [r for r in rs if r.t0 >= kill_at]
    t.saw(f"before the kill: {summary(before)}")
    t.saw(f"in flight at the kill: {summary(around)}")
    t.saw(f"after the kill: {summary(after)}")
    late = [r for r in after if r.t0 > kill_at + 1 and not ok2xx(r)]
    t.require(not late, f"from 1 s after the kill every order is answered 201 by api2 ({len(late)} failed)")
    odd = [r for r in rs if not ok2xx(r) and not unavailable(r)]
    t.require(not odd, f"a cut-off request gets the 503 envelope, nothing else ({len(odd)} others)")
    ups = Counter()
    names = {cluster.upstream("api1"): "api1", cluster.upstream("api2"): "api2"}
    for e in cluster.access_log():
        if e.get("uri") == "/api/v1/orders" and e.get("method") == "POST":
            ups[", ".join(names.get(u.strip(), u.strip()) for u in e.get("upstream", "").split(","))] += 1
    t.saw(f"nginx upstreams of every POST /orders so far: {dict(ups)}")
    created = [r for r in rs if r.status == 201]
    missing = []
    reader = {}
    for r in created:
        c = reader.setdefault(r.token, Client(cluster.url, token=r.token))
        g = c.get(f"/api/v1/orders/{r.data()['id']}", label="GET /orders/{id}")
        if g.status != 200 or g.data()["id"] != r.data()["id"]:
            missing.append(f"{r.data()['id']}: {g.outcome}")
    t.saw(f"{len(created)} orders answered 201; GET /orders/{{id}} found {len(created) - len(missing)} of them")
    t.require(not missing, "every 201 order is found")
    cluster.start("api1")
    t.did("`scripts/cluster start api1`; then each cut-off request retried with its Idempotency-Key (an abandoned claim is "
          f"taken over after 2 x REQUEST_TIMEOUT = {2 * REQUEST_TIMEOUT:.0f} s)")
    failed = [r for r in rs if not ok2xx(r)]
    retried = Counter()
    deadline = now() + 2 * REQUEST_TIMEOUT + 15
    for r in failed:
        c = reader.setdefault(r.token, Client(cluster.url, token=r.token))
        while True:
            x = c.post("/api/v1/orders", ORDER_BODY(product), headers={"Idempotency-Key": r.key}, label="retry")
            if x.status == 409 and x.code == "IDEMPOTENCY_KEY_IN_USE" and now() < deadline:
                retried["409 IDEMPOTENCY_KEY_IN_USE (claim not yet abandoned; tried again 2 s later)"] += 1
                time.sleep(2)
                continue
            if x.status == 201:
                retried["201 replayed (had been placed)" if x.headers.get("idempotent-replayed") == "true" else "201 placed now"] += 1
            else:
                retried[x.outcome] += 1
            break
    if failed:
        t.saw(f"retries of the {len(failed)} cut-off orders: {dict(retried)}")
        t.require(
            sum(v for k, v in retried.items() if k.startswith("201")) == len(failed),
            "every cut-off order ends with one 201 on retry",
        )
    t.run_check(cluster)
    return t


# --- kill -9 of the worker ------------------------------------------------------------


def inflight(cluster: Cluster) -> dict[str, int]:
    keys = cluster.redis("--scan", "--pattern", f"{cluster.prefix}:queue:emails*inflight*").split()
    return {k: int(cluster.redis("scard", k) or 0) for k in keys}


def held_outbox_keys(cluster: Cluster, held: dict[str, int]) -> set[str]:
    """The mail keys (see mail.py) of the jobs in the given inflight sets."""
    q = f"{cluster.prefix}:queue:emails"
    outbox = set()
    for k in held:
        for job in cluster.redis("smembers", k).split():
            data = cluster.redis("hget", f"{q}:data", job)
            outbox.update(mail.UUID.findall(data))
    return {r["key"] for r in mail.outbox_emails(cluster) if r["id"] in outbox}


def kill_worker(cluster: Cluster, users, product) -> Test:
    t = Test(
        "faults: kill -9 of the worker mid-job",
        f"with JOBS_HEARTBEAT_INTERVAL={HEARTBEAT} and JOBS_MISSED_HEARTBEATS={MISSED}, the killed worker's jobs are rescued by the "
        "restarted worker; each e-mail's outbox id has one sent_emails row; each message one file (docs/jobs.md: a copy is possible only "
        "if the process died between the transport accepting the message and the commit)",
    )
    since, since_wall = mail.db_now(cluster), time.time()
    cluster.stop("worker")
    # a backlog while no worker runs (the relay is in the worker too): orders and registrations
    n_orders, n_users = 2000, 40
    before_rows = int(cluster.sql1("select count(*) from outbox where queue = 'emails'"))
    done = Counter()
    lock = threading.Lock()

    def backlog(k: int):
        email, token, _ = users[k % len(users)]
        c = Client(cluster.url, token=token)
        for _ in range(k, n_orders, 16):
            r = c.post("/api/v1/orders", ORDER_BODY(product), headers={"Idempotency-Key": unique("bl-")}, label="POST /orders")
            with lock:
                done[r.outcome] += 1
        c.close()

    ths = [threading.Thread(target=backlog, args=(k,)) for k in range(16)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    register_many(cluster.url, n_users, "rescue", threads=4)
    rows = int(cluster.sql1("select count(*) from outbox where queue = 'emails'")) - before_rows
    files_before = len(list(cluster.mail_dir.glob("*.eml")))
    sent_before = int(cluster.sql1("select count(*) from sent_emails"))
    t.did(f"`scripts/cluster stop worker`; backlog: {n_orders} orders ({dict(done)}) and {n_users} registrations = {rows} e-mail outbox rows")
    # start the worker without waiting, kill it once it has sent a part of the backlog
    env = dict(os.environ)
    starter = subprocess.Popen([str(Path(__file__).resolve().parents[1] / "cluster"), "start", "worker"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = now()
    killed_at_files = None
    while now() - t0 < 60:
        n = len(list(cluster.mail_dir.glob("*.eml"))) - files_before
        if n >= rows * 0.15:
            cluster.kill("worker")
            killed_at_files = n
            break
        time.sleep(0.005)
    kill_t = now()
    starter.wait()
    time.sleep(0.3)
    held = inflight(cluster)
    held_keys = held_outbox_keys(cluster, held)
    sent_at_kill = int(cluster.sql1("select count(*) from sent_emails")) - sent_before
    t.did(f"`scripts/cluster start worker`, and `kill worker` (SIGKILL) {kill_t - t0:.2f} s later, when {killed_at_files} of the {rows} files were written")
    t.saw(f"at the kill: inflight sets in Redis {held or '{}'} ({sum(held.values())} jobs held by the killed worker); {sent_at_kill} of the backlog's sent_emails rows committed")
    t.require(killed_at_files is not None and sum(held.values()) > 0, "the worker was killed mid-job (its inflight set held jobs)")
    t.saw(f"the held jobs are the e-mails of {len(held_keys)} outbox rows")
    restart = now()
    cluster.start("worker")
    ready = now() - restart
    ok, waited = mail.wait_sent(cluster, 90)
    t.did(f"`scripts/cluster start worker` (ready after {ready:.1f} s)")
    t.saw(f"everything sent {now() - restart:.1f} s after the restart; inflight sets now {inflight(cluster) or '{}'}")
    t.require(ok, "every outbox row of the backlog sent after the restart (the killed worker's jobs rescued)")
    dead = cluster.redis("scard", f"{cluster.prefix}:queue:emails:dead")
    t.saw(f"dead e-mail jobs: {dead or 0}")
    a = mail.account(cluster, since, since_wall)
    mail.report_accounting(t, a, "each e-mail once", allowed_copies=held_keys, allowed_broken=sum(held.values()))
    if a["unreadable"]:
        t.note("an empty or truncated file: the worker was killed while lettre's file transport wrote the message (it "
               "writes the .eml in place, no temporary file and rename); the rescued job wrote a complete one. Whatever "
               "picks up MAIL_DIR sees the broken file too.")
    if a["duplicated"]:
        t.note("a second file is the documented window (docs/jobs.md: 'Send once'): the file transport had written "
               "the message and the worker died before the transaction committing its sent_emails row; the rescued job "
               "found no ledger row and sent it again. The ledger still holds one row per outbox id.")
    t.run_check(cluster)
    return t


# --- MAIL_DIR full / read-only --------------------------------------------------------


def mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def mail_dir_fault(cluster: Cluster, users, product, admin: str, mode: str) -> Test:
    what = "full (tmpfs of 64 KiB, filled)" if mode == "full" else "read-only (tmpfs remounted ro)"
    t = Test(
        f"faults: MAIL_DIR {what}",
        "e-mail jobs fail, retry (3 attempts, after 2 s and 4 s) and go dead, listed by GET /admin/jobs/dead with the error; "
        "the API stays up (health 200 on both instances, orders 201); after the mount is restored and the dead jobs are "
        "retried (POST /admin/jobs/dead/{id}/retry, 202) each e-mail is sent once",
    )
    md = cluster.mail_dir
    since, since_wall = mail.db_now(cluster), time.time()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(md)], capture_output=True, text=True)
    if p.returncode != 0:
        t.require(False, f"mount -t tmpfs over MAIL_DIR: {p.stderr.strip()} (needs root)")
        return t
    try:
        if mode == "full":
            fd = os.open(md / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while os.write(fd, b"\0" * 4096) > 0:
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            free = os.statvfs(md).f_bavail
            t.did(f"mount -t tmpfs -o size=64k over {md}; filled it with a file until ENOSPC ({free} blocks free)")
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(md)], check=True)
            t.did(f"mount -t tmpfs -o size=64k over {md}; mount -o remount,ro")
        # e-mails while the directory is unusable: orders and registrations
        c = Client(cluster.url, token=users[0][1])
        orders = [c.post("/api/v1/orders", ORDER_BODY(product), headers={"Idempotency-Key": unique("md-")}, label="POST /orders")
                  for _ in range(3)]
        regs = register_many(cluster.url, 2, f"maildir-{mode}")
        ids = {r[0] for r in cluster.sql(f"select id from outbox where queue = 'emails' and created_at >= '{since}'")}
        t.did(f"3 orders ({', '.join(r.outcome for r in orders)}) and 2 registrations: {len(ids)} e-mails to send")
        t.require(all(r.status == 201 for r in orders), "orders answer 201 while MAIL_DIR is unusable")
        adm = Client(cluster.url, token=admin)
        t0 = now()
        dead_jobs = {}
        health = Counter()
        while now() - t0 < 60:
            for n in ("api1", "api2"):
                health[f"{n} {Client(cluster.api_urls[n]).get('/health').status}"] += 1
            r = adm.get("/api/v1/admin/jobs/dead?queue=emails&limit=100", label="dead")
            for j in (r.data() or []):
                if j.get("outboxId") in ids:
                    dead_jobs[j["outboxId"]] = j
            if len(dead_jobs) == len(ids):
                break
            time.sleep(1)
        took = now() - t0
        t.saw(f"health probes meanwhile: {dict(health)}")
        t.require(all(k.endswith(" 200") for k in health), "the API stays up (GET /health 200 on both instances)")
        t.saw(f"{len(dead_jobs)} of {len(ids)} jobs dead after {took:.1f} s")
        errs = Counter((j.get("lastError") or "")[:90] for j in dead_jobs.values())
        atts = Counter(j.get("attempts") for j in dead_jobs.values())
        t.saw(f"attempts {dict(atts)}; last errors: {dict(errs)}")
        t.require(len(dead_jobs) == len(ids) and all(j.get("attempts") == 3 for j in dead_jobs.values()),
                  "every e-mail job retried and went dead after 3 attempts")
        sent = int(cluster.sql1("select count(*) from sent_emails where outbox_id = any(array[" +
                                ",".join(f"'{i}'::uuid" for i in ids) + "])")) if ids else 0
        t.require(sent == 0, f"no sent_emails row for the failed e-mails ({sent})")
        stray = [f.name for f in md.iterdir() if f.name != "filler"]
        t.saw(f"files left in the unusable MAIL_DIR: {len(stray)} {stray[:3]}")
        if stray:
            t.note("lettre's file transport writes the .eml in place (no temporary file + rename): a write that fails half-way "
                   "leaves a truncated file behind; on a real disk those stay next to the good ones")
        queue = adm.get("/api/v1/admin/jobs").data()
        t.saw(f"GET /admin/jobs: {queue}")
    finally:
        while mounted(md):
            subprocess.run(["umount", str(md)], check=False)
    t.did(f"umount {md} (restored); POST /admin/jobs/dead/{{id}}/retry for each")
    codes = Counter()
    for j in dead_jobs.values():
        codes[adm.post(f"/api/v1/admin/jobs/dead/{j['id']}/retry", label="retry").status] += 1
    t.saw(f"retry answers: {dict(codes)}")
    t.require(codes.get(202, 0) == len(dead_jobs), "every retry answers 202")
    ok, waited = mail.wait_sent(cluster, 30, ids)
    t.require(ok, f"every retried e-mail sent ({waited:.1f} s)")
    a = mail.account(cluster, since, since_wall)
    mail.report_accounting(t, a, "each e-mail once")
    t.run_check(cluster)
    return t


# --- refunds through a failing provider and a killed worker ---------------------------


def refunds(cluster: Cluster, users, product, admin: str, standin: Standin) -> Test:
    n = 20
    t = Test(
        f"faults: {n} paid orders cancelled by staff while the payment provider answers 500, then kill -9 of the worker",
        "every refund is retried (a fresh Idempotency-Key after each error answer) and ends refunded, once per "
        "payment at the provider, after the provider is back and a new worker started; invariants hold",
    )
    staff = Client(cluster.url, token=admin)
    intents = []
    for k in range(n):
        c = Client(cluster.url, token=users[k % len(users)][1])
        oid = expect(c.post("/api/v1/orders", ORDER_BODY(product), label="POST /orders"), 201).data()["id"]
        pay = expect(c.post(f"/api/v1/orders/{oid}/payment", label="POST /orders/{id}/payment"), 201).data()
        event = succeeded(pay["providerPaymentId"], pay["amountCents"])
        expect(c.post("/api/v1/payments/stripe/webhook", event, headers=signed(event), label="webhook"), 200)
        intents.append((oid, pay["providerPaymentId"]))
        c.close()
    paid = int(cluster.sql1("select count(*) from orders where status = 'paid' and id in (%s)"
                            % ",".join(f"'{o}'" for o, _ in intents)))
    t.require(paid == n, f"{paid} of {n} orders paid by their webhook")
    (Path(standin.dir) / "fail").write_text("500")
    for oid, _ in intents:
        expect(staff.post(f"/api/v1/orders/{oid}/cancel", label="cancel"), 200)
    time.sleep(3)
    pid = cluster.pid("worker")
    cluster.kill("worker")
    (Path(standin.dir) / "fail").unlink()
    cluster.start("worker")
    t.did(f"{n} orders paid through their webhook, then cancelled by staff with the stand-in answering 500; 3 s later "
          f"`scripts/cluster kill worker` (SIGKILL to pid {pid}), the stand-in answering again, `scripts/cluster start worker`")
    ids = ",".join(f"'{p}'" for _, p in intents)
    t0 = now()
    while now() - t0 < 90:
        left = int(cluster.sql1(f"select count(*) from payments where provider_payment_id in ({ids}) and status <> 'refunded'"))
        if left == 0:
            break
        time.sleep(1)
    t.saw(f"all refunded {now() - t0:.0f} s after the restart" if left == 0 else f"{left} not refunded after 90 s")
    t.require(left == 0, "every payment refunded")
    calls = []
    with open(Path(standin.dir) / "requests.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["path"] == "/v1/refunds":
                calls.append(r)
    by_intent = Counter(r["form"].get("payment_intent") for r in calls)
    keys = {r["idempotencyKey"] for r in calls}
    fresh = sum(1 for k in keys if k and k.count("-") >= 1 and not k.endswith(tuple(p for _, p in intents)))
    t.saw(f"{len(calls)} refund calls for {len(by_intent)} intents, {len(keys)} distinct keys ({fresh} fresh after an error)")
    t.require(set(by_intent) == {p for _, p in intents}, "each payment's refund was asked of the provider")
    t.require(fresh > 0, "error answers were followed by fresh keys")
    t.run_check(cluster)
    return t


def run(cluster: Cluster) -> list[Test]:
    log("faults: starting the cluster")
    with Standin() as standin:
        cluster.up({**COMMON, **standin.env()})
        return run_tests(cluster, standin)


def run_tests(cluster: Cluster, standin: Standin) -> list[Test]:
    admin = admin_token(cluster, cluster.url)
    product = create_product(cluster.url, admin, stock=1_000_000)
    users = register_many(cluster.url, 20, "faults")
    tests: list[Test] = []
    steps = [
        ("Postgres restarted under load", lambda: pg_restart(cluster, users, product)),
        ("Redis restarted under load", lambda: redis_restart(cluster, users, product)),
        ("kill -9 of api1", lambda: kill_api(cluster, users, product)),
        ("kill -9 of the worker", lambda: kill_worker(cluster, users, product)),
        ("MAIL_DIR full", lambda: mail_dir_fault(cluster, users, product, admin, "full")),
        ("MAIL_DIR read-only", lambda: mail_dir_fault(cluster, users, product, admin, "ro")),
        ("refunds through a failing provider", lambda: refunds(cluster, users, product, admin, standin)),
    ]
    for title, fn in steps:
        try:
            tests.append(fn())
        except Exception as e:  # noqa: BLE001
            tt = Test(f"faults: {title}", "-")
            tt.error(e)
            tests.append(tt)
            # bring everything back for the next test, and let the backlog drain
            for cmd in (("pg-start",), ("redis-start",), ("start", "api1", "api2", "worker", "nginx")):
                cluster.run(*cmd, check=False)
            wait_drained(cluster, 60)
        tests[-1].print()
    return tests
