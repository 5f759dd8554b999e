//! The webhook feature's domain types shared by its layers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Delivery states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "webhook_delivery_status", rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}
