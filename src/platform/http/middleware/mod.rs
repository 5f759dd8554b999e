//! The HTTP middleware stack, built in one place so the order is deliberate. Each step is
//! a plain async function inside one tower service ([`Stack`]), outermost first:
//!
//! 1. [`edge`]: request id (everything below, error bodies included, can see it),
//!    metrics, envelope (rewrites any bare error status from the steps below), security
//!    headers (on every response, errors included)
//! 2. [`traced`]: the request's span, and one log line per request with route template,
//!    status, latency
//! 3. [`guarded`]: CORS (answers preflights before any work, and adds its headers to every
//!    other response), rate limit per client IP (health probes exempt), then the database
//!    gate (503 at once while Postgres is known to be down)
//! 4. [`contained`]: the panic catcher (a panic becomes a 500 in the envelope, without the
//!    panic text) around the timeout (a request running too long becomes a 503)
//! 5. body limit (extractors answer 413 beyond it), the one tower layer below the stack
//!
//! The strict per-IP limit of the auth routes is a route layer of its own, below.

pub mod cors;
pub mod envelope;
pub mod rate_limit;
pub mod request_id;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath},
    http::{HeaderValue, Method, Request, Response, StatusCode, header},
    response::IntoResponse,
};
use futures::FutureExt;
use tower::{Layer, Service, ServiceBuilder};
use tracing::{Instrument, Span, field::Empty};

use crate::platform::http::middleware::request_id::{RequestId, X_REQUEST_ID};
use crate::platform::{config::Settings, db::DbHealth, http::error::AppError, metrics::Metrics};

/// Wraps `router` (routes and fallback already added) in the full stack.
pub fn apply<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    settings: &Settings,
    limiter: &rate_limit::RateLimiter,
    metrics: &Metrics,
    db_health: &DbHealth,
) -> Router<S> {
    let stack = StackLayer(Arc::new(StackParts {
        metrics: metrics.clone(),
        hsts: settings.hsts_enabled.then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains")),
        cors: cors::Cors::from_settings(settings),
        limiter: limiter.clone(),
        db_health: db_health.clone(),
        request_timeout: settings.request_timeout,
    }));
    // One `layer` call: axum boxes the service of every `layer` call separately for every
    // route, and for every request clones each of them (a box each) and boxes each one's
    // future. The steps of the stack are plain async functions inside one service.
    router.layer(ServiceBuilder::new().layer(stack).layer(DefaultBodyLimit::max(settings.body_limit_bytes)))
}

/// What every step of the stack needs, shared by all requests.
struct StackParts {
    metrics: Metrics,
    hsts: Option<HeaderValue>,
    cors: cors::Cors,
    limiter: rate_limit::RateLimiter,
    db_health: DbHealth,
    request_timeout: Duration,
}

/// The layer of [`Stack`].
#[derive(Clone)]
struct StackLayer(Arc<StackParts>);

impl<S> Layer<S> for StackLayer {
    type Service = Stack<S>;

    fn layer(&self, inner: S) -> Stack<S> {
        Stack { inner, parts: self.0.clone() }
    }
}

/// The whole middleware stack as one service: per request, one clone of the service
/// below and one boxed future (axum's `from_fn` costs a clone and three boxes per layer,
/// tower-http's layers a clone each and their own response bodies).
#[derive(Clone)]
struct Stack<S> {
    inner: S,
    parts: Arc<StackParts>,
}

impl<S> Service<Request<Body>> for Stack<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The service that was polled ready serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let parts = self.parts.clone();
        Box::pin(async move { Ok(edge(&parts, req, inner).await) })
    }
}

/// The outermost step of every request, in this order: assign the request id (scoped for
/// the error envelope and logs); count the request in flight; run the traced rest; rewrite
/// a bare error into the envelope; record its metrics; add the id and the security
/// headers a handler did not set.
async fn edge<S>(p: &StackParts, req: Request<Body>, inner: S) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (id, req) = request_id::assign_id(req);
    let mut res = request_id::scope(
        id.clone(),
        crate::platform::metrics::track(&p.metrics, req, |req| async {
            envelope::ensure(traced(p, req, inner).await)
        }),
    )
    .await;
    let headers = res.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), id.header_value().clone());
    let security = [
        (header::X_CONTENT_TYPE_OPTIONS, Some(HeaderValue::from_static("nosniff"))),
        (header::X_FRAME_OPTIONS, Some(HeaderValue::from_static("DENY"))),
        (header::REFERRER_POLICY, Some(HeaderValue::from_static("no-referrer"))),
        (header::STRICT_TRANSPORT_SECURITY, p.hsts.clone()),
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

/// Runs the rest inside the request's span, then logs one line with status and latency.
async fn traced<S>(p: &StackParts, req: Request<Body>, inner: S) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let span = make_span(&req);
    let started = Instant::now();
    let res = guarded(p, req, inner).instrument(span.clone()).await;
    span.in_scope(|| on_response(&res, started.elapsed()));
    res
}

/// CORS (a preflight is answered here), then the per-IP limit, then the database gate,
/// then the handler under the panic catcher and the timeout.
async fn guarded<S>(p: &StackParts, req: Request<Body>, inner: S) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let allow_origin = p.cors.allow_origin(req.headers());
    if req.method() == Method::OPTIONS {
        return p.cors.preflight(allow_origin);
    }
    let mut res = rate_limit::per_ip(&p.limiter, req, |req| {
        db_gate(&p.db_health, req, |req| contained(p.request_timeout, req, inner))
    })
    .await;
    p.cors.decorate(allow_origin, res.headers_mut());
    res
}

/// The handler, with a deadline and a panic catcher: past `timeout` the request answers a
/// bare 503 (the envelope step words it); a panic becomes a 500 in the envelope, without
/// the panic's text.
async fn contained<S>(timeout: Duration, req: Request<Body>, mut inner: S) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    // `call` runs inside the future, so a panic in it is caught too.
    let handler = std::panic::AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind();
    match tokio::time::timeout(timeout, handler).await {
        Ok(Ok(Ok(res))) => res,
        Ok(Ok(Err(never))) => match never {},
        Ok(Err(_panic)) => {
            tracing::error!("handler panicked");
            AppError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }
        Err(_elapsed) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn make_span(req: &Request<Body>) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str);
    let request_id = req.extensions().get::<RequestId>().map_or("", RequestId::as_str);
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        user_id = Empty,
    )
}

fn on_response(res: &Response<Body>, latency: Duration) {
    tracing::info!(
        status = res.status().as_u16(),
        latency_ms = latency.as_micros() as f64 / 1_000.0,
        "request completed"
    );
}

/// While the database is known to be down, API requests answer 503 at once (health,
/// metrics and docs are exempt); a response that failed for want of it starts the probe.
async fn db_gate<F: Future<Output = Response<Body>>>(
    health: &DbHealth,
    req: Request<Body>,
    next: impl FnOnce(Request<Body>) -> F,
) -> Response<Body> {
    let path = req.uri().path();
    let exempt = path.starts_with("/health") || path == "/metrics" || path.starts_with("/api-docs");
    if health.is_down() && !exempt {
        return AppError::ServiceUnavailable(crate::platform::http::error::DB_UNAVAILABLE.to_owned())
            .into_response();
    }
    let res = next(req).await;
    if res.extensions().get::<crate::platform::http::error::DatabaseTrouble>().is_some() {
        health.suspect();
    }
    res
}
