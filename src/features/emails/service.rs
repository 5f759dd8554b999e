//! The `emails` queue's [`JobHandler`]: one job, one e-mail, at most once per outbox id.
//!
//! Each job runs in one transaction: claim the outbox id in the `sent_emails` ledger,
//! read what the message shows (and, for `reset-password`, mint the token), send, and
//! commit only after the transport accepted the message. A failed send rolls back, so the
//! ledger row, the token and the e-mail exist together or not at all, and the next
//! attempt starts clean. A duplicate delivery running at the same time waits on the
//! ledger row and then skips.
//!
//! The window left: the transport accepted the message, then the process died (or the
//! database failed) before the commit. The job is run again and the recipient gets a
//! second copy (for `reset-password` only the second link works). Nothing closes that
//! window without the SMTP server's help; it is as small as one commit.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    budget::{Bucket, MailBudget, Spend},
    repository::{self, Recipient},
};
use crate::{
    features::auth,
    platform::{
        jobs::{
            QueuedJob,
            worker::{JobError, JobHandler},
        },
        mail::{MailError, Mailer, OutgoingMail, address_hash, templates::Templates},
        metrics::Metrics,
    },
};

/// The e-mails this queue sends, by job kind (= template name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Welcome,
    OrderConfirmation,
    OrderCancelled,
    PaymentReceived,
    ResetPassword,
    VerifyEmail,
    ReportReady,
}

impl Kind {
    fn parse(kind: &str) -> Option<Self> {
        match kind {
            "welcome" => Some(Self::Welcome),
            "order-confirmation" => Some(Self::OrderConfirmation),
            "order-cancelled" => Some(Self::OrderCancelled),
            "payment-received" => Some(Self::PaymentReceived),
            "reset-password" => Some(Self::ResetPassword),
            "verify-email" => Some(Self::VerifyEmail),
            "report-ready" => Some(Self::ReportReady),
            _ => None,
        }
    }

    fn template(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::OrderConfirmation => "order-confirmation",
            Self::OrderCancelled => "order-cancelled",
            Self::PaymentReceived => "payment-received",
            Self::ResetPassword => "reset-password",
            Self::VerifyEmail => "verify-email",
            Self::ReportReady => "report-ready",
        }
    }

    /// The account mails: sent to unverified addresses too, from their own budget.
    fn is_account_mail(self) -> bool {
        matches!(self, Self::Welcome | Self::ResetPassword | Self::VerifyEmail)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserPayload {
    user_id: Uuid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPayload {
    order_id: Uuid,
    /// `order-cancelled`: `expired` or `cancelled`.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportPayload {
    report_id: Uuid,
}

/// Who gets which mail.
#[derive(Clone)]
pub struct MailPolicy {
    /// Only account mails (welcome, verification, reset) go to unverified addresses.
    pub require_verified: bool,
    /// The hourly budgets per address.
    pub budget: MailBudget,
}

/// Sends the e-mail of each job; cheap to clone.
#[derive(Clone)]
pub struct EmailJobs {
    db: PgPool,
    mailer: Arc<dyn Mailer>,
    templates: Arc<Templates>,
    public_url: Arc<str>,
    metrics: Metrics,
    policy: MailPolicy,
}

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(format!("database: {e}"))
}

fn payload<T: DeserializeOwned>(value: &Value) -> Result<T, JobError> {
    serde_json::from_value(value.clone()).map_err(|e| JobError::Permanent(format!("malformed payload: {e}")))
}

impl EmailJobs {
    pub fn new(
        db: PgPool,
        mailer: Arc<dyn Mailer>,
        templates: Arc<Templates>,
        public_url: &str,
        metrics: Metrics,
        policy: MailPolicy,
    ) -> Self {
        Self {
            db,
            mailer,
            templates,
            public_url: Arc::from(public_url.trim_end_matches('/')),
            metrics,
            policy,
        }
    }

    /// Claims the job's outbox id and reads its recipient and the message's details,
    /// in one statement; `None` when there is no one to send it to (the account or order
    /// is gone).
    async fn load(
        &self,
        conn: &mut PgConnection,
        kind: Kind,
        job: &QueuedJob,
    ) -> Result<Option<(Recipient, Value)>, JobError> {
        let template = kind.template();
        Ok(match kind {
            Kind::Welcome | Kind::ResetPassword | Kind::VerifyEmail => {
                let p: UserPayload = payload(&job.payload)?;
                repository::claim_for_user(&mut *conn, job.outbox_id, template, p.user_id)
                    .await
                    .map_err(transient)?
                    .map(|r| {
                        let context = json!({
                            "public_url": &*self.public_url,
                            "valid_minutes": auth::RESET_TOKEN_TTL_MINUTES,
                            "valid_hours": auth::VERIFICATION_TOKEN_TTL_HOURS,
                        });
                        (r, context)
                    })
            }
            Kind::OrderConfirmation | Kind::OrderCancelled | Kind::PaymentReceived => {
                let p: OrderPayload = payload(&job.payload)?;
                repository::claim_for_order(&mut *conn, job.outbox_id, template, p.order_id)
                    .await
                    .map_err(transient)?
                    .map(|order| {
                        let context = json!({
                            // The id's last 8 hex digits: random in a time-ordered (v7) id, whose
                            // first ones are its time and alike for orders of the same minute.
                            "order_number": order.id.simple().to_string()[24..].to_ascii_uppercase(),
                            "order_url": format!("{}/orders/{}", self.public_url, order.id),
                            "total_cents": order.total_cents,
                            "currency": order.currency,
                            "placed_at": order.created_at,
                            "reason": p.reason.as_deref().unwrap_or("cancelled"),
                            "status": order.status,
                            "lines": order.lines,
                            "address": order.shipping_address.map(|a| json!({
                                "line1": a.line1, "line2": a.line2, "city": a.city,
                                "postal_code": a.postal_code, "country": a.country,
                            })),
                        });
                        (order.recipient, context)
                    })
            }
            Kind::ReportReady => {
                let p: ReportPayload = payload(&job.payload)?;
                repository::claim_for_report(&mut *conn, job.outbox_id, template, p.report_id)
                    .await
                    .map_err(transient)?
                    .map(|report| {
                        let last_day = (report.range_to - chrono::Duration::microseconds(1)).date_naive();
                        let context = json!({
                            "report_type": report.kind,
                            "from": report.range_from.date_naive().to_string(),
                            "to": last_day.to_string(),
                            "row_count": report.row_count.unwrap_or(0),
                            "download_url": format!("{}/api/v1/reports/{}/download", self.public_url, report.id),
                        });
                        (report.recipient, context)
                    })
            }
        })
    }
}

impl EmailJobs {
    /// Why this message should not go out now, if it should not.
    fn not_wanted(&self, kind: Kind, recipient: &Recipient, context: &Value) -> Option<&'static str> {
        if kind == Kind::VerifyEmail && recipient.verified {
            return Some("the address is verified already");
        }
        if self.policy.require_verified && !recipient.verified && !kind.is_account_mail() {
            return Some("the address is not verified");
        }
        if kind == Kind::OrderConfirmation && context["status"] == "cancelled" {
            return Some("the order was cancelled before its confirmation went out");
        }
        None
    }
}

#[async_trait]
impl JobHandler for EmailJobs {
    async fn handle(&self, job: &QueuedJob) -> Result<(), JobError> {
        let kind = Kind::parse(&job.kind)
            .ok_or_else(|| JobError::Permanent(format!("no e-mail for job kind `{}`", job.kind)))?;
        let template = kind.template();
        let mut tx = self.db.begin().await.map_err(transient)?;
        let Some((recipient, mut context)) = self.load(&mut tx, kind, job).await? else {
            tracing::info!(template, outbox_id = %job.outbox_id, "recipient is gone; e-mail skipped");
            return Ok(());
        };
        if !recipient.claimed {
            tracing::info!(template, outbox_id = %job.outbox_id, "e-mail already sent; skipped");
            return Ok(());
        }
        if let Some(why) = self.not_wanted(kind, &recipient, &context) {
            tracing::info!(template, outbox_id = %job.outbox_id, why, "e-mail not sent");
            return Ok(());
        }
        let bucket =
            if kind.is_account_mail() && kind != Kind::Welcome { Bucket::Account } else { Bucket::General };
        if let Spend::Suppress { first } = self.policy.budget.spend(bucket, &recipient.email).await {
            self.metrics.count_email_suppressed(template);
            if first {
                tracing::warn!(
                    template,
                    recipient.hash = %address_hash(&recipient.email),
                    "hourly mail budget of this address spent: its mail is suppressed for the rest of the hour"
                );
            }
            return Ok(());
        }
        context["email"] = json!(recipient.email);
        context["name"] = json!(recipient.first_name);
        match kind {
            // Minted inside this transaction: it exists only if the e-mail was accepted.
            Kind::ResetPassword => {
                let Some((token, _expires_at)) =
                    auth::mint_reset_token(&mut tx, recipient.user_id).await.map_err(transient)?
                else {
                    tracing::info!(
                        template,
                        outbox_id = %job.outbox_id,
                        "a reset link was mailed less than a minute ago; it stays, and this request sends none"
                    );
                    return Ok(());
                };
                // In the fragment: the token reaches no server log and no Referer.
                context["reset_url"] = json!(format!("{}/reset-password#token={token}", self.public_url));
            }
            Kind::Welcome | Kind::VerifyEmail if !recipient.verified => {
                let token =
                    auth::mint_verification_token(&mut tx, recipient.user_id).await.map_err(transient)?;
                context["verify_url"] = json!(format!("{}/verify-email#token={token}", self.public_url));
            }
            _ => {}
        }
        let content = self
            .templates
            .render(template, &context)
            .map_err(|e| JobError::Permanent(format!("template {template}: {e:#}")))?;
        let mail = OutgoingMail { to: recipient.email, content };
        match self.mailer.send(&mail).await {
            Ok(()) => {
                tx.commit().await.map_err(transient)?;
                self.metrics.count_email(template, true);
                tracing::info!(template, outbox_id = %job.outbox_id, "e-mail sent");
                Ok(())
            }
            Err(e) => {
                self.metrics.count_email(template, false);
                Err(match e {
                    MailError::Permanent(m) => JobError::Permanent(m),
                    MailError::Transient(m) => JobError::Transient(m),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_email_kind_has_its_template() {
        for kind in [
            "welcome",
            "order-confirmation",
            "order-cancelled",
            "payment-received",
            "reset-password",
            "verify-email",
            "report-ready",
        ] {
            let parsed = Kind::parse(kind).unwrap();
            assert_eq!(parsed.template(), kind);
            assert!(crate::platform::mail::templates::NAMES.contains(&kind));
        }
        assert_eq!(Kind::parse("report"), None, "report generation belongs to the reports queue");
    }

    #[test]
    fn malformed_payloads_are_permanent_failures() {
        let e = payload::<UserPayload>(&json!({"userId": "not-a-uuid"})).err().unwrap();
        assert!(matches!(e, JobError::Permanent(_)));
    }
}
