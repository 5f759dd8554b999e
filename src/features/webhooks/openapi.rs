//! The OpenAPI document's `webhooks` section: what a subscribed endpoint receives, one
//! entry per event, with the three Standard Webhooks headers and the body.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ContentBuilder, HttpMethod, OpenApi, PathItem, PathsBuilder, Ref, Required, ResponseBuilder,
        path::{OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        schema::{ObjectBuilder, Type},
        security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme},
    },
};

use super::types::{EVENTS, WebhookEventType};
use crate::features::orders::OrderResponse;

/// The body of every delivery: the event, when it happened, and the order after it.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema only: the body is built where the event is written
struct WebhookEvent {
    /// The event, one of the six an endpoint may follow.
    #[serde(rename = "type")]
    kind: WebhookEventType,
    /// When the order changed (RFC 3339, UTC, microseconds).
    timestamp: DateTime<Utc>,
    /// The order after the change, in the shape `GET /api/v1/orders/{id}` answers.
    data: OrderResponse,
}

/// What each event means.
const MEANINGS: [(&str, &str); 6] = [
    ("order.created", "An order was placed."),
    ("order.paid", "An order was paid: by the payment provider's confirmation, or marked paid by staff."),
    ("order.shipped", "An order was shipped."),
    ("order.delivered", "An order was delivered."),
    ("order.cancelled", "An order was cancelled: by its customer, by staff, or for want of payment."),
    ("order.refunded", "The payment of an order was refunded."),
];

const DELIVERY: &str = "Sent as `POST` to every enabled endpoint that follows the event, signed to the \
    Standard Webhooks specification (standardwebhooks.com): verify `webhook-signature` with the \
    endpoint's `whsec_` secret over `<webhook-id>.<webhook-timestamp>.<raw body>` before trusting the \
    body, and refuse timestamps more than five minutes off. Delivery is at least once: de-duplicate \
    by `webhook-id`. Events may arrive out of order; `timestamp` and `data.updatedAt` order them.";

fn header(name: &str, description: &str, pattern: &str, max_length: usize) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
                .max_length(Some(max_length)),
        ))
}

/// Adds the `webhooks` section and the schemas it names to `doc`.
pub fn describe(doc: &mut OpenApi) {
    let mut schemas = vec![(WebhookEvent::name().into_owned(), WebhookEvent::schema())];
    WebhookEvent::schemas(&mut schemas);
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
    // How a receiver authenticates what it is sent: the signature, not a credential.
    components.add_security_scheme(
        "webhookSignature",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "webhook-signature",
            "Standard Webhooks: `v1,<base64 HMAC-SHA256 of \"<webhook-id>.<webhook-timestamp>.<raw body>\" \
             keyed with the endpoint's secret (the base64 after `whsec_`)>`",
        ))),
    );
    let mut paths = PathsBuilder::new();
    for event in EVENTS {
        let meaning = MEANINGS.iter().find(|(e, _)| *e == event).map_or("", |(_, m)| *m);
        let operation = OperationBuilder::new()
            .tag("webhooks")
            .security(SecurityRequirement::new("webhookSignature", Vec::<String>::new()))
            .operation_id(Some(format!("webhook_{}", event.replace('.', "_"))))
            .summary(Some(format!("{event}: {meaning}")))
            .description(Some(format!("{meaning} {DELIVERY}")))
            .parameter(header(
                "webhook-id",
                "The event's id: the same on every attempt and every endpoint. De-duplicate by it.",
                "^[0-9a-f-]{36}$",
                36,
            ))
            .parameter(header(
                "webhook-timestamp",
                "When this attempt was signed, in Unix seconds.",
                "^[0-9]{1,12}$",
                12,
            ))
            .parameter(header(
                "webhook-signature",
                "`v1,<base64 HMAC-SHA256>`, space-separated when two secrets sign (during a \
                 rotation's grace). Accept the delivery when any one verifies.",
                "^v1,[A-Za-z0-9+/=]{44}( v1,[A-Za-z0-9+/=]{44})?$",
                91,
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("WebhookEvent"))).build(),
                    )
                    .build(),
            ))
            .response(
                "2XX",
                ResponseBuilder::new().description(
                    "Received: the delivery is done. The answer's body is ignored (at most 4 KiB is read).",
                ),
            )
            .response(
                "default",
                ResponseBuilder::new().description(
                    "Any other answer, a redirect, or none within the delivery timeout is a failed \
                     attempt: it is retried with exponential backoff, then the delivery is marked \
                     failed (an administrator may retry it).",
                ),
            );
        paths = paths.path(event, PathItem::new(HttpMethod::Post, operation));
    }
    doc.webhooks = Some(paths.build());
}
