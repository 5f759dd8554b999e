//! Routes of payments.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | POST | `/api/v1/orders/{id}/payment` | `handlers::start_payment` | the order's owner, or staff |
//! | POST | `/api/v1/payments/stripe/webhook` | `handlers::stripe_webhook` | Stripe (signed) |

use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(handlers::start_payment)).routes(routes!(handlers::stripe_webhook))
}
