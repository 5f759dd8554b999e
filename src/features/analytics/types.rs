//! Query and response bodies of `GET /admin/analytics`.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::{Validate, ValidationError};

use super::repository::HourRow;
use crate::platform::http::extract::struct_error;

/// Range of `GET /admin/analytics` (RFC 3339; default: the last 24 hours, at most 31 days).
#[derive(Debug, Deserialize, Validate, IntoParams)]
#[into_params(parameter_in = Query)]
#[validate(schema(function = "sane_years"))]
pub struct AnalyticsRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Timestamps far outside any data (or Postgres' range) are a client mistake.
fn sane_years(range: &AnalyticsRange) -> Result<(), ValidationError> {
    let sane = |t: &Option<DateTime<Utc>>| t.as_ref().is_none_or(|t| (2000..=9999).contains(&t.year()));
    if !sane(&range.from) {
        return Err(struct_error("from", "must be between the years 2000 and 9999"));
    }
    if !sane(&range.to) {
        return Err(struct_error("to", "must be between the years 2000 and 9999"));
    }
    Ok(())
}

/// One hour of activity.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HourlyAnalytics {
    pub hour: DateTime<Utc>,
    /// Orders placed in the hour and not cancelled.
    #[schema(minimum = 0)]
    pub orders: i32,
    #[schema(minimum = 0)]
    pub items: i32,
    #[schema(minimum = 0)]
    pub revenue_cents: i64,
    #[schema(minimum = 0)]
    pub new_users: i32,
}

impl From<HourRow> for HourlyAnalytics {
    fn from(r: HourRow) -> Self {
        Self {
            hour: r.hour,
            orders: r.orders,
            items: r.items,
            revenue_cents: r.revenue_cents,
            new_users: r.new_users,
        }
    }
}
