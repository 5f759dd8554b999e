//! E-mail jobs: what the `emails` queue's worker does with each job the outbox
//! relay queued (welcome, verification, reset, order and report mails). The recipient and
//! every detail are read when the job runs (payloads hold ids only), the message is
//! rendered from `templates/email/` and sent through the configured transport, and a
//! ledger keyed by outbox id makes a job delivered twice send once.

mod budget;
mod repository;
mod service;

pub use budget::MailBudget;
pub use service::{EmailJobs, MailPolicy};

/// How long the ledger remembers a sent outbox id: longer than a job can live in Redis
/// (dead jobs are retryable for `JOBS_DEAD_RETENTION`, 14 days by default), so a retried
/// job still finds its e-mail was sent.
const SENT_EMAIL_RETENTION_DAYS: i64 = 30;

/// Nightly cleanup of this feature's table: ledger rows past their retention; how many.
pub async fn delete_expired(pool: &sqlx::PgPool) -> sqlx::Result<u64> {
    repository::delete_sent_before(
        pool,
        chrono::Utc::now() - chrono::Duration::days(SENT_EMAIL_RETENTION_DAYS),
    )
    .await
}
