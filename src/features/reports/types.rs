//! Request and response bodies of `/reports`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::{Validate, ValidationErrors};

pub use super::domain::{ReportStatus, ReportType};
use super::{
    domain::{Bound, resolve_range},
    repository::ReportRow,
};
use crate::platform::http::{error::FieldErrors, extract::into_validation_errors};

/// `POST /reports`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateReportRequest {
    #[serde(rename = "type")]
    pub kind: ReportType,
    /// A UTC date (`2026-11-01`, from its midnight) or an RFC 3339 instant. Default:
    /// 30 days before `to`.
    #[schema(value_type = Option<String>, example = "2026-11-01")]
    pub from: Option<Bound>,
    /// A UTC date (that whole day included) or an RFC 3339 instant (excluded). Default:
    /// the end of today. At most 366 days after `from`.
    #[schema(value_type = Option<String>, example = "2026-11-30")]
    pub to: Option<Bound>,
}

impl CreateReportRequest {
    /// The range `[from, to)` this request means.
    pub fn range(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), super::domain::RangeError> {
        resolve_range(self.from, self.to, now)
    }
}

impl Validate for CreateReportRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = FieldErrors::new();
        if let Err(e) = self.range(Utc::now()) {
            errors.insert(e.field.into(), vec![e.message.to_owned()]);
        }
        into_validation_errors(errors)
    }
}

/// Filters of `GET /reports`.
#[derive(Debug, Default, Deserialize, validator::Validate, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ReportFilter {
    pub status: Option<ReportStatus>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<ReportType>,
}

/// A report.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportResponse {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: ReportType,
    pub status: ReportStatus,
    /// Start of the covered range (included).
    pub from: DateTime<Utc>,
    /// End of the covered range (excluded).
    pub to: DateTime<Utc>,
    /// The admin who asked for it.
    pub requested_by: Uuid,
    /// Data rows in the CSV (the header not counted), once completed.
    #[schema(minimum = 0)]
    pub row_count: Option<i32>,
    /// Why it failed, in words: one fixed sentence (51 characters).
    #[schema(max_length = 51)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Where to fetch the CSV once completed.
    #[schema(
        example = "/api/v1/reports/5f0c3a52-8d2e-4c1b-9a77-0b6f4e1d2c3a/download",
        min_length = 61,
        max_length = 61,
        pattern = "^/api/v1/reports/[0-9a-f-]{36}/download$"
    )]
    pub download_url: String,
}

impl From<ReportRow> for ReportResponse {
    fn from(r: ReportRow) -> Self {
        Self {
            download_url: format!("/api/v1/reports/{}/download", r.id),
            id: r.id,
            kind: r.kind,
            status: r.status,
            from: r.range_from,
            to: r.range_to,
            requested_by: r.requested_by,
            row_count: r.row_count,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
        }
    }
}
