//! SQL for `payment_events`, the ledger that makes each provider event take effect once.

use sqlx::PgExecutor;

/// Records event `event_id` of `provider`; false when it was recorded before (a
/// redelivery). A concurrent second delivery waits here for the first one's transaction
/// and then sees it.
pub async fn record_event(
    db: impl PgExecutor<'_>,
    provider: &str,
    event_id: &str,
    kind: &str,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query_scalar!(
        "insert into payment_events (provider, event_id, type) values ($1, $2, $3)
         on conflict (provider, event_id) do nothing returning 1",
        provider,
        event_id,
        kind
    )
    .fetch_optional(db)
    .await?;
    Ok(inserted.is_some())
}

/// Deletes up to `batch` ledger rows received before `before`; how many.
pub async fn delete_events_before(
    db: impl PgExecutor<'_>,
    before: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "delete from payment_events where (provider, event_id) in (
             select provider, event_id from payment_events where received_at < $1 limit $2)",
        before,
        batch
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
}
