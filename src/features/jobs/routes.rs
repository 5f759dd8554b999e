//! Routes of the jobs feature; handlers in `handlers.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | GET | `/api/v1/admin/jobs` | `handlers::job_counts` | admin |
//! | GET | `/api/v1/admin/jobs/dead` | `handlers::dead_jobs` | admin |
//! | POST | `/api/v1/admin/jobs/dead/{id}/retry` | `handlers::retry_dead_job` | admin |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `/admin/jobs`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::job_counts))
        .routes(routes!(handlers::dead_jobs))
        .routes(routes!(handlers::retry_dead_job))
}
