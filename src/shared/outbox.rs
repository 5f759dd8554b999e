//! The transactional outbox (SPEC §7): a job is written to Postgres in the same
//! transaction as the change that causes it, so it exists exactly when the change does.
//! A relay (jobs issue) moves unsent rows to the Redis queues.
//!
//! Services decide which [`Job`] a change causes and write it inside their transaction;
//! this module only knows how a job is stored. Payloads carry ids only: no address, no
//! link, nothing a reader of the table or of Redis could use. The job reads what it
//! needs when it runs (SPEC §7: the reset token is minted when the e-mail is sent).

use serde_json::{Value, json};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Queue of e-mail jobs.
pub const EMAILS: &str = "emails";
/// Queue of report jobs.
pub const REPORTS: &str = "reports";

/// Every job a business change can cause.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// A new account's welcome e-mail.
    Welcome { user_id: Uuid },
    /// The confirmation of a placed order.
    OrderConfirmation { order_id: Uuid, user_id: Uuid },
    /// A password-reset link (the job mints the token when it sends).
    ResetPassword { user_id: Uuid },
    /// Generating a requested report.
    Report { report_id: Uuid },
    /// Telling the requester their report is ready.
    ReportReady { report_id: Uuid },
}

impl Job {
    /// The queue the relay moves the job to.
    pub fn queue(&self) -> &'static str {
        match self {
            Self::Report { .. } => REPORTS,
            _ => EMAILS,
        }
    }

    /// The job's kind, as stored in `outbox.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::OrderConfirmation { .. } => "order-confirmation",
            Self::ResetPassword { .. } => "reset-password",
            Self::Report { .. } => "report",
            Self::ReportReady { .. } => "report-ready",
        }
    }

    /// The job's arguments, as stored in `outbox.payload`.
    pub fn payload(&self) -> Value {
        match self {
            Self::Welcome { user_id } | Self::ResetPassword { user_id } => json!({"userId": user_id}),
            Self::OrderConfirmation { order_id, user_id } => json!({"orderId": order_id, "userId": user_id}),
            Self::Report { report_id } | Self::ReportReady { report_id } => json!({"reportId": report_id}),
        }
    }
}

/// Writes one job; call it inside the business transaction.
pub async fn push(db: impl PgExecutor<'_>, job: &Job) -> sqlx::Result<Uuid> {
    sqlx::query_scalar!(
        "insert into outbox (queue, kind, payload) values ($1, $2, $3) returning id",
        job.queue(),
        job.kind(),
        job.payload()
    )
    .fetch_one(db)
    .await
}
