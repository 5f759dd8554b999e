//! The nightly cleanup (SPEC §8). It runs inside the transaction that claims its
//! `scheduled_runs` slot ([`schedule::claim`]), so with several instances a slot runs
//! exactly once and a failure leaves nothing half done (and the slot free for a retry).

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    features::{emails::repository as sent_emails, reports::repository as reports},
    shared::{
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
/// (with their files) older than 30 days, in one transaction. Then, in Redis, finished jobs older than
/// `JOBS_DONE_RETENTION` and dead ones older than `JOBS_DEAD_RETENTION` (a Redis failure
/// is logged and left to the next run).
pub async fn cleanup(
    pool: &PgPool,
    queues: &Queues,
    settings: &Settings,
    slot: DateTime<Utc>,
) -> sqlx::Result<Option<CleanupReport>> {
    let started = Instant::now();
    let Some(mut tx) = schedule::claim(pool, "cleanup", slot).await? else {
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
    let outbox = sqlx::query!("delete from outbox where sent_at < now() - interval '7 days'")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let reports =
        reports::delete_created_before(&mut *tx, Utc::now() - chrono::Duration::days(REPORT_RETENTION_DAYS))
            .await?;
    let sent_emails = sent_emails::delete_sent_before(
        &mut *tx,
        Utc::now() - chrono::Duration::days(SENT_EMAIL_RETENTION_DAYS),
    )
    .await?;
    tx.commit().await?;
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
    let report = CleanupReport {
        sessions,
        reset_tokens,
        idempotency_keys,
        outbox,
        sent_emails,
        reports,
        jobs_done,
        jobs_dead,
    };
    tracing::info!(
        task = "cleanup",
        deleted.sessions = sessions,
        deleted.reset_tokens = reset_tokens,
        deleted.idempotency_keys = idempotency_keys,
        deleted.outbox = outbox,
        deleted.sent_emails = sent_emails,
        deleted.reports = reports,
        deleted.jobs_done = jobs_done,
        deleted.jobs_dead = jobs_dead,
        duration_ms = started.elapsed().as_millis() as u64,
        "cleanup finished"
    );
    Ok(Some(report))
}
