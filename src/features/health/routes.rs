//! Routes of the operations endpoints (SPEC §9), answered in the ops conventions.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | GET | `/health` | `handlers::live` | anyone (ops) |
//! | GET | `/health/ready` | `handlers::ready` | anyone (ops) |
//! | GET | `/metrics` | `handlers::metrics` | anyone (ops; restrict at the proxy) |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `GET /health`, `GET /health/ready`, `GET /metrics`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::live))
        .routes(routes!(handlers::ready))
        .routes(routes!(handlers::metrics))
}
