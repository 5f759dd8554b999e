"""The soak: mixed traffic through nginx at a fixed rate for N minutes, then the
invariants; per endpoint status counts and p50/p99; RSS of every process and Redis memory
sampled every 10 s."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter, defaultdict

from . import mail
from .common import Client, Cluster, Resp, Test, admin_token, create_product, expect, log, ms, now, pct
from .faults import wait_drained

CLIENTS = 50  # virtual clients, each with its own source address (127.0.0.10 ...) and account
WARMUP = 60.0
SAMPLE_EVERY = 10.0
DONE_RETENTION_S = 60
TRIM_EVERY_S = 300  # src/platform/jobs/mod.rs TRIM_EVERY
IDEMPOTENCY_TTL_S = 6 * 3600  # src/platform/jobs/mod.rs IDEMPOTENCY_TTL
MIX = [("browse", 70), ("product", 10), ("login", 5), ("order", 10), ("cancel", 5)]
LABELS = {
    "browse": "GET /products",
    "product": "GET /products/{id}",
    "login": "POST /auth/login",
    "order": "POST /orders",
    "cancel": "POST /orders/{id}/cancel",
}
# The default limits stay on: every client keeps well under them (2 requests/s each).
COMMON = {
    "LOG_FORMAT": "json",
    "JOBS_DONE_RETENTION": f"{DONE_RETENTION_S}s",
    # Each client places an order every few seconds and pays none.
    "ORDER_MAX_PENDING_PER_USER": "0",
}
PASSWORD = "soak-password-1"


class Sampler(threading.Thread):
    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.samples: list[dict] = []
        self.stop_ev = threading.Event()
        self.pids = {n: cluster.pid(n) for n in ("api1", "api2", "worker")}

    def sample(self) -> dict:
        c = self.cluster
        s = {"t": now()}
        for n, pid in self.pids.items():
            s[n] = c.rss_kb(pid) if pid else 0
        s["nginx"] = c.nginx_rss_kb()
        s["redis"] = c.redis_used_memory()
        s["redis_keys"] = int(c.redis("dbsize") or 0)
        return s

    def run(self):
        while not self.stop_ev.is_set():
            self.samples.append(self.sample())
            self.stop_ev.wait(SAMPLE_EVERY)


class VirtualClient:
    def __init__(self, k: int, base: str, products: list[str], order_products: list[str]):
        self.ip = f"127.0.0.{10 + k}"
        self.c = Client(base, source_ip=self.ip, timeout=60)
        self.rnd = random.Random(k)
        self.products, self.order_products = products, order_products
        self.email = f"soak-{k}-{random.getrandbits(32):08x}@example.com"
        self.pending: list[str] = []

    def register(self):
        r = expect(self.c.post("/api/v1/auth/register", {"email": self.email, "password": PASSWORD}, label="register"), 201)
        self.c.token = r.data()["token"]

    def step(self) -> Resp:
        w = self.rnd.randrange(100)
        acc = 0
        kind = "browse"
        for name, share in MIX:
            acc += share
            if w < acc:
                kind = name
                break
        if kind == "cancel" and not self.pending:
            kind = "order"
        if kind == "browse":
            page = self.rnd.randint(1, max(1, len(self.products) // 20))
            sort = self.rnd.choice(["", "&sort=price", "&sort=-createdAt", "&sort=name"])
            return self.c.get(f"/api/v1/products?page={page}&limit=20{sort}", label=LABELS[kind])
        if kind == "product":
            return self.c.get(f"/api/v1/products/{self.rnd.choice(self.products)}", label=LABELS[kind])
        if kind == "login":
            r = self.c.post("/api/v1/auth/login", {"email": self.email, "password": PASSWORD}, label=LABELS[kind])
            if r.status == 200:
                self.c.token = r.data()["token"]
            return r
        if kind == "order":
            items = [{"productId": p, "quantity": 1} for p in self.rnd.sample(self.order_products, self.rnd.choice([1, 2]))]
            r = self.c.post(
                "/api/v1/orders", {"items": items}, headers={"Idempotency-Key": f"soak-{random.getrandbits(64):016x}"},
                label=LABELS[kind],
            )
            if r.status == 201:
                self.pending.append(r.data()["id"])
            return r
        oid = self.pending.pop(self.rnd.randrange(len(self.pending)))
        return self.c.post(f"/api/v1/orders/{oid}/cancel", label=LABELS[kind])


def redis_families(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Keys by family (ids replaced by *): (count, estimated bytes from MEMORY USAGE samples)."""
    keys = cluster.redis("--scan").split()
    fam: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        f = re.sub(r"[0-9A-HJKMNP-TV-Z]{26}", "*", k)  # ULIDs
        f = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "*", f)
        f = re.sub(r"\b\d{1,3}(\.\d{1,3}){3}\b", "<ip>", f)
        f = re.sub(r"emails-host-\d+-\*", "emails-host-*", f)
        f = re.sub(r":\d{6,}\b", ":<n>", f)
        fam[f].append(k)
    out = {}
    for f, ks in fam.items():
        sample = ks[:: max(1, len(ks) // 50)][:50]
        sizes = [int(cluster.redis("memory", "usage", k, "samples", "0") or 0) for k in sample]
        avg = sum(sizes) / len(sizes) if sizes else 0
        out[f] = (len(ks), int(avg * len(ks)))
    return out


def run(cluster: Cluster, minutes: float, rate: float) -> list[Test]:
    duration = minutes * 60
    t = Test(
        f"soak: {minutes:g} minutes of mixed traffic through nginx at {rate:g} req/s",
        "no 5xx; p99 per endpoint reported; RSS of api1, api2, the worker and nginx grows at most 20 % from the end of the "
        f"1-minute warm-up to the end; Redis memory stays within what the retention settings keep (finished jobs "
        f"JOBS_DONE_RETENTION={DONE_RETENTION_S}s, trimmed every {TRIM_EVERY_S // 60} min; relay idempotency keys 6 h); invariants hold",
    )
    log(f"soak: starting the cluster ({minutes:g} min at {rate:g} req/s)")
    cluster.up(COMMON)
    try:
        seeded = cluster.storefront("seed", "--products", "2000", "--users", "0")
        if seeded.returncode != 0:
            raise RuntimeError(f"seed failed: {seeded.stderr.strip()[-300:]}")
        admin = admin_token(cluster, cluster.url)
        order_products = [create_product(cluster.url, admin, stock=1_000_000, price=500 + 100 * i, name=f"Soak item {i}") for i in range(20)]
        products = [r[0] for r in cluster.sql("select id from products where archived_at is null order by random() limit 2000")]
        vcs = [VirtualClient(k, cluster.url, products, order_products) for k in range(CLIENTS)]
        for v in vcs:
            v.register()
        t.did(
            f"seeded 2000 products, 20 order products (stock 1 000 000), {CLIENTS} accounts; {CLIENTS} clients, each on its own "
            f"keep-alive connection from its own address (127.0.0.10-{9 + CLIENTS}), at {rate / CLIENTS:g} req/s each on a fixed "
            f"schedule: {', '.join(f'{LABELS[n]} {s} %' for n, s in MIX)} (a cancel needs a pending order of the client, else it orders); "
            "default rate limits"
        )
        results: list[Resp] = []
        lock = threading.Lock()
        lateness: list[float] = []
        stop = threading.Event()
        start = now() + 1.0

        def drive(k: int):
            v = vcs[k]
            interval = CLIENTS / rate
            nxt = start + k * interval / CLIENTS
            mine, late = [], []
            while not stop.is_set():
                d = nxt - now()
                if d > 0:
                    time.sleep(d)
                else:
                    late.append(-d)
                nxt += interval
                if now() >= start + duration:
                    break
                mine.append(v.step())
            with lock:
                results.extend(mine)
                lateness.extend(late)
            v.c.close()

        sampler = Sampler(cluster)
        sampler.start()
        ths = [threading.Thread(target=drive, args=(k,), daemon=True) for k in range(CLIENTS)]
        for th in ths:
            th.start()
        next_report = start + 60
        while any(th.is_alive() for th in ths):
            time.sleep(1)
            if now() > next_report:
                log(f"soak: {int(now() - start)} s of {duration:.0f}")
                next_report += 60
        stop.set()
        sampler.stop_ev.set()
        sampler.join()
        sampler.samples.append(sampler.sample())
        elapsed = max(r.t0 + r.dt for r in results) - start
        t.saw(f"{len(results)} requests in {elapsed:.0f} s = {len(results) / elapsed:.1f} req/s "
              f"({len(lateness)} sent late, worst {ms(max(lateness, default=0))} behind schedule)")
        by: dict[str, list[Resp]] = defaultdict(list)
        for r in results:
            by[r.label].append(r)
        t.lines.append("  saw:      per endpoint:")
        t.lines.append(f"              {'endpoint':<26} {'count':>6}  {'p50':>7} {'p99':>7} {'worst':>7}  statuses")
        for label in LABELS.values():
            rs = by.get(label, [])
            lat = [r.dt for r in rs]
            st = ", ".join(f"{v} x {k}" for k, v in Counter(r.outcome for r in rs).most_common())
            t.lines.append(f"              {label:<26} {len(rs):>6}  {ms(pct(lat, 50)):>7} {ms(pct(lat, 99)):>7} {ms(max(lat, default=0)):>7}  {st}")
        five = [r for r in results if r.status is None or r.status >= 500]
        t.require(not five, f"no 5xx or unanswered request ({len(five)})")
        # memory
        ss = sampler.samples
        base = next((s for s in ss if s["t"] >= start + WARMUP), ss[0])
        end = ss[-1]
        # One sample can catch a login's argon2 buffer (19 MiB) in flight or just freed, so
        # start and end are each the peak of a window: the first one after the warm-up and
        # the last one of the run (a minute each, or half of what follows the warm-up).
        window = min(60.0, max(SAMPLE_EVERY, (end["t"] - base["t"]) / 2))
        first = [s for s in ss if base["t"] <= s["t"] < base["t"] + window] or [base]
        last = [s for s in ss if s["t"] > end["t"] - window] or [end]
        t.lines.append(
            f"  saw:      RSS every {SAMPLE_EVERY:.0f} s ({len(ss)} samples); start = peak of +{first[0]['t'] - start:.0f}..+{first[-1]['t'] - start:.0f} s "
            f"(after the {WARMUP:.0f} s warm-up), end = peak of +{last[0]['t'] - start:.0f}..+{last[-1]['t'] - start:.0f} s:"
        )
        for n in ("api1", "api2", "worker", "nginx"):
            b, e = max(x[n] for x in first), max(x[n] for x in last)
            g = (e - b) / b * 100 if b else 0
            series = " ".join(f"{x[n] / 1024:.1f}" for x in ss)
            t.lines.append(f"              {n:<7} start {b / 1024:6.1f} MB  end {e / 1024:6.1f} MB  {g:+5.1f} %   (MB: {series})")
            t.require(b > 0 and e <= b * 1.2, f"{n}: RSS growth after warm-up <= 20 % ({g:+.1f} %)")
        # Redis
        rseries = " ".join(f"{s['redis'] / 1048576:.1f}" for s in ss)
        t.saw(f"Redis used_memory: start {base['redis'] / 1048576:.2f} MB ({base['redis_keys']} keys), end {end['redis'] / 1048576:.2f} MB "
              f"({end['redis_keys']} keys); series MB: {rseries}")
        ok, waited = wait_drained(cluster, 120)
        t.require(ok, f"outbox drained and every e-mail sent after the traffic ({waited:.1f} s)")
        fam = redis_families(cluster)
        t.lines.append("  saw:      Redis keys by family at the end (count, bytes by MEMORY USAGE):")
        for f, (n, b) in sorted(fam.items(), key=lambda kv: -kv[1][1])[:12]:
            t.lines.append(f"              {f:<60} {n:>6} {b / 1024:8.1f} KiB")
        q = f"{cluster.prefix}:queue:emails"
        done = int(cluster.redis("scard", f"{q}:done") or 0)
        window = DONE_RETENTION_S + TRIM_EVERY_S + 30
        recent = int(cluster.sql1(f"select count(*) from sent_emails where sent_at > now() - interval '{window} seconds'"))
        t.saw(f"finished e-mail jobs kept in Redis: {done}; e-mails sent in the last {window} s (retention + trim interval + 30 s): {recent}")
        t.require(done <= recent, "finished jobs in Redis are only those within JOBS_DONE_RETENTION + the trim interval")
        idem = fam.get(f"{q}:idempotency:*", (0, 0))[0]
        jobs_total = int(cluster.sql1("select count(*) from outbox where queue = 'emails' and created_at > now() - interval '6 hours'"))
        t.require(idem <= jobs_total, f"relay idempotency keys only for jobs of the last 6 h ({idem} keys, {jobs_total} jobs)")
        # growth explained by what is retained
        retained_bytes = sum(b for f, (n, b) in fam.items())
        growth = end["redis"] - base["redis"]
        per_s = jobs_total / elapsed if elapsed else 0
        t.saw(f"Redis growth after warm-up {growth / 1048576:+.2f} MB; every key at the end holds {retained_bytes / 1048576:.2f} MB "
              f"(MEMORY USAGE); at {per_s:.1f} e-mails/s the steady state keeps about {per_s * (DONE_RETENTION_S + TRIM_EVERY_S):.0f} "
              f"finished jobs and {per_s * IDEMPOTENCY_TTL_S:.0f} relay idempotency keys (6 h)")
        t.require(growth <= retained_bytes * 1.5 + 1048576,
                  "Redis growth is accounted for by the retained keys (<= 1.5 x their MEMORY USAGE + 1 MB)")
        a = mail.account(cluster)
        mail.report_accounting(t, a)
        t.run_check(cluster)
    except Exception as e:  # noqa: BLE001
        t.error(e)
    t.print()
    return [t]
