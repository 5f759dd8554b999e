use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::app::AppState;

/// `/orders/...`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::create_order, handlers::list_orders))
        .routes(routes!(handlers::get_order, handlers::update_order))
        .routes(routes!(handlers::cancel_order))
        .routes(routes!(handlers::update_order_status))
}
