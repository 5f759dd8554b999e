//! Job queues (SPEC §7): Redis-backed apalis storages, one per queue (`emails`,
//! `reports`), under the deployment's key prefix. Business transactions never push here
//! directly: they write [`crate::shared::outbox`] rows, and the [`relay`] moves those to
//! these queues, with the outbox id as the task's idempotency key.

pub mod relay;

use std::time::Duration;

use apalis_redis::{Config, RedisStorage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::redis::Redis;

/// Queue of e-mail jobs.
pub const EMAILS: &str = "emails";
/// Queue of report jobs.
pub const REPORTS: &str = "reports";

/// How long Redis remembers an outbox id it accepted, so a row the relay pushed twice
/// (Redis accepted, then the commit marking it sent failed) becomes one task.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A queued job: the outbox row it came from. Handlers are keyed by `outbox_id`, so a
/// job delivered twice has its effect once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedJob {
    pub outbox_id: Uuid,
    pub kind: String,
    pub payload: Value,
}

/// The storages of every queue; cheap to clone (they share one connection).
#[derive(Clone)]
pub struct Queues {
    pub emails: RedisStorage<QueuedJob>,
    pub reports: RedisStorage<QueuedJob>,
}

impl Queues {
    /// Storages over the process's shared Redis connection (lazy: nothing connects yet).
    pub fn new(redis: &Redis) -> Self {
        let storage = |queue: &str| {
            let config = Config::default()
                .queue(redis.key(&format!("queue:{queue}")))
                .idempotency_ttl(Some(IDEMPOTENCY_TTL));
            RedisStorage::new(redis.conn()).with_config(config)
        };
        Self { emails: storage(EMAILS), reports: storage(REPORTS) }
    }

    /// The storage of `queue`, if it is one.
    pub fn get(&self, queue: &str) -> Option<&RedisStorage<QueuedJob>> {
        match queue {
            EMAILS => Some(&self.emails),
            REPORTS => Some(&self.reports),
            _ => None,
        }
    }
}
