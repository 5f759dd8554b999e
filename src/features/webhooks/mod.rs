//! Outbound webhooks: other systems follow every order, signed to the Standard Webhooks
//! specification. Each change an order's history records that is one of the six events
//! becomes a webhook event in the change's transaction (a trigger on the history), with
//! one delivery per endpoint subscribed; deliveries are made by the `webhooks` queue.

mod address;
mod delivery;
mod domain;
mod handlers;
mod jobs;
mod openapi;
mod repository;
mod routes;
mod secrets;
mod service;
mod signature;
mod types;

pub use delivery::AttemptRules;
pub use jobs::{RetryRules, WebhookJobs, dispatch};
pub use openapi::describe as describe_deliveries;
pub use routes::router;
pub use secrets::SecretBox;
pub use service::WebhookService;
pub use types::UrlRules;

/// How long webhook events (and their deliveries) are kept.
const EVENT_RETENTION_DAYS: i64 = 30;

/// The webhook gauges read at scrape time: deliveries pending, endpoints failing.
pub async fn gauges(pool: &sqlx::PgPool) -> sqlx::Result<(i64, i64)> {
    repository::pending_and_failing(pool).await
}

/// Nightly cleanup of this feature's tables: events past their retention, their
/// deliveries with them; how many events.
pub async fn delete_old_events(pool: &sqlx::PgPool) -> sqlx::Result<u64> {
    repository::delete_events_before(pool, chrono::Utc::now() - chrono::Duration::days(EVENT_RETENTION_DAYS))
        .await
}
