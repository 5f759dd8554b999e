//! Success envelopes (SPEC §2): `{"success": true, "data": ...}` and, for lists,
//! `{"success": true, "data": [...], "pagination": {page, limit, total, pages}}`.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

/// A single object in the success envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiOk<T> {
    /// Always `true`.
    pub success: bool,
    pub data: T,
}

impl<T> ApiOk<T> {
    pub fn new(data: T) -> Self {
        Self { success: true, data }
    }
}

impl<T: Serialize> IntoResponse for ApiOk<T> {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// The `pagination` object of a list response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Pagination {
    pub page: u32,
    pub limit: u32,
    pub total: i64,
    pub pages: i64,
    /// Present (and `true`) only when `total` is a cap, not a count: more items match
    /// than a search counts (1000 for `GET /products?q=`), and pages end at the cap.
    #[serde(rename = "totalCapped", skip_serializing_if = "std::ops::Not::not")]
    #[schema(value_type = Option<bool>)]
    pub total_capped: bool,
}

impl Pagination {
    /// `pages` is `ceil(total / limit)`, so an empty result has `pages: 0`.
    pub fn new(page: u32, limit: u32, total: i64) -> Self {
        let limit_i = i64::from(limit.max(1));
        Self { page, limit, total, pages: (total + limit_i - 1) / limit_i, total_capped: false }
    }

    /// The same pagination, `total` being a cap rather than a count.
    pub fn capped(self) -> Self {
        Self { total_capped: true, ..self }
    }
}

/// A page of a list in the success envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiList<T> {
    /// Always `true`.
    pub success: bool,
    pub data: Vec<T>,
    pub pagination: Pagination,
}

impl<T> ApiList<T> {
    pub fn new(data: Vec<T>, pagination: Pagination) -> Self {
        Self { success: true, data, pagination }
    }
}

impl<T: Serialize> IntoResponse for ApiList<T> {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// `page` (≥ 1, default 1) and `limit` (1..=100, default 20); out of range is a 400.
#[derive(Debug, Clone, Copy, Deserialize, Validate, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page number, from 1.
    #[serde(default = "default_page")]
    #[validate(range(min = 1, max = 2_147_483_647, message = "must be between 1 and 2147483647"))]
    #[param(minimum = 1, maximum = 2_147_483_647, default = 1)]
    pub page: u32,
    /// Items per page, 1..=100.
    #[serde(default = "default_limit")]
    #[validate(range(min = 1, max = 100, message = "must be between 1 and 100"))]
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: u32,
}

impl PageParams {
    /// Rows to skip.
    pub fn offset(&self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.limit)
    }
}

fn default_page() -> u32 {
    1
}

fn default_limit() -> u32 {
    20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_up_and_empty_is_zero() {
        assert_eq!(Pagination::new(1, 20, 57).pages, 3);
        assert_eq!(Pagination::new(1, 20, 60).pages, 3);
        assert_eq!(Pagination::new(1, 20, 0).pages, 0);
        assert_eq!(Pagination::new(1, 1, 1).pages, 1);
    }

    #[test]
    fn offset_follows_page_and_limit() {
        let p = PageParams { page: 3, limit: 20 };
        assert_eq!(p.offset(), 40);
    }
}
