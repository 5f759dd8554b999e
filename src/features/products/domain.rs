//! Catalogue rules as plain types: the bounds every entry point validates against and the
//! sort orders. Optimistic concurrency (`If-Match`) is `platform::http::conditional`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Highest price, in minor units (1 000 000.00 in a currency of two decimals).
pub const MAX_PRICE_CENTS: i64 = 100_000_000;
pub use crate::shared::domain::MAX_STOCK;

/// Sort orders of the list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ProductSort {
    #[serde(rename = "name")]
    NameAsc,
    #[serde(rename = "-name")]
    NameDesc,
    #[serde(rename = "price")]
    PriceAsc,
    #[serde(rename = "-price")]
    PriceDesc,
    #[serde(rename = "createdAt")]
    CreatedAsc,
    #[default]
    #[serde(rename = "-createdAt")]
    CreatedDesc,
}
