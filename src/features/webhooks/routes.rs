//! Routes of the webhooks feature; handlers in `handlers.rs`, rules in `service.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | POST, GET | `/api/v1/webhook-endpoints` | `create_endpoint`, `list_endpoints` | admin |
//! | GET, PATCH, DELETE | `/api/v1/webhook-endpoints/{id}` | `get_endpoint`, `update_endpoint`, `delete_endpoint` | admin |
//! | POST | `/api/v1/webhook-endpoints/{id}/rotate-secret` | `rotate_secret` | admin |
//! | GET | `/api/v1/webhook-endpoints/{id}/deliveries` | `list_deliveries` | admin |
//! | POST | `/api/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry` | `retry_delivery` | admin |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::create_endpoint, handlers::list_endpoints))
        .routes(routes!(handlers::get_endpoint, handlers::update_endpoint, handlers::delete_endpoint))
        .routes(routes!(handlers::rotate_secret))
        .routes(routes!(handlers::list_deliveries))
        .routes(routes!(handlers::retry_delivery))
}
