//! Liveness and readiness probes (SPEC §9). They answer bare objects in the ops
//! convention, not the API envelope.

mod handlers;
mod routes;
mod types;

pub use routes::router;
