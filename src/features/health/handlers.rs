use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::types::{HealthResponse, ReadyChecks, ReadyResponse};
use crate::{platform::http::error::Enveloped, state::AppState};

/// How long a dependency may take to answer before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process is up. Touches no dependency.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive", body = HealthResponse)))]
pub async fn live() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

/// Readiness: Postgres and Redis both answer. A 503 names the failing dependency with a
/// generic word; the error itself goes to the log (it may name hosts and users).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Every dependency answers", body = ReadyResponse),
        (status = 503, description = "A dependency is down: its check says `unavailable` (the error is logged)", body = ReadyResponse),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let database = check(crate::platform::db::ping(&state.db));
    let redis = check(state.redis.ping());
    let (database, redis) = tokio::join!(database, redis);
    let healthy = database.is_ok() && redis.is_ok();
    let (status, label) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        let why = |r: &Result<(), String>| r.as_ref().err().cloned().unwrap_or_else(|| "ok".to_owned());
        tracing::warn!(database = %why(&database), redis = %why(&redis), "readiness check failed");
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" }.to_owned();
    let checks = ReadyChecks { database: word(&database), redis: word(&redis) };
    let mut res = (status, Json(ReadyResponse { status: label, checks })).into_response();
    // The probe's 503 is its own ops-convention body, not an API error.
    res.extensions_mut().insert(Enveloped);
    res
}

/// `Ok`, or why not (for the log only).
async fn check<E: std::fmt::Display>(probe: impl Future<Output = Result<(), E>>) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

/// Prometheus metrics in the OpenMetrics text format, on the metrics listener only:
/// request counts and latency histograms by method, route template and status; database
/// pool gauges; jobs per queue and state, outbox lag, job durations, e-mails sent and
/// failed, refunds that gave up (`payment_refunds_dead`, to alert on), webhook attempts
/// by outcome, their lag, deliveries pending and endpoints failing. A gauge whose source
/// (Redis, Postgres) does not answer within a second is left
/// out rather than delaying the scrape. `METRICS_ENABLED=false` turns it off (404).
pub async fn metrics(State(state): State<AppState>) -> Response {
    if !state.config.metrics_enabled {
        return crate::platform::http::error::AppError::NotFound("no route matches this path".to_owned())
            .into_response();
    }
    let mut gauges = crate::platform::jobs::gauges(&state.queues, &state.db).await;
    let dead = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        crate::features::orders::dead_refunds(&state.db),
    );
    let webhooks =
        tokio::time::timeout(std::time::Duration::from_secs(1), crate::features::webhooks::gauges(&state.db));
    let (dead, webhooks) = tokio::join!(dead, webhooks);
    gauges.refunds_dead = dead.ok().and_then(Result::ok);
    if let Some((pending, failing)) = webhooks.ok().and_then(Result::ok) {
        gauges.webhook_deliveries_pending = Some(pending);
        gauges.webhook_endpoints_failing = Some(failing);
    }
    let body = state.metrics.render(&state.db, &gauges);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}
