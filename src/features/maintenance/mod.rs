//! Scheduled maintenance (SPEC §8): daily cleanup at 02:00 UTC, hourly analytics roll-up
//! (served to admins at `GET /admin/analytics`). Runs are claimed in Postgres so that with
//! several instances each happens once; a failing task logs and the process carries on.

mod handlers;
mod routes;
pub mod tasks;

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler};

pub use routes::router;

/// Starts the scheduler; keep the handle and `shutdown` it on exit.
pub async fn start(pool: PgPool) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let db = pool.clone();
    scheduler
        .add(Job::new_async("0 0 2 * * *", move |_, _| {
            let db = db.clone();
            Box::pin(async move {
                let slot = tasks::slot(Utc::now(), TimeDelta::days(1));
                if let Err(e) = tasks::cleanup(&db, slot).await {
                    tracing::error!(task = "cleanup", error = %e, "scheduled task failed");
                }
            })
        })?)
        .await?;
    let db = pool;
    scheduler
        .add(Job::new_async("0 5 * * * *", move |_, _| {
            let db = db.clone();
            Box::pin(async move {
                let slot = tasks::slot(Utc::now(), TimeDelta::hours(1));
                if let Err(e) = tasks::rollup_analytics(&db, slot).await {
                    tracing::error!(task = "analytics", error = %e, "scheduled task failed");
                }
            })
        })?)
        .await?;
    scheduler.start().await?;
    tracing::info!("scheduler started: cleanup daily at 02:00 UTC, analytics hourly at :05");
    Ok(scheduler)
}
