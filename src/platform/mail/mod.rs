//! E-mail delivery: one [`Mailer`] with the transport chosen by config —
//! `smtp` (pooled lettre transport from `SMTP_URL`: `smtp://` plain, `smtp://…?tls=required`
//! STARTTLS, `smtps://` implicit TLS; credentials in the URL), `file` (`.eml` files under
//! `MAIL_DIR`, the zero-setup default in development) or `log` (nothing sent; tests that
//! want no mail). Every message is multipart text + HTML, rendered from
//! [`templates::Templates`]. Every send is bounded by `SMTP_TIMEOUT` (lettre#917: a send
//! can hang when the network does).

pub mod templates;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::PoolConfig,
};
use secrecy::ExposeSecret;

use crate::platform::config::{EmailTransport, Settings};
use crate::platform::mail::templates::Rendered;

/// A message ready to go: recipient and rendered content.
#[derive(Debug, Clone)]
pub struct OutgoingMail {
    pub to: String,
    pub content: Rendered,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message itself cannot be sent (a malformed address): retrying will not help.
    #[error("the message cannot be sent: {0}")]
    Permanent(String),
    /// The transport failed or timed out: a later attempt may succeed.
    #[error("the transport failed: {0}")]
    Transient(String),
}

/// Sends e-mail; the seam unit tests fake.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError>;
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
    Log,
}

/// The production [`Mailer`] over lettre.
pub struct LettreMailer {
    from: Mailbox,
    transport: Transport,
    timeout: Duration,
}

impl LettreMailer {
    /// The transport `settings` name; fails on a malformed `MAIL_FROM` or `SMTP_URL`, or
    /// an unusable `MAIL_DIR`.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<dyn Mailer>> {
        let from: Mailbox = settings.mail_from.parse().context("MAIL_FROM is not a mailbox")?;
        let timeout = settings.smtp_timeout;
        let transport = match settings.email_transport {
            EmailTransport::Smtp => {
                let url =
                    settings.smtp_url.as_ref().context("SMTP_URL is required for EMAIL_TRANSPORT=smtp")?;
                let pool = PoolConfig::new()
                    .max_size(settings.smtp_pool_size)
                    // Below common server idle limits (lettre#743: a connection the server
                    // closed fails the next send).
                    .idle_timeout(Duration::from_secs(30));
                let smtp = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .map_err(|_| anyhow::anyhow!("SMTP_URL is not a valid smtp:// or smtps:// URL"))?
                    .timeout(Some(timeout))
                    .pool_config(pool)
                    .build();
                Transport::Smtp(smtp)
            }
            EmailTransport::File => {
                std::fs::create_dir_all(&settings.mail_dir)
                    .with_context(|| format!("creating MAIL_DIR {}", settings.mail_dir))?;
                Transport::File(AsyncFileTransport::new(&settings.mail_dir))
            }
            EmailTransport::Log => Transport::Log,
        };
        Ok(Arc::new(Self { from, transport, timeout }))
    }

    fn message(&self, mail: &OutgoingMail) -> Result<Message, MailError> {
        let to: Mailbox = mail.to.parse().map_err(|_| MailError::Permanent("invalid recipient".into()))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&mail.content.subject)
            .multipart(MultiPart::alternative_plain_html(
                mail.content.text.clone(),
                mail.content.html.clone(),
            ))
            .map_err(|e| MailError::Permanent(e.to_string()))
    }
}

/// How logs and stored errors name an address: the first 16 hex digits of its SHA-256
/// (enough to tell addresses apart, not to read them).
pub fn address_hash(address: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(address.trim().to_lowercase().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `error` with every spelling of `address` in it replaced by its hash: an SMTP server's
/// refusal usually quotes the recipient, and the text goes to logs and the dead-job list.
fn without_address(error: &str, address: &str) -> String {
    let (lower, needle) = (error.to_lowercase(), address.trim().to_lowercase());
    if needle.is_empty() || !lower.contains(&needle) {
        return error.to_owned();
    }
    // Lower-casing keeps byte offsets for ASCII; an address is matched in ASCII form.
    if !error.is_ascii() {
        return lower.replace(&needle, &format!("<address {}>", address_hash(address)));
    }
    let mut out = String::with_capacity(error.len());
    let mut rest = 0;
    for (at, _) in lower.match_indices(&needle) {
        out.push_str(&error[rest..at]);
        out.push_str(&format!("<address {}>", address_hash(address)));
        rest = at + needle.len();
    }
    out.push_str(&error[rest..]);
    out
}

#[async_trait]
impl Mailer for LettreMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let scrub = |e: MailError| match e {
            MailError::Permanent(m) => MailError::Permanent(without_address(&m, &mail.to)),
            MailError::Transient(m) => MailError::Transient(without_address(&m, &mail.to)),
        };
        self.send_unscrubbed(mail).await.map_err(scrub)
    }
}

impl LettreMailer {
    async fn send_unscrubbed(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = self.message(mail)?;
        let sent = async {
            match &self.transport {
                Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|e| {
                    if e.is_permanent() {
                        MailError::Permanent(e.to_string())
                    } else {
                        MailError::Transient(e.to_string())
                    }
                }),
                Transport::File(file) => {
                    file.send(message).await.map(|_| ()).map_err(|e| MailError::Transient(e.to_string()))
                }
                Transport::Log => {
                    // The subject only: bodies may hold links that act as credentials.
                    tracing::info!(mail.subject = %mail.content.subject, "e-mail not sent (EMAIL_TRANSPORT=log)");
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(result) => result,
            Err(_) => Err(MailError::Transient(format!("no answer within {:?}", self.timeout))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_recipient_by_hash_only() {
        let hash = address_hash("ann@example.com");
        assert_eq!(hash.len(), 16);
        assert_eq!(hash, address_hash(" Ann@Example.com"));
        let scrubbed =
            without_address("550 5.1.1 <Ann@Example.com>: Recipient address rejected", "ann@example.com");
        assert_eq!(scrubbed, format!("550 5.1.1 <<address {hash}>>: Recipient address rejected"));
        assert_eq!(without_address("421 try later", "ann@example.com"), "421 try later");
    }
}
