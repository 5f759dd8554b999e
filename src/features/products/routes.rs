use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::app::AppState;

/// `/products/...`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(handlers::list_products, handlers::create_product)).routes(routes!(
        handlers::get_product,
        handlers::update_product,
        handlers::delete_product
    ))
}
