//! Routes of the reports feature; handlers in `handlers.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | POST | `/api/v1/reports` | `handlers::create_report` | admin |
//! | GET | `/api/v1/reports` | `handlers::list_reports` | admin |
//! | GET | `/api/v1/reports/{id}` | `handlers::get_report` | admin |
//! | GET | `/api/v1/reports/{id}/download` | `handlers::download_report` | admin |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `/reports`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::create_report, handlers::list_reports))
        .routes(routes!(handlers::get_report))
        .routes(routes!(handlers::download_report))
}
