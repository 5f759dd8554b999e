//! HTTP handlers of payments.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{
    service::{PaymentService, Started},
    types::{PaymentAnswer, WebhookAnswer},
};
use crate::{
    platform::http::{
        error::{AppResult, ErrorEnvelope},
        extract::PathParam,
        response::ApiOk,
    },
    shared::auth::{Require, perm},
};

/// Path parameter `{id}`.
#[derive(Debug, serde::Deserialize)]
pub struct OrderIdPath {
    pub id: uuid::Uuid,
}

/// Starts the payment of a pending order (the owner or staff): a Stripe PaymentIntent
/// for the order's total, whose `clientSecret` the client confirms with Stripe.js. Asked
/// again, the same intent comes back (200) while it can still be paid.
#[utoipa::path(post, path = "/orders/{id}/payment", tag = "payments", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 201, description = "A new intent", body = ApiOk<PaymentAnswer>),
        (status = 200, description = "The order's intent, which can still be paid", body = ApiOk<PaymentAnswer>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, description = "No such order, or another user's", body = ErrorEnvelope),
        (status = 409, description = "INVALID_STATUS_TRANSITION (the order is not pending) or PAYMENTS_DISABLED (PAYMENT_PROVIDER=manual)", body = ErrorEnvelope),
        (status = 502, description = "PAYMENT_PROVIDER_ERROR: the provider was unreachable, too slow, or refused; nothing was stored", body = ErrorEnvelope),
    ))]
pub async fn start_payment(
    State(payments): State<PaymentService>,
    Require(user, _): Require<perm::OrdersCreate>,
    PathParam(path): PathParam<OrderIdPath>,
) -> AppResult<Response> {
    let (started, answer) = payments.start(&user, path.id).await?;
    let status = match started {
        Started::Created => StatusCode::CREATED,
        Started::Existing => StatusCode::OK,
    };
    Ok((status, ApiOk::new(answer)).into_response())
}

/// Stripe's webhook. No bearer token: the `Stripe-Signature` header over the raw body is
/// the authentication. Each event takes effect once; a redelivery answers
/// `duplicate: true`. Events of other types, or about unknown intents, change nothing.
#[utoipa::path(post, path = "/payments/stripe/webhook", tag = "payments",
    security(("stripeSignature" = [])),
    request_body(content = Object, description = "A Stripe event, exactly as Stripe sent it", content_type = "application/json"),
    responses(
        (status = 200, body = ApiOk<WebhookAnswer>),
        (status = 400, description = "INVALID_SIGNATURE: missing, malformed, wrong or stale; nothing changed", body = ErrorEnvelope),
        (status = 404, description = "Online payment is off (PAYMENT_PROVIDER=manual)", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope),
    ))]
pub async fn stripe_webhook(
    State(payments): State<PaymentService>,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<ApiOk<WebhookAnswer>> {
    let duplicate = payments.webhook(&headers, &body).await?;
    Ok(ApiOk::new(WebhookAnswer { received: true, duplicate }))
}
