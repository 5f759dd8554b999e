//! HTTP handlers of `/orders`.

use axum::{
    extract::{OriginalUri, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    idempotency::Answer,
    service::{OrderService, Placed},
    types::{
        CreateOrderRequest, IdempotencyKeyHeader, OrderEventResponse, OrderFilter, OrderIdPath,
        OrderResponse, UpdateOrderRequest, UpdateStatusRequest,
    },
};
use std::sync::Arc;

use sqlx::PgPool;

use crate::{
    features::users,
    platform::config::Settings,
    platform::http::{
        error::{AppError, AppResult, Enveloped, ErrorEnvelope},
        extract::{JsonBody, JsonBytes, PathParam, QueryParams, ValidJson},
        response::{ApiList, ApiOk, PageParams},
    },
    shared::auth::{Require, perm},
};

static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

fn location(order_id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("/api/v1/orders/{order_id}")).ok()
}

fn created(order: OrderResponse) -> Response {
    let location = location(&order.id.to_string());
    let mut res = (StatusCode::CREATED, ApiOk::new(order)).into_response();
    if let Some(location) = location {
        res.headers_mut().insert(header::LOCATION, location);
    }
    res
}

/// The stored first answer, unchanged, marked as a replay.
fn replay(Answer { status, body }: Answer) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let location = body["data"]["id"].as_str().and_then(location);
    let mut res = (status, axum::Json(body)).into_response();
    let headers = res.headers_mut();
    headers.insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    if status == StatusCode::CREATED
        && let Some(location) = location
    {
        headers.insert(header::LOCATION, location);
    }
    res.extensions_mut().insert(Enveloped);
    res
}

/// Places an order for the caller. With `Idempotency-Key`, a retry gets the first answer
/// back (`Idempotent-Replayed: true`) and never a second order.
#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1..=255 characters, scoped to the caller",
        min_length = 1, max_length = 255)),
    request_body = CreateOrderRequest,
    responses(
        (status = 201, body = ApiOk<OrderResponse>, headers(("Location" = String))),
        (status = 400, description = "Invalid body, unknown or archived product (`fields.items[i].productId`)", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "FORBIDDEN, or EMAIL_NOT_VERIFIED: the caller has not confirmed its e-mail address (when verification is required)", body = ErrorEnvelope),
        (status = 409, description = "INSUFFICIENT_STOCK (with `details.products`), TOO_MANY_PENDING_ORDERS (the caller already holds the most unpaid orders allowed; `details.pending`) or IDEMPOTENCY_KEY_IN_USE", body = ErrorEnvelope),
        (status = 422, description = "IDEMPOTENCY_KEY_MISMATCH", body = ErrorEnvelope),
    ))]
pub async fn create_order(
    State(orders): State<OrderService>,
    State(config): State<Arc<Settings>>,
    State(db): State<PgPool>,
    Require(user, _): Require<perm::OrdersCreate>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    // Parsed by the service: the key's fingerprint is taken over the parsed request, or
    // over the bytes when they are not one.
    JsonBytes(body): JsonBytes,
) -> AppResult<Response> {
    // A depends-on-state refusal: never stored against the key, so a retry after the
    // address is confirmed is placed.
    if config.require_verified_email && !users::email_verified(&db, user.id).await? {
        return Err(AppError::EmailNotVerified);
    }
    Ok(match orders.place_idempotent(&user, key, &body).await? {
        Placed::Created(order) => created(*order),
        Placed::Replayed(answer) => replay(answer),
    })
}

/// Lists orders: the caller's own; staff see all and may filter by `userId`.
#[utoipa::path(get, path = "/orders", tag = "orders", security(("bearer" = [])),
    params(PageParams, OrderFilter),
    responses(
        (status = 200, body = ApiList<OrderResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, description = "`userId` of another user without staff rights", body = ErrorEnvelope),
    ))]
pub async fn list_orders(
    State(orders): State<OrderService>,
    Require(user, _): Require<perm::OrdersRead>,
    OriginalUri(uri): OriginalUri,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<OrderFilter>,
) -> AppResult<ApiList<OrderResponse>> {
    let (data, pagination) = orders.list(&user, &filter, &page).await?;
    Ok(ApiList::new(data, pagination).linked(&uri))
}

/// One order: the owner's or, for staff, any. Another user's order is a 404.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = ApiOk<OrderResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_order(
    State(orders): State<OrderService>,
    Require(user, _): Require<perm::OrdersRead>,
    PathParam(path): PathParam<OrderIdPath>,
) -> AppResult<ApiOk<OrderResponse>> {
    Ok(ApiOk::new(orders.get(&user, path.id).await?))
}

/// Changes the shipping address: the owner while pending, staff while pending or paid.
#[utoipa::path(patch, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    request_body = UpdateOrderRequest,
    responses(
        (status = 200, body = ApiOk<OrderResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "INVALID_STATUS_TRANSITION", body = ErrorEnvelope),
    ))]
pub async fn update_order(
    State(orders): State<OrderService>,
    Require(user, _): Require<perm::OrdersUpdate>,
    PathParam(path): PathParam<OrderIdPath>,
    ValidJson(body): ValidJson<UpdateOrderRequest>,
) -> AppResult<ApiOk<OrderResponse>> {
    Ok(ApiOk::new(orders.update_address(&user, path.id, body.into_address().as_ref()).await?))
}

/// Cancels an order and restocks it: the owner while pending, staff while pending or paid.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = ApiOk<OrderResponse>),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "INVALID_STATUS_TRANSITION", body = ErrorEnvelope),
    ))]
pub async fn cancel_order(
    State(orders): State<OrderService>,
    Require(user, _): Require<perm::OrdersUpdate>,
    PathParam(path): PathParam<OrderIdPath>,
) -> AppResult<ApiOk<OrderResponse>> {
    Ok(ApiOk::new(orders.cancel(&user, path.id).await?))
}

/// Moves an order along `pending → paid → shipped → delivered` or cancels it (staff).
#[utoipa::path(patch, path = "/orders/{id}/status", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    request_body = UpdateStatusRequest,
    responses(
        (status = 200, body = ApiOk<OrderResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "INVALID_STATUS_TRANSITION", body = ErrorEnvelope),
    ))]
pub async fn update_order_status(
    State(orders): State<OrderService>,
    Require(user, _): Require<perm::OrdersManage>,
    PathParam(path): PathParam<OrderIdPath>,
    JsonBody(body): JsonBody<UpdateStatusRequest>,
) -> AppResult<ApiOk<OrderResponse>> {
    Ok(ApiOk::new(orders.set_status(&user, path.id, body.status).await?))
}

/// An order's history, oldest first: every status, payment and address change, who made
/// it and when. The owner or staff; anyone else gets a 404.
#[utoipa::path(get, path = "/orders/{id}/events", tag = "orders", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path), PageParams),
    responses(
        (status = 200, body = ApiList<OrderEventResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn list_order_events(
    State(orders): State<OrderService>,
    Require(user, _): Require<perm::OrdersRead>,
    OriginalUri(uri): OriginalUri,
    PathParam(path): PathParam<OrderIdPath>,
    QueryParams(page): QueryParams<PageParams>,
) -> AppResult<ApiList<OrderEventResponse>> {
    let (data, pagination) = orders.events(&user, path.id, &page).await?;
    Ok(ApiList::new(data, pagination).linked(&uri))
}
