//! Routes of the operations endpoints, answered in the ops conventions.
//!
//! On the API port:
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | GET | `/health` | `handlers::live` | anyone (ops) |
//! | GET | `/health/ready` | `handlers::ready` | anyone (ops) |
//!
//! On the metrics listener (`METRICS_HOST:METRICS_PORT`, every process): `GET /metrics`
//! (`handlers::metrics`, for Prometheus) and `GET /health` (for a worker's probes).

use axum::{Router, routing::get};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `GET /health`, `GET /health/ready`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(handlers::live)).routes(routes!(handlers::ready))
}

/// The metrics listener's routes: `GET /metrics`, `GET /health`.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(handlers::metrics)).route("/health", get(handlers::live))
}
