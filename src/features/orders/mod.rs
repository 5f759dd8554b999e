//! Orders (SPEC §6): placing orders against live stock with snapshots and an outbox row,
//! idempotent retries, ownership-scoped reads, and the status machine with restocking.

pub mod domain;
mod handlers;
pub mod idempotency;
pub mod repository;
mod routes;
pub mod service;
pub mod types;

pub use routes::router;
pub use service::OrderService;
