"""E-mail accounting: every `emails` outbox row against the `sent_emails` ledger and the
`.eml` files of the file transport.

lettre's file transport names each file `<random uuid>.eml` and writes the message as
sent (headers, then a multipart text + HTML body), so a file is mapped back to its outbox
row through what it shows: an e-mail about an order (confirmation, cancellation, payment
received) links `/orders/<order id>` (the outbox payload's `orderId`); a welcome e-mail goes to the account's address (payload `userId`,
one welcome per account); other kinds are grouped by template and recipient."""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections import Counter
from pathlib import Path

from .common import Cluster

# E-mails about one order, told apart by the order they link.
ORDER_MAILS = ("order-confirmation", "order-cancelled", "payment-received")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ORDER_LINK = re.compile(r"/orders/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
SUBJECTS = [
    ("welcome", re.compile(r"^Welcome to Storefront")),
    ("order-confirmation", re.compile(r"^Your order \S+ is confirmed")),
    ("order-cancelled", re.compile(r"^Your order \S+ was cancelled")),
    ("payment-received", re.compile(r"^Payment received for your order")),
    ("reset-password", re.compile(r"^Reset your Storefront password")),
    ("report-ready", re.compile(r"^Your \S+ report is ready")),
]


def parse_file(path: Path) -> tuple[str, str | None, str]:
    """(template, key, recipient) of one .eml; template 'unreadable' when it cannot be parsed
    (an empty or truncated file)."""
    try:
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        to = str(msg.get("To", "")).strip().lower()
        m = re.search(r"<([^>]+)>", to)
        to = m.group(1) if m else to
        subject = str(msg.get("Subject", ""))
        template = next((t for t, rx in SUBJECTS if rx.search(subject)), "unknown")
        text = ""
        for part in msg.walk():
            if part.get_content_type() == "text/plain":
                text += part.get_content()
    except Exception:  # noqa: BLE001 - a broken file is a finding, not a crash
        return "unreadable", None, ""
    if not raw.strip() or template == "unknown":
        return "unreadable", None, to
    if template in ORDER_MAILS:
        m = ORDER_LINK.search(text)
        return template, (f"{template}:{m.group(1)}" if m else None), to
    return template, f"{template}:{to}", to


def mail_files(mail_dir: Path) -> list[tuple[Path, str, str | None, str]]:
    out = []
    for p in sorted(mail_dir.glob("*.eml")):
        t, k, to = parse_file(p)
        out.append((p, t, k, to))
    return out


def outbox_emails(cluster: Cluster, since: str | None = None) -> list[dict]:
    """`emails` outbox rows (created at or after `since`, a database timestamp, if given)."""
    rows = cluster.sql(
        f"""select o.id, o.kind, coalesce(o.payload->>'orderId', ''), coalesce(lower(u.email), ''),
                  o.sent_at is not null, (select count(*) from sent_emails s where s.outbox_id = o.id)
           from outbox o
           left join users u on u.id = (o.payload->>'userId')::uuid
           where o.queue = 'emails' {f"and o.created_at >= '{since}'" if since else ''} order by o.created_at"""
    )
    out = []
    for oid, kind, order_id, to, relayed, ledger in rows:
        key = f"{kind}:{order_id}" if kind in ORDER_MAILS else f"{kind}:{to}"
        out.append({"id": oid, "kind": kind, "key": key, "relayed": relayed == "t", "ledger": int(ledger)})
    return out


def db_now(cluster: Cluster) -> str:
    return cluster.sql1("select now()")


def wait_sent(cluster: Cluster, timeout: float, ids: set[str] | None = None) -> tuple[bool, float]:
    """Waits until every `emails` outbox row (or those of `ids`) has its ledger row."""
    t0 = time.monotonic()
    while True:
        rows = outbox_emails(cluster)
        pending = [r for r in rows if r["ledger"] == 0 and (ids is None or r["id"] in ids)]
        if not pending:
            return True, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0
        time.sleep(0.5)


def account(cluster: Cluster, since: str | None = None, since_wall: float | None = None) -> dict:
    """`emails` outbox rows (those created since `since`, a database timestamp, else all):
    their ledger rows and mail files (those written since `since_wall`, else all)."""
    every = outbox_emails(cluster)
    rows = outbox_emails(cluster, since) if since else every
    files = mail_files(cluster.mail_dir)
    if since_wall is not None:
        files = [f for f in files if f[0].stat().st_mtime >= since_wall - 1]
    per_key_files = Counter(k for _, _, k, _ in files if k)
    per_key_rows = Counter(r["key"] for r in rows)
    all_keys = {r["key"] for r in every}
    unmapped = [str(p.name) for p, t, k, _ in files if t != "unreadable" and (not k or k not in all_keys)]
    orphan_ledger = int(
        cluster.sql1("select count(*) from sent_emails s where not exists (select 1 from outbox o where o.id = s.outbox_id)")
    )
    missing = [k for k in per_key_rows if per_key_files.get(k, 0) < per_key_rows[k]]
    duplicated = {k: per_key_files[k] - per_key_rows[k] for k in per_key_rows if per_key_files.get(k, 0) > per_key_rows[k]}
    return {
        "rows": rows,
        "outbox": len(rows),
        "kinds": dict(Counter(r["kind"] for r in rows)),
        "ledger_one": sum(1 for r in rows if r["ledger"] == 1),
        "ledger_none": [r["id"] for r in rows if r["ledger"] == 0],
        "orphan_ledger": orphan_ledger,
        "files": sum(per_key_files.get(k, 0) for k in per_key_rows),
        "missing": missing,
        "duplicated": duplicated,
        "unmapped": unmapped,
        "unreadable": [str(p.name) for p, t, _, _ in files if t == "unreadable"],
    }


def report_accounting(
    test, a: dict, what: str = "every e-mail", allowed_copies: set[str] | None = None, allowed_broken: int = 0
) -> None:
    """`allowed_copies`: outbox keys for which a second file is the documented window (a
    worker killed after the transport accepted the message, before the commit);
    `allowed_broken`: empty or truncated files tolerated (a worker killed while writing)."""
    test.saw(
        f"{a['outbox']} e-mail outbox rows ({', '.join(f'{v} {k}' for k, v in sorted(a['kinds'].items()))}); "
        f"{a['ledger_one']} with exactly one sent_emails row, {len(a['ledger_none'])} with none; "
        f"{a['files']} mail files, {len(a['missing'])} rows without a file, "
        f"{sum(a['duplicated'].values())} extra copies, {len(a['unmapped'])} files matching no row, "
        f"{len(a['unreadable'])} empty or truncated files"
    )
    test.require(
        a["outbox"] > 0 and a["ledger_one"] == a["outbox"] and a["orphan_ledger"] == 0,
        f"{what}: each outbox row has exactly one sent_emails row",
    )
    allowed = allowed_copies or set()
    extra = {k: v for k, v in a["duplicated"].items() if k not in allowed or v > 1}
    window = {k: v for k, v in a["duplicated"].items() if k not in extra}
    broken_ok = len(a["unreadable"]) <= allowed_broken
    if allowed_copies is None:
        test.require(
            not a["missing"] and not a["duplicated"] and not a["unmapped"] and broken_ok,
            f"{what}: each outbox row has exactly one mail file (and no file is left over)",
        )
    else:
        test.require(
            not a["missing"] and not extra and not a["unmapped"] and broken_ok,
            f"{what}: each outbox row has one complete mail file; a second copy, or an empty or truncated file, only for "
            f"a job the killed worker held (copies {len(window)}, broken files {len(a['unreadable'])}, jobs held {allowed_broken})",
        )
    if a["unreadable"]:
        test.note(f"empty or truncated files: {a['unreadable'][:5]}")
    if a["duplicated"]:
        test.note(f"duplicated: {dict(list(a['duplicated'].items())[:5])}")
    if a["missing"]:
        test.note(f"missing: {a['missing'][:5]}")
    if a["unmapped"]:
        test.note(f"unmapped files: {a['unmapped'][:5]}")
