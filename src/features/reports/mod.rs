//! Reports: admins request a sales or inventory CSV; the `reports` queue's
//! worker generates it by streaming rows into chunks stored in Postgres (so every API
//! instance can serve the download), marks it completed and queues the `report-ready`
//! e-mail, all in one transaction.

mod domain;
mod generate;
mod handlers;
mod repository;
mod routes;
mod service;
mod types;

pub use generate::ReportJobs;
pub use routes::router;
pub use service::ReportService;

/// Reports (and their files) are kept this long.
const REPORT_RETENTION_DAYS: i64 = 30;

/// Nightly cleanup of this feature's table: reports past their retention; how many.
pub async fn delete_expired(pool: &sqlx::PgPool) -> sqlx::Result<u64> {
    repository::delete_created_before(
        pool,
        chrono::Utc::now() - chrono::Duration::days(REPORT_RETENTION_DAYS),
    )
    .await
}
