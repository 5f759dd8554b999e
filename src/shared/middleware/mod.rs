//! The HTTP middleware stack, built in one place so the order is deliberate:
//!
//! 1. request id (outermost: everything below, error bodies included, can see it)
//! 2. security headers (on every response, errors included)
//! 3. envelope (rewrites any bare error status from the layers below)
//! 4. trace (one log line per request with route template, status, latency) and metrics
//! 5. CORS (answers preflights before any work)
//! 6. rate limit per client IP (Redis; health probes exempt)
//! 7. panic catcher (a panic becomes a 500 in the envelope, without the panic text)
//! 8. timeout (a request running too long becomes a 503)
//! 9. body limit (extractors answer 413 beyond it)

pub mod envelope;
pub mod rate_limit;
pub mod request_id;

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath},
    http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header},
    response::IntoResponse,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use tracing::{Span, field::Empty};

use self::request_id::{RequestId, X_REQUEST_ID};
use super::{config::Settings, db::DbHealth, error::AppError, metrics::Metrics};

/// Wraps `router` (routes and fallback already added) in the full stack.
pub fn apply<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    settings: &Settings,
    limiter: &rate_limit::RateLimiter,
    metrics: &Metrics,
    db_health: &DbHealth,
) -> Router<S> {
    let hsts = settings.hsts_enabled.then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    // `Router::layer` wraps what is already there, so the last call is the outermost.
    router
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, settings.request_timeout))
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            // The panic text may hold internals: it goes nowhere near the client.
            tracing::error!("handler panicked");
            AppError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(db_health.clone(), db_gate))
        .layer(axum::middleware::from_fn_with_state(limiter.clone(), rate_limit::per_ip))
        .layer(cors(settings))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_request(())
                .on_response(on_response)
                .on_failure(()),
        )
        // Inside the envelope: the recorded status is the one the client gets, except for
        // a bare status the envelope rewrites (same class of error either way).
        .layer(axum::middleware::from_fn_with_state(metrics.clone(), crate::shared::metrics::track))
        .layer(axum::middleware::from_fn(envelope::ensure))
        .layer(SetResponseHeaderLayer::if_not_present(header::STRICT_TRANSPORT_SECURITY, hsts))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::middleware::from_fn(request_id::assign))
}

fn make_span(req: &Request<Body>) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str);
    let request_id = req.extensions().get::<RequestId>().map_or("", |r| &*r.0);
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        user_id = Empty,
    )
}

fn on_response(res: &Response<Body>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = res.status().as_u16(),
        latency_ms = latency.as_micros() as f64 / 1_000.0,
        "request completed"
    );
}

fn cors(settings: &Settings) -> CorsLayer {
    let origin = if settings.cors_origin.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(settings.cors_origin.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            X_REQUEST_ID.clone(),
        ])
        .expose_headers([
            X_REQUEST_ID.clone(),
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(Duration::from_secs(600))
}

/// While the database is known to be unreachable, API requests answer 503 at once (the
/// probes, metrics and docs still answer); a response that failed for want of the
/// database starts the probe.
async fn db_gate(
    axum::extract::State(health): axum::extract::State<DbHealth>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    let exempt = path.starts_with("/health") || path == "/metrics" || path.starts_with("/api-docs");
    if health.is_down() && !exempt {
        return AppError::ServiceUnavailable(crate::shared::error::DB_UNAVAILABLE.to_owned()).into_response();
    }
    let res = next.run(req).await;
    if res.extensions().get::<crate::shared::error::DatabaseTrouble>().is_some() {
        health.suspect();
    }
    res
}
