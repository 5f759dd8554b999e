//! Scheduled maintenance (SPEC §8): the scheduler (cron expressions from config, UTC)
//! and the nightly cleanup. The hourly analytics roll-up belongs to `features::analytics`;
//! the scheduler only triggers it. Runs are claimed in Postgres so that with several
//! instances each happens once; a failing task logs and the process carries on.

pub mod invariants;
pub mod tasks;

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::{
    features::analytics,
    shared::{config::Settings, jobs::Queues, schedule},
};

/// Starts the scheduler; keep the handle and `shutdown` it on exit.
pub async fn start(pool: PgPool, queues: Queues, settings: &Settings) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let db = pool.clone();
    let config = Arc::new(settings.clone());
    scheduler
        .add(Job::new_async(settings.schedule_cleanup.as_str(), move |_, _| {
            let (db, queues, config) = (db.clone(), queues.clone(), config.clone());
            Box::pin(async move {
                let slot = schedule::slot(Utc::now(), TimeDelta::days(1));
                if let Err(e) = tasks::cleanup(&db, &queues, &config, slot).await {
                    tracing::error!(task = "cleanup", error = %e, "scheduled task failed");
                }
            })
        })?)
        .await?;
    let db = pool;
    scheduler
        .add(Job::new_async(settings.schedule_analytics.as_str(), move |_, _| {
            let db = db.clone();
            Box::pin(async move {
                let slot = schedule::slot(Utc::now(), TimeDelta::hours(1));
                if let Err(e) = analytics::rollup(&db, slot).await {
                    tracing::error!(task = "analytics", error = %e, "scheduled task failed");
                }
            })
        })?)
        .await?;
    scheduler.start().await?;
    tracing::info!(
        cleanup = %settings.schedule_cleanup,
        analytics = %settings.schedule_analytics,
        "scheduler started (UTC)"
    );
    Ok(scheduler)
}
