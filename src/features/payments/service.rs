//! Starting a payment at the provider, and applying the provider's webhook events.
//!
//! No transaction stays open while the provider is called: the intent is created with an
//! idempotency key derived from the order (`order-<id>-payment[-<n>]`), so two requests at
//! once get the same intent back, and the payment row is written afterwards under the
//! order's lock (`on conflict do nothing`: one row per intent).

use std::{sync::Arc, time::Duration};

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    provider::{self, Intent, NewIntent, Provider, ProviderError},
    repository,
    signature::{self, SignatureError},
    types::PaymentAnswer,
};
use crate::{
    features::orders::{
        Actor, OrderStatus, PayableOrder, PaymentStatus, charge_refunded, lock_payable, next_payment_key,
        payment_failed, payment_succeeded, record_intent, reopen_payment,
    },
    platform::{
        http::error::{AppError, AppResult},
        jobs::outbox::{self, Wakeup},
    },
    shared::{
        auth::{AuthUser, Permission},
        jobs::Job,
    },
};

/// The webhook's path, exempt from the per-IP rate limit (the provider sends from a few
/// addresses, and a refused delivery is retried for days).
pub const WEBHOOK_PATH: &str = "/api/v1/payments/stripe/webhook";

/// Payments; cheap to clone. Without a provider (`PAYMENT_PROVIDER=manual`) every
/// operation answers that online payment is off.
#[derive(Clone)]
pub struct PaymentService {
    db: PgPool,
    wakeup: Wakeup,
    online: Option<Arc<Online>>,
}

/// A provider and how its webhook is checked.
pub struct Online {
    pub provider: Arc<dyn Provider>,
    pub webhook_secret: SecretString,
    /// How far a signature's timestamp may be from now.
    pub tolerance: Duration,
}

/// Whether a start created the intent or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Created,
    Existing,
}

/// The fields of a provider event this server reads.
#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

fn provider_failed(e: &ProviderError) -> AppError {
    AppError::PaymentProviderError.because(e)
}

impl PaymentService {
    pub fn new(db: PgPool, wakeup: Wakeup, online: Option<Online>) -> Self {
        Self { db, wakeup, online: online.map(Arc::new) }
    }

    /// The provider, for the payments queue's jobs.
    pub fn provider(&self) -> Option<Arc<dyn Provider>> {
        self.online.as_ref().map(|o| o.provider.clone())
    }

    /// Starts (or resumes) the payment of a pending order: the owner's, or any for staff.
    pub async fn start(&self, caller: &AuthUser, order_id: Uuid) -> AppResult<(Started, PaymentAnswer)> {
        let staff = caller.can(Permission::OrdersManage);
        let mut conn = self.db.acquire().await?;
        let order = lock_payable(&mut conn, order_id)
            .await?
            .filter(|o| o.user_id == caller.id || staff)
            .ok_or_else(|| AppError::not_found("order"))?;
        drop(conn); // no transaction: the row was read, not held
        let online = self.online.as_ref().ok_or(AppError::PaymentsDisabled)?;
        if order.status != OrderStatus::Pending {
            return Err(AppError::InvalidStatusTransition(format!(
                "cannot pay an order that is {}",
                order.status.as_str()
            )));
        }
        let provider = &online.provider;
        if let Some(current) = order.current.as_ref().filter(|c| {
            matches!(c.status, PaymentStatus::RequiresPayment | PaymentStatus::Failed)
                && c.provider == provider.name()
        }) {
            let intent =
                provider.get_intent(&current.provider_payment_id).await.map_err(|e| provider_failed(&e))?;
            if intent.standing() {
                // Payable (or paid, its webhook on the way: never a second intent then).
                if current.status == PaymentStatus::Failed {
                    let mut tx = self.db.begin().await?;
                    reopen_payment(&mut tx, current, Actor::caller(caller.id, staff)).await?;
                    tx.commit().await?;
                }
                return Ok((Started::Existing, answer(&order, provider.name(), intent)));
            }
            // Cancelled at the provider: a new intent, under a key named after the
            // cancelled one. Requests racing here compute the same key, so the provider
            // gives them one intent (a counter moved on by one of them could be read
            // after its move by another, which would then move it again: two intents).
            let base = format!("order-{}-payment-after-{}", order.id, current.provider_payment_id);
            return self.create(online, order.id, base, Actor::caller(caller.id, staff)).await;
        }
        if order.current.is_some() {
            // Its money was taken and is being given back (a mismatch): a new intent.
            next_payment_key(&self.db, order.id, order.payment_key_seq).await?;
        }
        let base = format!("order-{}-payment", order.id);
        self.create(online, order.id, base, Actor::caller(caller.id, staff)).await
    }

    /// Creates the order's intent under `key_base` and the order's key counter (moved on
    /// when the provider refuses a key for good) and records it.
    async fn create(
        &self,
        online: &Online,
        order_id: Uuid,
        key_base: String,
        actor: Actor,
    ) -> AppResult<(Started, PaymentAnswer)> {
        let provider = &online.provider;
        let mut conn = self.db.acquire().await?;
        let order = lock_payable(&mut conn, order_id).await?.ok_or_else(|| AppError::not_found("order"))?;
        drop(conn);
        let new = NewIntent {
            order_id: order.id,
            amount_cents: order.total_cents,
            currency: &order.currency,
            idempotency_key: provider::key(key_base, order.payment_key_seq),
        };
        let intent = match provider.create_intent(&new).await {
            Ok(intent) => intent,
            Err(e) => {
                if let ProviderError::Answered { .. } = e {
                    // The provider keeps that error for this key: the next try takes a new one.
                    next_payment_key(&self.db, order.id, order.payment_key_seq).await?;
                }
                return Err(provider_failed(&e));
            }
        };
        let mut tx = self.db.begin().await?;
        let now = lock_payable(&mut tx, order.id).await?.ok_or_else(|| AppError::not_found("order"))?;
        let known = now.current.as_ref().is_some_and(|c| c.provider_payment_id == intent.id);
        if !known {
            record_intent(&mut tx, &now, provider.name(), &intent.id, actor).await?;
        }
        if now.status != OrderStatus::Pending {
            // Cancelled while the intent was being made: it must not be payable.
            let Some(payment) = lock_payable(&mut tx, order.id).await?.and_then(|o| o.current) else {
                return Err(AppError::Internal(anyhow::anyhow!("the payment just recorded is gone")));
            };
            outbox::push(&mut *tx, &Job::CancelIntent { payment_id: payment.id }.into()).await?;
            tx.commit().await?;
            self.wakeup.committed();
            return Err(AppError::InvalidStatusTransition(format!(
                "cannot pay an order that is {}",
                now.status.as_str()
            )));
        }
        tx.commit().await?;
        let started = if known { Started::Existing } else { Started::Created };
        Ok((started, answer(&now, provider.name(), intent)))
    }

    /// Applies one webhook delivery: the signature over the raw body first (nothing is
    /// read before it passes), then the event once (a redelivery answers `true`: a
    /// duplicate). Events of other types, or about intents this server does not know,
    /// change nothing.
    pub async fn webhook(&self, headers: &HeaderMap, body: &[u8]) -> AppResult<bool> {
        let online = self.online.as_ref().ok_or_else(|| AppError::not_found("route"))?;
        let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
        let secret = online.webhook_secret.expose_secret().as_bytes();
        let tolerance = i64::try_from(online.tolerance.as_secs()).unwrap_or(i64::MAX);
        let now = chrono::Utc::now().timestamp();
        signature::verify(header, body, secret, tolerance, now)
            .map_err(|e: SignatureError| AppError::InvalidSignature.because(e))?;
        let Ok(event) = serde_json::from_slice::<Event>(body) else {
            // Signed, so it is the provider's; not an event this server reads. A non-2xx
            // would only make the provider retry it for days.
            tracing::warn!("a signed webhook body that is not an event; ignored");
            return Ok(false);
        };
        let provider = online.provider.name();
        let mut tx = self.db.begin().await?;
        if !repository::record_event(&mut *tx, provider, &event.id, &event.kind).await? {
            return Ok(true);
        }
        let object = &event.data.object;
        let text = |field: &str| object.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        let known = match event.kind.as_str() {
            "payment_intent.succeeded" => {
                let received = object.get("amount_received").and_then(Value::as_i64).unwrap_or(0);
                payment_succeeded(&mut tx, provider, &text("id"), received, &text("currency")).await?
            }
            "payment_intent.payment_failed" => payment_failed(&mut tx, provider, &text("id")).await?,
            "charge.refunded" => {
                let full = object.get("refunded").and_then(Value::as_bool).unwrap_or(false);
                let amount = object.get("amount_refunded").and_then(Value::as_i64).unwrap_or(0);
                charge_refunded(&mut tx, provider, &text("payment_intent"), full, amount).await?
            }
            _ => false,
        };
        tx.commit().await?;
        self.wakeup.committed();
        tracing::info!(event.id = %event.id, event.kind = %event.kind, known, "payment event applied");
        Ok(false)
    }
}

fn answer(order: &PayableOrder, provider: &str, intent: Intent) -> PaymentAnswer {
    PaymentAnswer {
        order_id: order.id,
        provider: provider.to_owned(),
        provider_payment_id: intent.id,
        client_secret: intent.client_secret,
        amount_cents: order.total_cents,
        currency: order.currency.clone(),
        status: PaymentStatus::RequiresPayment,
    }
}

/// The configured provider, when online payment is on: with its webhook secret and
/// tolerance.
pub fn provider_from(settings: &crate::platform::config::Settings) -> anyhow::Result<Option<Online>> {
    match settings.payment_provider {
        crate::platform::config::PaymentProvider::Manual => Ok(None),
        crate::platform::config::PaymentProvider::Stripe => {
            let (Some(key), Some(secret)) = (&settings.stripe_secret_key, &settings.stripe_webhook_secret)
            else {
                anyhow::bail!("PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET");
            };
            let http = crate::platform::outbound::client(settings.payment_provider_timeout)?;
            let stripe: Arc<dyn Provider> =
                Arc::new(super::stripe::Stripe::new(http, &settings.stripe_api_base, key.clone()));
            Ok(Some(Online {
                provider: stripe,
                webhook_secret: secret.clone(),
                tolerance: settings.stripe_webhook_tolerance,
            }))
        }
    }
}
