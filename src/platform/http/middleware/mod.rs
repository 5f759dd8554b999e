//! The HTTP middleware stack, built in one place so the order is deliberate. tower-http
//! does the generic work (request ids, security headers, the request span and its log
//! line, CORS, panic catching, the timeout); our own steps are the ones no crate knows
//! (the error envelope, metrics by route template, the rate limits, the database gate).
//! Outermost first:
//!
//! 1. a client's `X-Request-Id` that is not 1..=128 visible ASCII characters is dropped,
//!    then [`SetRequestIdLayer`] keeps a sane one or makes a new UUID, and
//!    [`PropagateRequestIdLayer`] puts it on the response
//! 2. security headers a handler did not set (`X-Content-Type-Options`,
//!    `X-Frame-Options`, `Referrer-Policy`, HSTS when enabled), and CORS's `Vary`, on
//!    every response
//! 3. [`TraceLayer`]: the request's span, and one log line per request with route
//!    template, status, latency, and the error cause a failed response carries
//!    ([`ErrorCause`]): errors are logged here, once
//! 4. [`CorsLayer`]: answers preflights before any work (so they are neither rate
//!    limited nor counted in the request metrics) and adds its headers to every other
//!    response
//! 5. [`edge`], our own steps in one middleware (each one more would cost a boxed
//!    service, a boxed future and a copy of the stack below it per request): runs the rest
//!    with the request id in scope (error bodies carry it), counts the request in the
//!    metrics by route template, applies the default rate limit per client IP (health
//!    probes exempt) and the database gate (503 at once while Postgres is known to be
//!    down), rewrites a bare error status from the layers below into the envelope, and
//!    marks every answer to a request with credentials `Cache-Control: no-store`
//! 6. [`CatchPanicLayer`] (a panic becomes a 500 in the envelope, without the panic text)
//!    around [`TimeoutLayer`] (a request running too long becomes a 503)
//! 7. the body limit (extractors answer 413 beyond it)
//!
//! The strict per-IP limit of the auth routes is a route layer of its own, below.
//!
//! **tower-http against our own span, timeout and panic catcher.** Two same-run A/B runs
//! of `scripts/bench-ab` (5 and 9 rounds, medians; docs/benchmarks.md) between this stack
//! and one with the span, timeout and panic catcher written by hand inside a single
//! service of our steps: the hand-written one was 4.4 % and 7.2 % ahead on product by id,
//! −2 % and +0.5 % on order placement. Under the 10 % that would pay for owning them, so
//! the crate's layers stay.

pub mod envelope;
pub mod rate_limit;
pub mod request_id;

use std::{any::Any, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method, Response, StatusCode, header},
    middleware::{Next, from_fn_with_state},
    response::IntoResponse,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use tracing::{Span, field::Empty};

use self::request_id::{RandomUuid, X_REQUEST_ID};
use crate::platform::{
    config::Settings,
    db::DbHealth,
    http::error::{AppError, DB_UNAVAILABLE, DatabaseTrouble, ErrorCause},
    metrics::Metrics,
};

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const DENY: HeaderValue = HeaderValue::from_static("DENY");
const NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// What a CORS answer varies with: the full list, as caches between browsers and the API
/// have always seen it, on every response (tower-http would name only what varies with
/// the configuration, and build the value anew for each response).
const CORS_VARY: HeaderValue =
    HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers");

/// Wraps `router` (routes and fallback already added) in the full stack.
pub fn apply<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    settings: &Settings,
    limiter: &rate_limit::RateLimiter,
    metrics: &Metrics,
    db_health: &DbHealth,
) -> Router<S> {
    let hsts = settings.hsts_enabled.then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    // One `layer` call: axum boxes the service of each call separately for every route.
    router.layer(
        ServiceBuilder::new()
            .layer(request_id::DropInsaneLayer)
            .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), RandomUuid))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
            // One layer per header: each holds a static value, so the per-request clone
            // of the stack copies nothing (a list of headers would be copied each time).
            .layer(SetResponseHeaderLayer::if_not_present(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF))
            .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, DENY))
            .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, NO_REFERRER))
            .layer(SetResponseHeaderLayer::if_not_present(header::STRICT_TRANSPORT_SECURITY, hsts))
            .layer(SetResponseHeaderLayer::appending(header::VARY, CORS_VARY))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_request(())
                    .on_response(on_response)
                    .on_failure(()),
            )
            .layer(cors(settings))
            .layer(from_fn_with_state(
                Edge(Arc::new(EdgeParts {
                    metrics: metrics.clone(),
                    limiter: limiter.clone(),
                    db_health: db_health.clone(),
                })),
                edge,
            ))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, settings.request_timeout))
            .layer(DefaultBodyLimit::max(settings.body_limit_bytes)),
    )
}

/// CORS from `CORS_ORIGIN`: the listed origins (or `*` for any), the methods and headers
/// the API uses, no credentials. Preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered here with 200 and an empty body. `Vary`
/// comes from the stack around it ([`CORS_VARY`]).
fn cors(settings: &Settings) -> CorsLayer {
    let origins = &settings.cors_origin;
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Entries that are not valid header values are refused by config validation. A
        // predicate over a shared list, not `AllowOrigin::list`: the stack is cloned for
        // every request, and a list would be copied each time.
        let allowed: Arc<[HeaderValue]> =
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        AllowOrigin::predicate(move |origin, _| allowed.contains(origin))
    };
    let name = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            name("idempotency-key"),
            X_REQUEST_ID.clone(),
        ])
        .expose_headers([
            X_REQUEST_ID.clone(),
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            name("idempotent-replayed"),
        ])
        .max_age(Duration::from_secs(600))
        // `Vary` is set by the stack ([`CORS_VARY`]) on every response, preflights included.
        .vary([])
}

/// What [`edge`] needs, behind one `Arc` (the stack is cloned for every request).
#[derive(Clone)]
struct Edge(Arc<EdgeParts>);

struct EdgeParts {
    metrics: Metrics,
    limiter: rate_limit::RateLimiter,
    db_health: DbHealth,
}

/// Our own steps, in one middleware: runs the rest with the request id as the current
/// one (the error envelope reads it), counted in the metrics by route template; then the
/// default per-IP limit (health probes exempt) and the database gate (while the database
/// is known to be down, API requests answer 503 at once, health and docs exempt; a
/// response that failed for want of it starts the probe); and rewrites a bare error
/// status from below into the envelope.
async fn edge(State(edge): State<Edge>, req: Request, next: Next) -> Response<Body> {
    let e = &*edge.0;
    let id = req.extensions().get::<RequestId>().map(|id| id.header_value().clone());
    // What a caller sees with its credentials is theirs alone: no cache keeps it.
    let authenticated = req.headers().contains_key(header::AUTHORIZATION);
    let work = crate::platform::metrics::track(&e.metrics, req, |req| {
        rate_limit::per_ip(&e.limiter, req, |req| async {
            let path = req.uri().path();
            let exempt = path.starts_with("/health") || path.starts_with("/api-docs");
            if e.db_health.is_down() && !exempt {
                return AppError::ServiceUnavailable(DB_UNAVAILABLE.to_owned()).into_response();
            }
            let res = envelope::ensure(next.run(req).await);
            if res.extensions().get::<DatabaseTrouble>().is_some() {
                e.db_health.suspect();
            }
            res
        })
    });
    let mut res = match id {
        Some(id) => request_id::scope(id, work).await,
        None => work.await,
    };
    if authenticated && !res.headers().contains_key(header::CACHE_CONTROL) {
        res.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
    }
    res
}

fn make_span(req: &Request) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str);
    let request_id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id = request_id.unwrap_or_default(),
        user_id = Empty,
    )
}

/// The request's one log line, with the cause of a failure when the response carries one.
fn on_response<B>(res: &Response<B>, latency: Duration, _span: &Span) {
    let status = res.status().as_u16();
    let latency_ms = latency.as_micros() as f64 / 1_000.0;
    match res.extensions().get::<ErrorCause>() {
        Some(cause) if res.status().is_server_error() && cause.unexpected => {
            tracing::error!(status, latency_ms, error = %cause.text, "request failed");
        }
        Some(cause) => tracing::warn!(status, latency_ms, error = %cause.text, "request failed"),
        None => tracing::info!(status, latency_ms, "request completed"),
    }
}

/// A panic becomes a 500 in the envelope; its text goes to the log line, never the body.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    AppError::Internal(anyhow::anyhow!("handler panicked: {text}")).into_response()
}
