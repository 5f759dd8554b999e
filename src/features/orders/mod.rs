//! Orders (SPEC §6): placing orders against live stock with snapshots and an outbox row,
//! idempotent retries, ownership-scoped reads, and the status machine with restocking.

mod domain;
mod handlers;
mod idempotency;
mod repository;
mod routes;
mod service;
mod types;

pub use idempotency::delete_expired as delete_expired_idempotency_keys;
pub use routes::router;
pub use service::OrderService;
