//! Request and response bodies of the orders endpoints.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    domain::{OrderStatus, ShippingAddress},
    repository::{OrderItemRow, OrderRow},
};
use crate::shared::{
    error::{AppError, FieldErrors},
    extract::double_option,
};

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i32 = 1000;

/// `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// 1..=100 lines, each product at most once.
    pub items: Vec<OrderItemRequest>,
    pub shipping_address: Option<ShippingAddress>,
}

/// One line of a new order.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderItemRequest {
    pub product_id: Uuid,
    /// 1..=1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

impl CreateOrderRequest {
    /// Every rule that needs no database, all violations at once.
    pub fn check(&self) -> Result<(), AppError> {
        let mut errors = FieldErrors::new();
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            errors.insert("items".into(), vec![format!("must have 1 to {MAX_ITEMS} items")]);
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
        if errors.is_empty() { Ok(()) } else { Err(AppError::invalid_fields(errors)) }
    }
}

/// `PATCH /orders/{id}`: the new address, or `null` to clear it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOrderRequest {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<ShippingAddress>, nullable)]
    pub shipping_address: Option<Option<ShippingAddress>>,
}

impl UpdateOrderRequest {
    pub fn into_address(self) -> Result<Option<ShippingAddress>, AppError> {
        let Some(address) = self.shipping_address else {
            return Err(AppError::field("shippingAddress", "is required (null clears it)"));
        };
        if let Some(a) = &address {
            let mut errors = FieldErrors::new();
            a.check("shippingAddress", &mut errors);
            if !errors.is_empty() {
                return Err(AppError::invalid_fields(errors));
            }
        }
        Ok(address)
    }
}

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
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: i32,
    pub line_total_cents: i64,
}

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub items: Vec<OrderItemResponse>,
    pub total_cents: i64,
    pub currency: String,
    pub shipping_address: Option<ShippingAddress>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderResponse {
    pub fn new(order: OrderRow, items: Vec<OrderItemRow>) -> Self {
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
