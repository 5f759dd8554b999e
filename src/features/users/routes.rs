use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::app::AppState;

/// `/users/...`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::get_profile, handlers::update_profile))
        .routes(routes!(handlers::change_password))
        .routes(routes!(handlers::list_users))
        .routes(routes!(handlers::get_user, handlers::update_user, handlers::delete_user))
}
