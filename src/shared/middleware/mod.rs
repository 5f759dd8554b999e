//! The HTTP middleware stack, built in one place so the order is deliberate:
//!
//! 1. `edge_request`, outermost: request id (everything below, error bodies included, can
//!    see it), metrics, envelope (rewrites any bare error status from the layers below),
//!    security headers (on every response, errors included)
//! 2. trace (one log line per request with route template, status, latency)
//! 3. CORS (answers preflights before any work)
//! 4. `guard_request`: rate limit per client IP (Redis; health probes exempt), then the
//!    database gate (503 at once while Postgres is known to be down)
//! 5. panic catcher (a panic becomes a 500 in the envelope, without the panic text)
//! 6. timeout (a request running too long becomes a 503)
//! 7. body limit (extractors answer 413 beyond it)

pub mod envelope;
pub mod rate_limit;
pub mod request_id;

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, State},
    http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header},
    middleware::Next,
    response::IntoResponse,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
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
    // Each `from_fn` layer boxes a future and clones the inner service per request, so the
    // request's own steps are two functions, not eight layers: `edge` (request id, metrics,
    // envelope, security headers) and `guard` (per-IP limit, database gate).
    let edge = Edge(std::sync::Arc::new(EdgeParts { metrics: metrics.clone(), hsts }));
    let guard =
        Guard(std::sync::Arc::new(GuardParts { limiter: limiter.clone(), db_health: db_health.clone() }));
    router
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, settings.request_timeout))
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            tracing::error!("handler panicked");
            AppError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(guard, guard_request))
        .layer(cors(settings))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_request(())
                .on_response(on_response)
                .on_failure(()),
        )
        .layer(axum::middleware::from_fn_with_state(edge, edge_request))
}

/// What [`edge_request`] needs; one `Arc`, cloned per request.
#[derive(Clone)]
struct Edge(std::sync::Arc<EdgeParts>);

struct EdgeParts {
    metrics: Metrics,
    hsts: Option<HeaderValue>,
}

/// The outermost step of every request, in this order: assign the request id (scoped for
/// the error envelope and logs); count the request in flight; run it; rewrite a bare
/// error into the envelope; record its metrics; add the id and the security headers
/// a handler did not set.
async fn edge_request(State(edge): State<Edge>, req: Request<Body>, next: Next) -> Response<Body> {
    let (id, req) = request_id::assign_id(req);
    let metrics = &edge.0.metrics;
    let mut res = request_id::scope(
        id.clone(),
        crate::shared::metrics::track(metrics, req, |req| async { envelope::ensure(next.run(req).await) }),
    )
    .await;
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    let security = [
        (header::X_CONTENT_TYPE_OPTIONS, Some(HeaderValue::from_static("nosniff"))),
        (header::X_FRAME_OPTIONS, Some(HeaderValue::from_static("DENY"))),
        (header::REFERRER_POLICY, Some(HeaderValue::from_static("no-referrer"))),
        (header::STRICT_TRANSPORT_SECURITY, edge.0.hsts.clone()),
    ];
    for (name, value) in security {
        if let Some(value) = value
            && !headers.contains_key(&name)
        {
            headers.insert(name, value);
        }
    }
    res
}

/// What [`guard_request`] needs; one `Arc`, cloned per request.
#[derive(Clone)]
struct Guard(std::sync::Arc<GuardParts>);

struct GuardParts {
    limiter: rate_limit::RateLimiter,
    db_health: DbHealth,
}

/// The per-IP limit, then the database gate.
async fn guard_request(State(guard): State<Guard>, req: Request<Body>, next: Next) -> Response<Body> {
    let g = &guard.0;
    rate_limit::per_ip(&g.limiter, req, |req| db_gate(&g.db_health, req, next)).await
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
/// While the database is known to be down, API requests answer 503 at once (health,
/// metrics and docs are exempt); a response that failed for want of it starts the probe.
async fn db_gate(health: &DbHealth, req: Request<Body>, next: Next) -> Response<Body> {
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
