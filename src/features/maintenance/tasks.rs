//! The scheduled tasks' SQL (SPEC §8). Each task runs inside one transaction that also
//! claims its `scheduled_runs` slot, so with several instances a slot runs exactly once
//! and a task that fails leaves nothing half done (and the slot free for a retry).

use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::{PgPool, Postgres, Transaction};

/// Rows removed by one cleanup run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub sessions: u64,
    pub reset_tokens: u64,
    pub idempotency_keys: u64,
    pub outbox: u64,
}

/// Claims `(task, slot)`; `None` when another instance runs or ran it. An advisory lock
/// keyed by the task is tried first, so a second instance skips at once instead of
/// queueing on the first one's slot row; the slot row then makes a late instance skip
/// too. Maintenance statements may outlast the request-sized statement timeout.
async fn claim(
    pool: &PgPool,
    task: &str,
    slot: DateTime<Utc>,
) -> sqlx::Result<Option<Transaction<'static, Postgres>>> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar!(
        r#"select pg_try_advisory_xact_lock(hashtext('storefront:' || $1)) as "locked!""#,
        task
    )
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Ok(None);
    }
    sqlx::query("set local statement_timeout = '15min'").execute(&mut *tx).await?;
    let claimed = sqlx::query!(
        "insert into scheduled_runs (task, slot) values ($1, $2) on conflict do nothing",
        task,
        slot
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok((claimed == 1).then_some(tx))
}

/// Start of the day / hour `now` falls in: the slot a run belongs to.
pub fn slot(now: DateTime<Utc>, every: TimeDelta) -> DateTime<Utc> {
    now.duration_trunc(every).unwrap_or(now)
}

/// Daily: deletes sessions whose whole family is dead (revoked or expired throughout; a
/// rotated session of a live family is kept, however old, so presenting a stolen rotated
/// token is still recognised as reuse), used or expired reset tokens, idempotency records
/// older than 24 h, outbox rows sent more than 7 days ago, and reset-password jobs older
/// than a day whatever their state (their links expired long before).
pub async fn cleanup(pool: &PgPool, slot: DateTime<Utc>) -> sqlx::Result<Option<CleanupReport>> {
    let started = Instant::now();
    let Some(mut tx) = claim(pool, "cleanup", slot).await? else {
        return Ok(None);
    };
    let sessions = sqlx::query!(
        "delete from sessions s
         where not exists (select 1 from sessions live
                           where live.family_id = s.family_id and live.revoked_at is null
                             and live.expires_at > now())"
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let reset_tokens =
        sqlx::query!("delete from password_reset_tokens where used_at is not null or expires_at < now()")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let idempotency_keys =
        sqlx::query!("delete from idempotency_keys where created_at < now() - interval '24 hours'")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let outbox = sqlx::query!(
        "delete from outbox
         where sent_at < now() - interval '7 days'
            or (kind = 'reset-password' and created_at < now() - interval '1 day')"
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    let report = CleanupReport { sessions, reset_tokens, idempotency_keys, outbox };
    tracing::info!(
        task = "cleanup",
        deleted.sessions = sessions,
        deleted.reset_tokens = reset_tokens,
        deleted.idempotency_keys = idempotency_keys,
        deleted.outbox = outbox,
        duration_ms = started.elapsed().as_millis() as u64,
        "cleanup finished"
    );
    Ok(Some(report))
}

/// Hourly: (re)computes the last 24 complete hours of orders (cancelled ones excluded),
/// items, revenue and new users. Recomputing a day's worth keeps late cancellations and
/// a missed run from leaving holes. Returns the hours written.
pub async fn rollup_analytics(pool: &PgPool, slot: DateTime<Utc>) -> sqlx::Result<Option<u64>> {
    let started = Instant::now();
    let Some(mut tx) = claim(pool, "analytics", slot).await? else {
        return Ok(None);
    };
    let hours = sqlx::query!(
        r#"insert into analytics_hourly (hour, orders, items, revenue_cents, new_users, computed_at)
           select h.hour,
                  coalesce(o.orders, 0), coalesce(o.items, 0), coalesce(o.revenue, 0), coalesce(u.new_users, 0), now()
           from generate_series($1::timestamptz - interval '24 hours', $1::timestamptz - interval '1 hour',
                                interval '1 hour') as h(hour)
           left join lateral (
               select count(*)::int as orders, sum(ord.total_cents)::bigint as revenue,
                      sum((select sum(quantity) from order_items i where i.order_id = ord.id))::int as items
               from orders ord
               where ord.created_at >= h.hour and ord.created_at < h.hour + interval '1 hour'
                 and ord.status <> 'cancelled'
           ) o on true
           left join lateral (
               select count(*)::int as new_users from users
               where created_at >= h.hour and created_at < h.hour + interval '1 hour'
           ) u on true
           on conflict (hour) do update set
               orders = excluded.orders, items = excluded.items, revenue_cents = excluded.revenue_cents,
               new_users = excluded.new_users, computed_at = excluded.computed_at"#,
        slot
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::info!(
        task = "analytics",
        hours,
        duration_ms = started.elapsed().as_millis() as u64,
        "analytics rolled up"
    );
    Ok(Some(hours))
}
