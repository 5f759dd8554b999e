//! Orders: placing orders against live stock with snapshots and an outbox row, idempotent
//! retries, ownership-scoped reads (page and cursor mode, with counts that cost the same
//! at any size), the status machine with restocking, each order's history, the cap on
//! unpaid orders per user, and the expiry of unpaid orders.

mod domain;
mod events;
mod handlers;
mod idempotency;
mod payments;
mod repository;
mod routes;
mod service;
mod types;

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

pub use domain::{Actor, OrderStatus, PaymentStatus};
pub use idempotency::delete_expired as delete_expired_idempotency_keys;
/// The order side of payments, for the payment provider's feature: each call locks the
/// order's row before it reads or writes the payment.
pub use payments::{
    PayableOrder, PaymentRow, charge_refunded, dead_refunds, find as find_payment, lock_payable,
    next_call_key, next_payment_key, payment_failed, payment_succeeded, record_intent, refund_confirmed,
    refund_failed, reopen as reopen_payment,
};
pub use routes::router;
pub use service::{ExpiryReport, OrderRules, OrderService, clear_expiry, expire_unpaid};
pub use types::OrderResponse;

/// Delta rows one fold statement takes at most.
const FOLD_BATCH: i64 = 10_000;
/// How often the processes that run the outbox relay fold the order-count deltas.
pub const FOLD_EVERY: Duration = Duration::from_secs(1);

/// Folds every order-count delta committed so far into the counts, in batches; how many
/// it folded. The counts read the same before and after: folding only keeps the number
/// of delta rows a count sums small.
pub async fn fold_count_deltas(db: &PgPool) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let folded = repository::fold_count_deltas(db, FOLD_BATCH).await?;
        total += folded;
        if folded < FOLD_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Folds the order-count deltas every [`FOLD_EVERY`] until `stop`. Several processes may
/// do it at once.
pub async fn fold_counts_periodically(db: PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FOLD_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = fold_count_deltas(&db).await {
            tracing::warn!(error = %e, "folding order counts failed; next try in a second");
        }
    }
}
