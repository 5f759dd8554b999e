//! The transactional outbox: a job is written to Postgres in the same
//! transaction as the change that causes it, so it exists exactly when the change does.
//! A relay ([`super::relay`]) moves unsent rows to the Redis queues.
//!
//! Services decide which job a change causes and write it inside their transaction;
//! this module only knows how a job is stored, and is the one writer of the table.
//! Payloads carry ids only: the job reads what it needs when it runs.
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

use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

/// The channel the relays `LISTEN` on.
pub const CHANNEL: &str = "outbox";

/// The shortest gap between two notifications: commits in between share the next one.
pub const WAKEUP_GAP: Duration = Duration::from_millis(10);

/// A job as the outbox stores it: which queue, what kind, and its arguments. Payloads
/// carry ids only (no address, no link, nothing a reader of the table or of Redis could
/// use); the job reads what it needs when it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxJob {
    pub queue: &'static str,
    pub kind: &'static str,
    pub payload: Value,
}

/// Writes one job; call it inside the business transaction.
pub async fn push(db: impl PgExecutor<'_>, job: &OutboxJob) -> sqlx::Result<Uuid> {
    sqlx::query_scalar!(
        "insert into outbox (queue, kind, payload) values ($1, $2, $3) returning id",
        job.queue,
        job.kind,
        &job.payload
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

/// Deletes rows the relay sent more than 7 days ago, in batches; how many.
pub async fn delete_sent(pool: &PgPool) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from outbox where id = any(array(
                 select id from outbox where sent_at < now() - interval '7 days' limit $1))",
            n
        )
    })
    .await
}
