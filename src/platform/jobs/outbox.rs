//! The transactional outbox (SPEC §7): a job is written to Postgres in the same
//! transaction as the change that causes it, so it exists exactly when the change does.
//! A relay (jobs issue) moves unsent rows to the Redis queues.
//!
//! Services decide which [`Job`] a change causes and write it inside their transaction;
//! this module only knows how a job is stored. Payloads carry ids only: no address, no
//! link, nothing a reader of the table or of Redis could use. The job reads what it
//! needs when it runs (SPEC §7: the reset token is minted when the e-mail is sent).
//!
//! After the commit, the writer rings the [`Wakeup`], which tells the relays of every
//! process (`NOTIFY outbox`) from outside the writer's transaction.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use serde_json::{Value, json};
use sqlx::{PgExecutor, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

/// The channel the relays `LISTEN` on.
pub const CHANNEL: &str = "outbox";

/// The shortest gap between two notifications: commits in between share the next one.
pub const WAKEUP_GAP: Duration = Duration::from_millis(10);

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

/// Wakes the relays after outbox rows commit, from outside the writer's transaction.
///
/// A `NOTIFY` inside a transaction makes its commit take a lock that every notifying
/// commit of the cluster waits for, held until the commit's WAL flush is done: one
/// order at a time reached the disk, and orders lost 40 % of their throughput to it
/// (pgbench, the order transaction with and without the notifying trigger). So writers
/// call [`Wakeup::committed`] after their commit instead, which costs an atomic store;
/// one task per process sends `NOTIFY outbox` on a pooled connection, at once when it is
/// idle and at most once per [`WAKEUP_GAP`] under load. A row written without a wake-up
/// (by hand, or by a process that died right after its commit) waits for the relays'
/// poll (`RELAY_POLL_INTERVAL`): later, never lost. Cheap to clone.
#[derive(Clone)]
pub struct Wakeup(Arc<WakeupInner>);

struct WakeupInner {
    pool: PgPool,
    rung: Notify,
    started: AtomicBool,
}

impl Wakeup {
    /// A wake-up that notifies through `pool`; its task starts on first use and ends
    /// when the pool closes.
    pub fn new(pool: PgPool) -> Self {
        Self(Arc::new(WakeupInner { pool, rung: Notify::new(), started: AtomicBool::new(false) }))
    }

    /// Call after committing outbox rows (calling it when none were written costs one
    /// spare notification, nothing else). Never waits.
    pub fn committed(&self) {
        if !self.0.started.swap(true, Relaxed) {
            tokio::spawn(notify_relays(self.0.clone()));
        }
        // Stores one permit if the task is busy: any number of calls meanwhile become
        // one notification.
        self.0.rung.notify_one();
    }
}

async fn notify_relays(inner: Arc<WakeupInner>) {
    let closed = inner.pool.close_event();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = inner.rung.notified() => {}
            () = &mut closed => break,
        }
        if let Err(e) = sqlx::query("select pg_notify($1, '')").bind(CHANNEL).execute(&inner.pool).await {
            // The relays poll too: the rows move a little later.
            tracing::debug!(error = %e, "could not notify the outbox relays");
        }
        tokio::time::sleep(WAKEUP_GAP).await;
    }
}
