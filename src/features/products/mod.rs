//! The catalogue (SPEC §5): public list and detail with ETags, admin create, update with
//! optimistic concurrency, archive.

pub mod domain;
mod handlers;
pub mod repository;
mod routes;
pub mod service;
pub mod types;

pub use routes::router;
pub use service::ProductService;
