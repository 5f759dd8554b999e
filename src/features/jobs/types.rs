//! Wire types of `/admin/jobs`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::platform::jobs::store::{DeadJob, QueueCounts};

/// A queue's jobs by state.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueCountsResponse {
    #[schema(value_type = JobQueue, example = "emails")]
    pub queue: String,
    /// Due, waiting for a worker.
    pub pending: u64,
    /// Fetched by a live worker.
    pub running: u64,
    /// Failed an attempt and waiting for a later one (or scheduled for later).
    pub retrying: u64,
    /// Finished and not yet trimmed (`JOBS_DONE_RETENTION`).
    pub done: u64,
    /// Failed every attempt; see `GET /admin/jobs/dead`.
    pub dead: u64,
}

impl From<QueueCounts> for QueueCountsResponse {
    fn from(c: QueueCounts) -> Self {
        Self {
            queue: c.queue.to_owned(),
            pending: c.pending,
            running: c.running,
            retrying: c.retrying,
            done: c.done,
            dead: c.dead,
        }
    }
}

/// Filter of `GET /admin/jobs/dead`.
#[derive(Debug, Default, Deserialize, validator::Validate, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadJobFilter {
    /// Only this queue's dead jobs.
    #[validate(custom(function = "known_queue"))]
    #[param(value_type = Option<QueueName>, inline)]
    pub queue: Option<String>,
}

/// The queues, as the document names them (the filter keeps the name a string).
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum QueueName {
    Emails,
    Reports,
    Payments,
    Webhooks,
}

fn known_queue(queue: &str) -> Result<(), validator::ValidationError> {
    if crate::shared::jobs::QUEUES.contains(&queue) {
        Ok(())
    } else {
        Err(validator::ValidationError::new("queue")
            .with_message("must be emails, reports, payments or webhooks".into()))
    }
}

/// Every queue, as responses name it.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum JobQueue {
    Emails,
    Reports,
    Payments,
    Webhooks,
}

/// A retried job's state.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum RetriedState {
    Pending,
}

/// A dead job: what it was and how it failed. Never its payload.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadJobResponse {
    /// The job's id (a ULID); retry it with `POST /admin/jobs/dead/{id}/retry`.
    #[schema(
        example = "01JD5ZP8Y6M3W0Q9K2V7T4B1XC",
        min_length = 26,
        max_length = 26,
        pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
    )]
    pub id: String,
    #[schema(value_type = JobQueue, example = "emails")]
    pub queue: String,
    /// The job kind (for e-mails, the template): one of the kinds the code defines, the
    /// longest 18 characters.
    #[schema(example = "welcome", max_length = 32, pattern = "^[a-z]+(-[a-z]+)*$")]
    pub kind: Option<String>,
    /// The outbox row the job came from.
    pub outbox_id: Option<Uuid>,
    #[schema(minimum = 0)]
    pub attempts: u32,
    /// The last attempt's error, cut to 500 characters.
    #[schema(max_length = 500)]
    pub last_error: Option<String>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
}

impl From<DeadJob> for DeadJobResponse {
    fn from(j: DeadJob) -> Self {
        Self {
            id: j.id,
            queue: j.queue.to_owned(),
            kind: j.kind,
            outbox_id: j.outbox_id,
            attempts: j.attempts,
            last_error: j.last_error,
            enqueued_at: j.enqueued_at,
            first_attempt_at: j.first_attempt_at,
            last_attempt_at: j.last_attempt_at,
        }
    }
}

/// The answer to a retry.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetriedJob {
    #[schema(min_length = 26, max_length = 26, pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub id: String,
    #[schema(value_type = JobQueue)]
    pub queue: String,
    /// Always `pending`: the job is due again, with fresh attempts.
    #[schema(value_type = RetriedState, example = "pending")]
    pub status: &'static str,
}
