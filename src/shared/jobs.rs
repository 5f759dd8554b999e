//! The jobs business changes cause, as the features that write them and the features
//! that run them both know them: which queue each goes to, its kind and its payload
//! (ids only). The outbox in [`crate::platform::jobs::outbox`] stores them without
//! knowing what they mean.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::platform::jobs::outbox::OutboxJob;

/// Queue of e-mail jobs.
pub const EMAILS: &str = "emails";
/// Queue of report jobs.
pub const REPORTS: &str = "reports";
/// Queue of calls to the payment provider (refunds, intent cancels).
pub const PAYMENTS: &str = "payments";
/// Queue of webhook delivery attempts (one attempt per job).
pub const WEBHOOKS: &str = "webhooks";
/// Every queue, in the order the job workers are started.
pub const QUEUES: &[&str] = &[EMAILS, REPORTS, PAYMENTS, WEBHOOKS];

/// Every job a business change can cause.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// A new account's welcome e-mail.
    Welcome { user_id: Uuid },
    /// The confirmation of a placed order.
    OrderConfirmation { order_id: Uuid, user_id: Uuid },
    /// Telling an owner their order was cancelled by someone else (`reason`: `expired`
    /// when it was not paid in time, `cancelled` by staff).
    OrderCancelled { order_id: Uuid, user_id: Uuid, reason: &'static str },
    /// A password-reset link (the job mints the token when it sends).
    ResetPassword { user_id: Uuid },
    /// A new e-mail verification link, asked for by its account (the job mints it).
    VerifyEmail { user_id: Uuid },
    /// Telling an owner their payment was received and the order is paid.
    PaymentReceived { order_id: Uuid, user_id: Uuid },
    /// Giving back a payment that pays nothing (a cancelled or already paid order, a
    /// mismatch) at the provider.
    Refund { payment_id: Uuid },
    /// Cancelling an intent that can still be paid, so its order's customer cannot pay
    /// for a cancelled order.
    CancelIntent { payment_id: Uuid },
    /// Generating a requested report.
    Report { report_id: Uuid },
    /// Telling the requester their report is ready.
    ReportReady { report_id: Uuid },
    /// Attempt number `attempt` of a webhook delivery.
    WebhookAttempt { delivery_id: Uuid, attempt: i32 },
}

impl Job {
    /// The queue the relay moves the job to.
    pub fn queue(&self) -> &'static str {
        match self {
            Self::Report { .. } => REPORTS,
            Self::Refund { .. } | Self::CancelIntent { .. } => PAYMENTS,
            Self::WebhookAttempt { .. } => WEBHOOKS,
            _ => EMAILS,
        }
    }

    /// The job's kind, as stored in `outbox.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::OrderConfirmation { .. } => "order-confirmation",
            Self::OrderCancelled { .. } => "order-cancelled",
            Self::PaymentReceived { .. } => "payment-received",
            Self::Refund { .. } => "refund",
            Self::CancelIntent { .. } => "cancel-intent",
            Self::ResetPassword { .. } => "reset-password",
            Self::VerifyEmail { .. } => "verify-email",
            Self::Report { .. } => "report",
            Self::ReportReady { .. } => "report-ready",
            Self::WebhookAttempt { .. } => "webhook-attempt",
        }
    }

    /// The job's arguments, as stored in `outbox.payload`.
    pub fn payload(&self) -> Value {
        match self {
            Self::Welcome { user_id } | Self::ResetPassword { user_id } | Self::VerifyEmail { user_id } => {
                json!({"userId": user_id})
            }
            Self::OrderConfirmation { order_id, user_id } | Self::PaymentReceived { order_id, user_id } => {
                json!({"orderId": order_id, "userId": user_id})
            }
            Self::Refund { payment_id } | Self::CancelIntent { payment_id } => {
                json!({"paymentId": payment_id})
            }
            Self::OrderCancelled { order_id, user_id, reason } => {
                json!({"orderId": order_id, "userId": user_id, "reason": reason})
            }
            Self::Report { report_id } | Self::ReportReady { report_id } => json!({"reportId": report_id}),
            Self::WebhookAttempt { delivery_id, attempt } => {
                json!({"deliveryId": delivery_id, "attempt": attempt})
            }
        }
    }
}

impl From<Job> for OutboxJob {
    fn from(job: Job) -> Self {
        Self { queue: job.queue(), kind: job.kind(), payload: job.payload() }
    }
}

impl From<&Job> for OutboxJob {
    fn from(job: &Job) -> Self {
        Self { queue: job.queue(), kind: job.kind(), payload: job.payload() }
    }
}
