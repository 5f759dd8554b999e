//! HTTP handlers of `/products`.

use axum::{
    extract::{OriginalUri, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};

use super::{
    repository::{NewProduct, ProductRow},
    service::ProductService,
    types::{CreateProductRequest, ProductFilter, ProductIdPath, ProductResponse, UpdateProductRequest},
};
use crate::{
    platform::http::{
        error::{AppResult, ErrorEnvelope},
        conditional::{Precondition, not_modified, tagged},
        extract::{PathParam, QueryParams, ValidJson},
        response::{ApiList, ApiOk, PageParams},
    },
    shared::auth::{Require, perm},
};

fn with_etag(product: ProductRow, currency: &str, status: StatusCode) -> Response {
    let version = product.version;
    tagged((status, ApiOk::new(ProductResponse::new(product, currency))), version)
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
    OriginalUri(uri): OriginalUri,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<ProductFilter>,
) -> AppResult<ApiList<ProductResponse>> {
    let (rows, pagination) = products.list(&page, &filter).await?;
    let data = rows.into_iter().map(|p| ProductResponse::new(p, products.currency())).collect();
    Ok(ApiList::new(data, pagination).linked(&uri))
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
    PathParam(path): PathParam<ProductIdPath>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let product = products.get(path.id).await?;
    if let Some(res) = not_modified(&headers, product.version)? {
        return Ok(res);
    }
    Ok(with_etag(product, products.currency(), StatusCode::OK))
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
    let mut res = with_etag(product, products.currency(), StatusCode::CREATED);
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
    _: Require<perm::ProductsWrite>,
    PathParam(path): PathParam<ProductIdPath>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<UpdateProductRequest>,
) -> AppResult<Response> {
    let product = products.update(path.id, &Precondition::from_headers(&headers)?, &body.into()).await?;
    Ok(with_etag(product, products.currency(), StatusCode::OK))
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
