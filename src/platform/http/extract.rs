//! Extractors whose rejections are [`AppError`]s in the error envelope, never axum's
//! plain-text bodies: JSON bodies (415 / 413 / 400 with the failing field), validated
//! JSON, query strings and path parameters.

use std::borrow::Cow;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request, rejection::BytesRejection},
    http::{StatusCode, header, request::Parts},
};
use serde::{Deserialize, de::DeserializeOwned};
use validator::{Validate, ValidationError, ValidationErrors, ValidationErrorsKind};

use crate::platform::http::error::{AppError, FieldErrors};

/// A JSON request body. `Content-Type` must be `application/json` (or `+json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(AppError::UnsupportedMediaType(
                "expected a request body with Content-Type: application/json".to_owned(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The bytes of a JSON request body (`Content-Type` checked as [`JsonBody`] checks it),
/// for a handler that parses them itself.
#[derive(Debug, Clone, Default)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(AppError::UnsupportedMediaType(
                "expected a request body with Content-Type: application/json".to_owned(),
            ));
        }
        Bytes::from_request(req, state).await.map(JsonBytes).map_err(body_rejection)
    }
}

/// A JSON body that also passes its `validator` rules; failures list every field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Validate> FromRequest<S> for ValidJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBody(value) = JsonBody::<T>::from_request(req, state).await?;
        value.validate().map_err(validation_error)?;
        Ok(ValidJson(value))
    }
}

/// Query string parameters, deserialized and validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Validate> FromRequestParts<S> for QueryParams<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = json_path(&e.path().to_string());
            let message = clean_serde_message(&e.inner().to_string());
            if field.is_empty() {
                field_from_message(&message)
                    .map(|f| AppError::field(f, message.clone()))
                    .unwrap_or_else(|| AppError::bad_request(format!("invalid query string: {message}")))
            } else {
                AppError::field(camel_case(&field), message)
            }
        })?;
        value.validate().map_err(validation_error)?;
        Ok(QueryParams(value))
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// Path parameters; a value of the wrong type is a 400 naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParam(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(match e.into_kind() {
                ErrorKind::ParseErrorAtKey { key, expected_type, .. } => {
                    AppError::field(key, format!("must be a valid {}", friendly_type(expected_type)))
                }
                ErrorKind::DeserializeError { key, message, .. } => {
                    AppError::field(cut(&key, MAX_ECHOED_NAME), clean_serde_message(&message))
                }
                ErrorKind::InvalidUtf8InPathParam { key } => AppError::field(key, "must be valid UTF-8"),
                ErrorKind::ParseError { expected_type, .. } => AppError::bad_request(format!(
                    "path parameter must be a valid {}",
                    friendly_type(expected_type)
                )),
                _ => AppError::bad_request("invalid path parameter"),
            }),
            Err(other) => Err(AppError::Internal(anyhow::anyhow!("path extraction failed: {other}"))),
        }
    }
}

fn friendly_type(rust_type: &str) -> &str {
    if rust_type.ends_with("Uuid") { "UUID" } else { rust_type }
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(mime) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn body_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge
    } else {
        AppError::bad_request("the request body could not be read")
    }
}

const NOT_AN_OBJECT: &str = "the body must be a JSON object";

/// Parses JSON, naming the failing field path (`items[2].quantity`) when there is one.
/// A number is a number however it is written: `5.0` and `5e0` are the integer 5 (JSON
/// and JSON Schema draw no line between them), `5.5` is not an integer.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    // serde would also read a struct from an array of its fields in order; every body of
    // this API is an object, as the document says.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            return Err(AppError::bad_request(NOT_AN_OBJECT));
        }
        Some(_) => {}
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let mut float = false;
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return AppError::bad_request(format!(
                "malformed JSON: {}",
                clean_serde_message(&inner.to_string())
            ));
        }
        let message = inner.to_string();
        float = message.starts_with("invalid type: floating point");
        shape_error(&e.path().to_string(), &message)
    });
    let value = match value {
        Ok(value) => value,
        // Rare: retried through a `Value` with integral floats made integers.
        Err(_) if float => {
            let mut value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|_| AppError::bad_request("malformed JSON"))?;
            integral_floats_to_integers(&mut value);
            return parse_value(value);
        }
        Err(e) => return Err(e),
    };
    de.end().map_err(|_| AppError::bad_request("malformed JSON: trailing characters after the value"))?;
    Ok(value)
}

fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // i64 covers every integer field of the API; beyond it the float stays and fails.
            if f.fract() == 0.0 && f.abs() < 9.2e18 {
                *n = serde_json::Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// Converts an already-parsed JSON value (e.g. one kept for an idempotency fingerprint),
/// with the same field-naming errors as [`parse_json`].
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, AppError> {
    let mut value = value;
    if !value.is_object() {
        return Err(AppError::bad_request(NOT_AN_OBJECT));
    }
    integral_floats_to_integers(&mut value);
    serde_path_to_error::deserialize(value)
        .map_err(|e| shape_error(&e.path().to_string(), &e.inner().to_string()))
}

/// [`parse_value`] plus the type's `validator` rules, as [`ValidJson`] runs them.
pub fn parse_valid_value<T: DeserializeOwned + Validate>(value: serde_json::Value) -> Result<T, AppError> {
    let value: T = parse_value(value)?;
    value.validate().map_err(validation_error)?;
    Ok(value)
}

/// For hand-written `Validate` impls whose rules span fields or list items: the
/// [`FieldErrors`] they collected (paths such as `items[1].productId`), as validator's
/// errors, so every extractor reports them like derived ones.
pub fn into_validation_errors(fields: FieldErrors) -> Result<(), ValidationErrors> {
    if fields.is_empty() {
        return Ok(());
    }
    let mut errors = ValidationErrors::new();
    for (path, messages) in fields {
        let list = messages
            .into_iter()
            .map(|m| ValidationError::new("invalid").with_message(Cow::Owned(m)))
            .collect();
        errors.errors_mut().insert(Cow::Owned(path), ValidationErrorsKind::Field(list));
    }
    Err(errors)
}

/// For `#[validate(schema(function = ...))]` checks across fields: an error reported
/// under `field` (a struct-level error otherwise has no field to name).
pub fn struct_error(field: &'static str, message: &'static str) -> ValidationError {
    let mut error = ValidationError::new("invalid").with_message(Cow::Borrowed(message));
    error.add_param(Cow::Borrowed(STRUCT_ERROR_FIELD), &field);
    error
}

const STRUCT_ERROR_FIELD: &str = "field";

/// A well-formed document of the wrong shape: name the field when there is one.
fn shape_error(raw_path: &str, raw_message: &str) -> AppError {
    let message = clean_serde_message(raw_message);
    let path = json_path(raw_path);
    match field_from_message(&message) {
        // `deny_unknown_fields`: the path already ends at the unknown key.
        Some(unknown) if message.starts_with("unknown field") => {
            let field = if path.is_empty() { unknown } else { path };
            AppError::field(field, "unknown field")
        }
        // A missing field is reported at the parent.
        Some(missing) if message.starts_with("missing field") => {
            AppError::field(join_path(&path, &missing), "is required")
        }
        _ if path.is_empty() => AppError::bad_request(format!("invalid request body: {message}")),
        _ => AppError::field(path, message),
    }
}

/// `items[2].quantity` from serde_path_to_error's `items[2].quantity` / `.` (root). The
/// path may end at a key taken from the input (an unknown field): each segment is cut to
/// [`MAX_ECHOED_NAME`] characters.
fn json_path(raw: &str) -> String {
    if raw == "." {
        return String::new();
    }
    raw.split('.').map(|segment| cut(segment, MAX_ECHOED_NAME)).collect::<Vec<_>>().join(".")
}

fn join_path(parent: &str, field: &str) -> String {
    if parent.is_empty() { field.to_owned() } else { format!("{parent}.{field}") }
}

/// The backticked name in serde messages such as "unknown field `role`, expected ...".
fn field_from_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Names from the input (an unknown field or value) are cut to this many characters.
pub const MAX_ECHOED_NAME: usize = 64;
/// A message built from a deserializer's error is cut to this many characters.
const MAX_MESSAGE: usize = 200;

/// A serde message as an API client sees it: never the offending input, which can be
/// anything up to the body limit (serde's "invalid type: string \"AAAA…\", expected i32"
/// quotes it whole). What the API's own types expect is kept; a name taken from the input
/// (an unknown field or variant) is cut to [`MAX_ECHOED_NAME`] characters; serde_json's
/// " at line 1 column 7" suffix goes.
fn clean_serde_message(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    let expected = |rest: &str| rest.rfind(", expected ").map(|i| rest[i + 2..].to_owned());
    let clean = if let Some(rest) = message.strip_prefix("invalid type: ") {
        match expected(rest) {
            Some(e) => format!("has the wrong type: {e}"),
            None => "has the wrong type".to_owned(),
        }
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        match expected(rest) {
            Some(e) => format!("has an invalid value: {e}"),
            None => "has an invalid value".to_owned(),
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        let name = rest.split('`').next().unwrap_or_default();
        match expected(rest) {
            Some(e) => format!("unknown variant `{}`, {e}", cut(name, MAX_ECHOED_NAME)),
            None => format!("unknown variant `{}`", cut(name, MAX_ECHOED_NAME)),
        }
    } else if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        format!("unknown field `{}`", cut(name, MAX_ECHOED_NAME))
    } else {
        message.to_owned()
    };
    cut(&clean, MAX_MESSAGE).into_owned()
}

/// `text` cut to `max` characters (with an ellipsis when it was longer).
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// Converts validator's errors into the envelope's `fields` map with camelCase paths.
pub fn validation_error(errors: ValidationErrors) -> AppError {
    let mut fields = FieldErrors::new();
    flatten(&errors, "", &mut fields);
    AppError::invalid_fields(fields)
}

fn flatten(errors: &ValidationErrors, prefix: &str, out: &mut FieldErrors) {
    for (name, kind) in errors.errors() {
        let name = if name == "__all__" { Cow::Borrowed("") } else { Cow::Owned(camel_case(name)) };
        let path = match (prefix.is_empty(), name.is_empty()) {
            (true, _) => name.into_owned(),
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{name}"),
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    // A struct-level check may name the field it is about.
                    let path = match e.params.get(STRUCT_ERROR_FIELD).and_then(|f| f.as_str()) {
                        Some(field) if path.is_empty() => field.to_owned(),
                        Some(field) => format!("{path}.{field}"),
                        None => path.clone(),
                    };
                    out.entry(path).or_default().push(match &e.message {
                        Some(m) => m.to_string(),
                        None => default_message(&e.code, &e.params),
                    });
                }
            }
            ValidationErrorsKind::Struct(inner) => flatten(inner, &path, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    flatten(inner, &format!("{path}[{index}]"), out);
                }
            }
        }
    }
}

fn default_message(
    code: &str,
    params: &std::collections::HashMap<Cow<'static, str>, serde_json::Value>,
) -> String {
    let p = |k: &str| params.get(k).map(|v| v.to_string());
    match code {
        "length" => match (p("min"), p("max")) {
            (Some(min), Some(max)) => format!("length must be between {min} and {max}"),
            (Some(min), None) => format!("length must be at least {min}"),
            (None, Some(max)) => format!("length must be at most {max}"),
            _ => "invalid length".to_owned(),
        },
        "range" => match (p("min"), p("max")) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}"),
            (Some(min), None) => format!("must be at least {min}"),
            (None, Some(max)) => format!("must be at most {max}"),
            _ => "out of range".to_owned(),
        },
        "email" => "must be a valid e-mail address".to_owned(),
        "regex" => "has an invalid format".to_owned(),
        other => format!("is invalid ({other})"),
    }
}

/// For PATCH fields where absent and `null` differ: use with `#[serde(default,
/// deserialize_with = "double_option")]` on an `Option<Option<T>>`; absent stays `None`,
/// `null` becomes `Some(None)`.
pub fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// For PATCH fields that may be absent but not `null`: with `#[serde(default,
/// deserialize_with = "reject_null")]` on an `Option<T>`, absent stays `None` and `null`
/// is a type error naming the field (a 400), not a silent "unchanged".
pub fn reject_null<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

/// Longest RFC 3339 instant a body or query takes: a four-digit year, nanoseconds and an
/// offset (`2026-01-01T10:00:00.123456789+01:00`). chrono alone reads any number of fraction
/// digits; with this bound the OpenAPI document can state a `maxLength` that holds.
pub const MAX_TIMESTAMP_LEN: usize = 35;

/// `#[serde(deserialize_with = "timestamp")]`: an RFC 3339 instant of at most
/// [`MAX_TIMESTAMP_LEN`] characters, in UTC.
pub fn timestamp<'de, D>(de: D) -> Result<chrono::DateTime<chrono::Utc>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let text = String::deserialize(de)?;
    if text.len() > MAX_TIMESTAMP_LEN {
        return Err(D::Error::custom(format!(
            "must be an RFC 3339 instant of at most {MAX_TIMESTAMP_LEN} characters"
        )));
    }
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|_| D::Error::custom("must be an RFC 3339 instant, such as 2026-01-01T10:00:00Z"))
}

/// [`timestamp`] for an optional field: absent is `None` (with `#[serde(default)]`), `null`
/// is refused as [`reject_null`] refuses it.
pub fn some_timestamp<'de, D>(de: D) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    timestamp(de).map(Some)
}

/// `first_name` → `firstName`; already camelCase names pass unchanged.
pub fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use validator::Validate;

    use super::*;

    #[test]
    fn timestamps_are_rfc_3339_and_bounded_in_length() {
        #[derive(Debug, Deserialize)]
        struct At {
            #[serde(deserialize_with = "timestamp")]
            at: chrono::DateTime<chrono::Utc>,
        }
        let read = |text: &str| serde_json::from_value::<At>(serde_json::json!({ "at": text }));
        let longest = "2026-01-01T10:00:00.123456789+01:00";
        assert_eq!(longest.len(), MAX_TIMESTAMP_LEN);
        assert_eq!(read(longest).unwrap().at.to_rfc3339(), "2026-01-01T09:00:00.123456789+00:00");
        assert_eq!(read("2026-01-01T10:00:00Z").unwrap().at.to_rfc3339(), "2026-01-01T10:00:00+00:00");
        for bad in ["2026-01-01T10:00:00.1234567891+01:00", "2026-01-01", "yesterday", ""] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug, Deserialize, serde::Serialize, Validate)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Order {
        #[validate(length(min = 1, max = 2), nested)]
        items: Vec<Item>,
        #[validate(length(min = 1))]
        first_name: Option<String>,
    }

    #[derive(Debug, Deserialize, serde::Serialize, Validate)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Item {
        #[validate(range(min = 1, max = 1000))]
        quantity: u32,
    }

    fn fields_of(e: AppError) -> FieldErrors {
        match e {
            AppError::Validation { fields, .. } => fields,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_nested_field() {
        let e = parse_json::<Order>(br#"{"items":[{"quantity":1},{"quantity":"x"}]}"#).unwrap_err();
        assert!(fields_of(e).contains_key("items[1].quantity"));
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let order = parse_json::<Order>(br#"{"items":[{"quantity":2.0},{"quantity":3e0}]}"#).unwrap();
        assert_eq!(
            order.items.iter().map(|i| i.quantity).collect::<Vec<_>>(),
            [2, 3],
            "5.0 is the integer 5"
        );
        let e = parse_json::<Order>(br#"{"items":[{"quantity":2.5}]}"#).unwrap_err();
        assert!(
            e.to_string().contains("items[0].quantity") || format!("{e:?}").contains("items[0].quantity"),
            "{e:?}"
        );
        let e = parse_json::<Order>(br#"[[]]"#).unwrap_err();
        assert_eq!(e.to_string(), "the body must be a JSON object", "a struct is not read from an array");
        let e = parse_json::<Order>(br#"{"items":[],"role":"admin"}"#).unwrap_err();
        assert_eq!(fields_of(e)["role"], vec!["unknown field"]);
        let e = parse_json::<Order>(br#"{"items":[{"quantity":1,"price":0}]}"#).unwrap_err();
        assert_eq!(fields_of(e)["items[0].price"], vec!["unknown field"]);
        let e = parse_json::<Order>(br#"{"items":[{}]}"#).unwrap_err();
        let fields = fields_of(e);
        assert_eq!(fields.get("items[0].quantity"), Some(&vec!["is required".to_owned()]), "{fields:?}");
    }

    #[test]
    fn malformed_json_is_a_plain_validation_error() {
        let e = parse_json::<Order>(br#"{"items": ["#).unwrap_err();
        assert_eq!(e.code(), "VALIDATION_ERROR");
        assert!(fields_of(e).is_empty());
        assert!(parse_json::<Order>(br#"{"items":[]} x"#).is_err());
    }

    #[test]
    fn validator_errors_flatten_to_camel_case_paths() {
        let order = Order {
            items: vec![Item { quantity: 1 }, Item { quantity: 0 }],
            first_name: Some(String::new()),
        };
        let fields = fields_of(validation_error(order.validate().unwrap_err()));
        assert_eq!(fields["items[1].quantity"], vec!["must be between 1 and 1000"]);
        assert_eq!(fields["firstName"], vec!["length must be at least 1"]);
    }

    #[derive(Debug, Validate)]
    #[validate(schema(function = "ordered"))]
    struct Range {
        min: i64,
        max: i64,
    }

    fn ordered(r: &Range) -> Result<(), ValidationError> {
        if r.min <= r.max { Ok(()) } else { Err(struct_error("minPrice", "must not exceed maxPrice")) }
    }

    #[test]
    fn struct_level_checks_name_their_field() {
        let fields = fields_of(validation_error(Range { min: 2, max: 1 }.validate().unwrap_err()));
        assert_eq!(fields["minPrice"], vec!["must not exceed maxPrice"]);
        assert!(Range { min: 1, max: 1 }.validate().is_ok());
    }

    #[test]
    fn hand_collected_field_errors_keep_their_paths() {
        let mut collected = FieldErrors::new();
        collected.insert("items[1].productId".into(), vec!["duplicates items[0]".into()]);
        let fields = fields_of(validation_error(into_validation_errors(collected).unwrap_err()));
        assert_eq!(fields["items[1].productId"], vec!["duplicates items[0]"]);
        assert!(into_validation_errors(FieldErrors::new()).is_ok());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let v = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("application/json; charset=utf-8"))));
        assert!(is_json(Some(&v("application/merge-patch+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(None));
    }

    #[test]
    fn camel_case_converts_snake_case() {
        assert_eq!(camel_case("first_name"), "firstName");
        assert_eq!(camel_case("priceCents"), "priceCents");
    }
}

#[cfg(test)]
mod echo_tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        quantity: i32,
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Small,
    }

    fn answer_of(e: AppError) -> String {
        serde_json::to_string(&e.envelope()).unwrap()
    }

    #[test]
    fn wrong_types_unknown_names_and_variants_never_echo_the_input() {
        let big = "A".repeat(100_000);
        for body in [
            format!(r#"{{"quantity":"{big}"}}"#),
            format!(r#"{{"quantity":1,"{big}":1}}"#),
            format!(r#"{{"quantity":1,"kind":"{big}"}}"#),
            format!(r#"{{"quantity":{{"{big}":1}}}}"#),
        ] {
            let answer = answer_of(parse_json::<Line>(body.as_bytes()).unwrap_err());
            assert!(answer.len() < 1024, "{} bytes: {}", answer.len(), cut(&answer, 300));
            assert!(!answer.contains(&"A".repeat(MAX_ECHOED_NAME + 1)), "{}", cut(&answer, 300));
        }
        let wrong = answer_of(parse_json::<Line>(br#"{"quantity":"5"}"#).unwrap_err());
        assert!(wrong.contains("has the wrong type: expected i32") && !wrong.contains("\"5\""), "{wrong}");
        let variant = answer_of(parse_json::<Line>(br#"{"quantity":1,"kind":"huge"}"#).unwrap_err());
        assert!(variant.contains("unknown variant `huge`, expected `small`"), "{variant}");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut("ab", 2), "ab");
    }
}
