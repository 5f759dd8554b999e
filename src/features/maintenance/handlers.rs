//! `GET /admin/analytics` (SPEC §8).

use chrono::{DateTime, Datelike, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::shared::{
    auth::{Require, perm},
    error::{AppError, AppResult, ErrorEnvelope},
    extract::QueryParams,
    response::ApiOk,
};

/// Range of `GET /admin/analytics` (RFC 3339; default: the last 24 hours, at most 31 days).
#[derive(Debug, Deserialize, validator::Validate, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// One hour of activity.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HourlyAnalytics {
    pub hour: DateTime<Utc>,
    /// Orders placed in the hour and not cancelled.
    pub orders: i32,
    pub items: i32,
    pub revenue_cents: i64,
    pub new_users: i32,
}

/// Hourly orders, items, revenue and new users in a range, oldest first (admin).
#[utoipa::path(get, path = "/admin/analytics", tag = "admin", security(("bearer" = [])),
    params(AnalyticsRange),
    responses(
        (status = 200, body = ApiOk<Vec<HourlyAnalytics>>),
        (status = 400, description = "`from` after `to`, or a range over 31 days", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
    ))]
pub async fn get_analytics(
    axum::extract::State(db): axum::extract::State<PgPool>,
    _: Require<perm::AnalyticsRead>,
    QueryParams(range): QueryParams<AnalyticsRange>,
) -> AppResult<ApiOk<Vec<HourlyAnalytics>>> {
    // Timestamps far outside any data (or Postgres' range) are a client mistake.
    let sane = |t: &DateTime<Utc>| (2000..=9999).contains(&t.year());
    if !range.from.as_ref().is_none_or(sane) {
        return Err(AppError::field("from", "must be between the years 2000 and 9999"));
    }
    if !range.to.as_ref().is_none_or(sane) {
        return Err(AppError::field("to", "must be between the years 2000 and 9999"));
    }
    let to = range.to.unwrap_or_else(Utc::now);
    // Default: the 24 hours before `to`, from the start of that first hour.
    let from = range.from.unwrap_or_else(|| {
        let start = to - TimeDelta::hours(24);
        start.duration_trunc(TimeDelta::hours(1)).unwrap_or(start)
    });
    if from > to {
        return Err(AppError::field("from", "must not be after `to`"));
    }
    if to - from > TimeDelta::days(31) {
        return Err(AppError::field("to", "the range may span at most 31 days"));
    }
    let rows = sqlx::query_as!(
        HourlyAnalytics,
        "select hour, orders, items, revenue_cents, new_users from analytics_hourly
         where hour >= $1 and hour < $2 order by hour",
        from,
        to
    )
    .fetch_all(&db)
    .await?;
    Ok(ApiOk::new(rows))
}
