//! The OpenAPI document (SPEC §9): the base description, shared schemas and the bearer
//! scheme. Each feature adds its paths through `utoipa_axum` routers.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, HeaderBuilder, ObjectBuilder, Ref, RefOr, Response, Type,
        link::LinkBuilder,
        path::{Operation, ParameterIn},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::platform::http::error::{ErrorBody, ErrorEnvelope};
use crate::platform::http::response::Pagination;

/// Root of the generated document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Storefront API",
        description = "Orders, users, products and auth. Success bodies are `{success: true, data}`; \
                       errors are `{success: false, error: {code, message, fields?, details?, requestId}}`."
    ),
    components(schemas(ErrorEnvelope, ErrorBody, Pagination)),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Register, login, token refresh and logout"),
        (name = "users", description = "Profiles and user administration"),
        (name = "products", description = "The catalogue"),
        (name = "orders", description = "Orders and their status machine"),
        (name = "payments", description = "Paying orders through the payment provider, and its webhook"),
        (name = "reports", description = "Sales and inventory CSV reports (admin)"),
        (name = "admin", description = "Operations for administrators"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme (JWT access tokens).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
        // The payment provider's webhook authenticates with a signature over the body.
        components.add_security_scheme(
            "stripeSignature",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "Stripe-Signature",
                    "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\" keyed with the webhook secret>",
                ),
            )),
        );
    }
}

/// Completes the generated document so it tells the whole truth (every status the
/// middleware can answer, not only the handler's) and is valid OpenAPI 3.1:
///
/// - every response has a `description` (the status's meaning when the handler gave none);
/// - every error response carries the error envelope;
/// - every API operation documents 429 (the per-IP limit) and 503 (Postgres or Redis
///   unavailable, or the request timeout); an operation that takes a body documents 400,
///   413 and 415; one with path or query parameters documents 400; a secured one 401;
/// - `links` from a created resource to the operations on it, so a client (or a stateful
///   fuzzer) can follow real ids.
pub fn complete(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let api = path.starts_with("/api/");
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(op, api);
        }
    }
    add_links(doc);
}

fn complete_operation(op: &mut Operation, api: bool) {
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| {
        p.iter().any(|p| matches!(p, RefOr::T(p) if !matches!(p.parameter_in, ParameterIn::Header)))
    });
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut needed: Vec<&str> = Vec::new();
    if api {
        needed.extend(["429", "503"]);
        if has_body {
            needed.extend(["400", "413", "415"]);
        }
        if has_params {
            needed.push("400");
        }
        if secured {
            needed.push("401");
        }
    }
    let responses = &mut op.responses.responses;
    for status in needed {
        responses.entry(status.to_owned()).or_insert_with(|| RefOr::T(Response::new("")));
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        if response.description.is_empty() {
            response.description = default_description(status).to_owned();
        }
        let error = status.starts_with('4') || status.starts_with('5');
        if error && response.content.is_empty() {
            response.content.insert(
                "application/json".to_owned(),
                RefOr::T(Content::new(Some(Ref::from_schema_name("ErrorEnvelope")))),
            );
        }
        if status == "429" && !response.headers.contains_key("Retry-After") {
            response.headers.insert(
                "Retry-After".to_owned(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1))))
                        .description(Some("Seconds until the limit resets"))
                        .build(),
                ),
            );
        }
    }
}

fn default_description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted: the work continues in the background",
        "204" => "Done; no body",
        "304" => "Not modified: the `If-None-Match` tag is current",
        "400" => "Invalid input (`VALIDATION_ERROR`; `fields` names each bad field)",
        "401" => "Missing, invalid or expired credentials (`UNAUTHORIZED`)",
        "403" => "The caller's role may not do this (`FORBIDDEN`)",
        "404" => "No such resource (`NOT_FOUND`)",
        "409" => "Conflicts with the current state (`CONFLICT`)",
        "412" => "`If-Match` does not match the current version (`PRECONDITION_FAILED`)",
        "413" => "Body larger than `BODY_LIMIT` (`PAYLOAD_TOO_LARGE`)",
        "415" => "Body is not `application/json` (`UNSUPPORTED_MEDIA_TYPE`)",
        "422" => "Well-formed but not possible with the current data (see `code`)",
        "429" => "Rate limited (`RATE_LIMITED`); retry after `Retry-After` seconds",
        "503" => {
            "A dependency (Postgres, Redis) is unavailable or the request timed out (`SERVICE_UNAVAILABLE`)"
        }
        _ => "See the error envelope's `code`",
    }
}

/// `(operation, status, where the id is in its answer, operations taking it as `{id}`)`:
/// from a created resource to the operations on it, and from a list's first item to its
/// detail.
const LINKS: [(&str, &str, &str, &[&str]); 8] = [
    (
        "create_product",
        "201",
        "$response.body#/data/id",
        &["get_product", "update_product", "delete_product"],
    ),
    (
        "create_order",
        "201",
        "$response.body#/data/id",
        &["get_order", "update_order", "cancel_order", "update_order_status"],
    ),
    ("create_report", "202", "$response.body#/data/id", &["get_report", "download_report"]),
    ("register", "201", "$response.body#/data/user/id", &["get_user", "update_user", "delete_user"]),
    ("list_products", "200", "$response.body#/data/0/id", &["get_product"]),
    ("list_orders", "200", "$response.body#/data/0/id", &["get_order"]),
    ("list_reports", "200", "$response.body#/data/0/id", &["get_report"]),
    ("dead_jobs", "200", "$response.body#/data/0/id", &["retry_dead_job"]),
];

fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete]
            .into_iter()
            .flatten()
        {
            let Some(id) = op.operation_id.as_deref() else { continue };
            let Some((_, status, location, targets)) = LINKS.iter().find(|(from, ..)| *from == id) else {
                continue;
            };
            let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else { continue };
            for target in *targets {
                response.links.insert(
                    (*target).to_owned(),
                    RefOr::T(
                        LinkBuilder::new()
                            .operation_id(*target)
                            .parameter("id", *location)
                            .description(format!("`{target}` with this `id`"))
                            .build(),
                    ),
                );
            }
        }
    }
}
