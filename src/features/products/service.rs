//! Catalogue rules (SPEC §5): SKU uniqueness, optimistic concurrency through `version`,
//! archive instead of delete.

use sqlx::PgPool;
use uuid::Uuid;

use super::repository::{self, NewProduct, ProductChanges, ProductRow};
use super::types::ProductFilter;
use crate::shared::{
    error::{AppError, AppResult},
    response::PageParams,
};

const SKU_TAKEN: &str = "a product with this sku already exists";

/// Catalogue use cases; cheap to clone.
#[derive(Clone)]
pub struct ProductService {
    db: PgPool,
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
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    pub async fn list(&self, page: PageParams, filter: &ProductFilter) -> AppResult<(Vec<ProductRow>, i64)> {
        Ok(repository::list(&self.db, filter, i64::from(page.limit), page.offset()).await?)
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

    /// Applies a partial update. With `expected_versions` (from `If-Match`), a product that
    /// changed meanwhile is a 412 and nothing is written.
    #[tracing::instrument(skip_all, fields(product.id = %id))]
    pub async fn update(
        &self,
        id: Uuid,
        expected_versions: Option<&[i32]>,
        changes: &ProductChanges,
    ) -> AppResult<ProductRow> {
        match repository::update(&self.db, id, expected_versions, changes).await.map_err(sku_conflict)? {
            Some(product) => Ok(product),
            None => match repository::find_live(&self.db, id).await? {
                Some(_) => {
                    Err(AppError::PreconditionFailed("the product has changed; fetch it again".to_owned()))
                }
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
