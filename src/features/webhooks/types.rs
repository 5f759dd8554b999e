//! Request and response bodies of `/webhook-endpoints`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::{Validate, ValidationErrors};

use super::address;
pub use super::domain::DeliveryStatus;
use crate::platform::http::{
    error::FieldErrors,
    extract::{double_option, into_validation_errors},
};

/// The events an endpoint may follow.
pub const EVENTS: [&str; 6] =
    ["order.created", "order.paid", "order.shipped", "order.delivered", "order.cancelled", "order.refunded"];

/// Longest endpoint URL.
pub const MAX_URL: usize = 2048;

/// A webhook event type, as the document names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum WebhookEventType {
    #[serde(rename = "order.created")]
    Created,
    #[serde(rename = "order.paid")]
    Paid,
    #[serde(rename = "order.shipped")]
    Shipped,
    #[serde(rename = "order.delivered")]
    Delivered,
    #[serde(rename = "order.cancelled")]
    Cancelled,
    #[serde(rename = "order.refunded")]
    Refunded,
}

/// What the URL rules allow (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct UrlRules {
    pub allow_http: bool,
    pub allow_private: bool,
}

/// Checks an endpoint URL: absolute, at most 2048 characters, `https` (or `http` when
/// allowed), no credentials in it, and a host written as an IP literal (any spelling: the
/// URL parser normalises them) must be globally routable unless private targets are
/// allowed. A host name is judged when a delivery resolves it.
pub fn check_url(raw: &str, rules: UrlRules) -> Result<url::Url, &'static str> {
    if raw.len() > MAX_URL {
        return Err("must be at most 2048 characters");
    }
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute URL")?;
    match url.scheme() {
        "https" => {}
        "http" if rules.allow_http => {}
        _ => return Err("must be an https URL"),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment");
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
        Some(url::Host::Domain(_)) => None,
        None => return Err("must name a host"),
    };
    if let Some(ip) = ip
        && !rules.allow_private
        && address::classify(ip).is_err()
    {
        return Err("must not point at a loopback, private, link-local or otherwise reserved address");
    }
    Ok(url)
}

/// The distinct event names of a request, each one checked.
fn check_events(events: &[String], errors: &mut FieldErrors) {
    if events.is_empty() {
        errors.insert("events".into(), vec!["must name at least one event".into()]);
    }
    for (i, event) in events.iter().enumerate() {
        if !EVENTS.contains(&event.as_str()) {
            errors.insert(format!("events[{i}]"), vec![format!("must be one of {}", EVENTS.join(", "))]);
        }
    }
}

/// The set of events, deduplicated and in the canonical order.
pub fn event_set(events: &[String]) -> Vec<String> {
    let set: BTreeSet<&str> = events.iter().map(String::as_str).collect();
    EVENTS.iter().filter(|e| set.contains(*e)).map(|e| (*e).to_owned()).collect()
}

/// `POST /webhook-endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// Where deliveries are POSTed: `https`, at most 2048 characters.
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub url: String,
    /// The events to receive (at least one).
    #[schema(value_type = Vec<WebhookEventType>, min_items = 1, max_items = 6)]
    pub events: Vec<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

impl Validate for CreateEndpointRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = FieldErrors::new();
        check_events(&self.events, &mut errors);
        if self.description.as_ref().is_some_and(|d| d.chars().count() > 500) {
            errors.insert("description".into(), vec!["must be at most 500 characters".into()]);
        }
        into_validation_errors(errors)
    }
}

/// `PATCH /webhook-endpoints/{id}`: absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateEndpointRequest {
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub url: Option<String>,
    #[schema(value_type = Option<Vec<WebhookEventType>>, min_items = 1, max_items = 6)]
    pub events: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 500)]
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

impl Validate for UpdateEndpointRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = FieldErrors::new();
        if let Some(events) = &self.events {
            check_events(events, &mut errors);
        }
        if self.description.as_ref().and_then(Option::as_ref).is_some_and(|d| d.chars().count() > 500) {
            errors.insert("description".into(), vec!["must be at most 500 characters".into()]);
        }
        into_validation_errors(errors)
    }
}

/// `POST /webhook-endpoints/{id}/rotate-secret`.
#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// How long deliveries are signed by the old secret too (seconds, default 86 400).
    #[validate(range(max = 604_800, message = "must be 0 to 604800 seconds"))]
    #[schema(minimum = 0, maximum = 604_800)]
    pub grace_seconds: Option<u32>,
}

/// An endpoint. `secret` is present only in the answers of creation and rotation.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointResponse {
    pub id: Uuid,
    #[schema(max_length = 2048)]
    pub url: String,
    #[schema(value_type = Vec<WebhookEventType>, min_items = 1, max_items = 6)]
    pub events: Vec<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    pub enabled: bool,
    /// `whsec_` + base64 of 32 bytes: shown once, store it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 50)]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Filters of the deliveries list.
#[derive(Debug, Default, Deserialize, Validate, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryResponse {
    pub id: Uuid,
    /// The `webhook-id` every attempt carries.
    pub event_id: Uuid,
    #[serde(rename = "type")]
    #[schema(value_type = WebhookEventType)]
    pub kind: String,
    pub status: DeliveryStatus,
    #[schema(minimum = 0, maximum = 100)]
    pub attempts: i32,
    #[schema(minimum = 100, maximum = 599)]
    pub last_status_code: Option<i32>,
    #[schema(max_length = 500)]
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlRules = UrlRules { allow_http: false, allow_private: false };

    #[test]
    fn urls_are_https_absolute_and_not_at_forbidden_literals() {
        assert!(check_url("https://hooks.example.com/storefront", STRICT).is_ok());
        assert!(check_url("http://hooks.example.com/", STRICT).is_err());
        assert!(check_url("http://hooks.example.com/", UrlRules { allow_http: true, ..STRICT }).is_ok());
        assert!(check_url("/relative", STRICT).is_err());
        assert!(check_url("https://user:pw@hooks.example.com/", STRICT).is_err());
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(2100)), STRICT).is_err());
        // Every spelling of loopback and the metadata address, refused before any lookup.
        for literal in [
            "https://127.0.0.1/",
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f.0.0.1/",
            "https://0177.0.0.1/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://169.254.169.254/latest/meta-data",
            "https://[fd00::1]/",
            "https://10.0.0.1/",
        ] {
            assert!(check_url(literal, STRICT).is_err(), "{literal}");
            assert!(check_url(literal, UrlRules { allow_private: true, ..STRICT }).is_ok(), "{literal}");
        }
        assert!(check_url("https://8.8.8.8/", STRICT).is_ok());
    }

    #[test]
    fn event_sets_are_canonical() {
        let events = vec!["order.paid".to_owned(), "order.created".to_owned(), "order.paid".to_owned()];
        assert_eq!(event_set(&events), ["order.created", "order.paid"]);
    }
}
