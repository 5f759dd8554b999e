//! Routes of the products feature; handlers in `handlers.rs`, rules in `service.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | GET | `/api/v1/products` | `handlers::list_products` | anyone |
//! | POST | `/api/v1/products` | `handlers::create_product` | products:write (admin) |
//! | GET | `/api/v1/products/{id}` | `handlers::get_product` | anyone |
//! | PATCH | `/api/v1/products/{id}` | `handlers::update_product` | products:write (admin) |
//! | DELETE | `/api/v1/products/{id}` | `handlers::delete_product` | products:write (admin) |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `/products/...`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(handlers::list_products, handlers::create_product)).routes(routes!(
        handlers::get_product,
        handlers::update_product,
        handlers::delete_product
    ))
}
