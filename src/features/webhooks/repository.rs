//! SQL of the webhooks feature: `webhook_endpoints`, `webhook_events`, `webhook_fanout`
//! and `webhook_deliveries`, this feature's tables, cleanup included.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::domain::DeliveryStatus;

/// An endpoint as stored (its secrets sealed).
#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub secret_sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert_endpoint(
    db: impl PgExecutor<'_>,
    id: Uuid,
    url: &str,
    events: &[String],
    description: Option<&str>,
    secret_sealed: &[u8],
) -> sqlx::Result<EndpointRow> {
    sqlx::query_as!(
        EndpointRow,
        "insert into webhook_endpoints (id, url, events, description, secret_sealed)
         values ($1, $2, $3, $4, $5)
         returning id, url, events, description, enabled, secret_sealed,
                   created_at, updated_at",
        id,
        url,
        events,
        description,
        secret_sealed
    )
    .fetch_one(db)
    .await
}

pub async fn find_endpoint(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as!(
        EndpointRow,
        "select id, url, events, description, enabled, secret_sealed,
                created_at, updated_at
         from webhook_endpoints where id = $1",
        id
    )
    .fetch_optional(db)
    .await
}

/// A page of endpoints, newest first, after `after` in cursor mode.
pub async fn list_endpoints(
    db: &PgPool,
    limit: i64,
    offset: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> sqlx::Result<Vec<EndpointRow>> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as!(
        EndpointRow,
        "select id, url, events, description, enabled, secret_sealed,
                created_at, updated_at
         from webhook_endpoints
         where ($3::timestamptz is null or (created_at, id) < ($3, $4::uuid))
         order by created_at desc, id desc limit $1 offset $2",
        limit,
        offset,
        after_at,
        after_id
    )
    .fetch_all(db)
    .await
}

pub async fn count_endpoints(db: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(*) as "n!" from webhook_endpoints"#).fetch_one(db).await
}

/// Applies the fields given (`None`: unchanged; `description: Some(None)` clears it).
pub async fn update_endpoint(
    db: impl PgExecutor<'_>,
    id: Uuid,
    url: Option<&str>,
    events: Option<&[String]>,
    description: Option<Option<&str>>,
    enabled: Option<bool>,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as!(
        EndpointRow,
        "update webhook_endpoints set
             url = coalesce($2, url),
             events = coalesce($3, events),
             description = case when $4 then $5 else description end,
             enabled = coalesce($6, enabled),
             updated_at = now()
         where id = $1
         returning id, url, events, description, enabled, secret_sealed,
                   created_at, updated_at",
        id,
        url,
        events,
        description.is_some(),
        description.flatten(),
        enabled
    )
    .fetch_optional(db)
    .await
}

/// Replaces the secret, keeping the current one signing until `previous_until` (none
/// when the grace is zero).
pub async fn rotate_secret(
    db: impl PgExecutor<'_>,
    id: Uuid,
    secret_sealed: &[u8],
    previous_sealed: Option<&[u8]>,
    previous_until: Option<DateTime<Utc>>,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as!(
        EndpointRow,
        "update webhook_endpoints set secret_sealed = $2, previous_sealed = $3, previous_until = $4,
                updated_at = now()
         where id = $1
         returning id, url, events, description, enabled, secret_sealed,
                   created_at, updated_at",
        id,
        secret_sealed,
        previous_sealed,
        previous_until
    )
    .fetch_optional(db)
    .await
}

/// The newest endpoint's id and sealed secret, if any endpoint exists.
pub async fn newest_sealed(db: impl PgExecutor<'_>) -> sqlx::Result<Option<(Uuid, Vec<u8>)>> {
    let row = sqlx::query!(
        "select id, secret_sealed from webhook_endpoints order by created_at desc, id desc limit 1"
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.id, r.secret_sealed)))
}

/// Deletes an endpoint and, with it, its deliveries; whether it existed.
pub async fn delete_endpoint(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query!("delete from webhook_endpoints where id = $1", id)
        .execute(db)
        .await
        .map(|r| r.rows_affected() == 1)
}

/// Deliveries not yet made, and the endpoints that have any waiting for a retry (their
/// last attempt failed): the two webhook gauges. Both read the pending rows only
/// (through their partial index).
pub async fn pending_and_failing(db: impl PgExecutor<'_>) -> sqlx::Result<(i64, i64)> {
    let row = sqlx::query!(
        r#"select count(*) as "pending!",
                  count(distinct endpoint_id) filter (where attempts > 0) as "failing!"
           from webhook_deliveries where status = 'pending'"#
    )
    .fetch_one(db)
    .await?;
    Ok((row.pending, row.failing))
}

/// Claims up to `batch` due deliveries, at most `per_endpoint` in flight per endpoint
/// (counting those already leased), leasing each for `lease_secs`; their ids and the
/// number of the attempt each is about to make. The caller holds the dispatch lock.
/// Per endpoint it reads its leased deliveries and then its due ones, oldest first, only
/// as many as it has free slots: a backlog of any length costs a round nothing.
pub async fn claim_due(
    db: impl PgExecutor<'_>,
    per_endpoint: i64,
    batch: i64,
    lease_secs: f64,
) -> sqlx::Result<Vec<(Uuid, i32)>> {
    let rows = sqlx::query!(
        r#"with free as (
               select e.id, $1 - (select count(*) from webhook_deliveries b
                                  where b.endpoint_id = e.id and b.status = 'pending'
                                    and b.leased_until > now()) as n
               from webhook_endpoints e),
           due as (
               select d.id from free cross join lateral (
                   select d.id, d.next_attempt_at from webhook_deliveries d
                   where d.endpoint_id = free.id and d.status = 'pending' and d.next_attempt_at <= now()
                     and (d.leased_until is null or d.leased_until <= now())
                   order by d.next_attempt_at, d.id limit greatest(free.n, 0)) d
               order by d.next_attempt_at limit $2)
           update webhook_deliveries w set leased_until = now() + make_interval(secs => $3)
           from due where w.id = due.id
           returning w.id, w.attempts + 1 as "attempt!""#,
        per_endpoint,
        batch,
        lease_secs
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.attempt)).collect())
}

/// Writes the deliveries of up to `batch` events waiting in the fan-out queue (a heap
/// read in its own order: every event in it is due): one per endpoint the event recorded
/// that still exists. How many events left the queue. The caller holds the dispatch lock.
pub async fn fan_out(db: impl PgExecutor<'_>, batch: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"with batch as (
               delete from webhook_fanout where ctid = any(array(
                   select ctid from webhook_fanout limit $1 for update skip locked))
               returning event_id),
           written as (
               insert into webhook_deliveries (id, endpoint_id, event_id, next_attempt_at)
               select gen_random_uuid(), e.id, ev.id, now()
               from batch
               join webhook_events ev on ev.id = batch.event_id
               cross join lateral unnest(ev.endpoint_ids) as t(id)
               join webhook_endpoints e on e.id = t.id
               on conflict (endpoint_id, event_id) do nothing
               returning 1)
           select (select count(*) from batch) as "events!""#,
        batch
    )
    .fetch_one(db)
    .await
}

/// Takes the transaction-scoped lock that makes one process at a time dispatch.
pub async fn try_dispatch_lock(db: impl PgExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select pg_try_advisory_xact_lock(hashtextextended('webhook-dispatch', 0)) as "got!""#
    )
    .fetch_one(db)
    .await
}

/// What an attempt needs: the delivery, its endpoint and its event.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub url: String,
    pub secret_sealed: Vec<u8>,
    pub previous_sealed: Option<Vec<u8>>,
    pub previous_until: Option<DateTime<Utc>>,
    /// `None` when the event's order no longer exists.
    pub body: Option<serde_json::Value>,
    pub event_created_at: DateTime<Utc>,
}

pub async fn load_attempt(db: impl PgExecutor<'_>, delivery: Uuid) -> sqlx::Result<Option<AttemptRow>> {
    sqlx::query_as!(
        AttemptRow,
        r#"select d.id as delivery_id, d.endpoint_id, d.event_id, d.status as "status: DeliveryStatus",
                  d.attempts, e.url, e.secret_sealed, e.previous_sealed, e.previous_until,
                  webhook_event_body(ev) as body,
                  ev.created_at as event_created_at
           from webhook_deliveries d
           join webhook_endpoints e on e.id = d.endpoint_id
           join webhook_events ev on ev.id = d.event_id
           where d.id = $1"#,
        delivery
    )
    .fetch_optional(db)
    .await
}

/// Records attempt number `attempt` of `delivery`: its answer, and what comes next
/// (`delivered`, `failed`, or `pending` again at `next_attempt_at`). Nothing changes when
/// another attempt already counted (a duplicate job).
#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    db: impl PgExecutor<'_>,
    delivery: Uuid,
    attempt: i32,
    status: DeliveryStatus,
    status_code: Option<i32>,
    error: Option<&str>,
    next_attempt_at: Option<DateTime<Utc>>,
) -> sqlx::Result<bool> {
    sqlx::query!(
        "update webhook_deliveries set
             attempts = $2, status = $3, last_status_code = $4, last_error = left($5, 500),
             next_attempt_at = $6, leased_until = null,
             delivered_at = case when $3 = 'delivered'::webhook_delivery_status then now() end
         where id = $1 and attempts = $2 - 1 and status = 'pending'",
        delivery,
        attempt,
        status as DeliveryStatus,
        status_code,
        error,
        next_attempt_at
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// A delivery as listed.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub kind: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A page of `endpoint`'s deliveries, newest first.
pub async fn list_deliveries(
    db: &PgPool,
    endpoint: Uuid,
    status: Option<DeliveryStatus>,
    limit: i64,
    offset: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> sqlx::Result<Vec<DeliveryRow>> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as!(
        DeliveryRow,
        r#"select d.id, d.event_id, e.type as kind, d.status as "status: DeliveryStatus", d.attempts,
                  d.last_status_code, d.last_error, d.next_attempt_at, d.created_at, d.delivered_at
           from webhook_deliveries d join webhook_events e on e.id = d.event_id
           where d.endpoint_id = $1 and ($2::webhook_delivery_status is null or d.status = $2)
             and ($5::timestamptz is null or (d.created_at, d.id) < ($5, $6::uuid))
           order by d.created_at desc, d.id desc limit $3 offset $4"#,
        endpoint,
        status as Option<DeliveryStatus>,
        limit,
        offset,
        after_at,
        after_id
    )
    .fetch_all(db)
    .await
}

/// How many deliveries of `endpoint` (with `status`) there are.
pub async fn count_deliveries(
    db: &PgPool,
    endpoint: Uuid,
    status: Option<DeliveryStatus>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from webhook_deliveries
           where endpoint_id = $1 and ($2::webhook_delivery_status is null or status = $2)"#,
        endpoint,
        status as Option<DeliveryStatus>
    )
    .fetch_one(db)
    .await
}

/// A failed delivery pending again with fresh attempts; whether it was failed.
pub async fn retry_delivery(db: impl PgExecutor<'_>, endpoint: Uuid, id: Uuid) -> sqlx::Result<Option<bool>> {
    let row = sqlx::query_scalar!(
        r#"with found as (select id, status from webhook_deliveries where id = $2 and endpoint_id = $1),
           retried as (
               update webhook_deliveries d set status = 'pending', attempts = 0, next_attempt_at = now(),
                      leased_until = null, last_error = null, last_status_code = null
               from found where d.id = found.id and found.status = 'failed'
               returning d.id)
           select exists (select 1 from retried) as "retried!" from found"#,
        endpoint,
        id
    )
    .fetch_optional(db)
    .await?;
    Ok(row)
}

/// Nightly cleanup: events older than `before` and, with them, their deliveries.
pub async fn delete_events_before(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from webhook_events where id = any(array(
                 select id from webhook_events where created_at < $1 limit $2))",
            before,
            n
        )
    })
    .await
}
