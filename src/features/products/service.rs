//! Catalogue rules (SPEC §5): SKU uniqueness, optimistic concurrency through `version`,
//! archive instead of delete.

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    domain::Precondition,
    repository::{self, ListPage, ListQuery, NewProduct, ProductChanges, ProductRow},
    types::ProductFilter,
};
use crate::shared::{
    db::contains_pattern,
    error::{AppError, AppResult},
    response::PageParams,
};

const SKU_TAKEN: &str = "a product with this sku already exists";
const CHANGED: &str = "the product has changed; fetch it again";

/// Catalogue use cases; cheap to clone.
#[derive(Clone)]
pub struct ProductService {
    db: PgPool,
    currency: Arc<str>,
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
    pub fn new(db: PgPool, currency: &str) -> Self {
        Self { db, currency: Arc::from(currency) }
    }

    /// The deployment's currency, which every price is in.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub async fn list(&self, page: PageParams, filter: &ProductFilter) -> AppResult<ListPage> {
        let query = ListQuery {
            pattern: filter.q.as_deref().map(|q| contains_pattern(&q.to_lowercase())),
            min_price: filter.min_price,
            max_price: filter.max_price,
            in_stock: filter.in_stock,
            sort: filter.sort,
            limit: i64::from(page.limit),
            offset: page.offset(),
        };
        Ok(repository::list(&self.db, query).await?)
    }

    pub async fn get(&self, id: Uuid) -> AppResult<ProductRow> {
        repository::find_live(&self.db, id).await?.ok_or_else(|| AppError::not_found("product"))
    }

    #[tracing::instrument(skip_all)]
    pub async fn create(&self, new: &NewProduct<'_>) -> AppResult<ProductRow> {
        let product = repository::insert(&self.db, new).await.map_err(sku_conflict)?;
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
        match repository::update(&self.db, id, precondition.versions(), changes)
            .await
            .map_err(sku_conflict)?
        {
            Some(product) => Ok(product),
            None => match repository::find_live(&self.db, id).await? {
                Some(_) => Err(AppError::PreconditionFailed(CHANGED.to_owned())),
                None => Err(AppError::not_found("product")),
            },
        }
    }

    #[tracing::instrument(skip_all, fields(product.id = %id))]
    pub async fn archive(&self, id: Uuid) -> AppResult<()> {
        if repository::archive(&self.db, id).await? {
            tracing::info!("product archived");
            Ok(())
        } else {
            Err(AppError::not_found("product"))
        }
    }
}
