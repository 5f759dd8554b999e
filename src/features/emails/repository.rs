//! SQL of the e-mail jobs: the `sent_emails` ledger and what a message shows. Each job
//! claims its outbox id and reads everything its message needs in one statement.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, types::Json};
use uuid::Uuid;

use crate::shared::domain::ShippingAddress;

/// Who an e-mail goes to.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// `false`: the ledger already holds this outbox id (the e-mail was sent).
    pub claimed: bool,
    pub user_id: Uuid,
    pub email: String,
    pub first_name: Option<String>,
    /// Whether the account verified its address.
    pub verified: bool,
}

/// An order as its confirmation shows it, with its recipient.
#[derive(Debug, Clone)]
pub struct OrderMail {
    pub recipient: Recipient,
    pub id: Uuid,
    pub total_cents: i64,
    pub currency: String,
    pub shipping_address: Option<ShippingAddress>,
    pub created_at: DateTime<Utc>,
    /// The order's status when the job runs.
    pub status: String,
    pub lines: Vec<OrderMailLine>,
}

/// One line of an order confirmation.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OrderMailLine {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

/// Claims `outbox_id` in the ledger (inside the sending transaction) and reads live user
/// `user_id`. `None`: the user is gone. While the claiming transaction is open, a
/// duplicate claim waits, then sees the row (sent) or not (the send failed, rolled back).
pub async fn claim_for_user(
    db: impl PgExecutor<'_>,
    outbox_id: Uuid,
    template: &str,
    user_id: Uuid,
) -> sqlx::Result<Option<Recipient>> {
    let row = sqlx::query!(
        r#"with claim as (
               insert into sent_emails (outbox_id, template) values ($1, $2)
               on conflict (outbox_id) do nothing returning outbox_id)
           select exists (select 1 from claim) as "claimed!", u.id, u.email, u.first_name,
                  u.email_verified_at is not null as "verified!"
           from users u where u.id = $3 and u.deleted_at is null"#,
        outbox_id,
        template,
        user_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Recipient {
        claimed: r.claimed,
        user_id: r.id,
        email: r.email,
        first_name: r.first_name,
        verified: r.verified,
    }))
}

/// [`claim_for_user`] for an order confirmation: claims `outbox_id` and reads order
/// `order_id` with its lines (in placing order) and its live owner.
pub async fn claim_for_order(
    db: impl PgExecutor<'_>,
    outbox_id: Uuid,
    template: &str,
    order_id: Uuid,
) -> sqlx::Result<Option<OrderMail>> {
    let row = sqlx::query!(
        r#"with claim as (
               insert into sent_emails (outbox_id, template) values ($1, $2)
               on conflict (outbox_id) do nothing returning outbox_id)
           select exists (select 1 from claim) as "claimed!", u.id as user_id, u.email, u.first_name,
                  u.email_verified_at is not null as "verified!",
                  o.id, o.total_cents, o.currency, o.created_at, o.status::text as "status!",
                  o.shipping_address as "shipping_address: Json<ShippingAddress>",
                  (select coalesce(json_agg(json_build_object(
                              'sku', i.sku, 'name', i.name, 'quantity', i.quantity,
                              'unit_price_cents', i.unit_price_cents, 'line_total_cents', i.line_total_cents)
                              order by i.position), '[]')
                   from order_items i where i.order_id = o.id) as "lines!: Json<Vec<OrderMailLine>>"
           from orders o join users u on u.id = o.user_id and u.deleted_at is null
           where o.id = $3"#,
        outbox_id,
        template,
        order_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| OrderMail {
        recipient: Recipient {
            claimed: r.claimed,
            user_id: r.user_id,
            email: r.email,
            first_name: r.first_name,
            verified: r.verified,
        },
        id: r.id,
        total_cents: r.total_cents,
        currency: r.currency,
        shipping_address: r.shipping_address.map(|a| a.0),
        created_at: r.created_at,
        status: r.status,
        lines: r.lines.0,
    }))
}

/// A completed report as its `report-ready` e-mail shows it, with its requester.
#[derive(Debug, Clone)]
pub struct ReportMail {
    pub recipient: Recipient,
    pub id: Uuid,
    pub kind: String,
    pub range_from: DateTime<Utc>,
    pub range_to: DateTime<Utc>,
    pub row_count: Option<i32>,
}

/// [`claim_for_user`] for a `report-ready` e-mail: claims `outbox_id` and reads report
/// `report_id` and its live requester.
pub async fn claim_for_report(
    db: impl PgExecutor<'_>,
    outbox_id: Uuid,
    template: &str,
    report_id: Uuid,
) -> sqlx::Result<Option<ReportMail>> {
    let row = sqlx::query!(
        r#"with claim as (
               insert into sent_emails (outbox_id, template) values ($1, $2)
               on conflict (outbox_id) do nothing returning outbox_id)
           select exists (select 1 from claim) as "claimed!", u.id as user_id, u.email, u.first_name,
                  u.email_verified_at is not null as "verified!", r.id, r.type::text as "kind!", r.range_from, r.range_to, r.row_count
           from reports r join users u on u.id = r.requested_by and u.deleted_at is null
           where r.id = $3"#,
        outbox_id,
        template,
        report_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| ReportMail {
        recipient: Recipient {
            claimed: r.claimed,
            user_id: r.user_id,
            email: r.email,
            first_name: r.first_name,
            verified: r.verified,
        },
        id: r.id,
        kind: r.kind,
        range_from: r.range_from,
        range_to: r.range_to,
        row_count: r.row_count,
    }))
}

/// Deletes ledger rows of e-mails sent before `before`, in batches; how many.
pub async fn delete_sent_before(pool: &PgPool, before: DateTime<Utc>) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from sent_emails where outbox_id = any(array(
                 select outbox_id from sent_emails where sent_at < $1 limit $2))",
            before,
            n
        )
    })
    .await
}
