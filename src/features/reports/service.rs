//! Report use cases: request (the row and its job commit together), list, read, and
//! the download as a stream of stored chunks.

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    domain::file_name,
    repository::{self, ReportRow},
    types::{CreateReportRequest, ReportFilter, ReportStatus},
};
use crate::platform::{
    http::{
        error::{AppError, AppResult},
        response::PageParams,
    },
    jobs::outbox::{self, Wakeup},
};
use crate::shared::jobs::Job;

/// A completed report's file, ready to stream.
pub struct Download {
    pub file_name: String,
    pub chunks: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, sqlx::Error>> + Send>>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ReportService {
    db: PgPool,
    wakeup: Wakeup,
}

fn not_found() -> AppError {
    AppError::NotFound("report not found".to_owned())
}

impl ReportService {
    pub fn new(db: PgPool, wakeup: Wakeup) -> Self {
        Self { db, wakeup }
    }

    /// Records the request and queues its job in one transaction (through the outbox, so
    /// a Redis outage loses nothing).
    pub async fn request(&self, admin: Uuid, body: &CreateReportRequest) -> AppResult<ReportRow> {
        let (from, to) = body.range(Utc::now()).map_err(|e| AppError::field(e.field, e.message))?;
        let mut tx = self.db.begin().await?;
        let report = repository::insert(&mut *tx, body.kind, from, to, admin).await?;
        outbox::push(&mut *tx, &Job::Report { report_id: report.id }.into()).await?;
        tx.commit().await?;
        self.wakeup.committed();
        tracing::info!(report.id = %report.id, report.kind = report.kind.as_str(), "report requested");
        Ok(report)
    }

    /// A page of reports (one row more than `page.limit`, so the caller knows whether
    /// another follows), from `after` in cursor mode; with the total in page mode.
    pub async fn list(
        &self,
        filter: &ReportFilter,
        page: &PageParams,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> AppResult<(Vec<ReportRow>, Option<i64>)> {
        let offset = if after.is_some() { 0 } else { page.offset() };
        let limit = i64::from(page.limit) + 1;
        let rows = repository::list(&self.db, filter.status, filter.kind, limit, offset, after).await?;
        let total = match after {
            Some(_) => None,
            None => Some(repository::count(&self.db, filter.status, filter.kind).await?),
        };
        Ok((rows, total))
    }

    pub async fn get(&self, id: Uuid) -> AppResult<ReportRow> {
        repository::find(&self.db, id).await?.ok_or_else(not_found)
    }

    /// The file of a completed report, read chunk by chunk as the client takes it; 409
    /// before it is completed.
    pub async fn download(&self, id: Uuid) -> AppResult<Download> {
        let report = self.get(id).await?;
        if report.status != ReportStatus::Completed {
            return Err(AppError::Conflict(format!(
                "the report is {}; download it once it is completed",
                serde_json::to_value(report.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )));
        }
        let db = self.db.clone();
        let chunks = futures::stream::try_unfold(0i32, move |seq| {
            let db = db.clone();
            async move { Ok(repository::chunk(&db, id, seq).await?.map(|data| (Bytes::from(data), seq + 1))) }
        });
        Ok(Download {
            file_name: file_name(report.kind.as_str(), report.range_from, report.range_to),
            chunks: Box::pin(chunks),
        })
    }
}
