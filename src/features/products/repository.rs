//! SQL for the `products` table.
//!
//! The list is built for a large catalogue: the page is chosen by a sub-select over ids
//! that a partial index answers on its own (an index-only scan even at deep offsets), and
//! only the 1..=100 chosen rows are then fetched (a deferred join). The sort indexes
//! include `price_cents`, so a price filter is checked inside them; `stock` is left out
//! so that an order's stock update is HOT and touches no index (an `inStock` filter is
//! checked in the table, row by row). The totals of the unfiltered and the `inStock`
//! lists come from `product_counts`, kept exact by a trigger; a price range is counted
//! by an index-only scan; a search counts its matches up to a cap. Cursor mode seeks past
//! the last row's `(sort key, id)` with a row comparison the sort's index answers, at the
//! same cost at any depth.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::platform::db::pipeline::{Pipeline, PipelineError};

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

/// Matches of a search counted at most; a search's pages end there.
pub const SEARCH_TOTAL_CAP: i64 = 1000;

/// What a list asks for; the search `pattern` is already a LIKE pattern over the
/// lowercased `search_text`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub pattern: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
    pub sort: ProductSort,
    pub limit: i64,
    pub offset: i64,
    /// Cursor mode: the rows after this place in `sort` (then `offset` is 0).
    pub after: Option<Position>,
}

/// A product's place in one sort: its sort key and the id that breaks ties. A cursor
/// holds the last row's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub key: SortKey,
    pub id: Uuid,
}

/// The value a sort orders by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SortKey {
    #[serde(rename = "n")]
    Name(String),
    #[serde(rename = "p")]
    Price(i64),
    #[serde(rename = "t")]
    Created(DateTime<Utc>),
}

impl Position {
    /// `row`'s place in `sort`.
    pub fn of(row: &ProductRow, sort: ProductSort) -> Self {
        let key = match sort {
            ProductSort::NameAsc | ProductSort::NameDesc => SortKey::Name(row.name.clone()),
            ProductSort::PriceAsc | ProductSort::PriceDesc => SortKey::Price(row.price_cents),
            ProductSort::CreatedAsc | ProductSort::CreatedDesc => SortKey::Created(row.created_at),
        };
        Self { key, id: row.id }
    }

    /// Whether this is a place in `sort` (its key is of the sort's column).
    pub fn fits(&self, sort: ProductSort) -> bool {
        matches!(
            (&self.key, sort),
            (SortKey::Name(_), ProductSort::NameAsc | ProductSort::NameDesc)
                | (SortKey::Price(_), ProductSort::PriceAsc | ProductSort::PriceDesc)
                | (SortKey::Created(_), ProductSort::CreatedAsc | ProductSort::CreatedDesc)
        )
    }
}

/// One page of a list and its total; `capped`: the total is [`SEARCH_TOTAL_CAP`] and
/// more products match.
#[derive(Debug)]
pub struct ListPage {
    pub rows: Vec<ProductRow>,
    pub total: i64,
    pub capped: bool,
    /// The catalogue's order version the total was read at (lists whose total comes from
    /// `product_counts`).
    pub order_version: Option<i64>,
    /// The page was read from an anchor, not by walking from the first row.
    pub anchored: bool,
}

/// Every how many rows of an unfiltered sort an anchor is kept (see [`AnchorSet`]).
pub const ANCHOR_EVERY: i64 = 1000;

/// Where deep pages of one unfiltered sort start: the ids at ranks `ANCHOR_EVERY`,
/// `2 × ANCHOR_EVERY`, … of the live products in that order, read at `version` of
/// `product_counts.order_version`. A page at offset N walks from the anchor at or before
/// N, at most `ANCHOR_EVERY - 1` rows, instead of N rows from the first. Only valid while
/// the version is unchanged, which the page's own statement checks.
#[derive(Debug, Clone)]
pub struct AnchorSet {
    pub sort: ProductSort,
    pub version: i64,
    pub ids: Vec<Uuid>,
}

/// Reads the anchors of `sort` and the order version they belong to, in one statement
/// (one snapshot). Costs one pass over the sort's index.
pub async fn anchors(conn: &mut PgConnection, sort: ProductSort) -> sqlx::Result<AnchorSet> {
    let mut qb = QueryBuilder::new(
        "select c.order_version, array(select id from (select id, row_number() over (order by ",
    );
    qb.push(order_by(sort))
        .push(") as rn from products where archived_at is null) ranked where rn % ")
        .push_bind(ANCHOR_EVERY)
        .push(" = 0 order by rn) from product_counts c");
    let (version, ids): (i64, Vec<Uuid>) = qb.build_query_as().fetch_one(&mut *conn).await?;
    Ok(AnchorSet { sort, version, ids })
}

/// No search, price or stock filter: the lists anchors serve.
pub fn unfiltered(f: &ListQuery) -> bool {
    f.pattern.is_none() && f.min_price.is_none() && f.max_price.is_none() && f.in_stock.is_none()
}

/// The rows after `anchor` in `sort`, as a row comparison the sort's index answers.
fn after_anchor(sort: ProductSort) -> &'static str {
    match sort {
        ProductSort::NameAsc => "(name, id) > (select name, id from products where id = ",
        ProductSort::NameDesc => "(name, id) < (select name, id from products where id = ",
        ProductSort::PriceAsc => "(price_cents, id) > (select price_cents, id from products where id = ",
        ProductSort::PriceDesc => "(price_cents, id) < (select price_cents, id from products where id = ",
        ProductSort::CreatedAsc => "(created_at, id) > (select created_at, id from products where id = ",
        ProductSort::CreatedDesc => "(created_at, id) < (select created_at, id from products where id = ",
    }
}

/// The page of unfiltered `f` read from the anchor at rank `rank` (`f.offset >= rank`):
/// empty unless the catalogue's order version is still `version` in this statement's
/// snapshot.
pub fn anchored_page_query(f: &ListQuery, anchor: Uuid, rank: i64, version: i64) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new(
        "select p.id, p.sku, p.name, p.description, p.price_cents, p.stock, p.version, \
         p.created_at, p.updated_at from (select id from products where archived_at is null \
         and (select order_version from product_counts) = ",
    );
    qb.push_bind(version).push(" and ").push(after_anchor(f.sort)).push_bind(anchor).push(")");
    qb.push(" order by ").push(order_by(f.sort)).push(" limit ").push_bind(f.limit);
    qb.push(" offset ").push_bind(f.offset - rank);
    qb.push(") page join products p using (id) order by ").push(order_by_joined(f.sort));
    qb
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

/// [`find_live`] through the shared, pipelined connections.
pub async fn find_live_pipelined(pipeline: &Pipeline, id: Uuid) -> Result<Option<ProductRow>, PipelineError> {
    const SQL: &str = "select id, sku, name, description, price_cents, stock, version, created_at, updated_at
         from products where id = $1 and archived_at is null";
    let Some(row) = pipeline.query_opt(SQL, &[&id]).await? else { return Ok(None) };
    decode_product(&row).map(Some).map_err(PipelineError::Decode)
}

fn decode_product(row: &tokio_postgres::Row) -> Result<ProductRow, tokio_postgres::Error> {
    Ok(ProductRow {
        id: row.try_get(0)?,
        sku: row.try_get(1)?,
        name: row.try_get(2)?,
        description: row.try_get(3)?,
        price_cents: row.try_get(4)?,
        stock: row.try_get(5)?,
        version: row.try_get(6)?,
        created_at: row.try_get(7)?,
        updated_at: row.try_get(8)?,
    })
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
    // A change of stock is recorded in `stock_adjustments` by the same statement; the
    // row lock of `before` makes its previous stock the one this update replaces.
    sqlx::query_as!(
        ProductRow,
        r#"with before as (
               select id, stock from products
               where id = $1 and archived_at is null and ($2::int[] is null or version = any($2))
               for update
           ), updated as (
               update products p set
                   sku         = coalesce($3, p.sku),
                   name        = coalesce($4, p.name),
                   description = case when $5 then $6 else p.description end,
                   price_cents = coalesce($7, p.price_cents),
                   stock       = coalesce($8, p.stock),
                   version     = p.version + 1
               from before where p.id = before.id
               returning p.id, p.sku, p.name, p.description, p.price_cents, p.stock, p.version,
                         p.created_at, p.updated_at, before.stock as previous_stock
           ), adjusted as (
               insert into stock_adjustments (product_id, delta, reason)
               select id, stock - previous_stock, 'adjust' from updated where stock <> previous_stock
           )
           select id as "id!", sku as "sku!", name as "name!", description, price_cents as "price_cents!",
                  stock as "stock!", version as "version!", created_at as "created_at!",
                  updated_at as "updated_at!"
           from updated"#,
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

/// `order by` of the outer join, on the page's alias.
fn order_by_joined(sort: ProductSort) -> &'static str {
    match sort {
        ProductSort::NameAsc => "p.name asc, p.id asc",
        ProductSort::NameDesc => "p.name desc, p.id desc",
        ProductSort::PriceAsc => "p.price_cents asc, p.id asc",
        ProductSort::PriceDesc => "p.price_cents desc, p.id desc",
        ProductSort::CreatedAsc => "p.created_at asc, p.id asc",
        ProductSort::CreatedDesc => "p.created_at desc, p.id desc",
    }
}

/// `where` for the filters; every value is a bind parameter.
fn push_filters(qb: &mut QueryBuilder<Postgres>, f: &ListQuery) {
    qb.push(" where archived_at is null");
    if let Some(pattern) = &f.pattern {
        qb.push(" and search_text like ").push_bind(pattern.clone());
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
    if let Some(after) = &f.after {
        push_after(qb, f.sort, after);
    }
}

/// ` and (key, id) > (…, …)` (`<` for a descending sort): the rows after `after`, as a
/// row comparison the sort's index answers.
fn push_after(qb: &mut QueryBuilder<Postgres>, sort: ProductSort, after: &Position) {
    let (column, op) = match sort {
        ProductSort::NameAsc => ("name", ">"),
        ProductSort::NameDesc => ("name", "<"),
        ProductSort::PriceAsc => ("price_cents", ">"),
        ProductSort::PriceDesc => ("price_cents", "<"),
        ProductSort::CreatedAsc => ("created_at", ">"),
        ProductSort::CreatedDesc => ("created_at", "<"),
    };
    qb.push(format_args!(" and ({column}, id) {op} ("));
    match &after.key {
        SortKey::Name(name) => qb.push_bind(name.clone()),
        SortKey::Price(cents) => qb.push_bind(*cents),
        SortKey::Created(at) => qb.push_bind(*at),
    };
    qb.push(", ").push_bind(after.id).push(")");
}

/// How the total of a list is found.
pub enum Total {
    /// From `product_counts`: no filter but `inStock`.
    Counter,
    /// `count(*)` over the filter, which an index serves (a price range).
    Exact(QueryBuilder<Postgres>),
    /// A search: matches are counted up to `SEARCH_TOTAL_CAP + 1`, then the count stops.
    Capped(QueryBuilder<Postgres>),
}

/// The statement that finds the total of `f`, `prefix` (e.g. `explain analyze `) before it.
pub fn total_query(f: &ListQuery, prefix: &str) -> Total {
    if f.pattern.is_some() {
        let mut qb = QueryBuilder::new(format!("{prefix}select count(*) from (select 1 from products"));
        push_filters(&mut qb, f);
        qb.push(" limit ").push_bind(SEARCH_TOTAL_CAP + 1).push(") matches");
        Total::Capped(qb)
    } else if f.min_price.is_some() || f.max_price.is_some() {
        let mut qb = QueryBuilder::new(format!("{prefix}select count(*) from products"));
        push_filters(&mut qb, f);
        Total::Exact(qb)
    } else {
        Total::Counter
    }
}

/// The statement that reads one page of `f`, `prefix` before it: the page's ids, then only
/// those rows. The ids come from walking the sort order's index, except for a search with
/// `few_matches` (its count did not reach the cap): those matches are collected from the
/// search index first and then sorted, because walking the sort order would skip over
/// every row that does not match (all the catalogue when the matches sort last).
pub fn page_query(f: &ListQuery, few_matches: bool, prefix: &str) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new(prefix.to_owned());
    let from_matches = few_matches && f.pattern.is_some();
    if from_matches {
        qb.push("with matches as materialized (select id, name, price_cents, created_at from products");
        push_filters(&mut qb, f);
        qb.push(") ");
    }
    qb.push(
        "select p.id, p.sku, p.name, p.description, p.price_cents, p.stock, p.version, \
         p.created_at, p.updated_at from (select id from ",
    );
    if from_matches {
        qb.push("matches");
    } else {
        qb.push("products");
        push_filters(&mut qb, f);
    }
    qb.push(" order by ").push(order_by(f.sort)).push(" limit ").push_bind(f.limit);
    qb.push(" offset ").push_bind(f.offset);
    qb.push(") page join products p using (id) order by ").push(order_by_joined(f.sort));
    qb
}

/// One page of live products and the total of the filtered set: exact, except that a
/// search stops counting past [`SEARCH_TOTAL_CAP`] (`capped` is then `true`, `total` the
/// cap, and pages past it are empty). An unfiltered page starts from `anchors` when they
/// are of its sort and of the current order version (else it walks from the first row).
pub async fn list(
    conn: &mut PgConnection,
    f: &ListQuery,
    anchors: Option<&AnchorSet>,
) -> sqlx::Result<ListPage> {
    let (total, capped, order_version) = match total_query(f, "") {
        Total::Counter => {
            let counts = sqlx::query!("select live, in_stock, order_version from product_counts")
                .fetch_one(&mut *conn)
                .await?;
            let total = match f.in_stock {
                None => counts.live,
                Some(true) => counts.in_stock,
                Some(false) => counts.live - counts.in_stock,
            };
            (total, false, Some(counts.order_version))
        }
        Total::Exact(mut qb) => (qb.build_query_scalar::<i64>().fetch_one(&mut *conn).await?, false, None),
        Total::Capped(mut qb) => {
            let n = qb.build_query_scalar::<i64>().fetch_one(&mut *conn).await?;
            (n.min(SEARCH_TOTAL_CAP), n > SEARCH_TOTAL_CAP, None)
        }
    };
    let page = |rows, anchored| ListPage { rows, total, capped, order_version, anchored };
    if total == 0 || f.offset >= total {
        return Ok(page(Vec::new(), false));
    }
    if let Some(set) = anchors
        && unfiltered(f)
        && set.sort == f.sort
        && Some(set.version) == order_version
    {
        let k = (f.offset / ANCHOR_EVERY).min(set.ids.len() as i64);
        if k >= 1 {
            let rank = k * ANCHOR_EVERY;
            let rows = anchored_page_query(f, set.ids[k as usize - 1], rank, set.version)
                .build_query_as::<ProductRow>()
                .fetch_all(&mut *conn)
                .await?;
            // Empty: the order changed since the total was read; walk instead.
            if !rows.is_empty() {
                return Ok(page(rows, true));
            }
        }
    }
    // A capped search's last page ends at the cap.
    let shortened;
    let f = if total - f.offset < f.limit {
        shortened = ListQuery { limit: total - f.offset, ..f.clone() };
        &shortened
    } else {
        f
    };
    let rows = page_query(f, !capped, "").build_query_as::<ProductRow>().fetch_all(&mut *conn).await?;
    Ok(page(rows, false))
}

/// Cursor mode: up to `f.limit` rows after `f.after`, a keyset seek that costs the same
/// at any depth. A search whose remaining matches are few collects them from the search
/// index first, as [`page_query`] says.
pub async fn list_after(conn: &mut PgConnection, f: &ListQuery) -> sqlx::Result<Vec<ProductRow>> {
    let few_matches = match total_query(f, "") {
        Total::Capped(mut qb) => {
            qb.build_query_scalar::<i64>().fetch_one(&mut *conn).await? <= SEARCH_TOTAL_CAP
        }
        Total::Counter | Total::Exact(_) => false,
    };
    page_query(f, few_matches, "").build_query_as::<ProductRow>().fetch_all(&mut *conn).await
}

#[cfg(test)]
mod tests {
    use sqlx::PgPool;

    use super::*;

    /// SKUs of the live products in `order`, 20 from `offset`, as Postgres orders them.
    async fn skus_in_order(conn: &mut PgConnection, order: &str, offset: i64) -> Vec<String> {
        let sql = format!(
            "select sku from products where archived_at is null order by {order} limit 20 offset {offset}"
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(conn).await.unwrap()
    }

    fn skus(page: &ListPage) -> Vec<String> {
        page.rows.iter().map(|r| r.sku.clone()).collect()
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn deep_pages_start_from_anchors_and_match_the_walk_from_the_first_row(pool: PgPool) {
        // 2 600 products with many ties in every sort key (the id breaks them), a few archived.
        sqlx::query(
            "insert into products (sku, name, price_cents, stock, created_at, archived_at)
             select 'A-' || i, 'Item ' || (i % 700), (i * 37) % 500, i % 3,
                    timestamptz '2026-01-01' + make_interval(secs => i % 900),
                    case when i % 97 = 0 then now() end
             from generate_series(1, 2600) i",
        )
        .execute(&pool)
        .await
        .unwrap();
        let sorts = [
            (ProductSort::NameAsc, "name asc, id asc"),
            (ProductSort::NameDesc, "name desc, id desc"),
            (ProductSort::PriceAsc, "price_cents asc, id asc"),
            (ProductSort::PriceDesc, "price_cents desc, id desc"),
            (ProductSort::CreatedAsc, "created_at asc, id asc"),
            (ProductSort::CreatedDesc, "created_at desc, id desc"),
        ];
        let mut conn = pool.acquire().await.unwrap();
        for (sort, order) in sorts {
            let set = anchors(&mut conn, sort).await.unwrap();
            assert_eq!(set.ids.len(), 2, "{order}: 2 574 live products, an anchor every 1 000");
            for offset in [999, 1000, 1500, 2000, 2560] {
                let query = ListQuery { sort, limit: 20, offset, ..ListQuery::default() };
                let page = list(&mut conn, &query, Some(&set)).await.unwrap();
                assert_eq!(page.anchored, offset >= 1000, "{order} at {offset}");
                assert_eq!(skus(&page), skus_in_order(&mut conn, order, offset).await, "{order} at {offset}");
            }
        }

        // A stock change (what every order does) keeps the order, and the anchors, valid.
        let set = anchors(&mut conn, ProductSort::NameAsc).await.unwrap();
        sqlx::query("update products set stock = stock + 5 where sku in ('A-1', 'A-2')")
            .execute(&mut *conn)
            .await
            .unwrap();
        let query = ListQuery { sort: ProductSort::NameAsc, limit: 20, offset: 1200, ..ListQuery::default() };
        assert!(list(&mut conn, &query, Some(&set)).await.unwrap().anchored);

        // A rename moves a product: the anchors are stale, and the page walks instead.
        sqlx::query("update products set name = 'Aardvark' where sku = 'A-5'")
            .execute(&mut *conn)
            .await
            .unwrap();
        let page = list(&mut conn, &query, Some(&set)).await.unwrap();
        assert!(!page.anchored);
        assert_eq!(skus(&page), skus_in_order(&mut conn, "name asc, id asc", 1200).await);
        // Fresh anchors serve again.
        let fresh = anchors(&mut conn, ProductSort::NameAsc).await.unwrap();
        assert!(fresh.version > set.version);
        assert!(list(&mut conn, &query, Some(&fresh)).await.unwrap().anchored);
        conn.close().await.unwrap();
    }
}
