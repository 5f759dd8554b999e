//! HTTP handlers of `/admin/jobs`. They read and change Redis; when Redis does
//! not answer they answer 503.

use axum::{
    extract::{OriginalUri, State},
    http::StatusCode,
};

use super::types::{DeadJobFilter, DeadJobResponse, QueueCountsResponse, RetriedJob};
use crate::{
    platform::{
        http::{
            cursor::Cursors,
            error::{AppError, AppResult, ErrorEnvelope},
            extract::{PathParam, QueryParams},
            response::{ApiList, ApiOk, PageParams, Pagination, split_page},
        },
        jobs::{
            Queues,
            store::{self, DeadFrom},
        },
    },
    shared::auth::{Require, perm},
};

fn unavailable(e: redis::RedisError) -> AppError {
    AppError::ServiceUnavailable("the job store is unavailable, try again".to_owned())
        .because(format_args!("job store unavailable: {e}"))
}

/// Jobs per queue and state (admin).
#[utoipa::path(get, path = "/admin/jobs", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, body = ApiOk<Vec<QueueCountsResponse>>),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, description = "Redis is unavailable", body = ErrorEnvelope),
    ))]
pub async fn job_counts(
    State(queues): State<Queues>,
    _: Require<perm::JobsManage>,
) -> AppResult<ApiOk<Vec<QueueCountsResponse>>> {
    let counts = store::counts(&queues).await.map_err(unavailable)?;
    Ok(ApiOk::new(counts.into_iter().map(Into::into).collect()))
}

/// Dead jobs, newest first, optionally of one queue (admin). Identifiers, attempts, the
/// last error and times; never a payload. Page mode (with `total`) or cursor mode (follow
/// `nextCursor`; the same cost at any depth).
#[utoipa::path(get, path = "/admin/jobs/dead", tag = "admin", security(("bearer" = [])),
    params(PageParams, DeadJobFilter),
    responses(
        (status = 200, body = ApiList<DeadJobResponse>),
        (status = 400, description = "Bad page, limit, cursor or queue", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, description = "Redis is unavailable", body = ErrorEnvelope),
    ))]
pub async fn dead_jobs(
    State(queues): State<Queues>,
    State(cursors): State<Cursors>,
    _: Require<perm::JobsManage>,
    OriginalUri(uri): OriginalUri,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<DeadJobFilter>,
) -> AppResult<ApiList<DeadJobResponse>> {
    const LIST: &str = "dead-jobs";
    let filters = filter.queue.as_deref();
    let from = match cursors.start::<String>(LIST, &filters, &page)? {
        Some(after) => DeadFrom::After(after),
        None => DeadFrom::Offset(u64::try_from(page.offset()).unwrap_or(0)),
    };
    let cursor_mode = page.cursor.is_some();
    let found =
        store::dead_page(&queues, filters, from, u64::from(page.limit) + 1).await.map_err(unavailable)?;
    let (jobs, next) = split_page(found.jobs, page.limit, |last| cursors.encode(LIST, &filters, &last.id));
    let total = (!cursor_mode).then(|| i64::try_from(found.total).unwrap_or(i64::MAX));
    let pagination = Pagination::of(&page, total).next(next);
    Ok(ApiList::new(jobs.into_iter().map(Into::into).collect(), pagination).linked(&uri))
}

/// Runs a dead job again with fresh attempts (admin). E-mail jobs still send at most
/// once per outbox id, so retrying one that did get through sends nothing.
#[utoipa::path(post, path = "/admin/jobs/dead/{id}/retry", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "The dead job's id (a ULID; anything else is no dead job: 404)",
        min_length = 26, max_length = 26, pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")),
    responses(
        (status = 202, description = "Queued again", body = ApiOk<RetriedJob>),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, description = "No dead job has this id", body = ErrorEnvelope),
        (status = 503, description = "Redis is unavailable", body = ErrorEnvelope),
    ))]
pub async fn retry_dead_job(
    State(queues): State<Queues>,
    Require(admin, _): Require<perm::JobsManage>,
    PathParam(id): PathParam<String>,
) -> AppResult<(StatusCode, ApiOk<RetriedJob>)> {
    let Some(queue) = store::requeue_dead(&queues, &id).await.map_err(unavailable)? else {
        return Err(AppError::NotFound("no dead job has this id".to_owned()));
    };
    tracing::info!(job.id = %id, queue, admin.id = %admin.id, "dead job queued again");
    Ok((StatusCode::ACCEPTED, ApiOk::new(RetriedJob { id, queue: queue.to_owned(), status: "pending" })))
}
