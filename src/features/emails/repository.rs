//! SQL of the e-mail jobs: the `sent_emails` ledger and what a message shows.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, types::Json};
use uuid::Uuid;

use crate::features::orders::domain::ShippingAddress;

/// Claims `outbox_id` in the ledger, inside the sending transaction. `false` means its
/// e-mail was already sent. While the transaction is open a duplicate claim waits, then
/// sees the row (sent) or not (the first send failed and rolled back).
pub async fn claim(db: impl PgExecutor<'_>, outbox_id: Uuid, template: &str) -> sqlx::Result<bool> {
    let inserted = sqlx::query!(
        "insert into sent_emails (outbox_id, template) values ($1, $2) on conflict (outbox_id) do nothing",
        outbox_id,
        template
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Deletes ledger rows older than `before`; returns how many.
pub async fn delete_sent_before(db: impl PgExecutor<'_>, before: DateTime<Utc>) -> sqlx::Result<u64> {
    Ok(sqlx::query!("delete from sent_emails where sent_at < $1", before).execute(db).await?.rows_affected())
}

/// An order as its confirmation shows it.
#[derive(Debug, Clone)]
pub struct OrderMail {
    pub id: Uuid,
    pub user_id: Uuid,
    pub total_cents: i64,
    pub currency: String,
    pub shipping_address: Option<ShippingAddress>,
    pub created_at: DateTime<Utc>,
}

/// One line of an order confirmation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OrderMailLine {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

/// The order `id`.
pub async fn order(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<OrderMail>> {
    let row = sqlx::query!(
        r#"select id, user_id, total_cents, currency,
                  shipping_address as "shipping_address: Json<ShippingAddress>", created_at
           from orders where id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| OrderMail {
        id: r.id,
        user_id: r.user_id,
        total_cents: r.total_cents,
        currency: r.currency,
        shipping_address: r.shipping_address.map(|a| a.0),
        created_at: r.created_at,
    }))
}

/// The lines of order `id`, in the order they were placed.
pub async fn order_lines(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Vec<OrderMailLine>> {
    sqlx::query_as!(
        OrderMailLine,
        "select sku, name, quantity, unit_price_cents, line_total_cents
         from order_items where order_id = $1 order by position",
        id
    )
    .fetch_all(db)
    .await
}
