//! Routes of the users feature; handlers in `handlers.rs`, rules in `service.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | GET | `/api/v1/users/profile` | `handlers::get_profile` | profile:read |
//! | PATCH | `/api/v1/users/profile` | `handlers::update_profile` | profile:update |
//! | POST | `/api/v1/users/profile/password` | `handlers::change_password` | profile:update, strict per-IP + per-account failure limit |
//! | GET | `/api/v1/users` | `handlers::list_users` | users:read (admin) |
//! | GET | `/api/v1/users/{id}` | `handlers::get_user` | users:read (admin) |
//! | PATCH | `/api/v1/users/{id}` | `handlers::update_user` | users:write (admin) |
//! | DELETE | `/api/v1/users/{id}` | `handlers::delete_user` | users:write (admin) |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::{platform::http::middleware::rate_limit, state::AppState};

/// `/users/...`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::get_profile, handlers::update_profile))
        // A password check: under the strict per-IP limit of the auth routes.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(handlers::change_password))
                .route_layer(axum::middleware::from_fn(rate_limit::auth_per_ip)),
        )
        .routes(routes!(handlers::list_users))
        .routes(routes!(handlers::get_user, handlers::update_user, handlers::delete_user))
}
