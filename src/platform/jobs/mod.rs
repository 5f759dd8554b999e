//! Job queues: Redis-backed apalis storages, one per queue (`emails`, `reports`,
//! `payments`), under the deployment's key prefix. Business transactions never push here
//! directly: they write [`crate::platform::jobs::outbox`] rows, and the [`relay`] moves those to
//! these queues, with the outbox id as the task's idempotency key.

pub mod outbox;
pub mod relay;
pub mod store;
pub mod worker;

use std::time::Duration;

use apalis_redis::{Config, RedisStorage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use sqlx::PgPool;

use crate::platform::{
    config::Settings,
    metrics::{Gauges, QueueGauge},
    redis::Redis,
};

/// How long Redis remembers an outbox id it accepted, so a row the relay pushed twice
/// (Redis accepted, then the commit marking it sent failed, and the next batch pushed it
/// again) becomes one task. An optimisation, not the guarantee: a job run twice still
/// sends its e-mail once (the ledger). One key per job, so it is kept short.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(6 * 3600);

/// A queued job: the outbox row it came from. Handlers are keyed by `outbox_id`, so a
/// job delivered twice has its effect once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedJob {
    pub outbox_id: Uuid,
    pub kind: String,
    pub payload: Value,
}

/// The storages of every queue the application registers (the queue names come from
/// above this floor); cheap to clone (they share one connection).
#[derive(Clone)]
pub struct Queues(std::sync::Arc<Vec<(&'static str, RedisStorage<QueuedJob>)>>);

impl Queues {
    /// Storages over the process's shared Redis connection (lazy: nothing connects yet).
    ///
    /// Every process of a deployment must agree on the heartbeat settings: a worker
    /// silent for `JOBS_HEARTBEAT_INTERVAL × JOBS_MISSED_HEARTBEATS` is presumed dead, and
    /// a live one runs its jobs again.
    pub fn new(redis: &Redis, settings: &Settings, names: &[&'static str]) -> Self {
        let storage = |queue: &str| {
            let config = Config::default()
                .queue(redis.key(&format!("queue:{queue}")))
                .idempotency_ttl(Some(IDEMPOTENCY_TTL))
                .heartbeat_interval(settings.jobs_heartbeat_interval)
                .missed_heartbeats(settings.jobs_missed_heartbeats)
                // Fetch what runs at once: a fetched job waits in this worker, not for any.
                .batch_size(settings.jobs_concurrency.max(1))
                // No leases: a fetched job is already in this worker's inflight set, which
                // is what crash recovery uses. A lease is one more script call per fetch,
                // and it scans the whole due list (LREM), which grows after an outage.
                .lock_tasks(false)
                // Nothing subscribes to apalis's per-job PUBLISH events.
                .emit_events(false);
            RedisStorage::new(redis.conn()).with_config(config)
        };
        Self(std::sync::Arc::new(names.iter().map(|name| (*name, storage(name))).collect()))
    }

    /// The storage of `queue`, if it is one.
    pub fn get(&self, queue: &str) -> Option<&RedisStorage<QueuedJob>> {
        self.0.iter().find(|(name, _)| *name == queue).map(|(_, storage)| storage)
    }

    /// Every queue with its storage, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &RedisStorage<QueuedJob>)> {
        self.0.iter().map(|(name, storage)| (*name, storage))
    }

    /// The names of every queue.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

/// The job gauges of `/metrics`, each read with a one-second budget: a source that does
/// not answer leaves its gauges out instead of stalling the scrape.
pub async fn gauges(queues: &Queues, db: &PgPool) -> Gauges {
    let budget = Duration::from_secs(1);
    let counts = tokio::time::timeout(budget, store::counts(queues));
    let lag = tokio::time::timeout(
        budget,
        sqlx::query_scalar!(
            r#"select coalesce(extract(epoch from now() - min(created_at))::float8, 0) as "lag!"
               from outbox where sent_at is null"#
        )
        .fetch_one(db),
    );
    let (counts, lag) = tokio::join!(counts, lag);
    let queues = match counts {
        Ok(Ok(counts)) => counts
            .into_iter()
            .map(|c| QueueGauge {
                queue: c.queue,
                pending: c.pending + c.retrying,
                running: c.running,
                dead: c.dead,
            })
            .collect(),
        _ => Vec::new(),
    };
    Gauges { queues, outbox_lag_seconds: lag.ok().and_then(Result::ok), ..Gauges::default() }
}

/// How often a process with job workers trims finished jobs (between the nightly runs).
pub const TRIM_EVERY: Duration = Duration::from_secs(300);

/// Trims finished and dead jobs past their retention (and dead ones past `dead_max` per
/// queue) every [`TRIM_EVERY`] until `stop`
/// (every worker process does; trimming twice is harmless), so `JOBS_DONE_RETENTION`
/// holds between nightly cleanups.
pub async fn trim_periodically(
    queues: Queues,
    done_retention: Duration,
    dead_retention: Duration,
    dead_max: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let age =
        |d: Duration| chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(TRIM_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match store::trim(&queues, age(done_retention), age(dead_retention), dead_max).await {
            Ok(t) if t.done + t.dead > 0 => {
                tracing::debug!(done = t.done, dead = t.dead, "finished jobs trimmed from Redis");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "trimming finished jobs failed; next try in 5 minutes"),
        }
    }
}
