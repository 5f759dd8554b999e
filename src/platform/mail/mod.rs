//! E-mail delivery (SPEC §7): one [`Mailer`] with the transport chosen by config —
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

#[async_trait]
impl Mailer for LettreMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
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
