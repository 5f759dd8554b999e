use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::app::AppState;

/// `/admin/analytics`
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(handlers::get_analytics))
}
