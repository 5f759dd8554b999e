//! SQL for the `products` table.
//!
//! The list is built for a large catalogue: the page is chosen by a sub-select over ids
//! that a partial index answers on its own (an index-only scan even at deep offsets), and
//! only the 1..=100 chosen rows are then fetched (a deferred join). The unfiltered totals
//! come from `product_counts`, kept exact by a trigger, instead of `count(*)` per request.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::domain::ProductSort;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub stock: i32,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct NewProduct<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub price_cents: i64,
    pub stock: i32,
}

/// Changes of a PATCH; `None` leaves a column alone, `description: Some(None)` clears it.
#[derive(Debug, Default)]
pub struct ProductChanges {
    pub sku: Option<String>,
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub price_cents: Option<i64>,
    pub stock: Option<i32>,
}

impl ProductChanges {
    /// Whether the PATCH changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.sku.is_none()
            && self.name.is_none()
            && self.description.is_none()
            && self.price_cents.is_none()
            && self.stock.is_none()
    }
}

/// What a list asks for; the search `pattern` is already an ILIKE pattern.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub pattern: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
    pub sort: ProductSort,
    pub limit: i64,
    pub offset: i64,
}

pub async fn find_live(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<ProductRow>> {
    sqlx::query_as!(
        ProductRow,
        "select id, sku, name, description, price_cents, stock, version, created_at, updated_at
         from products where id = $1 and archived_at is null",
        id
    )
    .fetch_optional(db)
    .await
}

/// Inserts a product; a taken SKU violates `products_sku_key`.
pub async fn insert(db: impl PgExecutor<'_>, p: &NewProduct<'_>) -> sqlx::Result<ProductRow> {
    sqlx::query_as!(
        ProductRow,
        "insert into products (sku, name, description, price_cents, stock)
         values ($1, $2, $3, $4, $5)
         returning id, sku, name, description, price_cents, stock, version, created_at, updated_at",
        p.sku,
        p.name,
        p.description,
        p.price_cents,
        p.stock,
    )
    .fetch_one(db)
    .await
}

/// Applies `changes` and bumps `version`, only if the product is live and, when
/// `expected_versions` is given, still at one of those versions. `None` when nothing matched.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    expected_versions: Option<&[i32]>,
    c: &ProductChanges,
) -> sqlx::Result<Option<ProductRow>> {
    sqlx::query_as!(
        ProductRow,
        "update products set
             sku         = coalesce($3, sku),
             name        = coalesce($4, name),
             description = case when $5 then $6 else description end,
             price_cents = coalesce($7, price_cents),
             stock       = coalesce($8, stock),
             version     = version + 1
         where id = $1 and archived_at is null and ($2::int[] is null or version = any($2))
         returning id, sku, name, description, price_cents, stock, version, created_at, updated_at",
        id,
        expected_versions,
        c.sku,
        c.name,
        c.description.is_some(),
        c.description.clone().flatten(),
        c.price_cents,
        c.stock,
    )
    .fetch_optional(db)
    .await
}

/// Archives a live product; `false` when there was none.
pub async fn archive(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update products set archived_at = now(), version = version + 1
         where id = $1 and archived_at is null",
        id
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn order_by(sort: ProductSort) -> &'static str {
    match sort {
        ProductSort::NameAsc => "name asc, id asc",
        ProductSort::NameDesc => "name desc, id desc",
        ProductSort::PriceAsc => "price_cents asc, id asc",
        ProductSort::PriceDesc => "price_cents desc, id desc",
        ProductSort::CreatedAsc => "created_at asc, id asc",
        ProductSort::CreatedDesc => "created_at desc, id desc",
    }
}

/// `where` for the filters; every value is a bind parameter.
fn push_filters(qb: &mut QueryBuilder<Postgres>, f: &ListQuery) {
    qb.push(" where archived_at is null");
    if let Some(pattern) = &f.pattern {
        qb.push(" and (name || ' ' || coalesce(description, '')) ilike ").push_bind(pattern.clone());
    }
    if let Some(min) = f.min_price {
        qb.push(" and price_cents >= ").push_bind(min);
    }
    if let Some(max) = f.max_price {
        qb.push(" and price_cents <= ").push_bind(max);
    }
    match f.in_stock {
        Some(true) => qb.push(" and stock > 0"),
        Some(false) => qb.push(" and stock = 0"),
        None => qb,
    };
}

/// One page of live products and the exact total of the filtered set.
pub async fn list(pool: &PgPool, f: &ListQuery) -> sqlx::Result<(Vec<ProductRow>, i64)> {
    let only_stock_filter = f.pattern.is_none() && f.min_price.is_none() && f.max_price.is_none();

    let total = match (only_stock_filter, f.in_stock) {
        (true, None) => sqlx::query_scalar!("select live from product_counts").fetch_one(pool).await?,
        (true, Some(true)) => {
            sqlx::query_scalar!("select in_stock from product_counts").fetch_one(pool).await?
        }
        (true, Some(false)) => {
            sqlx::query_scalar!("select live - in_stock as \"n!\" from product_counts")
                .fetch_one(pool)
                .await?
        }
        _ => {
            let mut qb = QueryBuilder::new("select count(*) from products");
            push_filters(&mut qb, f);
            qb.build_query_scalar::<i64>().fetch_one(pool).await?
        }
    };
    if total == 0 || f.offset >= total {
        return Ok((Vec::new(), total));
    }

    let order = order_by(f.sort);
    let mut qb = QueryBuilder::new(
        "select p.id, p.sku, p.name, p.description, p.price_cents, p.stock, p.version, p.created_at, p.updated_at
         from (select id from products",
    );
    push_filters(&mut qb, f);
    qb.push(format!(" order by {order} limit ")).push_bind(f.limit);
    qb.push(" offset ").push_bind(f.offset);
    qb.push(format!(") page join products p using (id) order by {}", prefixed(order)));
    let rows = qb.build_query_as::<ProductRow>().fetch_all(pool).await?;
    Ok((rows, total))
}

/// `name asc, id asc` → `p.name asc, p.id asc`.
fn prefixed(order: &str) -> String {
    order.split(", ").map(|part| format!("p.{part}")).collect::<Vec<_>>().join(", ")
}
