//! Report rules without I/O: types and statuses, the requested range, the CSV cell
//! rule, the file name.

use std::borrow::Cow;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// What a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "report_type", rename_all = "lowercase")]
pub enum ReportType {
    /// One row per UTC day: orders, items, revenue (cancelled orders excluded).
    Sales,
    /// One row per product (archived included): stock, price, units sold in the range.
    Inventory,
}

impl ReportType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sales => "sales",
            Self::Inventory => "inventory",
        }
    }
}

/// Where a report is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "report_status", rename_all = "lowercase")]
pub enum ReportStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

/// Longest range a report may cover.
pub const MAX_RANGE_DAYS: i64 = 366;
/// The range when none is given: the last 30 UTC days, today included.
pub const DEFAULT_RANGE_DAYS: i64 = 30;

/// A bound of a requested range: a UTC date or an RFC 3339 instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Date(NaiveDate),
    Instant(DateTime<Utc>),
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
            return Ok(Self::Instant(t.with_timezone(&Utc)));
        }
        NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .map(Self::Date)
            .map_err(|_| serde::de::Error::custom("must be a date (YYYY-MM-DD) or an RFC 3339 instant"))
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_time(NaiveTime::MIN).and_utc()
}

/// Why a range is refused, with the field to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    pub field: &'static str,
    pub message: &'static str,
}

/// The half-open range `[from, to)` a request means. A date as `from` is its midnight;
/// a date as `to` includes that whole day. Defaults: `to` the end of today, `from` 30
/// days before `to`.
pub fn resolve_range(
    from: Option<Bound>,
    to: Option<Bound>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), RangeError> {
    let to = match to {
        Some(Bound::Date(d)) => midnight(d) + Duration::days(1),
        Some(Bound::Instant(t)) => t,
        None => midnight(now.date_naive()) + Duration::days(1),
    };
    let from = match from {
        Some(Bound::Date(d)) => midnight(d),
        Some(Bound::Instant(t)) => t,
        None => to - Duration::days(DEFAULT_RANGE_DAYS),
    };
    if from >= to {
        return Err(RangeError { field: "from", message: "must be before `to`" });
    }
    if to - from > Duration::days(MAX_RANGE_DAYS) {
        return Err(RangeError { field: "to", message: "the range must not exceed 366 days" });
    }
    Ok((from, to))
}

/// A CSV cell a spreadsheet will not run as a formula (OWASP CSV injection): text that
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`.
pub fn safe_cell(value: &str) -> Cow<'_, str> {
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{value}")),
        _ => Cow::Borrowed(value),
    }
}

/// `sales-2026-11-01-2026-11-30.csv`: the type, the first and the last day covered.
pub fn file_name(kind: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let last = (to - Duration::microseconds(1)).date_naive();
    format!("{kind}-{}-{last}.csv", from.date_naive())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> Option<Bound> {
        Some(Bound::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()))
    }

    #[test]
    fn dates_cover_whole_days_and_the_default_is_the_last_30_days() {
        let now = at("2026-12-01T15:00:00Z");
        let (from, to) = resolve_range(date("2026-11-01"), date("2026-11-30"), now).unwrap();
        assert_eq!((from, to), (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z")));
        let (from, to) = resolve_range(None, None, now).unwrap();
        assert_eq!((from, to), (at("2026-11-02T00:00:00Z"), at("2026-12-02T00:00:00Z")));
        let (from, _) = resolve_range(Some(Bound::Instant(at("2026-11-05T10:00:00Z"))), None, now).unwrap();
        assert_eq!(from, at("2026-11-05T10:00:00Z"));
        assert_eq!(
            file_name("sales", at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z")),
            "sales-2026-11-01-2026-11-30.csv"
        );
    }

    #[test]
    fn reversed_and_too_long_ranges_name_the_field() {
        let now = at("2026-12-01T15:00:00Z");
        assert_eq!(resolve_range(date("2026-11-30"), date("2026-11-01"), now).unwrap_err().field, "from");
        assert_eq!(resolve_range(date("2025-01-01"), date("2026-11-01"), now).unwrap_err().field, "to");
        assert!(resolve_range(date("2025-12-01"), date("2026-11-30"), now).is_ok(), "365 days");
    }

    #[test]
    fn cells_that_a_spreadsheet_would_run_are_neutralised() {
        assert_eq!(safe_cell("=HYPERLINK(\"http://x\")"), "'=HYPERLINK(\"http://x\")");
        for risky in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(safe_cell(risky).starts_with('\''), "{risky:?}");
        }
        assert_eq!(safe_cell("Mug"), "Mug");
        assert_eq!(safe_cell(""), "");
    }
}
