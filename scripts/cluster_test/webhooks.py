"""The webhook fault tests: a receiver down for a minute and back, a hung receiver beside
a healthy one, Redis restarted while deliveries flow.

Each receiver is an http.server on a loopback port in a thread of this process; it
records every request (webhook-id, type, order id, arrival time, the answer it gave) and
verifies each signature as Standard Webhooks specifies (the key is the base64 after
`whsec_`, the MAC HMAC-SHA256 over `{id}.{timestamp}.{body}`, the header a
space-separated list of `v1,<base64>`). The cluster runs with loopback http receivers
allowed and fast retries (WEBHOOK_RETRY_BASE=1s, WEBHOOK_MAX_ATTEMPTS=10: attempts after
1, 2, 4 ... 256 s, about 8.5 minutes in all, so a one-minute outage is covered many times
over). Orders go through nginx, as in the other tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import select
import socket
import threading
import time
import urllib.request
from collections import Counter

from .common import Client, Cluster, Test, admin_token, create_product, expect, log, ms, now, pct, register_many, summary
from .faults import COMMON as FAULTS_COMMON
from .faults import Load, ok2xx

RETRY_BASE = "1s"
MAX_ATTEMPTS = 10
TIMEOUT = 10.0  # WEBHOOK_TIMEOUT (the default)
ENDPOINT_CONCURRENCY = 2  # WEBHOOK_ENDPOINT_CONCURRENCY (the default)
EVENTS = ["order.created", "order.paid", "order.shipped", "order.delivered", "order.cancelled", "order.refunded"]
COMMON = {
    **FAULTS_COMMON,
    # Receivers on this machine, over plain http: both settings are needed for loopback.
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    "WEBHOOK_RETRY_BASE": RETRY_BASE,
    "WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "WEBHOOK_TIMEOUT": f"{TIMEOUT:.0f}s",
    "WEBHOOK_ENDPOINT_CONCURRENCY": str(ENDPOINT_CONCURRENCY),
}


# --- the receivers --------------------------------------------------------------------


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """Standard Webhooks: any `v1,<base64>` of the header matching
    base64(HMAC-SHA256(base64-decode(secret after whsec_), "{id}.{timestamp}.{body}"))."""
    if not secret.startswith("whsec_"):
        return False
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for part in header.split(" "):
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


class Receiver:
    """A webhook receiver on 127.0.0.1:<port>. `mode`: ok (204), 503 (answers 503), hang
    (reads the request and never answers, until `close`); `down()` closes the listening
    socket (connections refused), `up()` listens on the same port again."""

    def __init__(self, name: str, mode: str = "ok"):
        self.name = name
        self.mode = mode
        self.secret = ""
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every request: id, type, order, at (wall), answer
        self.hanging = 0  # connections held open now (the client has not given up)
        self.max_hanging = 0
        self.held: list[float] = []  # seconds each hung connection stayed open
        self.release = threading.Event()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.server = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{self.name}"

    def _handler(self):
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):  # noqa: N802
                at = time.time()
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                h = {k.lower(): v for k, v in self.headers.items()}
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {}
                mode = rec.mode
                entry = {
                    "id": h.get("webhook-id", ""),
                    "timestamp": h.get("webhook-timestamp", ""),
                    "signature": h.get("webhook-signature", ""),
                    "body": body,
                    "type": doc.get("type"),
                    "order": (doc.get("data") or {}).get("id"),
                    "event_ts": doc.get("timestamp"),
                    "at": at,
                    "answer": {"ok": 204, "503": 503, "hang": None}[mode],
                }
                with rec.lock:
                    rec.requests.append(entry)
                if mode == "hang":
                    with rec.lock:
                        rec.hanging += 1
                        rec.max_hanging = max(rec.max_hanging, rec.hanging)
                    # hold the connection until the client gives up (closes it) or `close`
                    conn = self.connection
                    while not rec.release.is_set():
                        readable, _, _ = select.select([conn], [], [], 0.1)
                        if readable:
                            try:
                                if conn.recv(1, socket.MSG_PEEK) == b"":
                                    break
                            except OSError:
                                break
                    with rec.lock:
                        rec.hanging -= 1
                        rec.held.append(time.time() - at)
                    self.close_connection = True
                    return
                self.send_response(entry["answer"])
                self.send_header("content-length", "0")
                self.end_headers()

        return Handler

    def up(self) -> None:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        srv.daemon_threads = True
        self.server = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections to the port are refused."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        self.release.set()
        self.down()

    # what was received
    def delivered(self) -> list[dict]:
        """The requests answered 2xx: the deliveries."""
        with self.lock:
            return [r for r in self.requests if r["answer"] == 204]

    def bad_signatures(self, reqs: list[dict]) -> list[dict]:
        return [r for r in reqs if not verify(self.secret, r["id"], r["timestamp"], r["body"], r["signature"])]


def create_endpoint(cluster: Cluster, admin: str, rec: Receiver, events=None) -> str:
    r = expect(
        Client(cluster.url, token=admin).post(
            "/api/v1/webhook-endpoints", {"url": rec.url, "events": events or EVENTS}, label="POST /webhook-endpoints"
        ),
        201,
    )
    d = r.data()
    rec.secret = d["secret"]
    return d["id"]


def disable(cluster: Cluster, admin: str, endpoint: str) -> None:
    expect(
        Client(cluster.url, token=admin).request(
            "PATCH", f"/api/v1/webhook-endpoints/{endpoint}", {"enabled": False}, label="PATCH /webhook-endpoints/{id}"
        ),
        200,
    )


def events_of(cluster: Cluster, endpoint: str) -> dict[str, tuple[str, str]]:
    """The webhook events fanned out to `endpoint`: id -> (type, order id)."""
    rows = cluster.sql(
        f"select id, type, coalesce(order_id::text, body->'data'->>'id') from webhook_events where '{endpoint}'::uuid = any(endpoint_ids)"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def statuses(cluster: Cluster, endpoint: str) -> dict[str, int]:
    rows = cluster.sql(f"select status, count(*) from webhook_deliveries where endpoint_id = '{endpoint}' group by 1 order by 1")
    return {r[0]: int(r[1]) for r in rows}


def attempts(cluster: Cluster, endpoint: str) -> Counter:
    rows = cluster.sql(f"select attempts, count(*) from webhook_deliveries where endpoint_id = '{endpoint}' group by 1")
    return Counter({int(r[0]): int(r[1]) for r in rows})


def wait_delivered(cluster: Cluster, endpoint: str, rec: Receiver, timeout: float) -> tuple[bool, float]:
    """Until no delivery of `endpoint` is pending and the receiver holds every event."""
    t0 = now()
    while True:
        pending = int(cluster.sql1(f"select count(*) from webhook_deliveries where endpoint_id = '{endpoint}' and status = 'pending'"))
        if pending == 0:
            want = set(events_of(cluster, endpoint))
            if want <= {r["id"] for r in rec.delivered()}:
                return True, now() - t0
        if now() - t0 > timeout:
            return False, now() - t0
        time.sleep(0.5)


def metrics(cluster: Cluster, name: str = "worker") -> list[str]:
    """The webhook lines of a process's /metrics (no comments)."""
    port = cluster.run("metrics-port", name).stdout.strip()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as e:
        return [f"(metrics unreadable: {e})"]
    keep = []
    for line in text.splitlines():
        if line.startswith("webhook_") and "_bucket" not in line:
            keep.append(line)
    return keep


def account(t: Test, cluster: Cluster, endpoint: str, rec: Receiver, orders: list, what: str) -> None:
    """Every event at least once, distinct ids = events, duplicates counted, every
    signature valid, every delivery `delivered`, every order placed has its order.created."""
    want = events_of(cluster, endpoint)
    got = rec.delivered()
    ids = Counter(r["id"] for r in got)
    dups = sum(n - 1 for n in ids.values())
    missing = set(want) - set(ids)
    extra = set(ids) - set(want)
    bad = rec.bad_signatures(rec.requests)
    wrong = [r for r in got if r["id"] in want and (r["type"], r["order"]) != want[r["id"]]]
    placed = {r.data()["id"] for r in orders if r.status == 201}
    created = {o for (k, o) in want.values() if k == "order.created"}
    st = statuses(cluster, endpoint)
    t.saw(
        f"{what}: {len(want)} webhook events for the endpoint (select from webhook_events), {len(got)} deliveries "
        f"answered 204, {len(ids)} distinct webhook-ids, {dups} duplicates; {len(rec.requests)} requests in all "
        f"({len(rec.requests) - len(got)} not answered 2xx); signatures checked: {len(rec.requests)}, invalid {len(bad)}"
    )
    t.saw(f"deliveries by status: {st}; attempts per delivery: {dict(sorted(attempts(cluster, endpoint).items()))}")
    t.require(not missing, f"every event arrived at least once ({len(missing)} missing)")
    t.require(len(ids) == len(want) and not extra, f"distinct webhook-ids = events ({len(ids)} = {len(want)})")
    t.require(not wrong, f"each delivery's type and order id are its event's ({len(wrong)} differ)")
    t.require(placed <= created, f"every order answered 201 has its order.created event ({len(placed)} orders, {len(placed - created)} without)")
    t.require(not bad and rec.requests, "every signature verifies (Standard Webhooks, HMAC-SHA256 of {id}.{timestamp}.{body})")
    t.require(st.get("delivered", 0) == len(want) and set(st) == {"delivered"}, "every delivery is `delivered`")
    if dups:
        t.note(f"{dups} duplicate deliveries (at-least-once: the same webhook-id again; not a failure)")


def orders_of(rs) -> list:
    return [r for r in rs if r.label == "POST /orders"]


# --- a: the receiver down for a minute ------------------------------------------------


def receiver_down(cluster: Cluster, admin: str, users, product) -> Test:
    refused, unavailable = 30.0, 30.0
    t = Test(
        "webhooks: the receiver down for a minute (connections refused 30 s, then 503 for 30 s), then back",
        f"with WEBHOOK_RETRY_BASE={RETRY_BASE} and WEBHOOK_MAX_ATTEMPTS={MAX_ATTEMPTS} the retries outlast the outage: every "
        "event arrives at least once afterwards, distinct webhook-ids = events, duplicates counted (not a failure), every "
        "signature valid, every delivery `delivered`; orders answer 201 throughout; invariants hold",
    )
    rec = Receiver("down")
    try:
        endpoint = create_endpoint(cluster, admin, rec)
        rate = 1.0
        load = Load(cluster.url, users, product, rate, threads=2, reads=0.0).start()
        time.sleep(5)
        down_at = now()
        rec.down()
        time.sleep(refused)
        rec.mode = "503"
        rec.up()
        time.sleep(unavailable)
        rec.mode = "ok"
        back_at = now()
        time.sleep(3)
        rs = orders_of(load.stop())
        t.did(
            f"an endpoint following all six events at a receiver on 127.0.0.1:{rec.port}; {rate:.0f} order/s through nginx; "
            f"after 5 s the receiver stopped listening for {refused:.0f} s (connections refused), then answered 503 for "
            f"{unavailable:.0f} s, then 204 again ({back_at - down_at:.0f} s out); orders for 3 s more"
        )
        t.saw(f"orders: {summary(rs)}")
        t.require(all(ok2xx(r) for r in rs), "every order answered 201 while the receiver was out")
        during = [r for r in rec.requests if r["answer"] == 503]
        ok, waited = wait_delivered(cluster, endpoint, rec, 180)
        t.saw(f"every delivery done {waited + 3:.1f} s after the receiver was back" if ok else f"not all delivered {waited + 3:.0f} s after the receiver was back")
        failed = sum(k * n for k, n in attempts(cluster, endpoint).items()) - len(events_of(cluster, endpoint))
        t.saw(f"failed attempts: {failed}: {len(during)} answered 503 by the receiver, {failed - len(during)} refused connections")
        firsts = {}
        for r in rec.delivered():
            firsts.setdefault(r["id"], r["at"])
        back_wall = time.time() - (now() - back_at)
        late = [a - back_wall for a in firsts.values() if a > back_wall]
        if late:
            t.saw(f"events first delivered after the receiver was back: {len(late)}, the last {late and max(late):.1f} s after")
        account(t, cluster, endpoint, rec, rs, "afterwards")
        t.saw("worker metrics (since it started): " + "; ".join(metrics(cluster)))
        disable(cluster, admin, endpoint)
    finally:
        rec.close()
    t.run_check(cluster)
    return t


# --- b: a hung receiver beside a healthy one ------------------------------------------


def hung_receiver(cluster: Cluster, admin: str, users, product) -> Test:
    t = Test(
        "webhooks: a receiver that accepts and never answers, beside a healthy one",
        f"the hung endpoint holds at most WEBHOOK_ENDPOINT_CONCURRENCY={ENDPOINT_CONCURRENCY} attempts at a time, each "
        f"ending at WEBHOOK_TIMEOUT={TIMEOUT:.0f}s; the healthy endpoint's deliveries keep flowing, each within a few "
        "seconds of its order (well within the timeout); every healthy event delivered, signatures valid; invariants hold",
    )
    healthy, hung = Receiver("healthy"), Receiver("hung", mode="hang")
    hung_id = None
    try:
        healthy_id = create_endpoint(cluster, admin, healthy, ["order.created"])
        hung_id = create_endpoint(cluster, admin, hung, ["order.created"])
        rate, secs = 1.0, 25.0
        load = Load(cluster.url, users, product, rate, threads=2, reads=0.0).start()
        time.sleep(secs)
        rs = orders_of(load.stop())
        t.did(
            f"two endpoints following order.created: a healthy receiver (204 at once) and a hung one (accepts, reads, "
            f"never answers); {rate:.0f} order/s through nginx for {secs:.0f} s"
        )
        t.saw(f"orders: {summary(rs)}")
        ok, waited = wait_delivered(cluster, healthy_id, healthy, 30)
        t.require(ok, f"every event of the healthy endpoint delivered ({waited:.1f} s after the last order)")
        got = healthy.delivered()
        first: dict[str, dict] = {}
        for r in got:
            first.setdefault(r["id"], r)
        lag = [r["at"] - parse_ts(r["event_ts"]) for r in first.values() if r["event_ts"]]
        worst = max(lag, default=0.0)
        t.saw(
            f"healthy receiver: {len(first)} events, lag from the order's commit (the body's timestamp) to arrival "
            f"p50 {ms(pct(lag, 50))}, p99 {ms(pct(lag, 99))}, worst {ms(worst)}"
        )
        t.require(lag and pct(lag, 99) <= 3.0, "healthy deliveries within a few seconds of their order (p99 <= 3 s)")
        t.require(worst < TIMEOUT / 2, f"no healthy delivery waits anywhere near WEBHOOK_TIMEOUT (worst {ms(worst)} < {TIMEOUT / 2:.0f} s)")
        hung_st = statuses(cluster, hung_id)
        errs = Counter(r[0] for r in cluster.sql(
            f"select coalesce(last_error, '-') from webhook_deliveries where endpoint_id = '{hung_id}' and attempts > 0"))
        t.saw(
            f"hung receiver: {len(hung.requests)} requests accepted and held, at most {hung.max_hanging} open at once; "
            f"{len(hung.held)} given up by the sender after {', '.join(f'{h:.1f}' for h in sorted(hung.held))} s; its "
            f"deliveries {hung_st}, attempts {dict(sorted(attempts(cluster, hung_id).items()))}, last errors {dict(errs)}"
        )
        t.require(1 <= hung.max_hanging <= ENDPOINT_CONCURRENCY,
                  f"the hung endpoint held its slots, no more: at most {ENDPOINT_CONCURRENCY} at once ({hung.max_hanging})")
        t.require(hung_st.get("delivered", 0) == 0, "nothing counts as delivered to the hung receiver")
        t.require(hung.held and all(TIMEOUT - 0.5 <= h <= TIMEOUT + 2 for h in hung.held),
                  f"each hung attempt was given up at WEBHOOK_TIMEOUT ({TIMEOUT:.0f} s)")
        account(t, cluster, healthy_id, healthy, rs, "healthy endpoint")
        disable(cluster, admin, healthy_id)
    finally:
        healthy.close()
        hung.close()
    t.run_check(cluster)
    if hung_id:
        # its retries would run on for minutes: the endpoint goes, and its deliveries with it
        expect(Client(cluster.url, token=admin).request("DELETE", f"/api/v1/webhook-endpoints/{hung_id}", label="DELETE"), 204)
        t.did("afterwards: DELETE /webhook-endpoints/{id} of the hung endpoint (its pending deliveries go with it)")
    return t


def parse_ts(s: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# --- c: Redis restarted mid-delivery --------------------------------------------------


def redis_restart(cluster: Cluster, admin: str, users, product) -> Test:
    t = Test(
        "webhooks: Redis restarted while orders are placed and deliveries flow",
        "nothing lost: orders answer 201 throughout (Postgres only); afterwards every event arrives at least once, "
        "distinct webhook-ids = events, duplicates counted, signatures valid, every delivery `delivered`; invariants hold",
    )
    rec = Receiver("redis")
    try:
        endpoint = create_endpoint(cluster, admin, rec)
        rate = 2.0
        load = Load(cluster.url, users, product, rate, threads=2, reads=0.0).start()
        time.sleep(4)
        down_at = now()
        cluster.run("redis-stop")
        time.sleep(5)
        cluster.run("redis-start")
        back_at = now()
        time.sleep(8)
        rs = orders_of(load.stop())
        t.did(
            f"an endpoint following all six events; {rate:.0f} orders/s through nginx; after 4 s `scripts/cluster redis-stop`, "
            f"{back_at - down_at:.1f} s down, `redis-start`, orders for 8 s more"
        )
        back_wall = time.time() - (now() - back_at)
        down_wall = time.time() - (now() - down_at)
        in_outage = [r for r in rec.delivered() if down_wall <= r["at"] < back_wall]
        t.saw(f"orders: {summary(rs)}")
        t.require(all(ok2xx(r) for r in rs), "every order answered 201 (placing an order needs no Redis)")
        ok, waited = wait_delivered(cluster, endpoint, rec, 150)
        t.saw(
            f"deliveries that arrived while Redis was down: {len(in_outage)}; every delivery done "
            f"{waited + 8:.1f} s after Redis was back" if ok else f"not all delivered {waited + 8:.0f} s after Redis was back"
        )
        account(t, cluster, endpoint, rec, rs, "afterwards")
        t.saw("worker metrics (since it started, all three tests): " + "; ".join(metrics(cluster)))
        disable(cluster, admin, endpoint)
    finally:
        rec.close()
    t.run_check(cluster)
    return t


def run(cluster: Cluster) -> list[Test]:
    log(f"webhooks: starting the cluster (loopback http receivers allowed, WEBHOOK_RETRY_BASE={RETRY_BASE}, "
        f"WEBHOOK_MAX_ATTEMPTS={MAX_ATTEMPTS})")
    cluster.up(COMMON)
    admin = admin_token(cluster, cluster.url)
    product = create_product(cluster.url, admin, stock=1_000_000)
    users = register_many(cluster.url, 4, "webhooks")
    tests: list[Test] = []
    steps = [
        ("the receiver down for a minute", receiver_down),
        ("a hung receiver beside a healthy one", hung_receiver),
        ("Redis restarted mid-delivery", redis_restart),
    ]
    for title, fn in steps:
        try:
            tests.append(fn(cluster, admin, users, product))
        except Exception as e:  # noqa: BLE001
            tt = Test(f"webhooks: {title}", "-")
            tt.error(e)
            tests.append(tt)
            cluster.run("redis-start", check=False)
        tests[-1].print()
    return tests
