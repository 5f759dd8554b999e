"""The multi-instance test: two API instances and a worker behind nginx, one
Postgres, one Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone

from . import mail
from .common import (
    Client,
    Cluster,
    Test,
    admin_token,
    counts,
    create_product,
    expect,
    log,
    ms,
    register,
    register_many,
    summary,
    unique,
)

SCHEDULE = "*/2 * * * * *"
SCHEDULE_WINDOW = 20.0

# Limits per client address raised for the load (every request comes from 127.0.0.1); the
# per-e-mail failed-login limit stays at its default (10) for the login test.
COMMON = {
    "LOG_FORMAT": "json",
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "1000000",
    "RATE_LIMIT_AUTH_PER_MINUTE": "100000",
    # The load places many unpaid orders per user.
    "ORDER_MAX_PENDING_PER_USER": "0",
    "SCHEDULER_ENABLED": "true",
    "SCHEDULE_CLEANUP": SCHEDULE,
    "SCHEDULE_ANALYTICS": SCHEDULE,
}
# Payments through the Stripe stand-in (scripts/stripe-standin), on loopback.
WEBHOOK_SECRET = "whsec_cluster_test_secret"
PAYMENTS = {
    "PAYMENT_PROVIDER": "stripe",
    "STRIPE_SECRET_KEY": "sk_test_cluster",
    "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
}
# scripts/cluster turns the scheduler off on the API instances; here all three run it.
API = {"SCHEDULER_ENABLED": "true"}


def parse_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def oversell(cluster: Cluster, admin: str) -> Test:
    t = Test(
        "multi: 200 concurrent single-unit orders for stock 50, through nginx",
        "exactly 50 x 201 and 150 x 409 INSUFFICIENT_STOCK, both instances serve some, stock ends at 0, invariants hold",
    )
    product = create_product(cluster.url, admin, stock=50)
    users = register_many(cluster.url, 20, "oversell")
    n = 200
    clients = [Client(cluster.url, token=users[i % len(users)][1]) for i in range(n)]
    for c in clients:  # open every connection first, so the orders leave together
        c.get("/health")
    barrier = threading.Barrier(n)
    results = [None] * n

    def go(i: int):
        barrier.wait()
        results[i] = clients[i].post(
            "/api/v1/orders",
            {"items": [{"productId": product, "quantity": 1}]},
            headers={"Idempotency-Key": unique("k-"), "X-Request-Id": f"ct-oversell-{i}"},
            label="POST /orders",
        )

    ths = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    for c in clients:
        c.close()
    t.did(f"product with stock 50; {len(users)} users; {n} threads on their own keep-alive connections to nginx, released together, each POST /orders quantity 1 with its own Idempotency-Key")
    t.saw(summary(results))
    c = counts(results)
    t.require(c.get("201", 0) == 50, f"exactly 50 x 201 (got {c.get('201', 0)})")
    t.require(c.get("409 INSUFFICIENT_STOCK", 0) == 150, f"exactly 150 x 409 INSUFFICIENT_STOCK (got {c.get('409 INSUFFICIENT_STOCK', 0)})")
    stock = Client(cluster.url).get(f"/api/v1/products/{product}").data()["stock"]
    placed = int(cluster.sql1(f"select count(*) from order_items where product_id = '{product}'"))
    t.saw(f"stock afterwards {stock}; orders holding the product in the database: {placed}")
    t.require(stock == 0 and placed == 50, "stock 0 and 50 orders in the database")
    ups = Counter(e["upstream"] for e in cluster.access_log() if e.get("request_id", "").startswith("ct-oversell-"))
    names = {cluster.upstream("api1"): "api1", cluster.upstream("api2"): "api2"}
    per = {names.get(k, k): v for k, v in ups.items()}
    t.saw(f"nginx access log, upstream of the {sum(ups.values())} orders: {per}")
    t.require(per.get("api1", 0) > 0 and per.get("api2", 0) > 0, "both instances served some of the orders")
    t.run_check(cluster)
    return t


def idempotency_race(cluster: Cluster, admin: str) -> Test:
    rounds = 20
    t = Test(
        "multi: the same Idempotency-Key and body sent to api1 and api2 at the same instant",
        f"in each of {rounds} rounds one order: one 201, the other a replayed 201 with the same order id "
        "(Idempotent-Replayed: true) or 409 IDEMPOTENCY_KEY_IN_USE; invariants hold",
    )
    product = create_product(cluster.url, admin, stock=10_000)
    token, _ = register(Client(cluster.url), f"idem-{unique()}@example.com")
    a = Client(cluster.api_urls["api1"], token=token)
    b = Client(cluster.api_urls["api2"], token=token)
    body = {"items": [{"productId": product, "quantity": 2}]}
    outcomes: Counter = Counter()
    bad: list[str] = []
    worst = 0.0
    keys = []
    for _ in range(rounds):
        a.get("/health")
        b.get("/health")
        key = unique("race-")
        keys.append(key)
        barrier = threading.Barrier(2)
        res = {}

        def go(name, c):
            barrier.wait()
            res[name] = c.post("/api/v1/orders", body, headers={"Idempotency-Key": key}, label="POST /orders")

        ths = [threading.Thread(target=go, args=(n, c)) for n, c in (("api1", a), ("api2", b))]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        worst = max(worst, res["api1"].dt, res["api2"].dt)

        def kind(r):
            if r.status == 201:
                return "201 replay" if r.headers.get("idempotent-replayed") == "true" else "201 new"
            return r.outcome

        ks = sorted([kind(res["api1"]), kind(res["api2"])])
        outcomes[" + ".join(ks)] += 1
        new = [r for r in res.values() if kind(r) == "201 new"]
        ok = len(new) == 1
        if ok:
            other = res["api2"] if new[0] is res["api1"] else res["api1"]
            ok = (kind(other) == "201 replay" and other.data()["id"] == new[0].data()["id"]) or (
                other.status == 409 and other.code == "IDEMPOTENCY_KEY_IN_USE"
            )
        n_orders = int(cluster.sql1(f"select count(*) from orders where idempotency_key = '{key}'"))
        if not ok or n_orders != 1:
            bad.append(f"{key}: {ks}, {n_orders} orders")
    a.close()
    b.close()
    t.did(f"{rounds} rounds: one user, a fresh key per round, two threads released by a barrier, one on api1 :{cluster.port('api1')} and one on api2 :{cluster.port('api2')} directly")
    t.saw("; ".join(f"{v} x ({k})" for k, v in outcomes.most_common()) + f"; worst latency {ms(worst)}")
    t.require(not bad, f"one order per key, the other answer a replay of it or IDEMPOTENCY_KEY_IN_USE ({len(bad)} bad rounds{': ' + bad[0] if bad else ''})")
    total = int(cluster.sql1("select count(*) from orders where idempotency_key like 'race-%'"))
    t.require(total == rounds, f"{total} orders in the database for {rounds} keys")
    t.run_check(cluster)
    return t


def login_limit(cluster: Cluster) -> Test:
    limit = 10
    t = Test(
        "multi: the per-e-mail failed-login limit holds across instances",
        f"RATE_LIMIT_LOGIN_PER_EMAIL={limit}: wrong-password logins alternating api1/api2 answer 401 ten times; "
        "the 11th and 12th answer 429 RATE_LIMITED in the envelope with Retry-After, whichever instance",
    )
    email = f"limit-{unique()}@example.com"
    register(Client(cluster.url), email)
    cs = [Client(cluster.api_urls["api1"]), Client(cluster.api_urls["api2"])]
    seq = []
    for i in range(limit + 2):
        name = "api1" if i % 2 == 0 else "api2"
        r = cs[i % 2].post("/api/v1/auth/login", {"email": email, "password": "wrong-password-1"}, label="login")
        seq.append((i + 1, name, r))
    t.did(f"registered {email}; {limit + 2} logins with a wrong password, odd attempts to api1, even to api2 (directly)")
    t.saw(", ".join(f"#{n} {name} {r.outcome}" for n, name, r in seq))
    first = seq[:limit]
    t.require(all(r.status == 401 for _, _, r in first), f"attempts 1-{limit} answer 401")
    over = seq[limit:]
    ok = all(
        r.status == 429 and r.envelope and r.code == "RATE_LIMITED" and r.headers.get("retry-after") for _, _, r in over
    )
    t.require(ok, f"attempts {limit + 1} (api{1 + limit % 2}) and {limit + 2} (api{1 + (limit + 1) % 2}) answer 429 RATE_LIMITED with Retry-After")
    return t


def schedules(cluster: Cluster, window: tuple[float, float]) -> Test:
    w0, w1 = window
    expected = int((w1 - w0) / 2)
    t = Test(
        "multi: schedules every 2 s on three processes for 20 s",
        f"SCHEDULE_CLEANUP and SCHEDULE_ANALYTICS = '{SCHEDULE}' with SCHEDULER_ENABLED=true on api1, api2 and the worker: "
        f"about {expected} slots per task in the window, each slot once in scheduled_runs, each slot's task body run (logged) by exactly one process",
    )
    t.did(f"observed {w1 - w0:.0f} s ({datetime.fromtimestamp(w0, timezone.utc):%H:%M:%S}-{datetime.fromtimestamp(w1, timezone.utc):%H:%M:%S} UTC) while the other multi tests ran")
    rows = cluster.sql("select task, extract(epoch from slot), extract(epoch from finished_at), slot from scheduled_runs order by 1, 2")
    msgs = {"analytics": "analytics rolled up", "cleanup": "cleanup finished"}
    ran: dict[str, list[tuple[float, str]]] = {"analytics": [], "cleanup": []}
    starts = {}
    for proc in ("api1", "api2", "worker"):
        for e in cluster.logs(proc):
            m = e.get("message") or e.get("fields", {}).get("message")
            for task, text in msgs.items():
                if m == text:
                    ran[task].append((parse_ts(e["timestamp"]), proc))
            if m == "scheduler started (UTC)":
                starts[proc] = e.get("analytics")
    t.saw(f"scheduler started in: {', '.join(sorted(starts)) or 'none'} (analytics schedule {set(starts.values()) or '-'})")
    for task in ("cleanup", "analytics"):
        task_rows = [(float(s), float(f), label) for tk, s, f, label in rows if tk == task]
        in_window = [r for r in task_rows if w0 <= r[1] <= w1 + 1]
        lines = sorted(ran[task])
        in_window_lines = [l for l in lines if w0 <= l[0] <= w1 + 1]
        # each row's body: the log lines of that task from its claim to the next claim
        per_row = []
        for i, (slot, fin, label) in enumerate(task_rows):
            nxt = task_rows[i + 1][1] if i + 1 < len(task_rows) else float("inf")
            mine = [l for l in lines if fin - 0.05 <= l[0] < min(nxt, fin + 1.9)]
            per_row.append((label, mine))
        multi = [(label, mine) for label, mine in per_row if len(mine) != 1]
        by_proc = Counter(p for _, p in lines)
        t.saw(
            f"{task}: {len(task_rows)} scheduled_runs rows in all ({len(in_window)} claimed in the window); slots "
            f"{', '.join(r[2] for r in task_rows[:3])}{' ...' if len(task_rows) > 3 else ''}; "
            f"'{msgs[task]}' logged {len(lines)} times ({len(in_window_lines)} in the window), by {dict(by_proc) or 'no process'}"
        )
        t.require(
            len(in_window) >= expected - 2,
            f"{task}: about {expected} slots claimed in the 20 s window (got {len(in_window)})",
        )
        t.require(
            not multi and len(lines) == len(task_rows),
            f"{task}: each slot's body ran in exactly one process (slots without exactly one log line: {len(multi)}; log lines {len(lines)}, slots {len(task_rows)})",
        )
    if any(len([1 for tk, _, f, _ in rows if tk == task and w0 <= float(f) <= w1 + 1]) < expected - 2 for task in ran):
        t.note(
            "a tick whose slot is taken logs nothing; the slot is the tick's time truncated to a day (cleanup) or an hour "
            "(analytics): schedule::slot(Utc::now(), TimeDelta::days(1) / hours(1)) in src/features/maintenance/mod.rs, "
            "whatever the cron expression, so a 2-second schedule runs each task once per day / hour"
        )
    dup = cluster.sql1("select count(*) from (select task, slot from scheduled_runs group by 1, 2 having count(*) > 1) d")
    t.require(dup == "0", "no slot twice in scheduled_runs")
    return t


def emails_once(cluster: Cluster) -> Test:
    t = Test(
        "multi: every e-mail sent exactly once (file transport)",
        "every `emails` outbox row of the tests above has exactly one sent_emails row and exactly one .eml file in MAIL_DIR",
    )
    ok, waited = mail.wait_sent(cluster, 60)
    t.did(f"waited {waited:.1f} s for the worker to send everything (EMAIL_TRANSPORT=file, MAIL_DIR={cluster.mail_dir})")
    t.require(ok, "every outbox row sent within 60 s")
    mail.report_accounting(t, mail.account(cluster))
    t.run_check(cluster)
    return t


class Standin:
    """scripts/stripe-standin on a free loopback port, stopped by `stop`."""

    def __init__(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.dir = tempfile.mkdtemp(prefix="cluster-stripe-")
        script = os.path.join(os.path.dirname(__file__), "..", "stripe-standin")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", script, "--port", str(self.port), "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Stripe stand-in did not start")

    def env(self) -> dict[str, str]:
        """The settings of processes that take payments through this stand-in."""
        return {**PAYMENTS, "STRIPE_API_BASE": f"http://127.0.0.1:{self.port}"}

    def __enter__(self) -> "Standin":
        return self

    def __exit__(self, *_) -> None:
        self.proc.kill()
        self.proc.wait()


def succeeded(intent: str, amount: int) -> dict:
    """A `payment_intent.succeeded` event, with a fresh id."""
    return {"id": unique("evt_"), "type": "payment_intent.succeeded",
            "data": {"object": {"id": intent, "object": "payment_intent", "amount_received": amount, "currency": "usd"}}}


def signed(event: dict) -> dict[str, str]:
    """The headers Stripe would send with `event` (as `Client` encodes it)."""
    body = json.dumps(event).encode()
    t = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}"}


def payments(cluster: Cluster, admin: str) -> Test:
    n, cancels = 40, 10
    t = Test(
        f"multi: {n} orders paid by webhooks delivered to api1 and api2 at the same instant, "
        f"{cancels} of them cancelled by their owner at that instant too",
        "each event applies once (one duplicate answer per pair); each order ends paid with its payment "
        "succeeded, or cancelled and restocked with its money being refunded, never both; one "
        "payment-received e-mail per paid order; invariants hold",
    )
    product = create_product(cluster.url, admin, stock=10_000)
    users = register_many(cluster.url, 10, "pay")
    orders = []
    for i in range(n):
        c = Client(cluster.url, token=users[i % len(users)][1])
        order = expect(c.post("/api/v1/orders", {"items": [{"productId": product, "quantity": 3}]}, label="POST /orders"), 201)
        oid = order.data()["id"]
        pay = expect(c.post(f"/api/v1/orders/{oid}/payment", label="POST /orders/{id}/payment"), 201)
        orders.append((oid, pay.data()["providerPaymentId"], pay.data()["amountCents"], users[i % len(users)][1]))
        c.close()
    duplicates = Counter()
    bad: list[str] = []
    for k, (oid, intent, amount, token) in enumerate(orders):
        event = succeeded(intent, amount)
        clients = [Client(cluster.api_urls["api1"]), Client(cluster.api_urls["api2"])]
        owner = Client(cluster.url, token=token)
        for c in clients + [owner]:
            c.get("/health")
        barrier = threading.Barrier(3 if k < cancels else 2)
        res: dict = {}

        def deliver(name, c, event=event):
            barrier.wait()
            res[name] = c.post("/api/v1/payments/stripe/webhook", event, headers=signed(event), label="webhook")

        def cancel(oid=oid):
            barrier.wait()
            res["cancel"] = owner.post(f"/api/v1/orders/{oid}/cancel", label="cancel")

        ths = [threading.Thread(target=deliver, args=(f"api{i + 1}", c)) for i, c in enumerate(clients)]
        if k < cancels:
            ths.append(threading.Thread(target=cancel))
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        for c in clients + [owner]:
            c.close()
        answers = [res["api1"], res["api2"]]
        if any(r.status != 200 for r in answers):
            bad.append(f"{oid}: webhook answers {[r.outcome for r in answers]}")
            continue
        dup = sorted(bool(r.data()["duplicate"]) for r in answers)
        duplicates[str(dup)] += 1
        if dup != [False, True]:
            bad.append(f"{oid}: duplicate flags {dup}")
    t.did(f"{n} orders of 3 units by {len(users)} users, each payment started through nginx; per order one signed "
          f"payment_intent.succeeded sent to api1 and api2 directly, released by a barrier; for the first {cancels} "
          "the owner's cancel released with them")
    rows = cluster.sql("select o.status::text, p.status::text, count(*) from orders o join payments p on p.order_id = o.id "
                       f"where p.provider_payment_id in ({','.join(repr(o[1]) for o in orders)}) group by 1, 2")
    t.saw("; ".join(f"{r[2]} x order {r[0]} / payment {r[1]}" for r in rows) + f"; duplicate flags {dict(duplicates)}")
    allowed = {("paid", "succeeded"), ("cancelled", "refund_pending"), ("cancelled", "refunded")}
    t.require(not bad, f"each event applied once ({len(bad)} bad{': ' + bad[0] if bad else ''})")
    t.require(all((r[0], r[1]) in allowed for r in rows), "every order paid, or cancelled with its money going back")
    paid = sum(int(r[2]) for r in rows if r[0] == "paid")
    mails = int(cluster.sql1("select count(*) from outbox where kind = 'payment-received'"))
    t.require(mails == paid, f"{mails} payment-received e-mails for {paid} paid orders")
    stock = int(cluster.sql1(f"select stock from products where id = '{product}'"))
    t.require(stock == 10_000 - 3 * paid, f"stock {stock} = 10000 - 3 x {paid} paid orders (cancelled ones restocked once)")
    t.run_check(cluster)
    return t


def run(cluster: Cluster) -> list[Test]:
    log("multi: starting the cluster (schedules every 2 s on all three processes)")
    with Standin() as standin:
        cluster.up({**COMMON, **standin.env()}, api=API)
        return run_tests(cluster)


def run_tests(cluster: Cluster) -> list[Test]:
    tests: list[Test] = []
    admin = admin_token(cluster, cluster.url)
    w0 = time.time()
    for fn in (oversell, idempotency_race, payments):
        try:
            tests.append(fn(cluster, admin))
        except Exception as e:  # noqa: BLE001
            tt = Test(f"multi: {fn.__name__}", "-")
            tt.error(e)
            tests.append(tt)
        tests[-1].print()
    try:
        tests.append(login_limit(cluster))
    except Exception as e:  # noqa: BLE001
        tt = Test("multi: login limit", "-")
        tt.error(e)
        tests.append(tt)
    tests[-1].print()
    left = SCHEDULE_WINDOW - (time.time() - w0)
    if left > 0:
        time.sleep(left)
    w1 = time.time()
    for fn, args in ((schedules, (cluster, (w0, w1))), (emails_once, (cluster,))):
        try:
            tests.append(fn(*args))
        except Exception as e:  # noqa: BLE001
            tt = Test(f"multi: {fn.__name__}", "-")
            tt.error(e)
            tests.append(tt)
        tests[-1].print()
    return tests
