//! Success envelopes: `{"success": true, "data": ...}` and, for lists,
//! `{"success": true, "data": [...], "pagination": {page, limit, total, pages, nextCursor}}`
//! (page mode) or `{..., "pagination": {limit, nextCursor}}` (cursor mode), with an RFC 8288
//! `Link: <…>; rel="next"` header whenever there is a next page.

use axum::{
    body::Body,
    http::{HeaderValue, Uri, header},
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
        json(&self)
    }
}

/// Room for most single objects and short lists at once: serde_json then writes without
/// growing the buffer (axum's `Json` starts at 128 bytes and doubles, three copies for a
/// product).
const JSON_BUFFER: usize = 1024;

/// `value` as an `application/json` response; a value that cannot be serialised is a 500
/// in the envelope, as with axum's `Json`.
fn json(value: &impl Serialize) -> Response {
    let mut buf = Vec::with_capacity(JSON_BUFFER);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], Body::from(buf))
            .into_response(),
        Err(e) => {
            super::error::AppError::Internal(anyhow::anyhow!("serialising a response: {e}")).into_response()
        }
    }
}

/// The `pagination` object of a list response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    /// Page mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub page: Option<u32>,
    #[schema(minimum = 1, maximum = 100)]
    pub limit: u32,
    /// Page mode only: every item the list's filters match.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub total: Option<i64>,
    /// Page mode only: `ceil(total / limit)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub pages: Option<i64>,
    /// Present (and `true`) only when `total` is a cap, not a count: more items match
    /// than a search counts (1000 for `GET /products?q=`), and pages end at the cap.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(value_type = Option<bool>)]
    pub total_capped: bool,
    /// The `cursor` of the next page (in either mode); `null` on the last page.
    #[schema(max_length = 2048)]
    pub next_cursor: Option<String>,
}

impl Pagination {
    /// Page mode. `pages` is `ceil(total / limit)`, so an empty result has `pages: 0`.
    pub fn new(page: u32, limit: u32, total: i64) -> Self {
        let limit_i = i64::from(limit.max(1));
        Self {
            page: Some(page),
            limit,
            total: Some(total),
            pages: Some((total + limit_i - 1) / limit_i),
            total_capped: false,
            next_cursor: None,
        }
    }

    /// Page mode when `total` was counted, else cursor mode.
    pub fn of(params: &PageParams, total: Option<i64>) -> Self {
        match total {
            Some(total) => Self::new(params.number(), params.limit, total),
            None => Self::cursor(params.limit),
        }
    }

    /// Cursor mode: no `page`, `total` or `pages`.
    pub fn cursor(limit: u32) -> Self {
        Self { page: None, limit, total: None, pages: None, total_capped: false, next_cursor: None }
    }

    /// The right pagination for how `params` asked: page mode counts `total` (the
    /// closure runs only then), cursor mode does not.
    pub fn for_params(params: &PageParams, total: impl FnOnce() -> i64) -> Self {
        if params.cursor.is_some() {
            Self::cursor(params.limit)
        } else {
            Self::new(params.number(), params.limit, total())
        }
    }

    /// The same pagination, `total` being a cap rather than a count.
    pub fn capped(self) -> Self {
        Self { total_capped: true, ..self }
    }

    /// The same pagination, with the next page's cursor.
    pub fn next(self, cursor: Option<String>) -> Self {
        Self { next_cursor: cursor, ..self }
    }
}

/// A page of a list in the success envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiList<T> {
    /// Always `true`.
    pub success: bool,
    /// At most `limit` items.
    #[schema(max_items = 100)]
    pub data: Vec<T>,
    pub pagination: Pagination,
    /// The `Link` header's value, when there is a next page.
    #[serde(skip)]
    #[schema(ignore)]
    link: Option<HeaderValue>,
}

impl<T> ApiList<T> {
    pub fn new(data: Vec<T>, pagination: Pagination) -> Self {
        Self { success: true, data, pagination, link: None }
    }

    /// Adds `Link: <uri with cursor=next>; rel="next"` when the pagination has a next
    /// cursor: the request's own path and filters, its `page` and `cursor` replaced.
    pub fn linked(mut self, uri: &Uri) -> Self {
        if let Some(next) = &self.pagination.next_cursor {
            self.link = HeaderValue::from_str(&format!("<{}>; rel=\"next\"", next_page_uri(uri, next))).ok();
        }
        self
    }
}

/// `uri` with its `page` and `cursor` parameters replaced by `cursor=next`.
fn next_page_uri(uri: &Uri, next: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if key != "page" && key != "cursor" {
            query.append_pair(&key, &value);
        }
    }
    query.append_pair("cursor", next);
    format!("{}?{}", uri.path(), query.finish())
}

impl<T: Serialize> IntoResponse for ApiList<T> {
    fn into_response(self) -> Response {
        let link = self.link.clone();
        let mut res = json(&self);
        if let Some(link) = link {
            res.headers_mut().insert(header::LINK, link);
        }
        res
    }
}

/// `page` (≥ 1, default 1) or `cursor` (from a previous answer's `nextCursor`, not both),
/// and `limit` (1..=100, default 20); out of range is a 400.
#[derive(Debug, Clone, Default, Deserialize, Validate, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[validate(schema(function = "page_or_cursor"))]
pub struct PageParams {
    /// Page number, from 1 (page mode).
    #[validate(range(min = 1, max = 2_147_483_647, message = "must be between 1 and 2147483647"))]
    #[param(minimum = 1, maximum = 2_147_483_647, default = 1)]
    pub page: Option<u32>,
    /// Items per page, 1..=100.
    #[serde(default = "default_limit")]
    #[validate(range(min = 1, max = 100, message = "must be between 1 and 100"))]
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: u32,
    /// Cursor mode: the `nextCursor` of the previous page, with the same filters and sort.
    #[validate(length(min = 1, max = 2048, message = "must be 1 to 2048 characters"))]
    #[param(min_length = 1, max_length = 2048)]
    pub cursor: Option<String>,
}

fn page_or_cursor(p: &PageParams) -> Result<(), validator::ValidationError> {
    match (p.page, &p.cursor) {
        (Some(_), Some(_)) => {
            Err(super::extract::struct_error("cursor", "send either page or cursor, not both"))
        }
        _ => Ok(()),
    }
}

/// Cuts `rows`, read with one row more than `limit`, to the page; with the cursor of the
/// next page (made from the page's last row) when that extra row came back.
pub fn split_page<R>(
    mut rows: Vec<R>,
    limit: u32,
    cursor_of: impl FnOnce(&R) -> String,
) -> (Vec<R>, Option<String>) {
    let limit = limit as usize;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(cursor_of) } else { None };
    (rows, next)
}

/// How deep page mode reaches: `page × limit` at most this; deeper pages are read with
/// a cursor (a keyset seek, the same cost at any depth) instead of an `OFFSET` that
/// walks every row before the page.
pub const MAX_PAGE_DEPTH: i64 = 10_000;

impl PageParams {
    /// A 400 naming `page` when page mode would reach past [`MAX_PAGE_DEPTH`].
    pub fn check_depth(&self) -> Result<(), super::error::AppError> {
        if self.cursor.is_none() && self.offset() + i64::from(self.limit) > MAX_PAGE_DEPTH {
            return Err(super::error::AppError::field(
                "page",
                "page × limit may be at most 10000: to go deeper, follow nextCursor (cursor mode)",
            ));
        }
        Ok(())
    }

    /// A 400 naming `cursor` for a list that pages by number only.
    pub fn page_mode_only(&self) -> Result<(), super::error::AppError> {
        match self.cursor {
            Some(_) => {
                Err(super::error::AppError::field("cursor", "this list pages by number only: send page"))
            }
            None => Ok(()),
        }
    }

    /// Page mode's page (1 when not given).
    pub fn number(&self) -> u32 {
        self.page.unwrap_or(1)
    }

    /// Rows to skip in page mode.
    pub fn offset(&self) -> i64 {
        i64::from(self.number().saturating_sub(1)) * i64::from(self.limit)
    }
}

fn default_limit() -> u32 {
    20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_up_and_empty_is_zero() {
        assert_eq!(Pagination::new(1, 20, 57).pages, Some(3));
        assert_eq!(Pagination::new(1, 20, 60).pages, Some(3));
        assert_eq!(Pagination::new(1, 20, 0).pages, Some(0));
        assert_eq!(Pagination::new(1, 1, 1).pages, Some(1));
    }

    #[test]
    fn offset_follows_page_and_limit() {
        let p = PageParams { page: Some(3), limit: 20, cursor: None };
        assert_eq!(p.offset(), 40);
        assert_eq!(PageParams { page: None, limit: 20, cursor: None }.offset(), 0);
    }

    #[test]
    fn page_and_cursor_together_are_refused() {
        let both = PageParams { page: Some(2), limit: 20, cursor: Some("c".to_owned()) };
        assert!(both.validate().is_err());
        assert!(PageParams { page: None, limit: 20, cursor: Some("c".to_owned()) }.validate().is_ok());
    }

    #[test]
    fn the_next_link_keeps_filters_and_replaces_page_and_cursor() {
        let uri: Uri = "/api/v1/orders?status=paid&page=3&limit=5&cursor=old".parse().unwrap();
        assert_eq!(next_page_uri(&uri, "abc.def"), "/api/v1/orders?status=paid&limit=5&cursor=abc.def");
        let list =
            ApiList::new(Vec::<u8>::new(), Pagination::cursor(5).next(Some("n".to_owned()))).linked(&uri);
        let res = list.into_response();
        assert_eq!(
            res.headers()[header::LINK],
            r#"</api/v1/orders?status=paid&limit=5&cursor=n>; rel="next""#
        );
        let last = ApiList::new(Vec::<u8>::new(), Pagination::cursor(5)).linked(&uri).into_response();
        assert!(last.headers().get(header::LINK).is_none());
    }
}
