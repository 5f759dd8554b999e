//! Feature modules, each owning its routes, handlers, services and SQL.

pub mod health;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Routes under `/api/v1`.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

/// Routes outside the versioned API (operations).
pub fn ops_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(health::router())
}
