//! Stripe through its REST API (no SDK): form-encoded requests with the secret key as a
//! bearer token and an `Idempotency-Key` on every write, JSON answers. `STRIPE_API_BASE`
//! points it at a stand-in in tests and local development.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::provider::{Intent, NewIntent, Provider, ProviderError, RefundOutcome};

/// Stripe's API.
pub struct Stripe {
    http: reqwest::Client,
    base: String,
    key: SecretString,
}

#[derive(Deserialize)]
struct IntentBody {
    id: String,
    client_secret: Option<String>,
    status: String,
}

#[derive(Deserialize)]
struct RefundBody {
    status: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Stripe {
    pub fn new(http: reqwest::Client, base: &str, key: SecretString) -> Self {
        Self { http, base: base.trim_end_matches('/').to_owned(), key }
    }

    fn post(&self, path: &str, idempotency_key: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.key.expose_secret())
            .header("Idempotency-Key", idempotency_key)
    }

    /// The answer's body as `T` when it is a 2xx; the provider's error code otherwise.
    /// Neither the request nor the provider's message is kept (they may hold secrets).
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let response = request.send().await.map_err(|e| ProviderError::NoAnswer(without_url(e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ProviderError::NoAnswer(without_url(e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::NoAnswer(format!("an answer that is not what Stripe sends: {e}"))
            });
        }
        let code = serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .and_then(|b| b.error.code.or(b.error.kind))
            .unwrap_or_else(|| "unknown".to_owned());
        Err(ProviderError::Answered { status: status.as_u16(), code })
    }
}

/// A transport error's text without the URL (which names the provider's endpoint only,
/// but stays out of logs all the same).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    format!("the request {kind}: {}", e.without_url())
}

impl From<IntentBody> for Intent {
    fn from(b: IntentBody) -> Self {
        Self { id: b.id, client_secret: b.client_secret.unwrap_or_default(), status: b.status }
    }
}

#[async_trait]
impl Provider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_intent(&self, intent: &NewIntent<'_>) -> Result<Intent, ProviderError> {
        let form = [
            ("amount", intent.amount_cents.to_string()),
            ("currency", intent.currency.to_ascii_lowercase()),
            ("metadata[order_id]", intent.order_id.to_string()),
            ("automatic_payment_methods[enabled]", "true".to_owned()),
        ];
        let request = self.post("/v1/payment_intents", &intent.idempotency_key).form(&form);
        self.send::<IntentBody>(request).await.map(Intent::from)
    }

    async fn get_intent(&self, id: &str) -> Result<Intent, ProviderError> {
        let request = self
            .http
            .get(format!("{}/v1/payment_intents/{}", self.base, path_segment(id)))
            .bearer_auth(self.key.expose_secret());
        self.send::<IntentBody>(request).await.map(Intent::from)
    }

    async fn refund(&self, intent_id: &str, idempotency_key: &str) -> Result<RefundOutcome, ProviderError> {
        let request = self.post("/v1/refunds", idempotency_key).form(&[("payment_intent", intent_id)]);
        match self.send::<RefundBody>(request).await {
            Ok(r) if r.status == "succeeded" => Ok(RefundOutcome::Succeeded),
            Ok(r) if r.status == "pending" || r.status == "requires_action" => Ok(RefundOutcome::Pending),
            Ok(r) => Err(ProviderError::Answered { status: 200, code: format!("refund_{}", r.status) }),
            // Refunded already (by an earlier try, or in the dashboard): done.
            Err(e) if e.code() == Some("charge_already_refunded") => Ok(RefundOutcome::Succeeded),
            Err(e) => Err(e),
        }
    }

    async fn cancel_intent(&self, intent_id: &str, idempotency_key: &str) -> Result<(), ProviderError> {
        let path = format!("/v1/payment_intents/{}/cancel", path_segment(intent_id));
        match self.send::<IntentBody>(self.post(&path, idempotency_key)).await {
            Ok(_) => Ok(()),
            // Succeeded or cancelled meanwhile: nothing left to cancel (a payment that
            // succeeded is refunded when its event arrives).
            Err(e) if e.code() == Some("payment_intent_unexpected_state") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What an id keeps as it is inside a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'_').remove(b'-');

/// An intent id as one path segment (they are `pi_` and letters and digits; anything else
/// is percent-encoded rather than trusted).
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}
