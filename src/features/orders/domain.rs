//! Order rules as pure functions: the status machine, who may do what in which status,
//! pricing in checked integer arithmetic, shipping-address validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::shared::domain::ShippingAddress;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "order_status", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    /// `pending → paid → shipped → delivered`; `pending | paid → cancelled`.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Pending, Paid) | (Paid, Shipped) | (Shipped, Delivered) | (Pending | Paid, Cancelled)
        )
    }

    /// Whether the caller may cancel in this status: the owner while pending, staff while
    /// pending or paid.
    pub fn cancellable_by(self, staff: bool) -> bool {
        match self {
            Self::Pending => true,
            Self::Paid => staff,
            _ => false,
        }
    }

    /// Whether the shipping address may change: the owner while pending, staff while
    /// pending or paid.
    pub fn address_editable_by(self, staff: bool) -> bool {
        self.cancellable_by(staff)
    }
}

/// Where an order's payment at the provider is. It only moves forward:
/// `requires_payment → failed ⇄ requires_payment → succeeded → refund_pending → refunded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "payment_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    RequiresPayment,
    Succeeded,
    Failed,
    RefundPending,
    Refunded,
}

/// What an entry of an order's history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "order_event_type", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Created,
    StatusChanged,
    AddressChanged,
    PaymentStarted,
    PaymentSucceeded,
    PaymentFailed,
    PaymentMismatch,
    RefundRequested,
    Refunded,
    Expired,
}

/// Who made a change: the order's owner, staff, the payment provider (a webhook) or the
/// system (scheduled tasks and jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "actor_kind", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Admin,
    System,
    Provider,
}

/// The author of a change, as its history entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub user_id: Option<uuid::Uuid>,
}

impl Actor {
    /// A signed-in caller: `admin` for staff (on their own orders too), else `user`.
    pub fn caller(user_id: uuid::Uuid, staff: bool) -> Self {
        Self { kind: if staff { ActorKind::Admin } else { ActorKind::User }, user_id: Some(user_id) }
    }

    /// A scheduled task or a job.
    pub const SYSTEM: Self = Self { kind: ActorKind::System, user_id: None };
}

/// `unit × quantity` for each line and their sum, or `None` on overflow (impossible within
/// the input bounds: 100 lines × 1000 × 100 000 000 fits easily, but money is never
/// computed unchecked).
pub fn price(lines: &[(i64, i32)]) -> Option<(Vec<i64>, i64)> {
    let mut totals = Vec::with_capacity(lines.len());
    let mut sum: i64 = 0;
    for &(unit, quantity) in lines {
        let line = unit.checked_mul(i64::from(quantity))?;
        sum = sum.checked_add(line)?;
        totals.push(line);
    }
    Some((totals, sum))
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    #[test]
    fn the_status_machine_allows_exactly_the_spec_transitions() {
        let all = [Pending, Paid, Shipped, Delivered, Cancelled];
        let allowed: Vec<_> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            [(Pending, Paid), (Pending, Cancelled), (Paid, Shipped), (Paid, Cancelled), (Shipped, Delivered)]
        );
    }

    #[test]
    fn owners_cancel_only_pending_orders_and_staff_also_paid_ones() {
        assert!(Pending.cancellable_by(false) && Pending.cancellable_by(true));
        assert!(!Paid.cancellable_by(false) && Paid.cancellable_by(true));
        for s in [Shipped, Delivered, Cancelled] {
            assert!(!s.cancellable_by(true) && !s.cancellable_by(false));
        }
    }

    #[test]
    fn pricing_sums_lines_and_refuses_overflow() {
        assert_eq!(price(&[(1250, 2), (99, 3)]), Some((vec![2500, 297], 2797)));
        assert_eq!(price(&[]), Some((vec![], 0)));
        assert_eq!(price(&[(i64::MAX, 2)]), None);
        assert_eq!(price(&[(i64::MAX, 1), (1, 1)]), None);
        assert_eq!(price(&[(100_000_000, 1000); 100]).map(|p| p.1), Some(10_000_000_000_000));
    }
}
