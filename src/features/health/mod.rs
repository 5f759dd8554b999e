//! Liveness and readiness probes and Prometheus metrics. They answer in the ops
//! conventions (bare objects, OpenMetrics text), not the API envelope.

mod handlers;
mod routes;
mod types;

pub use routes::{metrics_router, router};
