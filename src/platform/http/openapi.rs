//! The OpenAPI document: the base description, shared schemas and the bearer
//! scheme. Each feature adds its paths through `utoipa_axum` routers.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, Ref, RefOr, Response,
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
        (name = "webhooks", description = "Outbound webhooks: endpoints that follow order events, and their deliveries (admin)"),
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
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from `POST /auth/login`, `/auth/register` or `/auth/refresh`: a JWS \
                         signed with HS256 and verified as RFC8725 advises (the algorithm is fixed, never \
                         taken from the token; signature, `exp`, `iss` and `aud` are checked).",
                    ))
                    .build(),
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
/// - every operation documents 500 (a panic or an unexpected error, in the envelope);
///   every API operation 429 (the per-IP limit) and 503 (Postgres or Redis unavailable,
///   or the request timeout); an operation that takes a body documents 400, 413 and 415;
///   one with path or query parameters documents 400; a secured one 401;
/// - an operation anyone may call says so with `security: []`;
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
    if !secured {
        op.security = Some(Vec::new());
    }
    let mut needed: Vec<&str> = vec!["500"];
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
        "500" => "An unexpected error (`INTERNAL_SERVER_ERROR`); the message names no internals",
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

/// The links of a collection that [`LINKS`] does not name, by rule: from a `POST` at a
/// path whose 201 has a `Location` to the operations on `<path>/{id}`, and from a `GET` at
/// that path (its list) to the `GET` of its first item. A generated feature is linked so.
fn derived_links(doc: &utoipa::openapi::OpenApi) -> Vec<(String, &'static str, &'static str, Vec<String>)> {
    let id_of = |op: &Option<Operation>| op.as_ref().and_then(|op| op.operation_id.clone());
    let mut links = Vec::new();
    for (path, item) in &doc.paths.paths {
        let Some(one) = doc.paths.paths.get(&format!("{path}/{{id}}")) else { continue };
        if path.contains('{') {
            continue;
        }
        let named = |id: &String| LINKS.iter().any(|(from, ..)| from == id);
        let created = item.post.as_ref().and_then(|op| match op.responses.responses.get("201") {
            Some(RefOr::T(r)) if r.headers.contains_key("Location") => op.operation_id.clone(),
            _ => None,
        });
        if let Some(create) = created.filter(|id| !named(id)) {
            let targets: Vec<String> =
                [&one.get, &one.patch, &one.put, &one.delete].into_iter().filter_map(id_of).collect();
            links.push((create, "201", "$response.body#/data/id", targets));
        }
        if let (Some(list), Some(get)) = (id_of(&item.get).filter(|id| !named(id)), id_of(&one.get)) {
            links.push((list, "200", "$response.body#/data/0/id", vec![get]));
        }
    }
    links
}

fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    let derived = derived_links(doc);
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete]
            .into_iter()
            .flatten()
        {
            let Some(id) = op.operation_id.as_deref() else { continue };
            let (status, location, targets): (&str, &str, Vec<&str>) =
                match LINKS.iter().find(|(from, ..)| *from == id) {
                    Some((_, status, location, targets)) => (status, location, targets.to_vec()),
                    None => match derived.iter().find(|(from, ..)| from == id) {
                        Some((_, status, location, targets)) => {
                            (status, location, targets.iter().map(String::as_str).collect())
                        }
                        None => continue,
                    },
                };
            let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) else { continue };
            for target in targets {
                response.links.insert(
                    target.to_owned(),
                    RefOr::T(
                        LinkBuilder::new()
                            .operation_id(target)
                            .parameter("id", location)
                            .description(format!("`{target}` with this `id`"))
                            .build(),
                    ),
                );
            }
        }
    }
}

/// The document as served: [`complete`]d, then, on its JSON form, what utoipa's types
/// cannot say or what is shared by every operation:
///
/// - `servers`: the API is served at the root of the host that serves the document;
/// - the response headers of the middleware on every response, as `components.headers`
///   references: `X-Request-Id`, CORS's `Access-Control-Allow-Origin`, the
///   `RateLimit-*` headers on API operations (health probes are exempt from the limits)
///   and `Retry-After` on 429. A header a setting can turn off is `required: false`;
/// - bounds: every integer states its format and range, every UUID and every date-time
///   the server writes its longest length, every list its most items ([`bound_schemas`]);
/// - no empty `license`, no schema nothing refers to.
///
/// `lists`: the most items of the lists whose element type is generic (an
/// `ApiOk<Vec<T>>`, which the types cannot bound), by schema name.
pub fn document(mut doc: utoipa::openapi::OpenApi, lists: &[(&str, usize)]) -> Value {
    complete(&mut doc);
    let mut doc = serde_json::to_value(&doc).expect("the OpenAPI document is JSON");
    doc["servers"] = json!([{
        "url": "/",
        "description": "The host serving this document (local, staging or production alike)",
        "x-internal": false,
    }]);
    // utoipa names the crate's license, and the crate declares none.
    if doc["info"]["license"]["name"].as_str().is_some_and(str::is_empty) {
        doc["info"].as_object_mut().map(|info| info.remove("license"));
    }
    add_headers(&mut doc);
    bound_tag_lists(&mut doc);
    bound_schemas(&mut doc, lists);
    // The error codes a client can meet, as an enum: a typed client matches on them.
    if let Some(code) = doc.pointer_mut("/components/schemas/ErrorBody/properties/code") {
        code["enum"] = json!(super::error::ERROR_CODES);
    }
    drop_unused_schemas(&mut doc);
    doc
}

/// Removes the component schemas nothing refers to: utoipa registers each type that a
/// generic envelope (`ApiOk<T>`, `ApiList<T>`) inlines, under its own name too.
fn drop_unused_schemas(doc: &mut Value) {
    loop {
        let mut used = Vec::new();
        collect_refs(doc, &mut used);
        let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else {
            return;
        };
        let before = schemas.len();
        schemas.retain(|name, _| used.contains(name));
        if schemas.len() == before {
            return;
        }
    }
}

/// Longest `Retry-After` and `RateLimit-Reset`: no rate-limit window is longer than an
/// hour (the verification e-mail's resend window; logins and resets count 15 minutes).
const LONGEST_WINDOW_SECS: u64 = 60 * 60;

fn header_components() -> Value {
    let reset = json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": LONGEST_WINDOW_SECS});
    json!({
        "X-Request-Id": {
            "description": "The request's id: the client's own when it sent 1..=128 visible ASCII \
                            characters, else a new UUID. Error bodies carry it as `requestId`.",
            "required": true,
            "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"},
        },
        "Access-Control-Allow-Origin": {
            "description": "CORS: `*` or the request's `Origin` when `CORS_ORIGIN` allows it; absent \
                            for requests without an allowed `Origin`.",
            "required": false,
            "schema": {"type": "string", "pattern": "^(\\*|https?://[^/\\s]\\S*)$"},
        },
        "RateLimit-Limit": {
            "description": "Requests the binding quota allows per window (absent while the rate \
                            limits are off).",
            "required": false,
            "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": u32::MAX},
        },
        "RateLimit-Remaining": {
            "description": "Requests left in the current window (absent while the rate limits are off).",
            "required": false,
            "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX},
        },
        "RateLimit-Reset": {
            "description": "Seconds until the current window ends (absent while the rate limits are off).",
            "required": false,
            "schema": reset,
        },
        "Retry-After": {
            "description": "Seconds until the limit resets.",
            "required": true,
            "schema": reset,
        },
    })
}

/// The schema of a response header wherever it is sent: an `ETag` is `"<version>"`, a
/// `Location` the path of the resource just created under `path` (the operation's own).
fn header_schema(name: &str, path: &str) -> Option<Value> {
    match name {
        // `"<version>"`: a positive i32 in quotes.
        "ETag" => {
            Some(json!({"type": "string", "minLength": 3, "maxLength": 12, "pattern": "^\"[1-9][0-9]*\"$"}))
        }
        "Location" => {
            // The path of the new resource: the collection's path, a slash and a hyphenated UUID.
            let prefix = format!("{path}/");
            let len = prefix.len() + 36;
            Some(json!({"type": "string", "format": "uri-reference", "minLength": len, "maxLength": len,
                        "pattern": format!("^{prefix}[0-9a-f-]{{36}}$")}))
        }
        _ => None,
    }
}

/// Response headers of single operations: `(operationId, status, header, schema)`.
fn operation_headers() -> [(&'static str, &'static str, &'static str, Value); 1] {
    [(
        "download_report",
        "200",
        "Content-Disposition",
        // `attachment; filename="<type>-<first day>-<last day>.csv"`: the longest type
        // (`inventory`) and two dates of chrono's widest years (`+262143-12-31`); a name
        // that is no header value falls back to `attachment`.
        json!({"type": "string", "maxLength": 64, "pattern": "^attachment(; filename=\"[a-z]+-[-+0-9]+\\.csv\")?$"}),
    )]
}

/// `If-Match` and `If-None-Match` request headers: at most
/// [`MAX_TAG_LIST_LEN`](super::conditional::MAX_TAG_LIST_LEN) bytes, as the server checks.
fn bound_tag_lists(doc: &mut Value) {
    for (_, op) in operations_mut(doc) {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
        for param in params {
            let header = param["in"] == "header"
                && matches!(param["name"].as_str(), Some("If-Match" | "If-None-Match"));
            if header && let Some(schema) = param.get_mut("schema").and_then(Value::as_object_mut) {
                schema.insert("maxLength".to_owned(), json!(super::conditional::MAX_TAG_LIST_LEN));
            }
        }
    }
}

fn operations_mut(doc: &mut Value) -> impl Iterator<Item = (&String, &mut Map<String, Value>)> {
    doc["paths"].as_object_mut().into_iter().flat_map(|paths| {
        paths.iter_mut().flat_map(|(path, item)| {
            item.as_object_mut().into_iter().flat_map(|item| item.values_mut()).filter_map(move |op| {
                op.as_object_mut().filter(|op| op.contains_key("responses")).map(|op| (path, op))
            })
        })
    })
}

fn add_headers(doc: &mut Value) {
    doc["components"]["headers"] = header_components();
    let header_ref = |name: &str| json!({"$ref": format!("#/components/headers/{name}")});
    let specific = operation_headers();
    for (path, op) in operations_mut(doc) {
        // The per-address limits count every API request; health probes are exempt.
        let limited = path.starts_with("/api/");
        let id = op.get("operationId").and_then(Value::as_str).unwrap_or_default().to_owned();
        let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
        for (status, response) in responses.iter_mut() {
            let Some(response) = response.as_object_mut() else { continue };
            let headers = response.entry("headers").or_insert_with(|| json!({}));
            let Some(headers) = headers.as_object_mut() else { continue };
            let mut names = vec!["X-Request-Id", "Access-Control-Allow-Origin"];
            if limited {
                names.extend(["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]);
            }
            if status == "429" {
                names.push("Retry-After");
            }
            for name in names {
                headers.insert(name.to_owned(), header_ref(name));
            }
            for (name, header) in headers.iter_mut() {
                if let (Some(schema), Some(header)) = (header_schema(name, path), header.as_object_mut()) {
                    header.insert("schema".to_owned(), schema);
                }
            }
            for (_, _, name, schema) in specific.iter().filter(|(o, s, ..)| *o == id && s == status) {
                if let Some(header) = headers.get_mut(*name).and_then(Value::as_object_mut) {
                    header.insert("schema".to_owned(), schema.clone());
                }
            }
        }
    }
}

/// Longest UUID: the hyphenated form (the `uuid` format's only one).
const UUID_LEN: u64 = 36;
/// Longest date-time the server writes (chrono's RFC 3339 with `Z`): a signed six-digit
/// year and nanoseconds, `+262143-12-31T23:59:59.999999999Z`.
const DATE_TIME_LEN: u64 = 33;

/// Bounds every schema the types leave open, where the bound is a fact:
///
/// - an integer without a format is `int64`, and a side of its range that no annotation
///   narrowed is its format's (what the Rust type holds; a field with a narrower real
///   bound declares it on the type);
/// - a `uuid` string is at most 36 characters;
/// - a `date-time` the server writes (in a schema only responses use) is at most
///   [`DATE_TIME_LEN`]; one a client sends is parsed by chrono, which takes any number of
///   fraction digits, so it has no such bound;
/// - the generic `lists`, and the fields of an error.
fn bound_schemas(doc: &mut Value, lists: &[(&str, usize)]) {
    let output_only = output_only_schemas(doc);
    for (name, max) in lists {
        if let Some(data) = doc.pointer_mut(&format!("/components/schemas/{name}/properties/data")) {
            data["maxItems"] = json!(max);
        }
    }
    // An error lists at most this many fields (`details.omittedFieldErrors` counts the rest).
    if let Some(fields) = doc.pointer_mut("/components/schemas/ErrorBody/properties/fields") {
        fields["maxProperties"] = json!(crate::platform::http::error::MAX_FIELD_ERRORS);
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for (name, schema) in schemas.iter_mut() {
            bound(schema, output_only.contains(name));
        }
    }
    for (_, op) in operations_mut(doc) {
        for (key, part) in op.iter_mut() {
            bound(part, key == "responses");
        }
    }
}

fn has_type(schema: &Map<String, Value>, name: &str) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == name,
        Some(Value::Array(types)) => types.iter().any(|t| t == name),
        _ => false,
    }
}

/// Applies the bounds of [`bound_schemas`] to `value` and everything under it;
/// `output`: only the server writes what it holds.
fn bound(value: &mut Value, output: bool) {
    match value {
        Value::Object(map) => {
            if has_type(map, "integer") {
                let format = map.entry("format").or_insert_with(|| json!("int64"));
                let (min, max) = match format.as_str() {
                    Some("int32") => (json!(i32::MIN), json!(i32::MAX)),
                    _ => (json!(i64::MIN), json!(i64::MAX)),
                };
                if !map.contains_key("minimum") && !map.contains_key("exclusiveMinimum") {
                    map.insert("minimum".to_owned(), min);
                }
                if !map.contains_key("maximum") && !map.contains_key("exclusiveMaximum") {
                    map.insert("maximum".to_owned(), max);
                }
            }
            let open = !["maxLength", "enum", "const"].iter().any(|k| map.contains_key(*k));
            if has_type(map, "string") && open {
                match map.get("format").and_then(Value::as_str) {
                    Some("uuid") => {
                        map.insert("maxLength".to_owned(), json!(UUID_LEN));
                    }
                    Some("date-time") if output => {
                        map.insert("maxLength".to_owned(), json!(DATE_TIME_LEN));
                    }
                    _ => {}
                }
            }
            for child in map.values_mut() {
                bound(child, output);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| bound(v, output)),
        _ => {}
    }
}

/// The component schemas that only responses reach (directly or through other
/// schemas), never a parameter or a request body. What the `webhooks` section sends is
/// written by the server too.
fn output_only_schemas(doc: &Value) -> BTreeSet<String> {
    let (mut input, mut output) = (Vec::new(), Vec::new());
    collect_refs(&doc["webhooks"], &mut output);
    if let Some(paths) = doc["paths"].as_object() {
        for op in paths.values().filter_map(Value::as_object).flat_map(|item| item.values()) {
            let Some(op) = op.as_object() else { continue };
            for (key, part) in op {
                let refs = if key == "responses" { &mut output } else { &mut input };
                collect_refs(part, refs);
            }
        }
    }
    let reach = |mut todo: Vec<String>| {
        let mut seen = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if seen.insert(name.clone()) {
                collect_refs(&doc["components"]["schemas"][&name], &mut todo);
            }
        }
        seen
    };
    let input = reach(input);
    reach(output).into_iter().filter(|name| !input.contains(name)).collect()
}

/// The names of the component schemas `value` refers to.
fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) =
                map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                out.push(name.to_owned());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_get_a_format_and_its_range_where_no_bound_is_declared() {
        let mut v = json!({
            "a": {"type": "integer"},
            "b": {"type": ["integer", "null"], "format": "int32", "minimum": 0},
            "c": {"type": "integer", "format": "int64", "exclusiveMinimum": 0, "maximum": 9},
        });
        bound(&mut v, false);
        assert_eq!(
            v["a"],
            json!({"type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX})
        );
        assert_eq!((v["b"]["minimum"].clone(), v["b"]["maximum"].clone()), (json!(0), json!(i32::MAX)));
        assert!(v["c"].get("minimum").is_none());
        assert_eq!(v["c"]["maximum"], 9);
    }

    #[test]
    fn uuids_get_their_length_and_date_times_only_where_the_server_writes_them() {
        let schema = json!({
            "id": {"type": "string", "format": "uuid"},
            "at": {"type": ["string", "null"], "format": "date-time"},
            "tag": {"type": "string", "format": "uuid", "enum": ["x"]},
        });
        let (mut input, mut output) = (schema.clone(), schema);
        bound(&mut input, false);
        bound(&mut output, true);
        assert_eq!(input["id"]["maxLength"], UUID_LEN);
        assert!(input["at"].get("maxLength").is_none(), "chrono reads any number of fraction digits");
        assert_eq!(output["at"]["maxLength"], DATE_TIME_LEN);
        assert!(output["tag"].get("maxLength").is_none());
    }

    #[test]
    fn the_widest_date_times_chrono_writes_fit_the_bound() {
        for t in [chrono::DateTime::<chrono::Utc>::MIN_UTC, chrono::DateTime::<chrono::Utc>::MAX_UTC] {
            let text = serde_json::to_value(t).unwrap();
            assert!(text.as_str().unwrap().chars().count() as u64 <= DATE_TIME_LEN, "{text}");
        }
    }

    #[test]
    fn output_only_schemas_are_those_no_parameter_or_body_reaches() {
        let schema = |name: &str| json!({"schema": {"$ref": format!("#/components/schemas/{name}")}});
        let doc = json!({
            "paths": {"/x": {"post": {
                "requestBody": {"content": {"application/json": schema("In")}},
                "responses": {"200": {"content": {"application/json": schema("Out")}}},
            }}},
            "components": {"schemas": {
                "In": {"properties": {"shared": schema("Both")["schema"]}},
                "Out": {"properties": {"shared": schema("Both")["schema"], "own": schema("Deep")["schema"]}},
                "Both": {},
                "Deep": {},
            }},
        });
        assert_eq!(output_only_schemas(&doc).into_iter().collect::<Vec<_>>(), ["Deep", "Out"]);
    }

    #[test]
    fn responses_carry_the_middleware_headers() {
        let mut doc = json!({"components": {}, "paths": {
            "/api/v1/products/{id}": {"get": {"operationId": "get_product", "responses": {
                "200": {"description": "OK", "headers": {"ETag": {"schema": {"type": "string"}}}},
                "429": {"description": "Rate limited"},
            }}},
            "/health": {"get": {"responses": {"200": {"description": "OK"}}}},
        }});
        add_headers(&mut doc);
        let header = |name: &str| json!({"$ref": format!("#/components/headers/{name}")});
        let api = &doc["paths"]["/api/v1/products/{id}"]["get"]["responses"];
        for name in ["X-Request-Id", "Access-Control-Allow-Origin", "RateLimit-Limit", "RateLimit-Reset"] {
            assert_eq!(api["200"]["headers"][name], header(name));
        }
        assert_eq!(api["200"]["headers"]["ETag"]["schema"]["maxLength"], 12);
        assert!(api["200"]["headers"].get("Retry-After").is_none());
        assert_eq!(api["429"]["headers"]["Retry-After"], header("Retry-After"));
        let health = &doc["paths"]["/health"]["get"]["responses"]["200"]["headers"];
        assert_eq!(health["X-Request-Id"], header("X-Request-Id"));
        assert!(health.get("RateLimit-Limit").is_none(), "health probes are not rate limited");
        let components = &doc["components"]["headers"];
        assert_eq!(components["RateLimit-Remaining"]["required"], false);
        assert_eq!(components["X-Request-Id"]["required"], true);
    }
}
