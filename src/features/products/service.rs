//! Catalogue rules: SKU uniqueness, optimistic concurrency through `version`,
//! archive instead of delete.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    domain::ProductSort,
    repository::{
        self, ANCHOR_EVERY, AnchorSet, ListPage, ListQuery, NewProduct, Position, ProductChanges, ProductRow,
    },
    types::ProductFilter,
};
use crate::platform::{
    db::{contains_pattern, pipeline::Pipeline, read_pool::ReadPool},
    http::{
        conditional::Precondition,
        cursor::{self, Cursors},
        error::{AppError, AppResult},
        response::{PageParams, Pagination, split_page},
    },
};

/// The list's name inside its cursors.
const LIST: &str = "products";

const SKU_TAKEN: &str = "a product with this sku already exists";
const CHANGED: &str = "the product has changed; fetch it again";

/// Catalogue use cases; a clone is one atomic increment (a handler's `State` clones it
/// for every request).
#[derive(Clone)]
pub struct ProductService(Arc<Parts>);

struct Parts {
    db: PgPool,
    /// For the public reads (a product, a page): no release ping.
    reads: ReadPool,
    /// For a product by id, when configured: shared connections that pipeline reads.
    pipeline: Option<Pipeline>,
    currency: Arc<str>,
    anchors: Arc<PageAnchors>,
    /// Signs the list's cursors.
    cursors: Cursors,
}

/// This process's page anchors, per sort (see [`AnchorSet`]): read in the background when
/// a deep page finds none of the current order version, at most once per
/// [`ANCHOR_REBUILD_EVERY`] per sort, so a catalogue edited all the time costs a pass over
/// an index now and then, never one per request.
#[derive(Default)]
struct PageAnchors(Mutex<HashMap<ProductSort, AnchorSlot>>);

#[derive(Default)]
struct AnchorSlot {
    set: Option<Arc<AnchorSet>>,
    building: bool,
    last_build: Option<Instant>,
}

const ANCHOR_REBUILD_EVERY: Duration = Duration::from_secs(1);

impl PageAnchors {
    fn current(&self, sort: ProductSort) -> Option<Arc<AnchorSet>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&sort).and_then(|s| s.set.clone())
    }

    /// Whether the caller should read the anchors of `sort` now (and then [`Self::store`]).
    fn claim_build(&self, sort: ProductSort, seen_version: i64) -> bool {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(sort).or_default();
        let fresh = slot.set.as_ref().is_some_and(|s| s.version == seen_version);
        let recent = slot.last_build.is_some_and(|t| t.elapsed() < ANCHOR_REBUILD_EVERY);
        if fresh || recent || slot.building {
            return false;
        }
        slot.building = true;
        slot.last_build = Some(Instant::now());
        true
    }

    fn store(&self, sort: ProductSort, set: Option<AnchorSet>) {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(sort).or_default();
        slot.building = false;
        if let Some(set) = set {
            slot.set = Some(Arc::new(set));
        }
    }
}

fn sku_conflict(e: sqlx::Error) -> AppError {
    match &e {
        sqlx::Error::Database(d) if d.constraint() == Some("products_sku_key") => {
            AppError::Conflict(SKU_TAKEN.to_owned())
        }
        _ => e.into(),
    }
}

impl ProductService {
    pub fn new(
        db: PgPool,
        reads: ReadPool,
        pipeline: Option<Pipeline>,
        currency: &str,
        cursors: Cursors,
    ) -> Self {
        Self(Arc::new(Parts {
            db,
            reads,
            pipeline,
            currency: Arc::from(currency),
            anchors: Arc::default(),
            cursors,
        }))
    }

    /// The deployment's currency, which every price is in.
    pub fn currency(&self) -> &str {
        &self.0.currency
    }

    /// One page of live products. Page mode counts the total (see [`repository::list`])
    /// and, when filtered, stops at the depth bound; cursor mode seeks past the cursor's
    /// position at the same cost at any depth, without a total. Both give out the cursor of
    /// the next page when there is one.
    pub async fn list(
        &self,
        page: &PageParams,
        filter: &ProductFilter,
    ) -> AppResult<(Vec<ProductRow>, Pagination)> {
        let query = ListQuery {
            pattern: filter.q.as_deref().map(|q| contains_pattern(&q.to_lowercase())),
            min_price: filter.min_price,
            max_price: filter.max_price,
            in_stock: filter.in_stock,
            sort: filter.sort,
            limit: i64::from(page.limit),
            offset: page.offset(),
            after: None,
        };
        // What a cursor is bound to: the filters and sort as this request gives them.
        let filters = (filter.q.as_deref(), filter.min_price, filter.max_price, filter.in_stock, filter.sort);
        let cursor_of =
            |last: &ProductRow| self.0.cursors.encode(LIST, &filters, &Position::of(last, filter.sort));
        if let Some(given) = &page.cursor {
            let after: Position = self.0.cursors.decode(LIST, &filters, given)?;
            if !after.fits(filter.sort) {
                return Err(cursor::refused());
            }
            // One row more than the page: whether there is a next one.
            let query = ListQuery { after: Some(after), offset: 0, limit: query.limit + 1, ..query };
            let rows = self
                .0
                .reads
                .read(&move |conn| {
                    let query = query.clone();
                    Box::pin(async move { repository::list_after(conn, &query).await })
                })
                .await?;
            let (rows, next) = split_page(rows, page.limit, cursor_of);
            return Ok((rows, Pagination::cursor(page.limit).next(next)));
        }
        if !repository::unfiltered(&query) {
            page.check_depth()?;
        }
        let offset = query.offset;
        let list = self.page(query).await?;
        // A search's pages end at its cap; its cursor goes on past it.
        let more = offset + (list.rows.len() as i64) < list.total || (list.capped && !list.rows.is_empty());
        let next = if more { list.rows.last().map(cursor_of) } else { None };
        let pagination = Pagination::new(page.number(), page.limit, list.total);
        let pagination = if list.capped { pagination.capped() } else { pagination };
        Ok((list.rows, pagination.next(next)))
    }

    /// A page-mode page: from an anchor when the list is unfiltered and deep.
    async fn page(&self, query: ListQuery) -> AppResult<ListPage> {
        let sort = query.sort;
        let deep = repository::unfiltered(&query) && query.offset >= ANCHOR_EVERY;
        let anchors = if deep { self.0.anchors.current(sort) } else { None };
        // The future may outlive this frame's borrow (it is boxed for any connection
        // lifetime), so it gets its own copy: no allocation unless there is a search.
        let page = self
            .0
            .reads
            .read(&move |conn| {
                let (query, anchors) = (query.clone(), anchors.clone());
                Box::pin(async move { repository::list(conn, &query, anchors.as_deref()).await })
            })
            .await?;
        if deep
            && !page.anchored
            && let Some(version) = page.order_version
            && self.0.anchors.claim_build(sort, version)
        {
            let this = self.clone();
            tokio::spawn(async move {
                let read = this.0.reads.read(&move |conn| Box::pin(repository::anchors(conn, sort))).await;
                if let Err(e) = &read {
                    tracing::warn!(error = %e, ?sort, "could not read the page anchors");
                }
                this.0.anchors.store(sort, read.ok());
            });
        }
        Ok(page)
    }

    pub async fn get(&self, id: Uuid) -> AppResult<ProductRow> {
        let found = match &self.0.pipeline {
            Some(pipeline) => repository::find_live_pipelined(pipeline, id).await?,
            None => self.0.reads.read(&|conn| Box::pin(repository::find_live(conn, id))).await?,
        };
        found.ok_or_else(|| AppError::not_found("product"))
    }

    #[tracing::instrument(skip_all)]
    pub async fn create(&self, new: &NewProduct<'_>) -> AppResult<ProductRow> {
        let product = repository::insert(&self.0.db, new).await.map_err(sku_conflict)?;
        tracing::info!(product.id = %product.id, "product created");
        Ok(product)
    }

    /// Applies a partial update if `precondition` holds; a product that changed
    /// meanwhile is a 412 and nothing is written. An empty change set writes nothing
    /// (no version bump) and answers the current product, the precondition still checked.
    #[tracing::instrument(skip_all, fields(product.id = %id))]
    pub async fn update(
        &self,
        id: Uuid,
        precondition: &Precondition,
        changes: &ProductChanges,
    ) -> AppResult<ProductRow> {
        if changes.is_empty() {
            let product = self.get(id).await?;
            if !precondition.holds_for(product.version) {
                return Err(AppError::PreconditionFailed(CHANGED.to_owned()));
            }
            return Ok(product);
        }
        match repository::update(&self.0.db, id, precondition.versions(), changes)
            .await
            .map_err(sku_conflict)?
        {
            Some(product) => Ok(product),
            None => match repository::find_live(&self.0.db, id).await? {
                Some(_) => Err(AppError::PreconditionFailed(CHANGED.to_owned())),
                None => Err(AppError::not_found("product")),
            },
        }
    }

    #[tracing::instrument(skip_all, fields(product.id = %id))]
    pub async fn archive(&self, id: Uuid) -> AppResult<()> {
        if repository::archive(&self.0.db, id).await? {
            tracing::info!("product archived");
            Ok(())
        } else {
            Err(AppError::not_found("product"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{features::products::domain::ProductSort, platform::db::read_pool::ReadPoolOptions};

    /// Lists page 61 of the name sort (offset 1200) until one answer was `anchored` as
    /// wanted, for at most 5 s; whether it came.
    async fn anchored_within(products: &ProductService, want: bool) -> bool {
        let query = ListQuery { sort: ProductSort::NameAsc, limit: 20, offset: 1200, ..ListQuery::default() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if products.page(query.clone()).await.unwrap().anchored == want {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn the_service_builds_its_anchors_and_rebuilds_them_when_the_order_changes(db: PgPool) {
        sqlx::query(
            "insert into products (sku, name, price_cents, stock)
             select 'A-' || i, 'Item ' || (i % 700), i, 1 from generate_series(1, 2600) i",
        )
        .execute(&db)
        .await
        .unwrap();
        let reads = ReadPool::new(
            &db,
            ReadPoolOptions {
                max_connections: 2,
                acquire_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(60),
                max_lifetime: Duration::from_secs(600),
                statement_timeout: Duration::from_secs(2),
            },
        );
        let products = ProductService::new(db.clone(), reads, None, "EUR", Cursors::new(b"a test secret"));
        // The first deep page walks; the service then reads its anchors in the background.
        assert!(anchored_within(&products, true).await, "the service never served a deep page from anchors");
        // A rename moves a product: the anchors are stale, the page walks, and the service
        // reads fresh ones.
        sqlx::query("update products set name = 'Aardvark' where sku = 'A-5'").execute(&db).await.unwrap();
        assert!(anchored_within(&products, false).await, "stale anchors were used after a rename");
        assert!(anchored_within(&products, true).await, "the anchors were never rebuilt after the rename");
    }
}
