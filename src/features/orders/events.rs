//! SQL for `order_events`, an order's history: one row per change, written by the
//! transaction that makes the change, read oldest first.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, types::Json};
use uuid::Uuid;

use super::domain::{Actor, ActorKind, EventType, OrderStatus};

/// A change to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub order_id: Uuid,
    pub kind: EventType,
    pub from: Option<OrderStatus>,
    pub to: Option<OrderStatus>,
    pub actor: Actor,
    /// Facts (amounts, provider ids, a reason); never a secret.
    pub detail: Value,
}

impl NewEvent {
    /// A status change from `from` to `to`, typed by its cause.
    pub fn status(order_id: Uuid, kind: EventType, from: OrderStatus, to: OrderStatus, actor: Actor) -> Self {
        Self {
            order_id,
            kind,
            from: Some(from),
            to: Some(to),
            actor,
            detail: Value::Object(Default::default()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: Uuid,
    pub seq: i64,
    pub kind: EventType,
    pub from_status: Option<OrderStatus>,
    pub to_status: Option<OrderStatus>,
    pub actor_kind: ActorKind,
    pub actor_user_id: Option<Uuid>,
    pub detail: Json<Value>,
    pub created_at: DateTime<Utc>,
}

/// Writes `event`; the caller's transaction is the change's.
pub async fn record(db: impl PgExecutor<'_>, event: &NewEvent) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into order_events (id, order_id, type, from_status, to_status, actor_kind, actor_user_id, detail)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        Uuid::now_v7(),
        event.order_id,
        event.kind as EventType,
        event.from as Option<OrderStatus>,
        event.to as Option<OrderStatus>,
        event.actor.kind as ActorKind,
        event.actor.user_id,
        Json(&event.detail) as Json<&Value>,
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// How many events `order_id` has (an order's history is a handful of rows: the count
/// reads them from the index).
pub async fn count(db: impl PgExecutor<'_>, order_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(*) as "n!" from order_events where order_id = $1"#, order_id)
        .fetch_one(db)
        .await
}

/// Up to `limit` events of `order_id`, oldest first, after `offset` rows or after the
/// event numbered `after`.
pub async fn list(
    db: impl PgExecutor<'_>,
    order_id: Uuid,
    limit: i64,
    offset: i64,
    after: Option<i64>,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as!(
        EventRow,
        r#"select id, seq, type as "kind: EventType", from_status as "from_status: OrderStatus",
                  to_status as "to_status: OrderStatus", actor_kind as "actor_kind: ActorKind",
                  actor_user_id, detail as "detail: Json<Value>", created_at
           from order_events
           where order_id = $1 and seq > coalesce($4::bigint, 0)
           order by seq
           limit $2 offset $3"#,
        order_id,
        limit,
        offset,
        after,
    )
    .fetch_all(db)
    .await
}
