//! Routes of the orders feature; handlers in `handlers.rs`, rules in `service.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | POST | `/api/v1/orders` | `handlers::create_order` | orders:create |
//! | GET | `/api/v1/orders` | `handlers::list_orders` | orders:read (own; staff all) |
//! | GET | `/api/v1/orders/{id}` | `handlers::get_order` | orders:read (own; staff all) |
//! | PATCH | `/api/v1/orders/{id}` | `handlers::update_order` | orders:update |
//! | POST | `/api/v1/orders/{id}/cancel` | `handlers::cancel_order` | orders:update |
//! | PATCH | `/api/v1/orders/{id}/status` | `handlers::update_order_status` | orders:manage (admin) |
//! | GET | `/api/v1/orders/{id}/events` | `handlers::list_order_events` | orders:read (own; staff all) |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

/// `/orders/...`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::create_order, handlers::list_orders))
        .routes(routes!(handlers::get_order, handlers::update_order))
        .routes(routes!(handlers::cancel_order))
        .routes(routes!(handlers::update_order_status))
        .routes(routes!(handlers::list_order_events))
}
