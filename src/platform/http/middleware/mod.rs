//! The HTTP middleware stack, built in one place so the order is deliberate, outermost
//! first:
//!
//! 1. a client's `X-Request-Id` that is not 1..=128 visible ASCII characters is dropped,
//!    then tower-http's [`SetRequestIdLayer`] keeps a sane one or makes a new UUID, and
//!    [`PropagateRequestIdLayer`] puts it on the response
//! 2. security headers a handler did not set (`X-Content-Type-Options`,
//!    `X-Frame-Options`, `Referrer-Policy`, HSTS when enabled), on every response
//!    (tower-http's `SetMultipleResponseHeadersLayer`)
//! 3. tower-http's [`CorsLayer`]: answers preflights before any work (so they skip the
//!    rate limit) and adds its headers to every other response
//! 4. [`Stack`], our own steps in one service: the request id in scope (error bodies
//!    carry it), metrics by route template, the envelope (a bare error status from below
//!    rewritten), the request's span and its one log line (with the cause a failed
//!    response carries: errors are logged here, once), the default rate limit per client
//!    IP (health probes exempt), the database gate (503 at once while Postgres is known
//!    to be down), and the handler under a panic catcher and a timeout
//! 5. the body limit (extractors answer 413 beyond it)
//!
//! The strict per-IP limit of the auth routes is a route layer of its own, below.
//!
//! **Why the span, the timeout and the panic catcher are ours, not tower-http's.** In
//! same-run A/B runs of `scripts/bench-ab` (product by id, 32 connections, 5 rounds
//! each, medians), the build with tower-http's `TraceLayer`, `TimeoutLayer` and
//! `CatchPanicLayer` (and our steps as two middleware services around them) served
//! 80-91 % of the throughput of this stack (three runs against the previous release:
//! 91.3 %, 87.2 %, 80.0 %; docs/benchmarks.md has the table). Their response-body
//! wrappers are boxed again on the way out and each service between our steps costs a
//! clone and a boxed future; a profile showed malloc and free at 13.5 % of the samples
//! against 9 %. Security code (CORS) and request ids stay with tower-http. Exit plan:
//! when axum serves a tower-http-wrapped body without boxing it again, or when the same
//! A/B shows the tower-http layers within 10 %, move the span, timeout and panic
//! catcher back to `TraceLayer`, `TimeoutLayer` and `CatchPanicLayer`.

pub mod envelope;
pub mod rate_limit;
pub mod request_id;

use std::{
    any::Any,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, Response, StatusCode, header},
    response::IntoResponse,
};
use futures::FutureExt;
use tower::{Service, ServiceBuilder};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    set_header::response::SetMultipleResponseHeadersLayer,
};
use tracing::{Instrument, Span, field::Empty};

use self::request_id::{RandomUuid, X_REQUEST_ID};
use crate::platform::{
    config::Settings,
    db::DbHealth,
    http::error::{AppError, DB_UNAVAILABLE, DatabaseTrouble, ErrorCause},
    metrics::Metrics,
};

/// Wraps `router` (routes and fallback already added) in the full stack.
pub fn apply<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    settings: &Settings,
    limiter: &rate_limit::RateLimiter,
    metrics: &Metrics,
    db_health: &DbHealth,
) -> Router<S> {
    let mut security = vec![
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")).into(),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")).into(),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")).into(),
    ];
    if settings.hsts_enabled {
        security.push(
            (
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            )
                .into(),
        );
    }
    let stack = StackLayer(Arc::new(StackParts {
        metrics: metrics.clone(),
        limiter: limiter.clone(),
        db_health: db_health.clone(),
        request_timeout: settings.request_timeout,
    }));
    // One `layer` call: axum boxes the service of each call separately for every route.
    router.layer(
        ServiceBuilder::new()
            .layer(request_id::DropInsaneLayer)
            .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), RandomUuid))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
            .layer(SetMultipleResponseHeadersLayer::if_not_present(security))
            .layer(cors(settings))
            .layer(stack)
            .layer(DefaultBodyLimit::max(settings.body_limit_bytes)),
    )
}

/// CORS from `CORS_ORIGIN`: the listed origins (or `*` for any), the methods and headers
/// the API uses, no credentials. Preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered here with 200 and an empty body; every
/// response gets `Vary: origin, access-control-request-method,
/// access-control-request-headers`.
pub fn cors(settings: &Settings) -> CorsLayer {
    let origins = &settings.cors_origin;
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Entries that are not valid header values are refused by config validation.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
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
        // The full list, as caches between browsers and the API have always seen it
        // (tower-http would name only what varies with this configuration).
        .vary([header::ORIGIN, header::ACCESS_CONTROL_REQUEST_METHOD, header::ACCESS_CONTROL_REQUEST_HEADERS])
}

/// What our own steps need, shared by all requests.
struct StackParts {
    metrics: Metrics,
    limiter: rate_limit::RateLimiter,
    db_health: DbHealth,
    request_timeout: Duration,
}

/// The layer of [`Stack`].
#[derive(Clone)]
struct StackLayer(Arc<StackParts>);

impl<S> tower::Layer<S> for StackLayer {
    type Service = Stack<S>;

    fn layer(&self, inner: S) -> Stack<S> {
        Stack { inner, parts: self.0.clone() }
    }
}

/// Our own steps as one service: per request, one clone of the service below and one
/// boxed future.
#[derive(Clone)]
struct Stack<S> {
    inner: S,
    parts: Arc<StackParts>,
}

impl<S> Service<Request> for Stack<S>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service that was polled ready serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let parts = self.parts.clone();
        Box::pin(async move { Ok(edge(&parts, req, inner).await) })
    }
}

/// The request id in scope for the rest; the request counted in the metrics; a bare
/// error from below rewritten into the envelope.
async fn edge<S>(p: &StackParts, req: Request, inner: S) -> Response<Body>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
{
    let id = req.extensions().get::<RequestId>().map(|id| id.header_value().clone());
    let work = crate::platform::metrics::track(&p.metrics, req, |req| async {
        envelope::ensure(traced(p, req, inner).await)
    });
    match id {
        Some(id) => request_id::scope(id, work).await,
        None => work.await,
    }
}

/// The rest inside the request's span, then its one log line.
async fn traced<S>(p: &StackParts, req: Request, inner: S) -> Response<Body>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
{
    let span = make_span(&req);
    let started = Instant::now();
    let res = guarded(p, req, inner).instrument(span.clone()).await;
    span.in_scope(|| on_response(&res, started.elapsed()));
    res
}

/// The default per-IP limit (health probes exempt), then the database gate: while the
/// database is known to be down, API requests answer 503 at once (health and docs are
/// exempt); a response that failed for want of it starts the probe.
async fn guarded<S>(p: &StackParts, req: Request, inner: S) -> Response<Body>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
{
    rate_limit::per_ip(&p.limiter, req, |req| async {
        let path = req.uri().path();
        let exempt = path.starts_with("/health") || path.starts_with("/api-docs");
        if p.db_health.is_down() && !exempt {
            return AppError::ServiceUnavailable(DB_UNAVAILABLE.to_owned()).into_response();
        }
        let res = contained(p.request_timeout, req, inner).await;
        if res.extensions().get::<DatabaseTrouble>().is_some() {
            p.db_health.suspect();
        }
        res
    })
    .await
}

/// The handler, with a deadline and a panic catcher: past `timeout` the request answers a
/// bare 503 (the envelope step words it); a panic becomes a 500 in the envelope, its text
/// only in the log line.
async fn contained<S>(timeout: Duration, req: Request, mut inner: S) -> Response<Body>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
{
    // `call` runs inside the future, so a panic in it is caught too.
    let handler = std::panic::AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind();
    match tokio::time::timeout(timeout, handler).await {
        Ok(Ok(Ok(res))) => res,
        Ok(Ok(Err(never))) => match never {},
        Ok(Err(panic)) => panic_response(panic),
        Err(_elapsed) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
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
fn on_response<B>(res: &Response<B>, latency: Duration) {
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
