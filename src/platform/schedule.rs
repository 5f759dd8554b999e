//! Runs of scheduled tasks, claimed once across every instance. A short task
//! runs inside the transaction that claims its `scheduled_runs` slot ([`claim`]): a slot
//! runs exactly once, and a failure leaves nothing half done (and the slot free for a
//! retry). A long one claims its slot in a transaction of its own ([`claim_slot`]) and
//! then works in small transactions.

use chrono::{DateTime, DurationRound, SubsecRound, TimeDelta, Utc};
use croner::{Cron, parser::CronParser};
use sqlx::{PgPool, Postgres, Transaction};

/// Start of the day / hour `now` falls in.
pub fn slot(now: DateTime<Utc>, every: TimeDelta) -> DateTime<Utc> {
    now.duration_trunc(every).unwrap_or(now)
}

/// A cron expression as the scheduler reads it (seconds first, UTC).
pub fn parse(expression: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
}

/// The slot of a run that started at `now`: the latest instant at or before `now` that
/// `cron` matches, its scheduled tick. Every process that fires for one tick computes the
/// same slot whatever its delay, so each tick runs once across them; one running so late
/// that the next tick has passed maps to that tick, which then also runs once.
pub fn tick(cron: &Cron, now: DateTime<Utc>) -> DateTime<Utc> {
    cron.find_previous_occurrence(&now, true).unwrap_or(now).trunc_subsecs(0)
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

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::{parse, tick};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_run_belongs_to_the_tick_it_fired_for() {
        let every_two_seconds = parse("*/2 * * * * *").unwrap();
        assert_eq!(tick(&every_two_seconds, at("2026-12-02T12:00:03.5Z")), at("2026-12-02T12:00:02Z"));
        assert_eq!(tick(&every_two_seconds, at("2026-12-02T12:00:04Z")), at("2026-12-02T12:00:04Z"));
        assert_eq!(tick(&every_two_seconds, at("2026-12-02T12:00:04.9Z")), at("2026-12-02T12:00:04Z"));
        // The defaults: nightly at 02:00, hourly at minute 5.
        let nightly = parse("0 0 2 * * *").unwrap();
        assert_eq!(tick(&nightly, at("2026-12-02T02:00:00.2Z")), at("2026-12-02T02:00:00Z"));
        assert_eq!(tick(&nightly, at("2026-12-02T01:59:59Z")), at("2026-12-01T02:00:00Z"));
        let hourly = parse("0 5 * * * *").unwrap();
        assert_eq!(tick(&hourly, at("2026-12-02T10:04:00Z")), at("2026-12-02T09:05:00Z"));
        assert!(parse("0 2 * * *").is_err(), "five fields: the seconds are required");
    }
}
