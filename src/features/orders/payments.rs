//! An order's payments: the `payments` table (written only here) and the rules that move
//! an order and its payment together.
//!
//! Every change locks the order's row first (`for update`), then reads or writes its
//! payment: the order's row lock serialises a webhook, a cancel and the expiry of one
//! order, so a payment that succeeds while the order expires ends in exactly one of two
//! ways: the order paid (no restock), or the order cancelled and restocked with the
//! money refunded. A payment's status only moves forward
//! (`requires_payment → failed ⇄ requires_payment → succeeded → refund_pending →
//! refunded`): a late `failed` never undoes a `succeeded`.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{
    domain::{Actor, ActorKind, EventType, OrderStatus, PaymentStatus},
    events::{self, NewEvent},
    repository,
};
use crate::{
    platform::{http::error::AppResult, jobs::outbox},
    shared::jobs::Job,
};

/// One payment attempt at the provider.
#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub provider: String,
    pub provider_payment_id: String,
    pub status: PaymentStatus,
    pub amount_cents: i64,
    pub currency: String,
    /// The n of the next call's idempotency key (refund, cancel).
    pub call_key_seq: i32,
    pub refund_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An order as starting its payment sees it, under its row lock.
#[derive(Debug, Clone)]
pub struct PayableOrder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    /// The n of the next intent's idempotency key.
    pub payment_key_seq: i32,
    /// Its current (newest) payment.
    pub current: Option<PaymentRow>,
}

/// The provider as history names it.
const PROVIDER: Actor = Actor { kind: ActorKind::Provider, user_id: None };

async fn current_payment(db: impl PgExecutor<'_>, order_id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as!(
        PaymentRow,
        r#"select id, order_id, provider, provider_payment_id, status as "status: PaymentStatus",
                  amount_cents, currency, call_key_seq, refund_requested_at, created_at
           from payments where order_id = $1 order by created_at desc, id desc limit 1"#,
        order_id
    )
    .fetch_optional(db)
    .await
}

/// Locks `order_id`'s row and reads it with its current payment; `None` when there is no
/// such order.
pub async fn lock_payable(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<PayableOrder>> {
    let order = sqlx::query!(
        r#"select id, user_id, status as "status: OrderStatus", total_cents, currency, payment_key_seq
           from orders where id = $1 for update"#,
        order_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(o) = order else { return Ok(None) };
    let current = current_payment(&mut *conn, order_id).await?;
    Ok(Some(PayableOrder {
        id: o.id,
        user_id: o.user_id,
        status: o.status,
        total_cents: o.total_cents,
        currency: o.currency,
        payment_key_seq: o.payment_key_seq,
        current,
    }))
}

/// Moves the order's intent key on from `seen`: after the provider answered an error (it
/// would replay that error for the same key), or when a new intent is needed. A compare
/// and set: of requests that saw the same key, one moves it on, once, and all then use
/// the new one (the provider answers one key with one intent).
pub async fn next_payment_key(db: impl PgExecutor<'_>, order_id: Uuid, seen: i32) -> sqlx::Result<()> {
    sqlx::query!(
        "update orders set payment_key_seq = payment_key_seq + 1 where id = $1 and payment_key_seq = $2",
        order_id,
        seen
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Moves a payment's call key on, after the provider answered a refund or cancel with an
/// error.
pub async fn next_call_key(db: impl PgExecutor<'_>, payment_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("update payments set call_key_seq = call_key_seq + 1 where id = $1", payment_id)
        .execute(db)
        .await
        .map(|_| ())
}

/// A new intent at the provider for `order`, as its current payment, and its
/// `payment_started` history row.
pub async fn record_intent(
    conn: &mut PgConnection,
    order: &PayableOrder,
    provider: &str,
    provider_payment_id: &str,
    actor: Actor,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into payments (id, order_id, provider, provider_payment_id, amount_cents, currency)
         values ($1, $2, $3, $4, $5, $6)",
        Uuid::now_v7(),
        order.id,
        provider,
        provider_payment_id,
        order.total_cents,
        order.currency,
    )
    .execute(&mut *conn)
    .await?;
    let event = NewEvent {
        order_id: order.id,
        kind: EventType::PaymentStarted,
        from: None,
        to: None,
        actor,
        detail: json!({"provider": provider, "providerPaymentId": provider_payment_id,
                       "amountCents": order.total_cents, "currency": order.currency}),
    };
    events::record(&mut *conn, &event).await
}

/// A failed intent asked for again: it can be paid once more (`payment_started` again,
/// with `retry: true`).
pub async fn reopen(conn: &mut PgConnection, payment: &PaymentRow, actor: Actor) -> sqlx::Result<()> {
    let reopened = sqlx::query!(
        "update payments set status = 'requires_payment' where id = $1 and status = 'failed'",
        payment.id
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if reopened == 0 {
        return Ok(());
    }
    let event = NewEvent {
        order_id: payment.order_id,
        kind: EventType::PaymentStarted,
        from: None,
        to: None,
        actor,
        detail: json!({"provider": payment.provider, "providerPaymentId": payment.provider_payment_id,
                       "amountCents": payment.amount_cents, "currency": payment.currency, "retry": true}),
    };
    events::record(&mut *conn, &event).await
}

/// A payment by the provider's id, with its order's row locked first (then the payment's).
async fn lock_by_provider_id(
    conn: &mut PgConnection,
    provider: &str,
    provider_payment_id: &str,
) -> sqlx::Result<Option<(PayableOrder, PaymentRow)>> {
    let order_id = sqlx::query_scalar!(
        "select order_id from payments where provider = $1 and provider_payment_id = $2",
        provider,
        provider_payment_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(order_id) = order_id else { return Ok(None) };
    let Some(order) = lock_payable(&mut *conn, order_id).await? else { return Ok(None) };
    let payment = sqlx::query_as!(
        PaymentRow,
        r#"select id, order_id, provider, provider_payment_id, status as "status: PaymentStatus",
                  amount_cents, currency, call_key_seq, refund_requested_at, created_at
           from payments where provider = $1 and provider_payment_id = $2 for update"#,
        provider,
        provider_payment_id
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some((order, payment)))
}

async fn set_payment_status(db: impl PgExecutor<'_>, id: Uuid, status: PaymentStatus) -> sqlx::Result<()> {
    sqlx::query!(
        "update payments set status = $2,
                refund_requested_at = case when $2 = 'refund_pending'::payment_status then now()
                                           else refund_requested_at end
         where id = $1",
        id,
        status as PaymentStatus
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Asks for the money of `payment` back: `refund_pending`, a `refund_requested` history
/// row saying why, and the refund job, all in the caller's transaction.
async fn request_refund(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    actor: Actor,
    reason: &str,
) -> sqlx::Result<()> {
    set_payment_status(&mut *conn, payment.id, PaymentStatus::RefundPending).await?;
    let event = NewEvent {
        order_id: payment.order_id,
        kind: EventType::RefundRequested,
        from: None,
        to: None,
        actor,
        detail: json!({"reason": reason, "providerPaymentId": payment.provider_payment_id,
                       "amountCents": payment.amount_cents, "currency": payment.currency}),
    };
    events::record(&mut *conn, &event).await?;
    outbox::push(&mut *conn, &Job::Refund { payment_id: payment.id }.into()).await.map(|_| ())
}

/// What a cancel (by anyone, or the expiry) does to the order's current payment, in the
/// cancel's transaction: money taken is refunded; an intent that can still be paid is
/// cancelled at the provider, so the customer cannot pay for a cancelled order.
pub async fn on_cancel(conn: &mut PgConnection, order_id: Uuid, actor: Actor) -> sqlx::Result<()> {
    let Some(payment) = current_payment(&mut *conn, order_id).await? else { return Ok(()) };
    match payment.status {
        PaymentStatus::Succeeded => request_refund(conn, &payment, actor, "cancelled").await,
        PaymentStatus::RequiresPayment | PaymentStatus::Failed => {
            outbox::push(&mut *conn, &Job::CancelIntent { payment_id: payment.id }.into()).await.map(|_| ())
        }
        PaymentStatus::RefundPending | PaymentStatus::Refunded => Ok(()),
    }
}

/// The provider took the money of intent `provider_payment_id`: `received` in `currency`
/// (lower-case ISO 4217, as Stripe writes it). A pending order whose current intent this
/// is, with the same total and currency, becomes paid (and its owner is told). Money that
/// pays nothing — the order was cancelled, is paid already, or the amount or currency
/// differs — is recorded as succeeded and refunded at once. Whether the intent is ours.
pub async fn payment_succeeded(
    conn: &mut PgConnection,
    provider: &str,
    provider_payment_id: &str,
    received: i64,
    currency: &str,
) -> AppResult<bool> {
    let Some((order, payment)) = lock_by_provider_id(conn, provider, provider_payment_id).await? else {
        return Ok(false);
    };
    if !matches!(payment.status, PaymentStatus::RequiresPayment | PaymentStatus::Failed) {
        return Ok(true); // already succeeded (and maybe refunded): forward only
    }
    set_payment_status(&mut *conn, payment.id, PaymentStatus::Succeeded).await?;
    let current = order.current.as_ref().is_some_and(|c| c.id == payment.id);
    let matches = received == order.total_cents && currency.eq_ignore_ascii_case(&order.currency);
    let detail = json!({"providerPaymentId": provider_payment_id, "amountCents": received,
                        "currency": currency.to_ascii_uppercase()});
    if order.status == OrderStatus::Pending && current && matches {
        repository::set_status(&mut *conn, order.id, OrderStatus::Paid).await?;
        let mut event = NewEvent::status(
            order.id,
            EventType::PaymentSucceeded,
            OrderStatus::Pending,
            OrderStatus::Paid,
            PROVIDER,
        );
        event.detail = detail;
        events::record(&mut *conn, &event).await?;
        let job = Job::PaymentReceived { order_id: order.id, user_id: order.user_id };
        outbox::push(&mut *conn, &job.into()).await?;
        return Ok(true);
    }
    let reason = if !matches {
        let event = NewEvent {
            order_id: order.id,
            kind: EventType::PaymentMismatch,
            from: None,
            to: None,
            actor: PROVIDER,
            detail: json!({"providerPaymentId": provider_payment_id,
                           "expected": {"amountCents": order.total_cents, "currency": order.currency},
                           "received": {"amountCents": received, "currency": currency.to_ascii_uppercase()}}),
        };
        events::record(&mut *conn, &event).await?;
        "mismatch"
    } else if order.status == OrderStatus::Cancelled {
        "cancelled"
    } else if order.status == OrderStatus::Pending {
        "superseded" // an older intent of a still pending order
    } else {
        "already_paid"
    };
    let paid = PaymentRow { status: PaymentStatus::Succeeded, amount_cents: received, ..payment };
    request_refund(conn, &paid, PROVIDER, reason).await?;
    Ok(true)
}

/// The provider could not take the money: the payment is `failed` (unless it already
/// succeeded); the order stays pending, and the client may try again. Whether ours.
pub async fn payment_failed(
    conn: &mut PgConnection,
    provider: &str,
    provider_payment_id: &str,
) -> AppResult<bool> {
    let Some((order, payment)) = lock_by_provider_id(conn, provider, provider_payment_id).await? else {
        return Ok(false);
    };
    if payment.status != PaymentStatus::RequiresPayment {
        return Ok(true);
    }
    set_payment_status(&mut *conn, payment.id, PaymentStatus::Failed).await?;
    let event = NewEvent {
        order_id: order.id,
        kind: EventType::PaymentFailed,
        from: None,
        to: None,
        actor: PROVIDER,
        detail: json!({"providerPaymentId": provider_payment_id}),
    };
    events::record(&mut *conn, &event).await?;
    Ok(true)
}

/// The provider refunded (part of) the intent's charge. A full refund makes the payment
/// `refunded` (a refund made in the provider's dashboard too: the order's status is left
/// alone, staff see the event); a partial one is recorded as an event only. Whether ours.
pub async fn charge_refunded(
    conn: &mut PgConnection,
    provider: &str,
    provider_payment_id: &str,
    full: bool,
    amount_refunded: i64,
) -> AppResult<bool> {
    let Some((order, payment)) = lock_by_provider_id(conn, provider, provider_payment_id).await? else {
        return Ok(false);
    };
    if payment.status == PaymentStatus::Refunded {
        return Ok(true);
    }
    let requested = payment.status == PaymentStatus::RefundPending;
    if full {
        set_payment_status(&mut *conn, payment.id, PaymentStatus::Refunded).await?;
    }
    let event = NewEvent {
        order_id: order.id,
        kind: EventType::Refunded,
        from: None,
        to: None,
        actor: PROVIDER,
        detail: json!({"providerPaymentId": provider_payment_id, "amountCents": amount_refunded,
                       "partial": !full, "requested": requested}),
    };
    events::record(&mut *conn, &event).await?;
    Ok(true)
}

/// A payment, for its job.
pub async fn find(db: impl PgExecutor<'_>, payment_id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as!(
        PaymentRow,
        r#"select id, order_id, provider, provider_payment_id, status as "status: PaymentStatus",
                  amount_cents, currency, call_key_seq, refund_requested_at, created_at
           from payments where id = $1"#,
        payment_id
    )
    .fetch_optional(db)
    .await
}

/// The provider confirmed the refund of `payment_id`: `refunded`, with its history row,
/// unless the `charge.refunded` event was first.
pub async fn refund_confirmed(conn: &mut PgConnection, payment_id: Uuid) -> AppResult<()> {
    let Some(payment) = find(&mut *conn, payment_id).await? else { return Ok(()) };
    let Some((_, payment)) =
        lock_by_provider_id(conn, &payment.provider, &payment.provider_payment_id).await?
    else {
        return Ok(());
    };
    if payment.status != PaymentStatus::RefundPending {
        return Ok(());
    }
    set_payment_status(&mut *conn, payment.id, PaymentStatus::Refunded).await?;
    let event = NewEvent {
        order_id: payment.order_id,
        kind: EventType::Refunded,
        from: None,
        to: None,
        actor: Actor::SYSTEM,
        detail: json!({"providerPaymentId": payment.provider_payment_id, "amountCents": payment.amount_cents,
                       "partial": false, "requested": true}),
    };
    events::record(&mut *conn, &event).await?;
    Ok(())
}

/// The refund's job gave up: staff must refund by hand (the `payment_refunds_dead` gauge).
pub async fn refund_failed(db: impl PgExecutor<'_>, payment_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        "update payments set refund_failed_at = now() where id = $1 and status = 'refund_pending'",
        payment_id
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Refunds whose job gave up and that are still not refunded.
pub async fn dead_refunds(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from payments where status = 'refund_pending' and refund_failed_at is not null"#
    )
    .fetch_one(db)
    .await
}
