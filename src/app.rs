//! Assembly: the router with its middleware stack and API docs, connecting the
//! [`AppState`], and the HTTP server and background roles with graceful shutdown.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    features,
    platform::{
        config::Settings,
        db,
        http::{
            error::AppError,
            middleware,
            openapi::{self, ApiDoc},
            server::{self, ServerLimits},
        },
        jobs::{self, relay, worker},
        mail::{LettreMailer, templates::Templates},
        redis::Redis,
    },
    shared::jobs::{EMAILS, PAYMENTS, QUEUES, REPORTS, WEBHOOKS},
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
        .merge(
            SwaggerUi::new("/api-docs")
                .external_url_unchecked("/api-docs/openapi.json", openapi::document(openapi, &GENERIC_LISTS)),
        )
        .fallback(|| async { AppError::NotFound("no route matches this path".to_owned()) });
    middleware::apply(router, &state.config, &state.limiter, &state.metrics, &state.db_health)
        .with_state(state)
}

/// Every documented route, with the OpenAPI document it generates.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", features::api_router())
        .merge(features::ops_router());
    // What a subscribed system receives: the document's `webhooks` section.
    features::webhooks::describe_deliveries(router.get_openapi_mut());
    router
}

/// The OpenAPI document as served at `/api-docs/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    openapi::document(openapi_router().into_openapi(), &GENERIC_LISTS)
}

/// The lists the document cannot bound from their types (`ApiOk<Vec<T>>`): schema name
/// and most items.
const GENERIC_LISTS: [(&str, usize); 2] = [
    // One row per stored hour of a range of at most 31 days.
    ("ApiOk_Vec_HourlyAnalytics", features::analytics::MAX_RANGE_HOURS),
    // One row per queue.
    ("ApiOk_Vec_QueueCountsResponse", QUEUES.len()),
];

/// Connects Postgres (running migrations when enabled) and Redis.
pub async fn connect(settings: Settings) -> anyhow::Result<AppState> {
    let pool = db::connect_lazy(&settings)?;
    let redis = Redis::connect_lazy(&settings)?;
    wait_for_backends(&pool, &redis, settings.startup_wait).await?;
    if settings.run_migrations {
        db::migrate(&pool).await?;
        tracing::info!("database migrations applied");
    }
    Ok(AppState::new(settings, pool, redis))
}

/// At start-up, waits up to `wait` for Postgres and Redis to answer (a stack whose
/// services start together: the app may be up first). Postgres still silent then is an
/// error; Redis is not (the API runs without it, degraded, and reconnects by itself).
async fn wait_for_backends(
    pool: &sqlx::PgPool,
    redis: &Redis,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(250);
    let (mut db_up, mut redis_up) = (false, false);
    loop {
        if !db_up {
            db_up = sqlx::query("select 1").execute(pool).await.is_ok();
        }
        if !redis_up {
            redis_up = redis.ping().await.is_ok();
        }
        if db_up && redis_up {
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            break;
        }
        tracing::info!(postgres = db_up, redis = redis_up, "waiting for the backends to answer");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    }
    if !redis_up {
        tracing::warn!(
            seconds = wait.as_secs(),
            "Redis did not answer at start-up; going on without it for now"
        );
    }
    anyhow::ensure!(db_up, "PostgreSQL did not answer within STARTUP_WAIT ({}s)", wait.as_secs());
    Ok(())
}

/// The metrics listener: `GET /metrics` and `GET /health` on `METRICS_HOST:METRICS_PORT`,
/// apart from the API port. Returns the bound address (`METRICS_PORT=0` picks a free
/// port) and the serving task, which ends when the task is aborted.
pub async fn start_metrics_listener(
    state: &AppState,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr = format!("{}:{}", state.config.metrics_host, state.config.metrics_port);
    let listener =
        TcpListener::bind(&addr).await.with_context(|| format!("binding the metrics listener on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "metrics listener");
    let router = features::health::metrics_router()
        .fallback(|| async { AppError::NotFound("no route matches this path".to_owned()) })
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok((bound, task))
}

/// Serves HTTP until SIGINT/SIGTERM, then drains in-flight requests within
/// `SHUTDOWN_TIMEOUT` and closes the pool.
pub async fn serve(state: AppState) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let addr = state.config.bind_address();
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let (_, metrics) = start_metrics_listener(&state).await?;
    let drain = state.config.shutdown_timeout;
    let pool = state.db.clone();
    let scheduler = start_background(&state).await?;
    let limits = ServerLimits::from(&*state.config);
    server::run(listener, build_router(state), signal, drain, limits).await?;
    metrics.abort();
    stop_background(scheduler).await;
    pool.close().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// `storefront worker`: the background roles only (job workers, outbox relay,
/// scheduler), until SIGINT/SIGTERM. Run as many API instances and workers as needed.
pub async fn work(state: AppState) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let c = &state.config;
    if !c.scheduler_enabled && !c.relay_enabled && !c.jobs_enabled {
        tracing::warn!(
            "SCHEDULER_ENABLED, RELAY_ENABLED and JOBS_ENABLED are all false: this worker has nothing to do"
        );
    }
    let (_, metrics) = start_metrics_listener(&state).await?;
    let scheduler = start_background(&state).await?;
    tracing::info!("worker running");
    signal.await;
    metrics.abort();
    stop_background(scheduler).await;
    state.db.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The longest pause of an idle `webhooks` worker between looks for attempts.
const WEBHOOK_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The `webhooks` queue's handler, as the settings configure it.
fn webhook_jobs(state: &AppState) -> features::webhooks::WebhookJobs {
    let c = &state.config;
    features::webhooks::WebhookJobs::new(
        state.db.clone(),
        state.webhooks.secrets(),
        features::webhooks::AttemptRules {
            timeout: c.webhook_timeout,
            allow_private: c.webhook_allow_private_targets,
            loopback_only: c.webhook_loopback_only,
        },
        features::webhooks::RetryRules {
            base: c.webhook_retry_base,
            max_attempts: i32::try_from(c.webhook_max_attempts).unwrap_or(i32::MAX),
        },
        state.metrics.clone(),
        state.webhooks.attempted(),
    )
}

/// The background roles this process runs, as config enables them.
pub struct Background {
    scheduler: Option<tokio_cron_scheduler::JobScheduler>,
    relay: Option<tokio::task::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    shutdown_timeout: std::time::Duration,
}

/// Starts the job workers, the outbox relay and the scheduler, each when enabled.
pub async fn start_background(state: &AppState) -> anyhow::Result<Background> {
    let scheduler = match state.config.scheduler_enabled {
        true => {
            Some(features::maintenance::start(state.db.clone(), state.queues.clone(), &state.config).await?)
        }
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
    let c = &state.config;
    let mut workers = match c.jobs_enabled {
        true => vec![
            worker::spawn(
                EMAILS,
                queue(state, EMAILS)?,
                Arc::new(email_jobs(state)?),
                worker_options(c),
                state.metrics.clone(),
                stop.subscribe(),
            ),
            worker::spawn(
                REPORTS,
                queue(state, REPORTS)?,
                Arc::new(features::reports::ReportJobs::new(
                    state.db.clone(),
                    state.wakeup.clone(),
                    &c.currency,
                )),
                // One report at a time per process: each is a long scan.
                worker::WorkerOptions { concurrency: 1, ..worker_options(c) },
                state.metrics.clone(),
                stop.subscribe(),
            ),
            worker::spawn(
                PAYMENTS,
                queue(state, PAYMENTS)?,
                Arc::new(features::payments::PaymentJobs::new(
                    state.db.clone(),
                    state.payments.provider(),
                    c.payment_retry_window,
                )),
                // Retried until PAYMENT_RETRY_WINDOW has passed (the handler decides), an
                // hour apart at most.
                worker::WorkerOptions {
                    attempts: usize::MAX,
                    max_backoff: std::time::Duration::from_secs(3600),
                    ..worker_options(c)
                },
                state.metrics.clone(),
                stop.subscribe(),
            ),
            worker::spawn(
                WEBHOOKS,
                queue(state, WEBHOOKS)?,
                Arc::new(webhook_jobs(state)),
                // One delivery attempt per job: a failed attempt is recorded and retried by
                // the dispatcher, never by the queue (which retries only its own database
                // errors). An endpoint has at most WEBHOOK_ENDPOINT_CONCURRENCY attempts in
                // flight, so its deliveries per second are that over the time from lease to
                // pick-up: this queue is polled at least every 20 ms (at 100 ms, 2 in flight
                // made 20 a second).
                worker::WorkerOptions {
                    concurrency: c.webhook_concurrency,
                    attempts: 3,
                    poll_interval: c.jobs_poll_interval.min(WEBHOOK_POLL),
                    ..worker_options(c)
                },
                state.metrics.clone(),
                stop.subscribe(),
            ),
            tokio::spawn(features::webhooks::dispatch(
                state.db.clone(),
                state.wakeup.clone(),
                c.webhook_endpoint_concurrency,
                c.webhook_timeout,
                state.webhooks.attempted(),
                stop.subscribe(),
            )),
            tokio::spawn(jobs::trim_periodically(
                state.queues.clone(),
                c.jobs_done_retention,
                c.jobs_dead_retention,
                c.jobs_dead_max,
                stop.subscribe(),
            )),
        ],
        false => Vec::new(),
    };
    // With the relay: fold the order-count deltas (harmless in several processes).
    if c.relay_enabled {
        workers.push(tokio::spawn(features::orders::fold_counts_periodically(
            state.db.clone(),
            stop.subscribe(),
        )));
    }
    Ok(Background { scheduler, relay, workers, stop, shutdown_timeout: state.config.shutdown_timeout })
}

/// The storage of a registered queue.
fn queue(state: &AppState, name: &str) -> anyhow::Result<apalis_redis::RedisStorage<jobs::QueuedJob>> {
    state.queues.get(name).cloned().with_context(|| format!("queue {name} is not registered"))
}

/// The `emails` queue's handler over the configured transport and the templates.
pub fn email_jobs(state: &AppState) -> anyhow::Result<features::emails::EmailJobs> {
    let c = &state.config;
    Ok(features::emails::EmailJobs::new(
        state.db.clone(),
        LettreMailer::from_settings(c)?,
        Arc::new(Templates::new(&c.currency)?),
        &c.public_url,
        state.metrics.clone(),
        features::emails::MailPolicy {
            require_verified: c.require_verified_email,
            budget: features::emails::MailBudget::new(state.redis.clone(), c.mail_max_per_recipient_per_hour),
        },
    ))
}

/// How this process's job workers run, from config.
pub fn worker_options(c: &Settings) -> worker::WorkerOptions {
    worker::WorkerOptions {
        concurrency: c.jobs_concurrency,
        poll_interval: c.jobs_poll_interval,
        timeout: c.jobs_timeout,
        yield_max: c.jobs_yield_max,
        attempts: worker::MAX_ATTEMPTS,
        max_backoff: worker::MAX_BACKOFF,
    }
}

/// Stops what [`start_background`] started: the relay finishes its current batch, the
/// workers their running jobs (within `SHUTDOWN_TIMEOUT`; jobs still running then are
/// abandoned, and another worker runs them again after the heartbeat timeout).
pub async fn stop_background(background: Background) {
    let _ = background.stop.send(true);
    let deadline = tokio::time::Instant::now() + background.shutdown_timeout;
    for mut handle in background.workers {
        if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
            tracing::warn!("job worker still busy at SHUTDOWN_TIMEOUT; abandoning its running jobs");
            handle.abort();
        }
    }
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

/// SIGINT or SIGTERM. The handlers are registered when this is called, not when the
/// future is first polled: a signal that arrives as soon as the server answers (or while
/// the background roles start) must not meet the default action, which kills the process
/// without draining.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {},
                        _ = i.recv() => {},
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
