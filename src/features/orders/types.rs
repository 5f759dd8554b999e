//! Request and response bodies of the orders endpoints.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use axum::{extract::FromRequestParts, http::request::Parts};
use validator::{Validate, ValidationErrors};

use super::{
    domain::{ActorKind, EventType, OrderStatus, PaymentStatus, ShippingAddress},
    events::EventRow,
    repository::{NewOrderLine, OrderItemRow, OrderRow},
};
use crate::platform::http::{
    error::{AppError, FieldErrors},
    extract::{double_option, into_validation_errors},
};

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i32 = 1000;

/// `POST /orders`. Serialized only to fingerprint a request for its `Idempotency-Key`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// 1..=100 lines, each product at most once.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderItemRequest>,
    // Absent and null are the same request (and fingerprint alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<ShippingAddress>,
}

/// One line of a new order.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderItemRequest {
    pub product_id: Uuid,
    /// 1..=1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

/// Every rule that needs no database, all violations at once (run by the extractors
/// through `Validate`).
impl Validate for CreateOrderRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = FieldErrors::new();
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            errors.insert("items".into(), vec![format!("must have 1 to {MAX_ITEMS} items")]);
            // One message, not one per line of an over-long list.
            return into_validation_errors(errors);
        }
        let mut first_seen: HashMap<Uuid, usize> = HashMap::new();
        for (i, item) in self.items.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                errors.insert(
                    format!("items[{i}].quantity"),
                    vec![format!("must be between 1 and {MAX_QUANTITY}")],
                );
            }
            if let Some(first) = first_seen.insert(item.product_id, i) {
                first_seen.insert(item.product_id, first);
                errors.insert(format!("items[{i}].productId"), vec![format!("duplicates items[{first}]")]);
            }
        }
        if let Some(address) = &self.shipping_address {
            address.check("shippingAddress", &mut errors);
        }
        into_validation_errors(errors)
    }
}

/// `PATCH /orders/{id}`: the new address, or `null` to clear it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOrderRequest {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<ShippingAddress>, required, nullable)]
    pub shipping_address: Option<Option<ShippingAddress>>,
}

impl Validate for UpdateOrderRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = FieldErrors::new();
        match &self.shipping_address {
            None => {
                errors.insert("shippingAddress".into(), vec!["is required (null clears it)".into()]);
            }
            Some(Some(address)) => address.check("shippingAddress", &mut errors),
            Some(None) => {}
        }
        into_validation_errors(errors)
    }
}

impl UpdateOrderRequest {
    /// The new address (`None` clears it); validation has ensured the field was sent.
    pub fn into_address(self) -> Option<ShippingAddress> {
        self.shipping_address.flatten()
    }
}

/// The `Idempotency-Key` header of `POST /orders`: absent, or 1..=255 visible ASCII
/// characters (anything else is a 400 naming the header).
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKeyHeader(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        let key = value.to_str().map_err(|_| AppError::field("Idempotency-Key", "must be visible ASCII"))?;
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(AppError::field("Idempotency-Key", "must be 1 to 255 characters"));
        }
        Ok(Self(Some(key.to_owned())))
    }
}

pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `PATCH /orders/{id}/status` (admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStatusRequest {
    pub status: OrderStatus,
}

/// Filters of `GET /orders`.
#[derive(Debug, Default, Deserialize, validator::Validate, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    /// Admins only: one customer's orders.
    pub user_id: Option<Uuid>,
}

/// An order line as stored at purchase time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemResponse {
    pub product_id: Uuid,
    /// The product's at purchase time.
    #[schema(max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// The product's at purchase time.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(minimum = 0, maximum = 100_000_000)]
    pub unit_price_cents: i64,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
    /// `unitPriceCents × quantity`.
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub line_total_cents: i64,
}

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderItemResponse>,
    /// The sum of the lines: at most 100 lines of 1000 × 100000000.
    #[schema(minimum = 0, maximum = 10_000_000_000_000_i64)]
    pub total_cents: i64,
    #[schema(min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub shipping_address: Option<ShippingAddress>,
    /// The current payment at the provider; null when none was started.
    pub payment: Option<PaymentResponse>,
    /// When this order is cancelled unless paid; null when it is not pending or expiry
    /// is off.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An order's current payment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponse {
    pub status: PaymentStatus,
    /// `stripe`.
    #[schema(max_length = 32, pattern = "^[a-z]+$")]
    pub provider: String,
    /// The provider's id of the payment (a Stripe PaymentIntent `pi_…`).
    pub provider_payment_id: String,
    /// The order's total.
    #[schema(minimum = 0, maximum = 10_000_000_000_000_i64)]
    pub amount_cents: i64,
    #[schema(min_length = 3, max_length = 3, pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub updated_at: DateTime<Utc>,
}

/// Who made a change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorResponse {
    pub kind: ActorKind,
    /// The user, for `user` and `admin`; null for `system` and `provider`.
    pub user_id: Option<Uuid>,
}

/// One entry of an order's history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderEventResponse {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The status before the change (status changes only).
    pub from_status: Option<OrderStatus>,
    /// The status after the change (status changes and `created`).
    pub to_status: Option<OrderStatus>,
    pub actor: ActorResponse,
    /// Facts about the change (amounts, provider ids, a reason).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl From<EventRow> for OrderEventResponse {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id,
            kind: e.kind,
            from_status: e.from_status,
            to_status: e.to_status,
            actor: ActorResponse { kind: e.actor_kind, user_id: e.actor_user_id },
            detail: e.detail.0,
            created_at: e.created_at,
        }
    }
}

impl OrderResponse {
    /// A just-placed order, from the lines it was written with.
    pub fn placed(order: OrderRow, lines: Vec<NewOrderLine>) -> Self {
        let items = lines
            .into_iter()
            .map(|l| OrderItemRow {
                order_id: order.id,
                product_id: l.product_id,
                sku: l.sku,
                name: l.name,
                unit_price_cents: l.unit_price_cents,
                quantity: l.quantity,
                line_total_cents: l.line_total_cents,
            })
            .collect();
        Self::new(order, items)
    }

    pub fn new(order: OrderRow, items: Vec<OrderItemRow>) -> Self {
        let payment = match (
            order.payment_status,
            order.payment_provider,
            order.payment_provider_id,
            order.payment_amount_cents,
            order.payment_currency,
            order.payment_updated_at,
        ) {
            (
                Some(status),
                Some(provider),
                Some(provider_payment_id),
                Some(amount_cents),
                Some(currency),
                Some(updated_at),
            ) => Some(PaymentResponse {
                status,
                provider,
                provider_payment_id,
                amount_cents,
                currency,
                updated_at,
            }),
            _ => None,
        };
        Self {
            id: order.id,
            user_id: order.user_id,
            status: order.status,
            items: items
                .into_iter()
                .map(|i| OrderItemResponse {
                    product_id: i.product_id,
                    sku: i.sku,
                    name: i.name,
                    unit_price_cents: i.unit_price_cents,
                    quantity: i.quantity,
                    line_total_cents: i.line_total_cents,
                })
                .collect(),
            total_cents: order.total_cents,
            currency: order.currency,
            shipping_address: order.shipping_address.map(|a| a.0),
            payment,
            expires_at: order.expires_at.filter(|_| order.status == OrderStatus::Pending),
            created_at: order.created_at,
            updated_at: order.updated_at,
        }
    }
}

/// Path parameter `{id}`.
#[derive(Debug, Deserialize)]
pub struct OrderIdPath {
    pub id: Uuid,
}
