//! The seam between orders and a payment provider: what the service asks of one. A
//! second provider is one more implementation of [`Provider`] and one more arm where the
//! configuration picks it.

use async_trait::async_trait;

/// How a call to the provider went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an error: it stores that answer for the idempotency
    /// key and would replay it, so the next try uses a fresh key.
    #[error("the provider answered {status}: {code}")]
    Answered { status: u16, code: String },
    /// No answer (refused, reset, timed out, unreadable): the call may or may not have
    /// happened, so the next try reuses the key, which the provider applies once.
    #[error("no answer from the provider: {0}")]
    NoAnswer(String),
}

impl ProviderError {
    /// The provider's error code, when it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Answered { code, .. } => Some(code),
            Self::NoAnswer(_) => None,
        }
    }
}

/// A payment intent as the provider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub id: String,
    /// What the client confirms the payment with; never stored, read again when needed.
    pub client_secret: String,
    /// The provider's own status (Stripe: `requires_payment_method`, `succeeded`,
    /// `canceled`, …).
    pub status: String,
}

impl Intent {
    /// Whether it still stands: it can be paid, or it is paid and its webhook is on the
    /// way. Only a cancelled intent is replaced by a new one.
    pub fn standing(&self) -> bool {
        self.status != "canceled"
    }
}

/// What a refund call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    /// The money is back.
    Succeeded,
    /// Accepted; the provider's `charge.refunded` event will say when it is done.
    Pending,
}

/// A new intent's terms.
#[derive(Debug, Clone)]
pub struct NewIntent<'a> {
    pub order_id: uuid::Uuid,
    pub amount_cents: i64,
    /// ISO 4217, upper case as stored.
    pub currency: &'a str,
    pub idempotency_key: String,
}

/// A payment provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's name, as stored with each payment.
    fn name(&self) -> &'static str;
    async fn create_intent(&self, intent: &NewIntent<'_>) -> Result<Intent, ProviderError>;
    async fn get_intent(&self, id: &str) -> Result<Intent, ProviderError>;
    /// Refunds the whole of the intent's charge.
    async fn refund(&self, intent_id: &str, idempotency_key: &str) -> Result<RefundOutcome, ProviderError>;
    /// Cancels an intent that was not paid.
    async fn cancel_intent(&self, intent_id: &str, idempotency_key: &str) -> Result<(), ProviderError>;
}

/// `base`, then `-<n>` from the first fresh key on: the idempotency key of the n-th try
/// after an error answer.
pub fn key(base: String, n: i32) -> String {
    if n == 0 { base } else { format!("{base}-{n}") }
}
