//! Liveness and readiness probes and Prometheus metrics (SPEC §9). They answer in the
//! ops conventions (bare objects, Prometheus text), not the API envelope.

mod handlers;
mod routes;
mod types;

pub use routes::router;
