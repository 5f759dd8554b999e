//! Payments through a provider (Stripe): starting an order's payment, the provider's
//! signed webhook (each event once), and the refunds and intent cancels of the
//! `payments` queue. The order side (the `payments` table, the order's status, its
//! history) belongs to `orders`, through its face; this feature owns the provider seam
//! and the ledger of provider events.

mod handlers;
mod jobs;
mod provider;
mod repository;
mod routes;
mod service;
mod signature;
mod stripe;
mod types;

pub use jobs::PaymentJobs;
pub use provider::Provider;
pub use routes::router;
pub use service::{Online, PaymentService, WEBHOOK_PATH, provider_from};
pub use signature::sign as sign_stripe_event;

/// Provider events are kept this long (Stripe retries a delivery for 3 days).
const EVENT_RETENTION_DAYS: i64 = 30;
const CLEANUP_BATCH: i64 = 5_000;

/// Nightly cleanup of this feature's table: provider events past their retention, in
/// batches; how many.
pub async fn delete_old_events(pool: &sqlx::PgPool) -> sqlx::Result<u64> {
    let before = chrono::Utc::now() - chrono::Duration::days(EVENT_RETENTION_DAYS);
    let mut total = 0;
    loop {
        let n = repository::delete_events_before(pool, before, CLEANUP_BATCH).await?;
        total += n;
        if n < CLEANUP_BATCH as u64 {
            return Ok(total);
        }
    }
}
