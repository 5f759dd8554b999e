//! `storefront check`: the data invariants that must hold whatever crashed, restarted
//! or ran twice, on any number of instances. Each is one read-only query that returns
//! the rows breaking it; none may return any.

use sqlx::PgPool;

/// One invariant and what breaks it.
pub struct Invariant {
    pub name: &'static str,
    /// The promise, in one line.
    pub promise: &'static str,
    /// Selects one text description per violation (at most [`SAMPLE`] of them are read).
    sql: &'static str,
}

/// How many violations of one invariant are listed.
pub const SAMPLE: i64 = 5;

/// What one invariant's query found.
pub struct Finding {
    pub invariant: &'static Invariant,
    /// Violations, counted in full.
    pub count: i64,
    /// Up to [`SAMPLE`] of them, described.
    pub sample: Vec<String>,
}

pub static INVARIANTS: &[Invariant] = &[
    Invariant {
        name: "stock-conserved",
        promise: "every product holds its initial stock plus staff adjustments minus the units of orders not cancelled",
        sql: "with adjusted as (
                  select product_id, sum(delta) as units from stock_adjustments group by product_id
              ), sold as (
                  select i.product_id, sum(i.quantity) as units
                  from order_items i join orders o on o.id = i.order_id
                  where o.status <> 'cancelled'
                  group by i.product_id
              )
              select format('product %s: stock %s, expected %s (adjustments %s, sold %s)',
                            p.id, p.stock, coalesce(a.units, 0) - coalesce(s.units, 0),
                            coalesce(a.units, 0), coalesce(s.units, 0))
              from products p
              left join adjusted a on a.product_id = p.id
              left join sold s on s.product_id = p.id
              where p.stock <> coalesce(a.units, 0) - coalesce(s.units, 0)",
    },
    Invariant {
        name: "stock-not-negative",
        promise: "no product has negative stock",
        sql: "select format('product %s: stock %s', id, stock) from products where stock < 0",
    },
    Invariant {
        name: "order-totals",
        promise: "every order's total is the sum of its lines, and every line is its unit price times its quantity",
        sql: "select format('order %s: total %s, lines sum to %s', o.id, o.total_cents, sum(i.line_total_cents))
              from orders o join order_items i on i.order_id = o.id
              group by o.id
              having o.total_cents <> sum(i.line_total_cents)
                  or bool_or(i.line_total_cents <> i.unit_price_cents * i.quantity)",
    },
    Invariant {
        name: "orders-have-items",
        promise: "no order without items",
        sql: "select format('order %s has no items', o.id) from orders o
              where not exists (select 1 from order_items i where i.order_id = o.id)",
    },
    Invariant {
        name: "outbox-drained",
        promise: "every outbox row older than a minute was handed to its queue",
        sql: "select format('outbox %s (%s/%s) unsent since %s, %s attempts, last error: %s',
                            id, queue, kind, created_at, attempts, coalesce(last_error, 'none'))
              from outbox where sent_at is null and created_at < now() - interval '1 minute'",
    },
    Invariant {
        name: "scheduled-slots-once",
        promise: "no scheduled task ran twice for one slot",
        sql: "select format('%s at %s ran %s times', task, slot, count(*))
              from scheduled_runs group by task, slot having count(*) > 1",
    },
    Invariant {
        name: "idempotency-keys-single-order",
        promise: "no Idempotency-Key placed two orders within its 24 h replay window, and every stored 201 answer names the order placed with its key",
        sql: "select format('user %s, key %s: orders %s and %s', a.user_id, a.idempotency_key, a.id, b.id)
              from orders a
              join orders b on b.user_id = a.user_id and b.idempotency_key = a.idempotency_key and b.id > a.id
              where b.created_at between a.created_at - interval '24 hours' and a.created_at + interval '24 hours'
              union all
              select format('user %s, key %s: the stored answer names order %s, placed with %s',
                            k.user_id, k.key, k.response_body #>> '{data,id}',
                            coalesce(o.idempotency_key, 'no key or no such order'))
              from idempotency_keys k
              left join orders o on o.id::text = k.response_body #>> '{data,id}'
              where k.response_status = 201
                and (o.id is null or o.user_id <> k.user_id or o.idempotency_key is distinct from k.key)",
    },
    Invariant {
        name: "history-follows-status",
        promise: "every order with a history (placed since history is kept) has a history row for each status it reached, the last one naming its status",
        sql: "select format('order %s is %s; its history last says %s', o.id, o.status,
                            coalesce(last.to_status::text, 'nothing'))
              from orders o
              cross join lateral (select e.to_status from order_events e
                                  where e.order_id = o.id and e.to_status is not null
                                  order by e.seq desc limit 1) last
              where last.to_status <> o.status",
    },
    Invariant {
        name: "expiry-only-while-pending",
        promise: "an order that was cancelled for want of payment was pending until then, and was restocked once (one expiry row per order)",
        sql: "select format('order %s: %s expiry rows, first from %s', order_id, count(*), min(from_status::text))
              from order_events where type = 'expired'
              group by order_id
              having count(*) > 1 or bool_or(from_status <> 'pending')",
    },
    Invariant {
        name: "paid-orders-not-restocked",
        promise: "no order is both paid (or shipped, delivered) and cancelled with its stock given back",
        sql: "select format('order %s is %s but its history cancels it', o.id, o.status)
              from orders o
              where o.status in ('paid', 'shipped', 'delivered')
                and exists (select 1 from order_events e where e.order_id = o.id and e.to_status = 'cancelled')",
    },
    Invariant {
        name: "money-taken-pays-or-goes-back",
        promise: "money taken (a succeeded payment) pays its order, once; any other taken money is being refunded",
        sql: "select format('order %s is %s with payment %s succeeded and no refund asked for', o.id, o.status, p.provider_payment_id)
              from payments p join orders o on o.id = p.order_id
              where p.status = 'succeeded' and o.status not in ('paid', 'shipped', 'delivered')
              union all
              select format('order %s has %s succeeded payments kept', order_id, count(*))
              from payments where status = 'succeeded' group by order_id having count(*) > 1",
    },
    Invariant {
        name: "webhook-fanout-complete",
        promise: "every webhook event has one delivery to each endpoint enabled and subscribed when it happened (endpoints deleted since excepted), and none to any other; none waits a minute to be fanned out",
        sql: "select format('webhook event %s (%s): endpoint %s has no delivery', ev.id, ev.type, t.id)
              from webhook_events ev cross join lateral unnest(ev.endpoint_ids) as t(id)
              where exists (select 1 from webhook_endpoints e where e.id = t.id)
                and not exists (select 1 from webhook_fanout f where f.event_id = ev.id)
                and not exists (select 1 from webhook_deliveries d
                                where d.event_id = ev.id and d.endpoint_id = t.id)
              union all
              select format('webhook event %s not fanned out since %s', ev.id, ev.created_at)
              from webhook_fanout f join webhook_events ev on ev.id = f.event_id
              where ev.created_at < now() - interval '1 minute'
              union all
              select format('webhook event %s (%s): delivery %s to endpoint %s, which did not follow it',
                            ev.id, ev.type, d.id, d.endpoint_id)
              from webhook_deliveries d join webhook_events ev on ev.id = d.event_id
              where cardinality(ev.endpoint_ids) > 0 and d.endpoint_id <> all(ev.endpoint_ids)",
    },
];

/// Runs every invariant's query (read-only, one at a time).
pub async fn check(db: &PgPool) -> sqlx::Result<Vec<Finding>> {
    let mut findings = Vec::with_capacity(INVARIANTS.len());
    for invariant in INVARIANTS {
        let counted =
            format!("select count(*) over (), v from ({}) as violations(v) limit {SAMPLE}", invariant.sql);
        let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(counted)).fetch_all(db).await?;
        findings.push(Finding {
            invariant,
            count: rows.first().map_or(0, |r| r.0),
            sample: rows.into_iter().map(|r| r.1).collect(),
        });
    }
    Ok(findings)
}
