//! HTTP handlers of `/admin/analytics`.

use axum::extract::State;
use sqlx::PgPool;

use super::{
    service,
    types::{AnalyticsRange, HourlyAnalytics},
};
use crate::{
    platform::http::{
        error::{AppResult, ErrorEnvelope},
        extract::QueryParams,
        response::ApiOk,
    },
    shared::auth::{Require, perm},
};

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
    State(db): State<PgPool>,
    _: Require<perm::AnalyticsRead>,
    QueryParams(range): QueryParams<AnalyticsRange>,
) -> AppResult<ApiOk<Vec<HourlyAnalytics>>> {
    Ok(ApiOk::new(service::hourly(&db, range.from, range.to).await?))
}
