//! Analytics rules: the default and the bounds of a queried range, and the hourly
//! roll-up run once per slot across instances.

use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;

use super::{repository, types::HourlyAnalytics};
use crate::platform::{
    http::error::{AppError, AppResult},
    schedule,
};

/// The longest range one request may ask for.
const MAX_RANGE_DAYS: i64 = 31;
/// The most hours one answer lists: one per stored hour of the longest range.
pub const MAX_RANGE_HOURS: usize = MAX_RANGE_DAYS as usize * 24;

/// The hours in `[from, to)`, oldest first. Default `to`: now; default `from`: the 24
/// hours before `to`, from the start of that first hour.
pub async fn hourly(
    db: &PgPool,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> AppResult<Vec<HourlyAnalytics>> {
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or_else(|| {
        let start = to - TimeDelta::hours(24);
        start.duration_trunc(TimeDelta::hours(1)).unwrap_or(start)
    });
    if from > to {
        return Err(AppError::field("from", "must not be after `to`"));
    }
    if to - from > TimeDelta::days(MAX_RANGE_DAYS) {
        return Err(AppError::field("to", "the range may span at most 31 days"));
    }
    Ok(repository::hours(db, from, to).await?.into_iter().map(Into::into).collect())
}

/// Hourly: (re)computes the last 24 complete hours before the hour `slot` falls in, once
/// per slot across instances. Recomputing a day's worth keeps late cancellations and a
/// missed run from leaving holes. Returns the hours written, `None` when another run had
/// the slot.
pub async fn rollup(pool: &PgPool, slot: DateTime<Utc>) -> sqlx::Result<Option<u64>> {
    let started = Instant::now();
    let Some(mut tx) = schedule::claim(pool, "analytics", slot).await? else {
        return Ok(None);
    };
    let hours = repository::rollup_day_before(&mut *tx, schedule::slot(slot, TimeDelta::hours(1))).await?;
    tx.commit().await?;
    tracing::info!(
        task = "analytics",
        hours,
        duration_ms = started.elapsed().as_millis() as u64,
        "analytics rolled up"
    );
    Ok(Some(hours))
}
