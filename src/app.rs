//! Assembly: the router with its middleware stack and API docs, connecting the
//! [`AppState`], and the HTTP server and background roles with graceful shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    features,
    shared::{config::Settings, db, error::AppError, jobs::relay, middleware, openapi::ApiDoc, redis::Redis},
};

use crate::state::AppState;

/// The full router: versioned API, ops endpoints, API docs, fallbacks and middleware.
pub fn build_router(state: AppState) -> Router {
    build_router_with(state, Router::new())
}

/// [`build_router`] with `extra` routes merged in under the same middleware stack
/// (integration tests use it to add routes that panic or stall).
pub fn build_router_with(state: AppState, extra: Router<AppState>) -> Router {
    let (routes, openapi) = openapi_router().split_for_parts();
    let router = routes
        .merge(extra)
        .merge(SwaggerUi::new("/api-docs").url("/api-docs/openapi.json", openapi))
        .fallback(|| async { AppError::NotFound("no route matches this path".to_owned()) });
    middleware::apply(router, &state.config, &state.limiter, &state.metrics).with_state(state)
}

/// Every documented route, with the OpenAPI document it generates.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", features::api_router())
        .merge(features::ops_router())
}

/// The OpenAPI document as served at `/api-docs/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi_router().into_openapi()
}

/// Connects Postgres (running migrations when enabled) and Redis.
pub async fn connect(settings: Settings) -> anyhow::Result<AppState> {
    let pool = db::connect_lazy(&settings)?;
    if settings.run_migrations {
        db::migrate(&pool).await?;
        tracing::info!("database migrations applied");
    }
    let redis = Redis::connect_lazy(&settings)?;
    Ok(AppState::new(settings, pool, redis))
}

/// Serves HTTP until SIGINT/SIGTERM, then drains in-flight requests within
/// `SHUTDOWN_TIMEOUT` and closes the pool.
pub async fn serve(state: AppState) -> anyhow::Result<()> {
    let addr = state.config.bind_address();
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let drain = state.config.shutdown_timeout;
    let pool = state.db.clone();
    let scheduler = start_background(&state).await?;
    run(listener, build_router(state), shutdown_signal(), drain).await?;
    stop_background(scheduler).await;
    pool.close().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// `storefront worker`: the background roles only (today the scheduler; the job workers
/// join it), until SIGINT/SIGTERM. Run as many API instances and workers as needed.
pub async fn work(state: AppState) -> anyhow::Result<()> {
    if !state.config.scheduler_enabled && !state.config.relay_enabled {
        tracing::warn!("SCHEDULER_ENABLED=false and RELAY_ENABLED=false: this worker has nothing to do");
    }
    let scheduler = start_background(&state).await?;
    tracing::info!("worker running");
    shutdown_signal().await;
    stop_background(scheduler).await;
    state.db.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The background roles this process runs, as config enables them.
pub struct Background {
    scheduler: Option<tokio_cron_scheduler::JobScheduler>,
    relay: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Starts the scheduler and the outbox relay, each when enabled.
pub async fn start_background(state: &AppState) -> anyhow::Result<Background> {
    let scheduler = match state.config.scheduler_enabled {
        true => Some(features::maintenance::start(state.db.clone(), &state.config).await?),
        false => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = state.config.relay_enabled.then(|| {
        tokio::spawn(relay::run(
            state.db.clone(),
            state.queues.clone(),
            state.config.relay_poll_interval,
            stopped,
        ))
    });
    Ok(Background { scheduler, relay, stop })
}

/// Stops what [`start_background`] started; the relay finishes its current batch.
pub async fn stop_background(background: Background) {
    let _ = background.stop.send(true);
    if let Some(relay) = background.relay
        && let Err(e) = relay.await
    {
        tracing::warn!(error = %e, "outbox relay did not stop cleanly");
    }
    if let Some(mut scheduler) = background.scheduler
        && let Err(e) = scheduler.shutdown().await
    {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
}

/// Runs `router` on `listener` until `signal` resolves, then allows `drain` for
/// in-flight requests before giving up on them.
pub async fn run(
    listener: TcpListener,
    router: Router,
    signal: impl Future<Output = ()> + Send + 'static,
    drain: std::time::Duration,
) -> anyhow::Result<()> {
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            signal.await;
            tracing::info!("shutdown requested: draining in-flight requests");
            let _ = stopping_tx.send(true);
        });
    let deadline = async move {
        let _ = stopping_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = server => result.context("HTTP server failed"),
        () = deadline => {
            tracing::warn!(seconds = drain.as_secs(), "drain deadline passed; dropping remaining connections");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
