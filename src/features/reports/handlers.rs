//! HTTP handlers of `/reports`, admin only.

use axum::{
    body::Body,
    extract::{OriginalUri, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    service::ReportService,
    types::{CreateReportRequest, ReportFilter, ReportResponse},
};
use crate::{
    platform::http::{
        cursor::Cursors,
        error::{AppResult, ErrorEnvelope},
        extract::{PathParam, QueryParams, ValidJson},
        response::{ApiList, ApiOk, PageParams, Pagination, split_page},
    },
    shared::auth::{Require, perm},
};

/// Requests a report (admin). It is generated in the background; poll
/// `GET /reports/{id}` or wait for the `report-ready` e-mail.
#[utoipa::path(post, path = "/reports", tag = "reports", security(("bearer" = [])),
    request_body = CreateReportRequest,
    responses(
        (status = 202, description = "Queued; `Location` names the report", body = ApiOk<ReportResponse>,
            headers(("Location" = String, description = "/api/v1/reports/{id}"))),
        (status = 400, description = "Unknown type, a bad date, `from` after `to` or a range over 366 days", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
    ))]
pub async fn create_report(
    State(reports): State<ReportService>,
    Require(admin, _): Require<perm::ReportsManage>,
    ValidJson(body): ValidJson<CreateReportRequest>,
) -> AppResult<Response> {
    let report = reports.request(admin.id, &body).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/reports/{}", report.id)).ok();
    let mut res = (StatusCode::ACCEPTED, ApiOk::new(ReportResponse::from(report))).into_response();
    if let Some(location) = location {
        res.headers_mut().insert(header::LOCATION, location);
    }
    Ok(res)
}

/// Reports, newest first, optionally by status or type (admin).
#[utoipa::path(get, path = "/reports", tag = "reports", security(("bearer" = [])),
    params(PageParams, ReportFilter),
    responses(
        (status = 200, body = ApiList<ReportResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
    ))]
pub async fn list_reports(
    State(reports): State<ReportService>,
    State(cursors): State<Cursors>,
    _: Require<perm::ReportsManage>,
    OriginalUri(uri): OriginalUri,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<ReportFilter>,
) -> AppResult<ApiList<ReportResponse>> {
    const LIST: &str = "reports";
    let filters = (filter.status, filter.kind);
    let after = cursors.start::<(DateTime<Utc>, Uuid)>(LIST, &filters, &page)?;
    let (rows, total) = reports.list(&filter, &page, after).await?;
    let (rows, next) =
        split_page(rows, page.limit, |last| cursors.encode(LIST, &filters, &(last.created_at, last.id)));
    let pagination = Pagination::of(&page, total);
    Ok(ApiList::new(rows.into_iter().map(Into::into).collect(), pagination.next(next)).linked(&uri))
}

/// One report: status, row count, error (admin).
#[utoipa::path(get, path = "/reports/{id}", tag = "reports", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = ApiOk<ReportResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_report(
    State(reports): State<ReportService>,
    _: Require<perm::ReportsManage>,
    PathParam(id): PathParam<Uuid>,
) -> AppResult<ApiOk<ReportResponse>> {
    Ok(ApiOk::new(reports.get(id).await?.into()))
}

/// The CSV of a completed report, streamed (admin).
#[utoipa::path(get, path = "/reports/{id}/download", tag = "reports", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The CSV (RFC 4180, UTF-8, header row first)", content_type = "text/csv", body = String,
            headers(("Content-Disposition" = String, description = "attachment; filename=\"sales-2026-11-01-2026-11-30.csv\""))),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "Not completed yet", body = ErrorEnvelope),
    ))]
pub async fn download_report(
    State(reports): State<ReportService>,
    _: Require<perm::ReportsManage>,
    PathParam(id): PathParam<Uuid>,
) -> AppResult<Response> {
    let download = reports.download(id).await?;
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", download.file_name))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(download.chunks),
    )
        .into_response())
}
