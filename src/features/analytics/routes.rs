//! Routes of the analytics feature; handlers in `handlers.rs`, rules in `service.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | GET | `/api/v1/admin/analytics` | `handlers::get_analytics` | admin |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `/admin/analytics`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(handlers::get_analytics))
}
