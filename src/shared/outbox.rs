//! The transactional outbox (SPEC §7): a job is written to Postgres in the same
//! transaction as the change that causes it, so it exists exactly when the change does.
//! A relay (jobs issue) moves unsent rows to the Redis queues.

use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Queue of e-mail jobs.
pub const EMAILS: &str = "emails";

/// Writes one job; call it inside the business transaction.
pub async fn push(db: impl PgExecutor<'_>, queue: &str, kind: &str, payload: &Value) -> sqlx::Result<Uuid> {
    sqlx::query_scalar!(
        "insert into outbox (queue, kind, payload) values ($1, $2, $3) returning id",
        queue,
        kind,
        payload
    )
    .fetch_one(db)
    .await
}
