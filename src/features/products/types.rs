//! Request and response bodies of the products endpoints.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::{Validate, ValidationError};

use super::{
    domain::{MAX_PRICE_CENTS, MAX_STOCK, ProductSort},
    repository::{ProductChanges, ProductRow},
};
use crate::platform::http::extract::{double_option, reject_null, struct_error};

/// A product as the catalogue shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductResponse {
    pub id: Uuid,
    #[schema(max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    /// Integer minor units of `currency`.
    #[schema(minimum = 0, maximum = 100_000_000)]
    pub price_cents: i64,
    /// ISO 4217.
    #[schema(example = "USD", min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub stock: i32,
    /// Bumped on every change; the `ETag` is `"<version>"`.
    #[schema(minimum = 1)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProductResponse {
    pub fn new(p: ProductRow, currency: &str) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            price_cents: p.price_cents,
            currency: currency.to_owned(),
            stock: p.stock,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// `POST /products`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProductRequest {
    /// 1..=64 of `[A-Za-z0-9._-]`, unique.
    #[validate(custom(function = "valid_sku"))]
    #[schema(example = "MUG-001", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[validate(length(max = 5000, message = "must be at most 5000 characters"))]
    #[schema(max_length = 5000)]
    pub description: Option<String>,
    #[validate(range(min = 0, max = MAX_PRICE_CENTS, message = "must be between 0 and 100000000"))]
    #[schema(minimum = 0, maximum = 100_000_000)]
    pub price_cents: i64,
    #[validate(range(min = 0, max = MAX_STOCK, message = "must be between 0 and 1000000"))]
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub stock: i32,
}

/// `PATCH /products/{id}`: absent = unchanged; `description: null` clears it.
#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[validate(schema(function = "description_fits"))]
pub struct UpdateProductRequest {
    #[validate(custom(function = "valid_sku"))]
    #[serde(default, deserialize_with = "reject_null")]
    #[schema(nullable = false, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: Option<String>,
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    #[serde(default, deserialize_with = "reject_null")]
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 5000)]
    pub description: Option<Option<String>>,
    #[validate(range(min = 0, max = MAX_PRICE_CENTS, message = "must be between 0 and 100000000"))]
    #[serde(default, deserialize_with = "reject_null")]
    #[schema(nullable = false, minimum = 0, maximum = 100_000_000)]
    pub price_cents: Option<i64>,
    #[validate(range(min = 0, max = MAX_STOCK, message = "must be between 0 and 1000000"))]
    #[serde(default, deserialize_with = "reject_null")]
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000)]
    pub stock: Option<i32>,
}

/// What `validator` cannot express on a nullable field.
fn description_fits(body: &UpdateProductRequest) -> Result<(), ValidationError> {
    match &body.description {
        Some(Some(d)) if d.chars().count() > 5000 => {
            Err(struct_error("description", "must be at most 5000 characters"))
        }
        _ => Ok(()),
    }
}

impl From<UpdateProductRequest> for ProductChanges {
    fn from(body: UpdateProductRequest) -> Self {
        Self {
            sku: body.sku,
            name: body.name,
            description: body.description,
            price_cents: body.price_cents,
            stock: body.stock,
        }
    }
}

/// Filters of `GET /products`.
#[derive(Debug, Default, Deserialize, Validate, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
#[validate(schema(function = "price_range_ordered"))]
pub struct ProductFilter {
    /// Case-insensitive substring of name or description, 3 to 100 characters (a shorter
    /// one could not use the search index). The total counts at most 1000 matches
    /// (`pagination.totalCapped`).
    #[validate(length(min = 3, max = 100, message = "must be 3 to 100 characters"))]
    #[param(min_length = 3, max_length = 100)]
    pub q: Option<String>,
    /// Inclusive, minor units; not above `maxPrice`.
    #[validate(range(min = 0, max = MAX_PRICE_CENTS, message = "must be between 0 and 100000000"))]
    #[param(minimum = 0, maximum = 100_000_000)]
    pub min_price: Option<i64>,
    /// Inclusive, minor units.
    #[validate(range(min = 0, max = MAX_PRICE_CENTS, message = "must be between 0 and 100000000"))]
    #[param(minimum = 0, maximum = 100_000_000)]
    pub max_price: Option<i64>,
    /// `true`: only products with stock; `false`: only sold-out ones.
    pub in_stock: Option<bool>,
    /// `name`, `-name`, `price`, `-price`, `createdAt`, `-createdAt` (default).
    #[serde(default)]
    #[param(inline, value_type = Option<ProductSort>)]
    pub sort: ProductSort,
}

fn price_range_ordered(f: &ProductFilter) -> Result<(), ValidationError> {
    match (f.min_price, f.max_price) {
        (Some(min), Some(max)) if min > max => Err(struct_error("minPrice", "must not exceed maxPrice")),
        _ => Ok(()),
    }
}

/// Path parameter `{id}`.
#[derive(Debug, Deserialize)]
pub struct ProductIdPath {
    pub id: Uuid,
}

fn valid_sku(value: &str) -> Result<(), ValidationError> {
    let ok = (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("sku").with_message("must be 1 to 64 of A-Z a-z 0-9 . _ -".into()))
    }
}
