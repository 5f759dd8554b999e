//! Routes of the auth feature; handlers in `handlers.rs`, rules in `service.rs`.
//!
//! | Method | Path | Handler | Who |
//! | --- | --- | --- | --- |
//! | POST | `/api/v1/auth/register` | `handlers::register` | anyone, strict per-IP limit |
//! | POST | `/api/v1/auth/login` | `handlers::login` | anyone, strict per-IP + per-e-mail limit |
//! | POST | `/api/v1/auth/password/forgot` | `handlers::forgot_password` | anyone, strict per-IP + per-e-mail limit |
//! | POST | `/api/v1/auth/password/reset` | `handlers::reset_password` | anyone, strict per-IP limit |
//! | POST | `/api/v1/auth/refresh` | `handlers::refresh` | anyone |
//! | POST | `/api/v1/auth/logout` | `handlers::logout` | anyone |
//! | POST | `/api/v1/auth/logout-all` | `handlers::logout_all` | signed in |
//! | POST | `/api/v1/auth/verify-email` | `handlers::verify_email` | anyone, strict per-IP limit |
//! | POST | `/api/v1/auth/verify-email/resend` | `handlers::resend_verification` | signed in, 3 an hour |

use axum::http::{HeaderValue, header};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::handlers;
use crate::{platform::http::middleware::rate_limit, state::AppState};

/// `/auth/...`; every answer (errors included) is `Cache-Control: no-store`.
pub fn router() -> OpenApiRouter<AppState> {
    // Credential-guessing targets get the strict per-IP limit on top of the default one.
    let guarded = OpenApiRouter::new()
        .routes(routes!(handlers::register))
        .routes(routes!(handlers::login))
        .routes(routes!(handlers::forgot_password))
        .routes(routes!(handlers::reset_password))
        .routes(routes!(handlers::verify_email))
        .route_layer(axum::middleware::from_fn(rate_limit::auth_per_ip));
    OpenApiRouter::new()
        .merge(guarded)
        .routes(routes!(handlers::refresh))
        .routes(routes!(handlers::logout))
        .routes(routes!(handlers::logout_all))
        .routes(routes!(handlers::resend_verification))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}
