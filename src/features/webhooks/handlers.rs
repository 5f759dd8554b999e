//! HTTP handlers of `/webhook-endpoints`, admin only.

use axum::{
    extract::{OriginalUri, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    service::WebhookService,
    types::{
        CreateEndpointRequest, DeliveryFilter, DeliveryResponse, EndpointResponse, RotateSecretRequest,
        UpdateEndpointRequest,
    },
};
use crate::{
    platform::http::{
        cursor::Cursors,
        error::{AppResult, ErrorEnvelope},
        extract::{JsonBody, PathParam, QueryParams, ValidJson},
        response::{ApiList, ApiOk, PageParams, Pagination, split_page},
    },
    shared::auth::{Require, perm},
};

/// Path of a delivery: its endpoint and its id.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    pub id: Uuid,
    pub delivery_id: Uuid,
}

/// Registers an endpoint (admin). The answer carries its signing secret, shown only here
/// and when it is rotated.
#[utoipa::path(post, path = "/webhook-endpoints", tag = "webhooks", security(("bearer" = [])),
    request_body = CreateEndpointRequest,
    responses(
        (status = 201, body = ApiOk<EndpointResponse>,
            headers(("Location" = String, description = "/api/v1/webhook-endpoints/{id}"))),
        (status = 400, description = "A bad URL (`fields.url`) or event (`fields.events[i]`)", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 503, description = "WEBHOOK_SECRETS_KEY is not set (production)", body = ErrorEnvelope),
    ))]
pub async fn create_endpoint(
    State(webhooks): State<WebhookService>,
    _: Require<perm::WebhooksManage>,
    ValidJson(body): ValidJson<CreateEndpointRequest>,
) -> AppResult<Response> {
    let endpoint = webhooks.create(&body).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/webhook-endpoints/{}", endpoint.id)).ok();
    let mut res = (StatusCode::CREATED, ApiOk::new(endpoint)).into_response();
    if let Some(location) = location {
        res.headers_mut().insert(header::LOCATION, location);
    }
    Ok(res)
}

/// Endpoints, newest first (admin); never their secrets.
#[utoipa::path(get, path = "/webhook-endpoints", tag = "webhooks", security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, body = ApiList<EndpointResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
    ))]
pub async fn list_endpoints(
    State(webhooks): State<WebhookService>,
    State(cursors): State<Cursors>,
    _: Require<perm::WebhooksManage>,
    OriginalUri(uri): OriginalUri,
    QueryParams(page): QueryParams<PageParams>,
) -> AppResult<ApiList<EndpointResponse>> {
    const LIST: &str = "webhook-endpoints";
    let after = cursors.start::<(DateTime<Utc>, Uuid)>(LIST, &(), &page)?;
    let (rows, total) = webhooks.list(&page, after).await?;
    let (rows, next) =
        split_page(rows, page.limit, |last| cursors.encode(LIST, &(), &(last.created_at, last.id)));
    Ok(ApiList::new(rows, Pagination::of(&page, total).next(next)).linked(&uri))
}

/// One endpoint (admin).
#[utoipa::path(get, path = "/webhook-endpoints/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = ApiOk<EndpointResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_endpoint(
    State(webhooks): State<WebhookService>,
    _: Require<perm::WebhooksManage>,
    PathParam(id): PathParam<Uuid>,
) -> AppResult<ApiOk<EndpointResponse>> {
    Ok(ApiOk::new(webhooks.get(id).await?))
}

/// Changes an endpoint's URL, events, description or whether it is enabled (admin).
#[utoipa::path(patch, path = "/webhook-endpoints/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body = UpdateEndpointRequest,
    responses(
        (status = 200, body = ApiOk<EndpointResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn update_endpoint(
    State(webhooks): State<WebhookService>,
    _: Require<perm::WebhooksManage>,
    PathParam(id): PathParam<Uuid>,
    JsonBody(body): JsonBody<UpdateEndpointRequest>,
) -> AppResult<ApiOk<EndpointResponse>> {
    validator::Validate::validate(&body).map_err(crate::platform::http::extract::validation_error)?;
    Ok(ApiOk::new(webhooks.update(id, &body).await?))
}

/// Deletes an endpoint (admin); its pending deliveries stop.
#[utoipa::path(delete, path = "/webhook-endpoints/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn delete_endpoint(
    State(webhooks): State<WebhookService>,
    _: Require<perm::WebhooksManage>,
    PathParam(id): PathParam<Uuid>,
) -> AppResult<StatusCode> {
    webhooks.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret (admin); the old one keeps signing beside it for `graceSeconds`.
#[utoipa::path(post, path = "/webhook-endpoints/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body = RotateSecretRequest,
    responses(
        (status = 200, body = ApiOk<EndpointResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 503, description = "WEBHOOK_SECRETS_KEY is not set (production)", body = ErrorEnvelope),
    ))]
pub async fn rotate_secret(
    State(webhooks): State<WebhookService>,
    _: Require<perm::WebhooksManage>,
    PathParam(id): PathParam<Uuid>,
    ValidJson(body): ValidJson<RotateSecretRequest>,
) -> AppResult<ApiOk<EndpointResponse>> {
    Ok(ApiOk::new(webhooks.rotate(id, &body).await?))
}

/// An endpoint's deliveries, newest first, optionally by status (admin).
#[utoipa::path(get, path = "/webhook-endpoints/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path), PageParams, DeliveryFilter),
    responses(
        (status = 200, body = ApiList<DeliveryResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn list_deliveries(
    State(webhooks): State<WebhookService>,
    State(cursors): State<Cursors>,
    _: Require<perm::WebhooksManage>,
    OriginalUri(uri): OriginalUri,
    PathParam(id): PathParam<Uuid>,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<DeliveryFilter>,
) -> AppResult<ApiList<DeliveryResponse>> {
    const LIST: &str = "webhook-deliveries";
    let filters = (id, filter.status);
    let after = cursors.start::<(DateTime<Utc>, Uuid)>(LIST, &filters, &page)?;
    let (rows, total) = webhooks.deliveries(id, &filter, &page, after).await?;
    let (rows, next) =
        split_page(rows, page.limit, |last| cursors.encode(LIST, &filters, &(last.created_at, last.id)));
    let data = rows
        .into_iter()
        .map(|r| DeliveryResponse {
            id: r.id,
            event_id: r.event_id,
            kind: r.kind,
            status: r.status,
            attempts: r.attempts,
            last_status_code: r.last_status_code,
            last_error: r.last_error,
            next_attempt_at: r.next_attempt_at,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
        })
        .collect();
    Ok(ApiList::new(data, Pagination::of(&page, total).next(next)).linked(&uri))
}

/// Tries a failed delivery again with fresh attempts and the same `webhook-id` (admin).
#[utoipa::path(post, path = "/webhook-endpoints/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    security(("bearer" = [])),
    params(DeliveryPath),
    responses(
        (status = 202, description = "Queued again"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "The delivery has not failed", body = ErrorEnvelope),
    ))]
pub async fn retry_delivery(
    State(webhooks): State<WebhookService>,
    _: Require<perm::WebhooksManage>,
    PathParam(path): PathParam<DeliveryPath>,
) -> AppResult<StatusCode> {
    webhooks.retry(path.id, path.delivery_id).await?;
    Ok(StatusCode::ACCEPTED)
}
