//! HTTP handlers of `/products` (SPEC §5).

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    repository::{NewProduct, ProductChanges, ProductRow},
    service::ProductService,
    types::{CreateProductRequest, ProductFilter, ProductIdPath, ProductResponse, UpdateProductRequest},
};
use crate::shared::{
    auth::{Require, perm},
    config::Settings,
    error::{AppError, AppResult, ErrorEnvelope},
    extract::{PathParam, QueryParams, ValidJson},
    response::{ApiList, ApiOk, PageParams, Pagination},
};

/// The strong ETag of a product version.
fn etag(version: i32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// The versions an `If-Match` / `If-None-Match` list names; `weak` says whether weak
/// tags (`W/"3"`) count: they do for `If-None-Match`, never for `If-Match` (RFC 9110
/// compares strongly there).
fn versions_in(value: &str, weak: bool) -> impl Iterator<Item = i32> + '_ {
    value.split(',').filter_map(move |tag| {
        let tag = tag.trim();
        let tag = match tag.strip_prefix("W/") {
            Some(_) if !weak => return None,
            Some(stripped) => stripped,
            None => tag,
        };
        tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|v| v.parse().ok())
    })
}

fn with_etag(product: ProductRow, settings: &Settings, status: StatusCode) -> Response {
    let tag = etag(product.version);
    let mut res = (status, ApiOk::new(ProductResponse::new(product, &settings.currency))).into_response();
    res.headers_mut().insert(header::ETAG, tag);
    res
}

/// Lists live products (public).
#[utoipa::path(get, path = "/products", tag = "products",
    params(PageParams, ProductFilter),
    responses(
        (status = 200, body = ApiList<ProductResponse>),
        (status = 400, description = "Invalid query parameter", body = ErrorEnvelope),
    ))]
pub async fn list_products(
    State(products): State<ProductService>,
    State(settings): State<Arc<Settings>>,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<ProductFilter>,
) -> AppResult<ApiList<ProductResponse>> {
    filter.check()?;
    let (rows, total) = products.list(page, &filter).await?;
    let data = rows.into_iter().map(|p| ProductResponse::new(p, &settings.currency)).collect();
    Ok(ApiList::new(data, Pagination::new(page.page, page.limit, total)))
}

/// One live product (public), with `ETag`; `If-None-Match` with the current tag → 304.
#[utoipa::path(get, path = "/products/{id}", tag = "products",
    params(("id" = uuid::Uuid, Path), ("If-None-Match" = Option<String>, Header)),
    responses(
        (status = 200, body = ApiOk<ProductResponse>, headers(("ETag" = String))),
        (status = 304, description = "Not modified"),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_product(
    State(products): State<ProductService>,
    State(settings): State<Arc<Settings>>,
    PathParam(path): PathParam<ProductIdPath>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let product = products.get(path.id).await?;
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if let Some(value) = if_none_match
        && (value.trim() == "*" || versions_in(value, true).any(|v| v == product.version))
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, etag(product.version));
        return Ok(res);
    }
    Ok(with_etag(product, &settings, StatusCode::OK))
}

/// Creates a product (admin) → 201 with `Location`; a taken SKU is a 409.
#[utoipa::path(post, path = "/products", tag = "products", security(("bearer" = [])),
    request_body = CreateProductRequest,
    responses(
        (status = 201, body = ApiOk<ProductResponse>, headers(("Location" = String), ("ETag" = String))),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, description = "SKU taken", body = ErrorEnvelope),
    ))]
pub async fn create_product(
    State(products): State<ProductService>,
    State(settings): State<Arc<Settings>>,
    _: Require<perm::ProductsWrite>,
    ValidJson(body): ValidJson<CreateProductRequest>,
) -> AppResult<Response> {
    let product = products
        .create(&NewProduct {
            sku: &body.sku,
            name: &body.name,
            description: body.description.as_deref(),
            price_cents: body.price_cents,
            stock: body.stock,
        })
        .await?;
    let location =
        HeaderValue::from_str(&format!("/api/v1/products/{}", product.id)).map_err(anyhow::Error::from)?;
    let mut res = with_etag(product, &settings, StatusCode::CREATED);
    res.headers_mut().insert(header::LOCATION, location);
    Ok(res)
}

/// Partially updates a product (admin); `If-Match` that is not the current `ETag` → 412.
#[utoipa::path(patch, path = "/products/{id}", tag = "products", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path), ("If-Match" = Option<String>, Header)),
    request_body = UpdateProductRequest,
    responses(
        (status = 200, body = ApiOk<ProductResponse>, headers(("ETag" = String))),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "SKU taken", body = ErrorEnvelope),
        (status = 412, description = "If-Match does not match", body = ErrorEnvelope),
    ))]
pub async fn update_product(
    State(products): State<ProductService>,
    State(settings): State<Arc<Settings>>,
    _: Require<perm::ProductsWrite>,
    PathParam(path): PathParam<ProductIdPath>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<UpdateProductRequest>,
) -> AppResult<Response> {
    body.check()?;
    let expected = match headers.get(header::IF_MATCH).map(|v| v.to_str().unwrap_or_default()) {
        None => None,
        Some(value) if value.trim() == "*" => None,
        // Any listed strong tag may match; none parseable means nothing can: 412, never
        // a silent overwrite.
        Some(value) => Some(versions_in(value, false).collect::<Vec<_>>()),
    };
    if body.is_empty() {
        let product = products.get(path.id).await?;
        if expected.as_ref().is_some_and(|v| !v.contains(&product.version)) {
            return Err(AppError::PreconditionFailed("the product has changed; fetch it again".to_owned()));
        }
        return Ok(with_etag(product, &settings, StatusCode::OK));
    }
    let changes = ProductChanges {
        sku: body.sku,
        name: body.name,
        description: body.description,
        price_cents: body.price_cents,
        stock: body.stock,
    };
    let product = products.update(path.id, expected.as_deref(), &changes).await?;
    Ok(with_etag(product, &settings, StatusCode::OK))
}

/// Archives a product (admin): gone from the catalogue, kept inside old orders.
#[utoipa::path(delete, path = "/products/{id}", tag = "products", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Archived"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn delete_product(
    State(products): State<ProductService>,
    _: Require<perm::ProductsWrite>,
    PathParam(path): PathParam<ProductIdPath>,
) -> AppResult<StatusCode> {
    products.archive(path.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
