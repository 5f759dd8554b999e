//! Job workers: one apalis worker per queue per process, running a
//! [`JobHandler`] for every job the relay queued.
//!
//! - **Attempts:** 3 per job, the 2nd and 3rd after an exponential backoff from 2 s with up
//!   to 50 % jitter (done in process by the retry layer: the Redis backend's own retry is
//!   linear and 25 times, so the last failure is answered with `AbortError`, which sends
//!   the job to the dead set at once). A [`JobError::Permanent`] skips the remaining
//!   attempts. An attempt longer than `JOBS_TIMEOUT` fails, and so does one that panics
//!   (caught and logged).
//! - **Names:** every worker's name is unique (queue, host, pid, a ULID): apalis refuses a
//!   name still registered and cannot tell two live workers of one name apart.
//! - **Crashes:** a worker that stops heart-beating for `JOBS_HEARTBEAT_INTERVAL ×
//!   JOBS_MISSED_HEARTBEATS` is presumed dead; the next heartbeat of any live worker puts
//!   its fetched jobs back in the queue. Handlers are idempotent, so a job that had in fact
//!   finished has no second effect.
//! - **Failures of Redis** end an apalis worker; [`spawn`] starts a new one (new name)
//!   after a backoff, until the stop signal.
//! - **Stopping:** on the stop signal a worker fetches no more, lets running jobs finish,
//!   acknowledges them, and returns fetched jobs that did not start to the queue. The
//!   caller bounds that with `SHUTDOWN_TIMEOUT`; jobs still running then are abandoned
//!   and rescued like a crash's.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::{
    layers::{
        catch_panic::CatchPanicLayer,
        retry::{
            HasherRng,
            backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
        },
    },
    prelude::*,
};
use apalis_redis::RedisStorage;
use async_trait::async_trait;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use tokio::{sync::watch, task::JoinHandle};

use crate::platform::jobs::{QueuedJob, store::FIRST_ATTEMPT_FIELD};
use crate::platform::metrics::Metrics;

/// Runs of a job before it is dead (unless its queue says otherwise).
pub const MAX_ATTEMPTS: usize = 3;
/// Delay before the second attempt; each later one doubles it (plus jitter).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest delay between two attempts (unless its queue says otherwise).
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Random extra delay, as a fraction of the backoff, so failed jobs do not retry in step.
const JITTER: f64 = 0.5;
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// Why a job's attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (a transport, database or Redis failure).
    #[error("{0}")]
    Transient(String),
    /// Fails the same way every time (a malformed payload, an invalid recipient): the
    /// job goes to the dead set without further attempts.
    #[error("{0}")]
    Permanent(String),
}

/// What a queue's worker runs for each job. Must be idempotent: a job can be delivered
/// more than once (after a crash, or a relay commit that failed after Redis accepted).
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn handle(&self, job: &QueuedJob) -> Result<(), JobError>;

    /// Called once when `job` goes to the dead set (its last attempt failed, or it can
    /// never succeed), with the last error; e.g. to mark what the job stood for failed.
    async fn dead(&self, _job: &QueuedJob, _error: &str) {}
}

/// How a queue's workers run.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// Jobs run at once by this process's worker.
    pub concurrency: usize,
    /// How often an idle worker looks for due jobs.
    pub poll_interval: Duration,
    /// Longest one attempt may run.
    pub timeout: Duration,
    /// Longest a job waits for the HTTP load to drop before it starts (zero: never).
    pub yield_max: Duration,
    /// Runs of a job before it is dead.
    pub attempts: usize,
    /// Longest delay between two attempts.
    pub max_backoff: Duration,
}

#[derive(Clone)]
struct Context {
    queue: &'static str,
    timeout: Duration,
    yield_max: Duration,
    busy_above: u64,
    attempts: usize,
    handler: Arc<dyn JobHandler>,
    metrics: Metrics,
    conn: ConnectionManager,
    meta_prefix: Arc<str>,
    /// The dead-set index ([`super::store::dead_index`]).
    dead_index: Arc<str>,
}

/// The name of a new worker of `queue`: unique per process and per restart.
fn worker_name(queue: &str) -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "host".to_owned());
    format!("{queue}-{host}-{}-{}", std::process::id(), ulid::Ulid::generate())
}

fn retry_policy(options: &WorkerOptions) -> BackoffRetryPolicy<ExponentialBackoff<HasherRng>> {
    let max_backoff = options.max_backoff.max(FIRST_BACKOFF);
    let backoff = ExponentialBackoffMaker::new(FIRST_BACKOFF, max_backoff, JITTER, HasherRng::default())
        .expect("backoff bounds are valid: the maximum is at least the first")
        .make_backoff();
    RetryPolicy::retries(options.attempts.max(1) - 1).with_backoff(backoff)
}

/// Starts the worker of `queue` on `storage`, restarting it (under a new name) when
/// Redis fails it, until `stop` turns true. The task ends once the worker has stopped.
pub fn spawn(
    queue: &'static str,
    storage: RedisStorage<QueuedJob>,
    handler: Arc<dyn JobHandler>,
    options: WorkerOptions,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let context = Context {
        queue,
        timeout: options.timeout,
        yield_max: options.yield_max,
        busy_above: 2 * cpus,
        attempts: options.attempts.max(1),
        handler,
        metrics,
        conn: storage.clone().get_connection().clone(),
        meta_prefix: Arc::from(storage.get_config().job_meta_hash()),
        dead_index: Arc::from(super::store::dead_index(storage.get_config())),
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        tracing::info!(queue, concurrency = options.concurrency, "job worker starting");
        while !*stop.borrow() {
            let name = worker_name(queue);
            let worker = WorkerBuilder::new(name.clone())
                .backend(storage.clone().poll_with_interval(options.poll_interval))
                .data(context.clone())
                .concurrency(options.concurrency)
                .parallelize(tokio::spawn)
                .retry(retry_policy(&options))
                // Last resort (`run` catches its handler's panics itself): a panic is logged
                // and counts as a failed attempt.
                .layer(CatchPanicLayer::with_panic_handler(|panic: &Box<dyn Any + Send + 'static>| {
                    on_panic(panic)
                }))
                .build(run);
            let mut stopped = stop.clone();
            let signal = async move {
                let _ = stopped.wait_for(|s| *s).await;
                Ok::<(), WorkerError>(())
            };
            let started = Instant::now();
            // Boxed as `Send` here, where the worker's type is concrete: proving the
            // whole loop `Send` trips over the layers' higher-ranked types otherwise.
            let running: std::pin::Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>> =
                Box::pin(worker.run_until(signal));
            match running.await {
                Ok(()) => break,
                Err(e) if *stop.borrow() => {
                    tracing::warn!(queue, worker = %name, error = %e, "job worker failed while stopping");
                    break;
                }
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(500);
                    }
                    tracing::warn!(
                        queue, worker = %name, error = %e, restart_in_ms = backoff.as_millis() as u64,
                        "job worker failed; starting a new one"
                    );
                    let mut stopped = stop.clone();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stopped.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
                }
            }
        }
        tracing::info!(queue, "job worker stopped");
    })
}

/// One attempt of one job: the handler, its metrics, and the answer that tells apalis
/// whether to try again.
async fn run(
    job: QueuedJob,
    context: Data<Context>,
    attempt: Attempt,
    id: TaskId,
) -> Result<(), BoxDynError> {
    let n = attempt.current();
    yield_to_http(&context.metrics, context.busy_above, context.yield_max).await;
    let started = Instant::now();
    let started_at = chrono::Utc::now().timestamp();
    // The time limit and panics are handled here, not by apalis layers, so that a job
    // that times out or panics on its last attempt reaches `JobHandler::dead` too.
    let attempt_run = std::panic::AssertUnwindSafe(context.handler.handle(&job)).catch_unwind();
    let result = match tokio::time::timeout(context.timeout, attempt_run).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(JobError::Transient(on_panic(&panic).to_string())),
        Err(_) => Err(JobError::Transient(format!("the attempt took longer than {:?}", context.timeout))),
    };
    context.metrics.observe_job(context.queue, &job.kind, started.elapsed());
    let (queue, kind, outbox_id) = (context.queue, job.kind.as_str(), job.outbox_id);
    if result.is_err() {
        // Only failing jobs can end up in the dead-letter listing, which shows when they
        // first ran: a success costs no extra Redis call.
        note_first_attempt(&context, &id, started_at).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(JobError::Permanent(e)) => {
            tracing::warn!(queue, kind, %outbox_id, task = %id, attempt = n, error = %e, "job cannot succeed; dead");
            context.handler.dead(&job, &e).await;
            note_dead(&context, &id).await;
            Err(AbortError::new(e).into())
        }
        Err(JobError::Transient(e)) if n >= context.attempts => {
            tracing::warn!(queue, kind, %outbox_id, task = %id, attempt = n, error = %e, "job failed its last attempt; dead");
            context.handler.dead(&job, &e).await;
            note_dead(&context, &id).await;
            Err(AbortError::new(e).into())
        }
        Err(JobError::Transient(e)) => {
            tracing::info!(queue, kind, %outbox_id, task = %id, attempt = n, error = %e, "job attempt failed; will retry");
            Err(e.into())
        }
    }
}

/// Waits, at most `yield_max`, while the process serves more HTTP requests at once than
/// twice its CPUs: at the API's peak, jobs (e-mails) start a little later instead of
/// taking CPU from requests. Under a sustained peak each job still starts within
/// `yield_max`, so jobs keep moving.
async fn yield_to_http(metrics: &Metrics, busy_above: u64, yield_max: Duration) {
    let waited = Instant::now();
    while metrics.http_in_flight() > busy_above && waited.elapsed() < yield_max {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A panicking attempt fails like any other (a job dead after panicking keeps the status
/// `Running`, which the dead-letter listing explains).
fn on_panic(panic: &Box<dyn Any + Send>) -> AbortError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %message, "job panicked");
    AbortError::new(format!("the job panicked: {message}"))
}

/// Adds the job to the dead-set index as it dies (apalis moves it to the dead set when
/// this attempt's answer comes back). Best effort: the trim adds any the index missed.
async fn note_dead(context: &Context, id: &TaskId) {
    let mut conn = context.conn.clone();
    let noted: redis::RedisResult<()> =
        redis::cmd("ZADD").arg(&*context.dead_index).arg(0).arg(id.to_string()).query_async(&mut conn).await;
    if let Err(e) = noted {
        tracing::debug!(error = %e, "could not index the dead job");
    }
}

/// Notes when the job first ran (the start of its first failed attempt), for the
/// dead-letter listing; best effort: the job goes on whether or not Redis took the note.
async fn note_first_attempt(context: &Context, id: &TaskId, started_at: i64) {
    let key = format!("{}:{id}", context.meta_prefix);
    let mut conn = context.conn.clone();
    let noted: redis::RedisResult<()> =
        redis::cmd("HSETNX").arg(key).arg(FIRST_ATTEMPT_FIELD).arg(started_at).query_async(&mut conn).await;
    if let Err(e) = noted {
        tracing::debug!(error = %e, "could not note the job's first attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_wait_for_a_busy_api_but_never_longer_than_the_cap() {
        let metrics = Metrics::default();
        // Quiet: no wait.
        let started = Instant::now();
        yield_to_http(&metrics, 0, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_millis(50));
        // Busy for good: the cap bounds the wait.
        let busy = metrics.begin_request();
        let started = Instant::now();
        yield_to_http(&metrics, 0, Duration::from_millis(200)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
        // Busy until the request ends: the job starts then.
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(busy);
        });
        let started = Instant::now();
        yield_to_http(&metrics, 0, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        ends.await.unwrap();
    }
}
