//! Delivery: a dispatcher hands due deliveries to the `webhooks` queue, one attempt per
//! job, and [`WebhookJobs`] makes each attempt and records its outcome in Postgres. A
//! failed delivery is a row marked `failed`, never a dead job.
//!
//! The dispatcher runs in every process with job workers, one at a time across them (a
//! transaction-scoped advisory lock). Each round it writes the deliveries of the events
//! waiting in the fan-out queue, leases the deliveries that are due, at most
//! `WEBHOOK_ENDPOINT_CONCURRENCY` in flight per endpoint, and writes one outbox row per
//! attempt, all in one transaction; the relay moves them to the queue. A round runs each
//! second, at once when an attempt of this process ends (a slot is free again), and
//! again straight away while a round fills its batch. A lease outlives an attempt (twice
//! the timeout), so a job lost with its worker comes due again.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    delivery::{self, AttemptRules, Outcome},
    domain::DeliveryStatus,
    repository,
    secrets::SecretBox,
    signature,
};
use crate::{
    platform::{
        jobs::{
            QueuedJob,
            outbox::{self, Wakeup},
            worker::{JobError, JobHandler},
        },
        metrics::Metrics,
    },
    shared::jobs::Job,
};

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryRules {
    pub base: Duration,
    pub max_attempts: i32,
}

/// When attempt `attempts + 1` is due after `attempts` failed: `base × 2^(attempts - 1)`,
/// a random tenth either way (so deliveries failed together do not retry together),
/// capped at a day.
fn backoff(base: Duration, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
    let delay = base.saturating_mul(1 << exp).min(Duration::from_secs(86_400));
    let jitter = 0.9 + 0.2 * (f64::from(rand::random::<u16>()) / f64::from(u16::MAX));
    delay.mul_f64(jitter)
}

/// Events fanned out per round.
const FANOUT_BATCH: i64 = 1000;
/// Attempts leased per round.
const CLAIM_BATCH: i64 = 200;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Events whose deliveries were written.
    pub fanned_out: i64,
    /// Attempts queued.
    pub queued: usize,
}

impl Round {
    /// A batch was full: more is probably waiting.
    fn full(self) -> bool {
        self.fanned_out >= FANOUT_BATCH || self.queued >= CLAIM_BATCH as usize
    }
}

/// Fans events out and queues attempts for due deliveries, until `stop`; `attempted`
/// is signalled when an attempt of this process ends.
pub async fn dispatch(
    db: PgPool,
    wakeup: Wakeup,
    per_endpoint: u32,
    timeout: Duration,
    attempted: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut again = false;
    loop {
        if !again {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = attempted.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        again = false;
        match dispatch_once(&db, per_endpoint, timeout).await {
            Ok(round) => {
                if round.queued > 0 {
                    tracing::debug!(
                        attempts = round.queued,
                        events = round.fanned_out,
                        "webhook attempts queued"
                    );
                    wakeup.committed();
                }
                again = round.full();
            }
            Err(e) => {
                tracing::warn!(error = %e, "dispatching webhook deliveries failed; next try in a second")
            }
        }
    }
}

/// One round of [`dispatch`].
pub async fn dispatch_once(db: &PgPool, per_endpoint: u32, timeout: Duration) -> sqlx::Result<Round> {
    let mut tx = db.begin().await?;
    if !repository::try_dispatch_lock(&mut *tx).await? {
        return Ok(Round::default());
    }
    let fanned_out = repository::fan_out(&mut *tx, FANOUT_BATCH).await?;
    let lease = (timeout * 2 + Duration::from_secs(30)).as_secs_f64();
    let claimed = repository::claim_due(&mut *tx, i64::from(per_endpoint.max(1)), CLAIM_BATCH, lease).await?;
    for (delivery_id, attempt) in &claimed {
        outbox::push(
            &mut *tx,
            &(&Job::WebhookAttempt { delivery_id: *delivery_id, attempt: *attempt }).into(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Round { fanned_out, queued: claimed.len() })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttemptPayload {
    delivery_id: Uuid,
    attempt: i32,
}

/// The `webhooks` queue's handler; cheap to clone.
#[derive(Clone)]
pub struct WebhookJobs {
    db: PgPool,
    secrets: SecretBox,
    attempts: AttemptRules,
    retry: RetryRules,
    metrics: Metrics,
    attempted: Arc<tokio::sync::Notify>,
}

impl WebhookJobs {
    /// `attempted` is signalled after each attempt is recorded (the dispatcher's cue).
    pub fn new(
        db: PgPool,
        secrets: SecretBox,
        attempts: AttemptRules,
        retry: RetryRules,
        metrics: Metrics,
        attempted: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self { db, secrets, attempts, retry, metrics, attempted }
    }
}

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(format!("database: {e}"))
}

#[async_trait]
impl JobHandler for WebhookJobs {
    async fn handle(&self, job: &QueuedJob) -> Result<(), JobError> {
        let p: AttemptPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobError::Permanent(format!("malformed payload: {e}")))?;
        let Some(row) = repository::load_attempt(&self.db, p.delivery_id).await.map_err(transient)? else {
            return Ok(()); // the endpoint (and its deliveries) was deleted
        };
        if row.status != DeliveryStatus::Pending || row.attempts + 1 != p.attempt {
            return Ok(()); // this attempt was made already (a duplicate job)
        }
        let outcome = match (self.keys(&row), &row.body) {
            (Ok(keys), Some(body)) => {
                let body = serde_json::to_vec(body).unwrap_or_default();
                delivery::attempt(self.attempts, &row.url, &row.event_id.to_string(), &keys, &body).await
            }
            (Err(e), _) => Outcome::Failed { status: None, error: e.to_string() },
            // Someone deleted the order by hand: there is nothing left to send.
            (Ok(_), None) => Outcome::Refused { error: "the event's order no longer exists".into() },
        };
        let (status, code, error, next) = match &outcome {
            Outcome::Delivered { status } => {
                (DeliveryStatus::Delivered, Some(i32::from(*status)), None, None)
            }
            Outcome::Refused { error } => (DeliveryStatus::Failed, None, Some(error.as_str()), None),
            Outcome::Failed { status, error } if p.attempt >= self.retry.max_attempts => {
                (DeliveryStatus::Failed, status.map(i32::from), Some(error.as_str()), None)
            }
            Outcome::Failed { status, error } => {
                let due = Utc::now()
                    + chrono::Duration::from_std(backoff(self.retry.base, p.attempt))
                        .unwrap_or(chrono::Duration::MAX);
                (DeliveryStatus::Pending, status.map(i32::from), Some(error.as_str()), Some(due))
            }
        };
        let recorded =
            repository::record_attempt(&self.db, row.delivery_id, p.attempt, status, code, error, next)
                .await
                .map_err(transient)?;
        // A slot of this endpoint is free again: the dispatcher may lease the next one.
        self.attempted.notify_one();
        if recorded {
            self.metrics.count_webhook_attempt(match status {
                DeliveryStatus::Delivered => "delivered",
                DeliveryStatus::Pending => "retrying",
                DeliveryStatus::Failed => "failed",
            });
            if status == DeliveryStatus::Delivered {
                let lag = (Utc::now() - row.event_created_at).to_std().unwrap_or_default();
                self.metrics.observe_webhook_lag(lag);
            }
        }
        tracing::info!(
            webhook.delivery = %row.delivery_id,
            webhook.endpoint = %row.endpoint_id,
            attempt = p.attempt,
            outcome = ?status,
            status_code = ?code,
            "webhook attempt"
        );
        Ok(())
    }
}

impl WebhookJobs {
    /// The keys that sign: the current secret, and the rotated-out one in its grace.
    fn keys(&self, row: &repository::AttemptRow) -> Result<Vec<Vec<u8>>, super::secrets::SecretError> {
        let mut keys = Vec::with_capacity(2);
        let current = self.secrets.open(row.endpoint_id, &row.secret_sealed)?;
        keys.extend(signature::key_of(&current));
        if let (Some(previous), Some(until)) = (&row.previous_sealed, row.previous_until)
            && until > Utc::now()
        {
            keys.extend(signature::key_of(&self.secrets.open(row.endpoint_id, previous)?));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_a_tenth_of_jitter() {
        let base = Duration::from_secs(30);
        for (attempts, expected) in [(1, 30.0), (2, 60.0), (3, 120.0), (8, 3840.0)] {
            let d = backoff(base, attempts).as_secs_f64();
            assert!((expected * 0.89..=expected * 1.11).contains(&d), "{attempts}: {d}");
        }
        assert!(backoff(base, 40) <= Duration::from_secs(95_040), "capped at a day plus jitter");
    }
}
