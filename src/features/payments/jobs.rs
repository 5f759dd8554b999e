//! The `payments` queue's [`JobHandler`]: refunds and intent cancels at the provider.
//!
//! Each job is idempotent: it reads the payment first and does nothing when the work is
//! done (refunded, or no longer refund-pending). A call the provider answered with an
//! error moves the payment's key on (the provider would replay that error for the old
//! key); a call without an answer is retried with the same key, which the provider
//! applies once. Attempts go on with a growing backoff until `PAYMENT_RETRY_WINDOW` has
//! passed since the refund was asked for; then the job is dead, and the payment counts in
//! the `payment_refunds_dead` gauge until staff refund it by hand.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::provider::{self, Provider, ProviderError, RefundOutcome};
use crate::{
    features::orders::{
        PaymentRow, PaymentStatus, find_payment, next_call_key, refund_confirmed, refund_failed,
    },
    platform::jobs::{
        QueuedJob,
        worker::{JobError, JobHandler},
    },
};

/// Runs the payments queue's jobs; cheap to clone.
#[derive(Clone)]
pub struct PaymentJobs {
    db: PgPool,
    provider: Option<Arc<dyn Provider>>,
    retry_window: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    payment_id: Uuid,
}

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(format!("database: {e}"))
}

impl PaymentJobs {
    pub fn new(db: PgPool, provider: Option<Arc<dyn Provider>>, retry_window: Duration) -> Self {
        Self { db, provider, retry_window }
    }

    /// After a failed call: a fresh key if the provider answered, and a dead job once the
    /// retry window has passed.
    async fn failed(&self, payment: &PaymentRow, e: ProviderError) -> JobError {
        if let ProviderError::Answered { .. } = e
            && let Err(db) = next_call_key(&self.db, payment.id).await
        {
            return transient(db);
        }
        // A refund is retried from when it was asked for; an intent cancel from when the
        // intent was made.
        let asked = payment.refund_requested_at.unwrap_or(payment.created_at);
        let window = chrono::Duration::from_std(self.retry_window).unwrap_or(chrono::Duration::MAX);
        if chrono::Utc::now() - asked > window {
            JobError::Permanent(format!("still failing after the retry window: {e}"))
        } else {
            JobError::Transient(e.to_string())
        }
    }
}

#[async_trait]
impl JobHandler for PaymentJobs {
    async fn handle(&self, job: &QueuedJob) -> Result<(), JobError> {
        let p: Payload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobError::Permanent(format!("malformed payload: {e}")))?;
        let Some(payment) = find_payment(&self.db, p.payment_id).await.map_err(transient)? else {
            return Ok(());
        };
        let Some(provider) = self.provider.as_ref() else {
            // Misconfigured (PAYMENT_PROVIDER differs between processes): retried, then
            // dead-lettered like a provider that does not answer.
            let e = ProviderError::NoAnswer("no payment provider is configured in this process".to_owned());
            return Err(self.failed(&payment, e).await);
        };
        match job.kind.as_str() {
            "refund" => {
                if payment.status != PaymentStatus::RefundPending {
                    return Ok(());
                }
                let key =
                    provider::key(format!("refund-{}", payment.provider_payment_id), payment.call_key_seq);
                match provider.refund(&payment.provider_payment_id, &key).await {
                    Ok(RefundOutcome::Succeeded) => {
                        let mut tx = self.db.begin().await.map_err(transient)?;
                        refund_confirmed(&mut tx, payment.id)
                            .await
                            .map_err(|e| JobError::Transient(e.to_string()))?;
                        tx.commit().await.map_err(transient)
                    }
                    // Accepted: the `charge.refunded` event finishes it.
                    Ok(RefundOutcome::Pending) => Ok(()),
                    Err(e) => Err(self.failed(&payment, e).await),
                }
            }
            "cancel-intent" => {
                if !matches!(payment.status, PaymentStatus::RequiresPayment | PaymentStatus::Failed) {
                    return Ok(());
                }
                let key =
                    provider::key(format!("cancel-{}", payment.provider_payment_id), payment.call_key_seq);
                match provider.cancel_intent(&payment.provider_payment_id, &key).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.failed(&payment, e).await),
                }
            }
            other => Err(JobError::Permanent(format!("no payments job of kind `{other}`"))),
        }
    }

    async fn dead(&self, job: &QueuedJob, error: &str) {
        let Ok(p) = serde_json::from_value::<Payload>(job.payload.clone()) else { return };
        if job.kind == "refund" {
            tracing::error!(payment.id = %p.payment_id, error, "a refund could not be made: refund it by hand");
            if let Err(e) = refund_failed(&self.db, p.payment_id).await {
                tracing::error!(payment.id = %p.payment_id, error = %e, "could not mark the refund failed");
            }
        }
    }
}
