//! SQL of `reports` and `report_chunks`. One statement per function; callers own
//! transactions.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::domain::{ReportStatus, ReportType};

/// A report as stored.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub id: Uuid,
    pub kind: ReportType,
    pub status: ReportStatus,
    pub range_from: DateTime<Utc>,
    pub range_to: DateTime<Utc>,
    pub requested_by: Uuid,
    pub row_count: Option<i32>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    kind: ReportType,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    requested_by: Uuid,
) -> sqlx::Result<ReportRow> {
    sqlx::query_as!(
        ReportRow,
        r#"insert into reports (type, range_from, range_to, requested_by) values ($1, $2, $3, $4)
           returning id, type as "kind: ReportType", status as "status: ReportStatus", range_from, range_to,
                     requested_by, row_count, error, created_at, started_at, completed_at"#,
        kind as ReportType,
        from,
        to,
        requested_by
    )
    .fetch_one(db)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<ReportRow>> {
    sqlx::query_as!(
        ReportRow,
        r#"select id, type as "kind: ReportType", status as "status: ReportStatus", range_from, range_to,
                  requested_by, row_count, error, created_at, started_at, completed_at
           from reports where id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// A page of reports, newest first, with the total that match.
pub async fn list(
    db: &PgPool,
    status: Option<ReportStatus>,
    kind: Option<ReportType>,
    limit: i64,
    offset: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> sqlx::Result<Vec<ReportRow>> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as!(
        ReportRow,
        r#"select id, type as "kind: ReportType", status as "status: ReportStatus", range_from, range_to,
                  requested_by, row_count, error, created_at, started_at, completed_at
           from reports
           where ($1::report_status is null or status = $1) and ($2::report_type is null or type = $2)
             and ($5::timestamptz is null or (created_at, id) < ($5, $6::uuid))
           order by created_at desc, id desc limit $3 offset $4"#,
        status as Option<ReportStatus>,
        kind as Option<ReportType>,
        limit,
        offset,
        after_at,
        after_id,
    )
    .fetch_all(db)
    .await
}

/// Reports matching the filters, every one of them.
pub async fn count(db: &PgPool, status: Option<ReportStatus>, kind: Option<ReportType>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from reports
           where ($1::report_status is null or status = $1) and ($2::report_type is null or type = $2)"#,
        status as Option<ReportStatus>,
        kind as Option<ReportType>
    )
    .fetch_one(db)
    .await
}

/// Marks report `id` running (from queued, or again after a crash or a failure); `None`
/// if it is completed or gone. A previous attempt left no chunks: they commit only with
/// the completion.
pub async fn start(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<ReportRow>> {
    sqlx::query_as!(
        ReportRow,
        r#"update reports set status = 'running', started_at = now(), error = null
           where id = $1 and status <> 'completed'
           returning id, type as "kind: ReportType", status as "status: ReportStatus", range_from, range_to,
                     requested_by, row_count, error, created_at, started_at, completed_at"#,
        id
    )
    .fetch_optional(db)
    .await
}

pub async fn insert_chunk(db: impl PgExecutor<'_>, id: Uuid, seq: i32, data: &[u8]) -> sqlx::Result<()> {
    sqlx::query!("insert into report_chunks (report_id, seq, data) values ($1, $2, $3)", id, seq, data)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn complete(db: impl PgExecutor<'_>, id: Uuid, row_count: i32) -> sqlx::Result<()> {
    sqlx::query!(
        "update reports set status = 'completed', row_count = $2, completed_at = now(), error = null where id = $1",
        id,
        row_count
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Marks report `id` failed with `reason`, unless it completed meanwhile.
pub async fn fail(db: impl PgExecutor<'_>, id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "update reports set status = 'failed', error = $2 where id = $1 and status <> 'completed'",
        id,
        reason
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Chunk `seq` of report `id`'s file (`None` past the last).
pub async fn chunk(db: impl PgExecutor<'_>, id: Uuid, seq: i32) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar!("select data from report_chunks where report_id = $1 and seq = $2", id, seq)
        .fetch_optional(db)
        .await
}

/// Deletes reports (their files go with the rows) created before `before`, in batches;
/// how many.
pub async fn delete_created_before(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from reports where id = any(array(select id from reports where created_at < $1 limit $2))",
            before,
            n
        )
    })
    .await
}
