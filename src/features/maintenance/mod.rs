//! Scheduled maintenance: the scheduler (cron expressions from config, UTC)
//! and the nightly cleanup. The hourly analytics roll-up belongs to `features::analytics`;
//! the scheduler only triggers it. Runs are claimed in Postgres so that with several
//! instances each happens once; a failing task logs and the process carries on.

mod invariants;
mod tasks;

pub use invariants::{Finding, check as check_invariants};
pub use tasks::{CleanupReport, cleanup, expire_orders};

use std::sync::Arc;

use chrono::Utc;
use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::{
    features::analytics,
    platform::{
        config::Settings,
        jobs::{Queues, outbox::Wakeup},
        schedule,
    },
};

/// Starts the scheduler; keep the handle and `shutdown` it on exit.
pub async fn start(pool: PgPool, queues: Queues, settings: &Settings) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let db = pool.clone();
    let config = Arc::new(settings.clone());
    // A run's slot is the tick it fired for (see `schedule::tick`), so any schedule, one
    // every few seconds included, runs each tick once across the processes.
    let cleanup_tick = Arc::new(schedule::parse(&settings.schedule_cleanup)?);
    let analytics_tick = Arc::new(schedule::parse(&settings.schedule_analytics)?);
    scheduler
        .add(Job::new_async(settings.schedule_cleanup.as_str(), move |_, _| {
            let (db, queues, config, cleanup_tick) =
                (db.clone(), queues.clone(), config.clone(), cleanup_tick.clone());
            Box::pin(async move {
                let slot = schedule::tick(&cleanup_tick, Utc::now());
                if let Err(e) = tasks::cleanup(&db, &queues, &config, slot).await {
                    tracing::error!(task = "cleanup", error = %e, "scheduled task failed");
                }
            })
        })?)
        .await?;
    if settings.order_expiry().is_none() {
        // Expiry is off: no pending order shows an expiry time that will not happen.
        let db = pool.clone();
        tokio::spawn(async move {
            match crate::features::orders::clear_expiry(&db).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(cleared = n, "order expiry is off; pending orders' expiry times cleared")
                }
                Err(e) => tracing::warn!(error = %e, "clearing the expiry times of pending orders failed"),
            }
        });
    }
    if let Some(timeout) = settings.order_expiry() {
        let (db, wakeup) = (pool.clone(), Wakeup::new(pool.clone()));
        let expiry_tick = Arc::new(schedule::parse(&settings.schedule_order_expiry)?);
        scheduler
            .add(Job::new_async(settings.schedule_order_expiry.as_str(), move |_, _| {
                let (db, wakeup, expiry_tick) = (db.clone(), wakeup.clone(), expiry_tick.clone());
                Box::pin(async move {
                    let slot = schedule::tick(&expiry_tick, Utc::now());
                    if let Err(e) = tasks::expire_orders(&db, &wakeup, timeout, slot).await {
                        tracing::error!(task = "order-expiry", error = %e, "scheduled task failed");
                    }
                })
            })?)
            .await?;
    }
    let db = pool;
    scheduler
        .add(Job::new_async(settings.schedule_analytics.as_str(), move |_, _| {
            let (db, analytics_tick) = (db.clone(), analytics_tick.clone());
            Box::pin(async move {
                let slot = schedule::tick(&analytics_tick, Utc::now());
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
        order_expiry = %settings.order_expiry().map_or("off".to_owned(), |_| settings.schedule_order_expiry.clone()),
        "scheduler started (UTC)"
    );
    Ok(scheduler)
}
