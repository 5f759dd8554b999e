//! The nightly cleanup (SPEC §8). The run claims its `scheduled_runs` slot in a short
//! transaction of its own ([`schedule::claim_slot`]), so with several instances a slot
//! runs once. Then each table is cleaned on its own in bounded batches (each batch one
//! statement under the normal statement timeout), so a large backlog neither holds one
//! transaction open for minutes nor lets one slow table undo the others; a table that
//! fails is logged and left to the next night.

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    features::{emails::repository as sent_emails, reports::repository as reports},
    platform::{
        config::Settings,
        jobs::{Queues, store},
        schedule,
    },
};

/// How long the e-mail ledger remembers a sent outbox id: longer than a job can live in
/// Redis (dead jobs are retryable for `JOBS_DEAD_RETENTION`, 14 days by default), so a
/// retried job still finds its e-mail was sent.
const SENT_EMAIL_RETENTION_DAYS: i64 = 30;
/// SPEC §8: reports (and their files) are kept 30 days.
const REPORT_RETENTION_DAYS: i64 = 30;
/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;

/// Rows removed by one cleanup run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub sessions: u64,
    pub reset_tokens: u64,
    pub idempotency_keys: u64,
    pub outbox: u64,
    pub sent_emails: u64,
    pub reports: u64,
    /// Finished jobs trimmed from Redis (`None`: Redis did not answer; the next run trims).
    pub jobs_done: Option<u64>,
    pub jobs_dead: Option<u64>,
}

/// Daily: deletes sessions whose whole family is dead (revoked or expired throughout; a
/// rotated session of a live family is kept, however old, so presenting a stolen rotated
/// token is still recognised as reuse), used or expired reset tokens, idempotency records
/// older than 24 h, outbox rows sent more than 7 days ago, e-mail ledger rows and reports
/// (with their files) older than 30 days. Then, in Redis, finished jobs older than
/// `JOBS_DONE_RETENTION` and dead ones older than `JOBS_DEAD_RETENTION`. `None` when
/// another instance has the slot. A table that fails counts 0 and is logged.
pub async fn cleanup(
    pool: &PgPool,
    queues: &Queues,
    settings: &Settings,
    slot: DateTime<Utc>,
) -> sqlx::Result<Option<CleanupReport>> {
    let started = Instant::now();
    if !schedule::claim_slot(pool, "cleanup", slot).await? {
        return Ok(None);
    }
    let days = chrono::Duration::days;
    let report = CleanupReport {
        sessions: step("sessions", dead_sessions(pool)).await
            + step(
                "sessions",
                // Rotated sessions whose own token expired: presenting one can no longer
                // sign anyone in, so reuse detection loses nothing worth keeping.
                batched(pool, |n| {
                    sqlx::query!(
                        "delete from sessions where id = any(array(
                             select id from sessions where replaced_by is not null and expires_at < now() limit $1))",
                        n
                    )
                }),
            )
            .await,
        reset_tokens: step(
            "reset_tokens",
            batched(pool, |n| {
                sqlx::query!(
                    "delete from password_reset_tokens where id = any(array(
                         select id from password_reset_tokens
                         where used_at is not null or expires_at < now() limit $1))",
                    n
                )
            }),
        )
        .await,
        idempotency_keys: step(
            "idempotency_keys",
            batched(pool, |n| {
                sqlx::query!(
                    "delete from idempotency_keys where ctid = any(array(
                         select ctid from idempotency_keys where created_at < now() - interval '24 hours' limit $1))",
                    n
                )
            }),
        )
        .await,
        outbox: step(
            "outbox",
            batched(pool, |n| {
                sqlx::query!(
                    "delete from outbox where id = any(array(
                         select id from outbox where sent_at < now() - interval '7 days' limit $1))",
                    n
                )
            }),
        )
        .await,
        sent_emails: step(
            "sent_emails",
            batched(pool, |n| sent_emails::delete_sent_before(Utc::now() - days(SENT_EMAIL_RETENTION_DAYS), n)),
        )
        .await,
        reports: step("reports", batched(pool, |n| reports::delete_created_before(Utc::now() - days(REPORT_RETENTION_DAYS), n)))
            .await,
        jobs_done: None,
        jobs_dead: None,
    };
    let age =
        |d: std::time::Duration| Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let (jobs_done, jobs_dead) =
        match store::trim(queues, age(settings.jobs_done_retention), age(settings.jobs_dead_retention)).await
        {
            Ok(t) => (Some(t.done), Some(t.dead)),
            Err(e) => {
                tracing::warn!(task = "cleanup", error = %e, "trimming finished jobs in Redis failed");
                (None, None)
            }
        };
    let report = CleanupReport { jobs_done, jobs_dead, ..report };
    tracing::info!(
        task = "cleanup",
        deleted.sessions = report.sessions,
        deleted.reset_tokens = report.reset_tokens,
        deleted.idempotency_keys = report.idempotency_keys,
        deleted.outbox = report.outbox,
        deleted.sent_emails = report.sent_emails,
        deleted.reports = report.reports,
        deleted.jobs_done = report.jobs_done,
        deleted.jobs_dead = report.jobs_dead,
        duration_ms = started.elapsed().as_millis() as u64,
        "cleanup finished"
    );
    Ok(Some(report))
}

/// One table's cleanup: its count, or 0 (logged) when it failed.
async fn step(table: &'static str, work: impl Future<Output = sqlx::Result<u64>>) -> u64 {
    match work.await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(task = "cleanup", table, error = %e, "cleanup of this table failed; the others go on");
            0
        }
    }
}

/// Runs a `limit $1` delete until it deletes fewer than [`BATCH`] rows; the total. The
/// deletes name their rows as `= any(array(select … limit n))`, which the planner serves
/// with the primary key (an `in (select …)` becomes a hash join over the whole table).
async fn batched<'q, F>(pool: &PgPool, query: F) -> sqlx::Result<u64>
where
    F: Fn(i64) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
{
    let mut total = 0;
    loop {
        let n = query(BATCH).execute(pool).await?.rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Sessions whose whole family is dead, in batches walked in id order (each row is
/// looked at once, however many batches). Deleting a session clears `replaced_by` of
/// its predecessor (`on delete set null`), which `sessions_replaced_by_idx` serves.
async fn dead_sessions(pool: &PgPool) -> sqlx::Result<u64> {
    let mut total = 0;
    let mut after = Uuid::nil();
    loop {
        let deleted: Vec<Uuid> = sqlx::query_scalar!(
            "delete from sessions where id = any(array(
                 select s.id from sessions s
                 where s.id > $1
                   and not exists (select 1 from sessions live
                                   where live.family_id = s.family_id and live.revoked_at is null
                                     and live.expires_at > now())
                 order by s.id limit $2))
             returning id",
            after,
            BATCH
        )
        .fetch_all(pool)
        .await?;
        total += deleted.len() as u64;
        match deleted.iter().max() {
            Some(last) if deleted.len() as i64 == BATCH => after = *last,
            _ => return Ok(total),
        }
    }
}
