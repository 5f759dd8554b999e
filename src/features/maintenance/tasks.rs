//! The nightly cleanup. The run claims its `scheduled_runs` slot in a short transaction
//! of its own ([`schedule::claim_slot`]), so with several instances a slot runs once.
//! Then each table's owner cleans it, in bounded batches (each batch one statement under
//! the normal statement timeout), so a large backlog neither holds one transaction open
//! for minutes nor lets one slow table undo the others; a table that fails is logged and
//! left to the next night. This module only orchestrates: it writes no SQL.

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    features::{auth, emails, orders, payments, reports, webhooks},
    platform::{
        config::Settings,
        jobs::{
            Queues,
            outbox::{self, Wakeup},
            store,
        },
        schedule,
    },
    shared::sessions,
};

/// Rows removed by one cleanup run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub sessions: u64,
    pub reset_tokens: u64,
    pub verification_tokens: u64,
    pub idempotency_keys: u64,
    pub outbox: u64,
    pub sent_emails: u64,
    pub reports: u64,
    pub payment_events: u64,
    pub webhook_events: u64,
    /// Finished jobs trimmed from Redis (`None`: Redis did not answer; the next run trims).
    pub jobs_done: Option<u64>,
    pub jobs_dead: Option<u64>,
}

/// Daily: deletes sessions whose whole family is dead (revoked or expired throughout; a
/// rotated session of a live family is kept, however old, so presenting a stolen rotated
/// token is still recognised as reuse), used or expired reset and verification tokens, idempotency records
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
    let report = CleanupReport {
        sessions: step("sessions", sessions::delete_dead(pool)).await,
        reset_tokens: step("reset_tokens", auth::delete_spent_reset_tokens(pool)).await,
        verification_tokens: step("verification_tokens", auth::delete_spent_verification_tokens(pool)).await,
        idempotency_keys: step("idempotency_keys", orders::delete_expired_idempotency_keys(pool)).await,
        outbox: step("outbox", outbox::delete_sent(pool)).await,
        sent_emails: step("sent_emails", emails::delete_expired(pool)).await,
        reports: step("reports", reports::delete_expired(pool)).await,
        payment_events: step("payment_events", payments::delete_old_events(pool)).await,
        webhook_events: step("webhook_events", webhooks::delete_old_events(pool)).await,
        jobs_done: None,
        jobs_dead: None,
    };
    let age =
        |d: std::time::Duration| Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let (jobs_done, jobs_dead) = match store::trim(
        queues,
        age(settings.jobs_done_retention),
        age(settings.jobs_dead_retention),
        settings.jobs_dead_max,
    )
    .await
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
        deleted.verification_tokens = report.verification_tokens,
        deleted.idempotency_keys = report.idempotency_keys,
        deleted.outbox = report.outbox,
        deleted.sent_emails = report.sent_emails,
        deleted.reports = report.reports,
        deleted.payment_events = report.payment_events,
        deleted.webhook_events = report.webhook_events,
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

/// Every minute while expiry is on: cancels the unpaid orders whose time ran out
/// ([`orders::expire_unpaid`]). `None` when another instance has the slot.
pub async fn expire_orders(
    pool: &PgPool,
    wakeup: &Wakeup,
    timeout: std::time::Duration,
    slot: DateTime<Utc>,
) -> sqlx::Result<Option<orders::ExpiryReport>> {
    let started = Instant::now();
    if !schedule::claim_slot(pool, "order-expiry", slot).await? {
        return Ok(None);
    }
    let report = orders::expire_unpaid(pool, wakeup, timeout).await?;
    if report.expired > 0 || report.stamped > 0 {
        tracing::info!(
            task = "order-expiry",
            expired = report.expired,
            stamped = report.stamped,
            duration_ms = started.elapsed().as_millis() as u64,
            "unpaid orders expired"
        );
    }
    Ok(Some(report))
}
