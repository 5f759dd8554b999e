//! Bodies of the payments endpoints.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::features::orders::PaymentStatus;

/// A payment the client can confirm with the provider's SDK.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAnswer {
    pub order_id: Uuid,
    /// `stripe`.
    #[schema(max_length = 32, pattern = "^[a-z]+$")]
    pub provider: String,
    /// The provider's id of the payment (a Stripe PaymentIntent `pi_…`).
    pub provider_payment_id: String,
    /// For the client's SDK (Stripe.js `confirmPayment`); read from the provider on each
    /// request, never stored by this server.
    pub client_secret: String,
    /// The order's total.
    #[schema(minimum = 0, maximum = 10_000_000_000_000_i64)]
    pub amount_cents: i64,
    #[schema(min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub status: PaymentStatus,
}

/// What a webhook delivery did.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAnswer {
    pub received: bool,
    /// The event was applied before: this delivery changed nothing.
    pub duplicate: bool,
}
