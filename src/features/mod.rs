//! Feature modules, each owning its routes, handlers, services and SQL.

pub mod analytics;
pub mod auth;
pub mod emails;
pub mod health;
pub mod jobs;
pub mod maintenance;
pub mod orders;
pub mod payments;
pub mod products;
pub mod reports;
pub mod users;
pub mod webhooks;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Routes under `/api/v1`.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::router())
        .merge(users::router())
        .merge(products::router())
        .merge(orders::router())
        .merge(payments::router())
        .merge(analytics::router())
        .merge(jobs::router())
        .merge(reports::router())
        .merge(webhooks::router())
}

/// Routes outside the versioned API (operations).
pub fn ops_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(health::router())
}
