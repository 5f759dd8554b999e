//! Runs of scheduled tasks, claimed once across every instance (SPEC §8). A short task
//! runs inside the transaction that claims its `scheduled_runs` slot ([`claim`]): a slot
//! runs exactly once, and a failure leaves nothing half done (and the slot free for a
//! retry). A long one claims its slot in a transaction of its own ([`claim_slot`]) and
//! then works in small transactions.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::{PgPool, Postgres, Transaction};

/// Start of the day / hour `now` falls in: the slot a run belongs to.
pub fn slot(now: DateTime<Utc>, every: TimeDelta) -> DateTime<Utc> {
    now.duration_trunc(every).unwrap_or(now)
}

/// Claims `(task, slot)`; `None` when another instance runs or ran it. An advisory lock
/// keyed by the task is tried first, so a second instance skips at once instead of
/// queueing on the first one's slot row; the slot row then makes a late instance skip
/// too. Maintenance statements may outlast the request-sized statement timeout.
pub async fn claim(
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

/// Claims `(task, slot)` and commits the claim at once; `false` when another instance
/// runs or ran it. For tasks that work in many small transactions afterwards.
pub async fn claim_slot(pool: &PgPool, task: &str, slot: DateTime<Utc>) -> sqlx::Result<bool> {
    match claim(pool, task, slot).await? {
        Some(tx) => {
            tx.commit().await?;
            Ok(true)
        }
        None => Ok(false),
    }
}
