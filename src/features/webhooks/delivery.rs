//! One attempt of one delivery: resolve the endpoint's host, refuse any address that is
//! not globally routable (unless private targets are allowed), connect to the address that
//! was checked (no second lookup, no proxy, no redirects), POST the event signed to the
//! Standard Webhooks specification, and read at most 4 KiB of the answer.

use std::{net::SocketAddr, time::Duration};

use super::{address, signature};

/// Most of a receiver's answer read (the rest is dropped).
const MAX_ANSWER: usize = 4096;

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx within the timeout.
    Delivered { status: u16 },
    /// Worth another attempt: another status, a timeout, a refused connection.
    Failed { status: Option<u16>, error: String },
    /// Never deliverable as configured (a forbidden address, a URL that does not parse):
    /// failed at once, without retries.
    Refused { error: String },
}

/// How attempts are made.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRules {
    pub timeout: Duration,
    pub allow_private: bool,
    /// Refuse every address but loopback (the test suite's guard).
    pub loopback_only: bool,
}

/// Sends `body` to `url` as event `id`, signed by every key in `keys`.
pub async fn attempt(rules: AttemptRules, url: &str, id: &str, keys: &[Vec<u8>], body: &[u8]) -> Outcome {
    let Ok(parsed) = url::Url::parse(url) else {
        return Outcome::Refused { error: "the endpoint's URL does not parse".to_owned() };
    };
    let Some(port) = parsed.port_or_known_default() else {
        return Outcome::Refused { error: "the endpoint's URL has no port".to_owned() };
    };
    // The guard looks before any lookup: a name other than localhost is not even resolved.
    if rules.loopback_only && matches!(parsed.host(), Some(url::Host::Domain(d)) if d != "localhost") {
        tracing::error!(url, "WEBHOOK_LOOPBACK_ONLY: a delivery to a host off this machine was refused");
        return Outcome::Refused {
            error: "WEBHOOK_LOOPBACK_ONLY refuses every address but loopback".to_owned(),
        };
    }
    let (domain, addrs): (Option<String>, Vec<SocketAddr>) = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
        Some(url::Host::Ipv6(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
        Some(url::Host::Domain(d)) => {
            match tokio::time::timeout(rules.timeout, tokio::net::lookup_host((d, port))).await {
                Ok(Ok(found)) => (Some(d.to_owned()), found.collect()),
                Ok(Err(e)) => {
                    return Outcome::Failed {
                        status: None,
                        error: format!("resolving the host failed: {e}"),
                    };
                }
                Err(_) => {
                    return Outcome::Failed {
                        status: None,
                        error: "resolving the host timed out".to_owned(),
                    };
                }
            }
        }
        None => return Outcome::Refused { error: "the endpoint's URL has no host".to_owned() },
    };
    if addrs.is_empty() {
        return Outcome::Failed { status: None, error: "the host resolved to no address".to_owned() };
    }
    if rules.loopback_only && addrs.iter().any(|a| !a.ip().to_canonical().is_loopback()) {
        tracing::error!(url, "WEBHOOK_LOOPBACK_ONLY: a delivery to an address off this machine was refused");
        return Outcome::Refused {
            error: "WEBHOOK_LOOPBACK_ONLY refuses every address but loopback".to_owned(),
        };
    }
    if !rules.allow_private {
        for addr in &addrs {
            if let Err(refusal) = address::classify(addr.ip()) {
                return Outcome::Refused { error: format!("the host resolves to {}", refusal.describe()) };
            }
        }
    }
    let builder = crate::platform::outbound::builder(rules.timeout);
    // Connect only to the addresses just checked: no second lookup can swap them.
    let builder = match &domain {
        Some(d) => builder.resolve_to_addrs(d, &addrs),
        None => builder,
    };
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed { status: None, error: format!("building the HTTP client failed: {e}") };
        }
    };
    let timestamp = chrono::Utc::now().timestamp();
    let sent = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature::header(keys, id, timestamp, body))
        .body(body.to_vec())
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Outcome::Failed { status: None, error: "no answer within the timeout".to_owned() };
        }
        Err(e) if e.is_connect() => {
            return Outcome::Failed {
                status: None,
                error: "the connection was refused or failed".to_owned(),
            };
        }
        Err(e) => return Outcome::Failed { status: None, error: format!("sending failed: {e}") },
    };
    let status = response.status().as_u16();
    // Read (and drop) at most MAX_ANSWER bytes, so a huge answer costs nothing.
    let mut read = 0;
    while read < MAX_ANSWER {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    if (200..300).contains(&status) {
        Outcome::Delivered { status }
    } else {
        Outcome::Failed { status: Some(status), error: format!("answered {status}") }
    }
}
