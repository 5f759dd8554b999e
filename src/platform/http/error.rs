//! The one error type of the API and its error envelope (the codes: `docs/api.md`).
//!
//! Every failure a client can see is an [`AppError`]; its [`IntoResponse`] writes
//! `{"success": false, "error": {code, message, fields?, details?, requestId}}`.
//! Internal causes are logged once, here, inside the request's span, and never sent.

use std::collections::BTreeMap;

use axum::{
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::platform::http::middleware::request_id;

/// Field path (`email`, `items[2].quantity`) → messages.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// The message of a 503 for a pool that found no connection in time.
pub const DB_BUSY: &str = "the database is busy, try again";
/// The message of a 503 for a database that cannot be reached.
pub const DB_UNAVAILABLE: &str = "the database is unavailable, try again";
pub const DB_SLOW_OR_UNAVAILABLE: &str = "the database is unavailable or too slow, try again";

/// SQLSTATEs that mean the database is slow or unreachable, not the request wrong: 57014
/// query_canceled (statement_timeout), 57P01..03 admin shutdown / crash / cannot connect
/// now, 53300 too many connections. Shared by every database client's error mapping.
pub fn is_database_unavailable(sqlstate: &str) -> bool {
    matches!(sqlstate, "57014" | "57P01" | "57P02" | "57P03" | "53300")
}

/// On a response that failed for want of the database: the health gate probes it.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseTrouble;

/// Field errors one response lists at most; `details.omittedFieldErrors` counts the rest.
pub const MAX_FIELD_ERRORS: usize = 20;

/// Result alias used by handlers and services.
pub type AppResult<T> = Result<T, AppError>;

/// Every error the API answers with, one variant per error code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    Validation { message: String, fields: FieldErrors },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// The caller has not confirmed its e-mail address yet (`REQUIRE_VERIFIED_EMAIL`).
    #[error("confirm your e-mail address first: open the link we mailed you, or ask for a new one")]
    EmailNotVerified,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("insufficient stock")]
    InsufficientStock(Value),
    #[error("{0}")]
    InvalidStatusTransition(String),
    /// Online payment is off (`PAYMENT_PROVIDER=manual`).
    #[error("online payment is not enabled; orders are paid offline")]
    PaymentsDisabled,
    /// A webhook whose signature is missing, malformed, wrong or stale.
    #[error("the signature is missing, malformed, wrong or too old")]
    InvalidSignature,
    /// The payment provider did not answer, answered too late, or answered an error.
    #[error("the payment provider could not be reached or refused the request; try again")]
    PaymentProviderError,
    /// The caller already holds the most unpaid orders allowed; `pending` is how many.
    #[error("too many unpaid orders; pay or cancel one first")]
    TooManyPendingOrders { pending: i64 },
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInUse,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyMismatch,
    #[error("too many requests")]
    /// `limit`: the quota that ran out (0 when unknown).
    RateLimited { retry_after_secs: u64, limit: u32 },
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// `public` is what the client gets; `cause` is for the request's log line only.
    #[error("{public}")]
    WithCause { public: Box<AppError>, cause: String },
}

/// On a failed response: what went wrong, for the request's one log line (the client
/// never sees it). `unexpected` failures log at error level, the rest (the database down,
/// a lock conflict) at warn.
#[derive(Debug, Clone)]
pub struct ErrorCause {
    pub text: String,
    pub unexpected: bool,
}

/// Every error code the API answers with (the `code` of the error envelope).
pub const ERROR_CODES: &[&str] = &[
    "VALIDATION_ERROR",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "EMAIL_NOT_VERIFIED",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "INSUFFICIENT_STOCK",
    "INVALID_STATUS_TRANSITION",
    "TOO_MANY_PENDING_ORDERS",
    "PAYMENTS_DISABLED",
    "INVALID_SIGNATURE",
    "PAYMENT_PROVIDER_ERROR",
    "IDEMPOTENCY_KEY_IN_USE",
    "PRECONDITION_FAILED",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "IDEMPOTENCY_KEY_MISMATCH",
    "RATE_LIMITED",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_SERVER_ERROR",
];

impl AppError {
    /// A 400 with one message for one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut fields = FieldErrors::new();
        fields.insert(field.into(), vec![message.clone()]);
        Self::Validation { message, fields }
    }

    /// A 400 without a field (malformed input as a whole).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::Validation { message: message.into(), fields: FieldErrors::new() }
    }

    /// A 400 listing field errors.
    pub fn invalid_fields(fields: FieldErrors) -> Self {
        Self::Validation { message: "request validation failed".to_owned(), fields }
    }

    /// This error, with `cause` logged on the request's line (never sent to the client).
    pub fn because(self, cause: impl std::fmt::Display) -> Self {
        Self::WithCause { public: Box::new(self), cause: cause.to_string() }
    }

    /// A refusal that depends on the caller's state rather than on the request (a rate
    /// limit): never stored as the answer to an `Idempotency-Key`, so a retry after the
    /// state changed is served afresh.
    pub fn depends_on_the_callers_state(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::TooManyPendingOrders { .. } | Self::EmailNotVerified => true,
            Self::WithCause { public, .. } => public.depends_on_the_callers_state(),
            _ => false,
        }
    }

    /// A 404 for a resource named `what`.
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// The error code clients see in `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "VALIDATION_ERROR",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::EmailNotVerified => "EMAIL_NOT_VERIFIED",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict(_) => "CONFLICT",
            Self::InsufficientStock(_) => "INSUFFICIENT_STOCK",
            Self::InvalidStatusTransition(_) => "INVALID_STATUS_TRANSITION",
            Self::TooManyPendingOrders { .. } => "TOO_MANY_PENDING_ORDERS",
            Self::PaymentsDisabled => "PAYMENTS_DISABLED",
            Self::InvalidSignature => "INVALID_SIGNATURE",
            Self::PaymentProviderError => "PAYMENT_PROVIDER_ERROR",
            Self::IdempotencyKeyInUse => "IDEMPOTENCY_KEY_IN_USE",
            Self::PreconditionFailed(_) => "PRECONDITION_FAILED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::IdempotencyKeyMismatch => "IDEMPOTENCY_KEY_MISMATCH",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::ServiceUnavailable(_) => "SERVICE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL_SERVER_ERROR",
            Self::WithCause { public, .. } => public.code(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::EmailNotVerified => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_)
            | Self::InsufficientStock(_)
            | Self::InvalidStatusTransition(_)
            | Self::TooManyPendingOrders { .. }
            | Self::PaymentsDisabled
            | Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Self::InvalidSignature => StatusCode::BAD_REQUEST,
            Self::PaymentProviderError => StatusCode::BAD_GATEWAY,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::WithCause { public, .. } => public.status(),
        }
    }

    /// The error a bare status maps to when a layer answered without a body of ours
    /// (tower timeouts, axum's own 405, …).
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::bad_request("bad request"),
            StatusCode::UNAUTHORIZED => Self::Unauthorized("authentication required"),
            StatusCode::FORBIDDEN => Self::Forbidden("forbidden"),
            StatusCode::NOT_FOUND => Self::NotFound("resource not found".to_owned()),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict("conflict".to_owned()),
            StatusCode::PRECONDITION_FAILED => Self::PreconditionFailed("precondition failed".to_owned()),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnsupportedMediaType("unsupported media type".to_owned())
            }
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited { retry_after_secs: 1, limit: 0 },
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                Self::ServiceUnavailable("the request timed out or the service is unavailable".to_owned())
            }
            s if s.is_client_error() => Self::bad_request("bad request"),
            _ => Self::Internal(anyhow::anyhow!("unexpected bare {status} response")),
        }
    }

    fn client_message(&self) -> String {
        match self {
            // 5xx never leaks its cause.
            Self::Internal(_) => "an unexpected error occurred".to_owned(),
            Self::WithCause { public, .. } => public.client_message(),
            other => other.to_string(),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Self::ServiceUnavailable(DB_BUSY.to_owned()),
            // Text Postgres cannot store (a NUL character, say) is the client's input, not
            // our failure: 22021 character_not_in_repertoire, 22P05 untranslatable_character.
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("22021" | "22P05")) => {
                Self::bad_request("the request contains characters that cannot be stored (such as NUL)")
            }
            // Lock conflicts Postgres resolved by aborting us: safe for the client to retry.
            // 40P01 deadlock_detected, 40001 serialization_failure.
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")) => {
                Self::ServiceUnavailable("the request collided with another one; retry it".to_owned())
                    .because(format_args!("transaction aborted by a lock conflict: {d}"))
            }
            // The database is slow or unreachable, not the request wrong: 57014
            // query_canceled (statement_timeout), 57P01..03 admin shutdown / cannot connect
            // now, 53300 too many connections; lost connections and a closed pool.
            sqlx::Error::Database(d) if d.code().as_deref().is_some_and(is_database_unavailable) => {
                Self::ServiceUnavailable(DB_SLOW_OR_UNAVAILABLE.to_owned())
                    .because(format_args!("database unavailable or too slow: {d}"))
            }
            e @ (sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed) => Self::ServiceUnavailable(DB_UNAVAILABLE.to_owned())
                .because(format_args!("database connection failed: {e}")),
            // A CHECK constraint reached by client input (the validators missed a rule):
            // the request is wrong, not the server.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23514") => {
                let constraint = d.constraint().unwrap_or_default().to_owned();
                Self::bad_request("the request breaks a rule of the data (a value out of range)")
                    .because(format_args!("check constraint {constraint} refused input"))
            }
            other => Self::Internal(anyhow::Error::new(other).context("database error")),
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast_ref::<Overloaded>() {
            Some(Overloaded(message)) => Self::ServiceUnavailable((*message).to_owned()),
            None => Self::Internal(e),
        }
    }
}

/// A resource at its capacity (the password hashing queue): answered 503 with this
/// message, so the client retries later instead of waiting out a timeout.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Overloaded(pub &'static str);

/// Marker on a response whose body is already in the envelope (or deliberately not JSON);
/// the envelope middleware leaves such responses alone.
#[derive(Clone, Copy, Debug)]
pub struct Enveloped;

/// The error body (documented in OpenAPI as `ErrorEnvelope`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorBody,
}

/// The `error` object of an error response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `VALIDATION_ERROR`.
    #[schema(example = "VALIDATION_ERROR", max_length = 32, pattern = "^[A-Z][A-Z_]*$")]
    pub code: &'static str,
    /// Human-readable message; never contains internals for 5xx.
    pub message: String,
    /// Validation errors: field path → messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, Vec<String>>>)]
    pub fields: Option<FieldErrors>,
    /// Machine-readable facts of a domain error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    /// The request id, as in the `X-Request-Id` header.
    #[schema(max_length = 128)]
    pub request_id: String,
}

impl AppError {
    /// The body a client sees for this error, with the current request's id.
    pub fn envelope(&self) -> ErrorEnvelope {
        let (fields, details) = match self {
            Self::Validation { fields, .. } if fields.len() > MAX_FIELD_ERRORS => {
                // The first ones (in field order) and how many more: a body of bounded size
                // whatever the input (it may be stored for an idempotent replay, too).
                let shown =
                    fields.iter().take(MAX_FIELD_ERRORS).map(|(k, v)| (k.clone(), v.clone())).collect();
                let omitted = fields.len() - MAX_FIELD_ERRORS;
                (Some(shown), Some(serde_json::json!({"omittedFieldErrors": omitted})))
            }
            Self::Validation { fields, .. } if !fields.is_empty() => (Some(fields.clone()), None),
            Self::InsufficientStock(details) => (None, Some(details.clone())),
            Self::TooManyPendingOrders { pending } => (None, Some(serde_json::json!({"pending": pending}))),
            _ => (None, None),
        };
        ErrorEnvelope {
            success: false,
            error: ErrorBody {
                code: self.code(),
                message: self.client_message(),
                fields,
                details,
                request_id: request_id::current().unwrap_or_default(),
            },
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Logged once, by the request's log line (the trace layer reads this).
        let cause = match self {
            Self::WithCause { public, cause } => {
                let mut res = public.into_response();
                res.extensions_mut().insert(ErrorCause { text: cause, unexpected: false });
                return res;
            }
            Self::Internal(ref cause) => Some(ErrorCause { text: format!("{cause:#}"), unexpected: true }),
            ref e if status.is_server_error() => Some(ErrorCause { text: e.to_string(), unexpected: false }),
            _ => None,
        };
        let body = self.envelope();
        let mut res = (status, axum::Json(body)).into_response();
        let headers = res.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after_secs, limit } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                // The exhausted quota describes itself; outer limiters leave these alone.
                if *limit > 0 {
                    headers.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(*limit));
                }
                headers.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(0));
                headers
                    .insert(HeaderName::from_static("ratelimit-reset"), HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        if let Self::ServiceUnavailable(m) = &self
            && (m == DB_BUSY || m == DB_UNAVAILABLE)
        {
            res.extensions_mut().insert(DatabaseTrouble);
        }
        res.extensions_mut().insert(Enveloped);
        if let Some(cause) = cause {
            res.extensions_mut().insert(cause);
        }
        res
    }
}

#[cfg(test)]
mod code_tests {
    use super::*;

    #[test]
    fn the_documented_codes_are_exactly_the_codes_errors_answer_with() {
        let every_variant = [
            AppError::bad_request("x"),
            AppError::Unauthorized("x"),
            AppError::Forbidden("x"),
            AppError::EmailNotVerified,
            AppError::NotFound("x".into()),
            AppError::MethodNotAllowed,
            AppError::Conflict("x".into()),
            AppError::InsufficientStock(Value::Null),
            AppError::InvalidStatusTransition("x".into()),
            AppError::TooManyPendingOrders { pending: 1 },
            AppError::PaymentsDisabled,
            AppError::InvalidSignature,
            AppError::PaymentProviderError,
            AppError::IdempotencyKeyInUse,
            AppError::PreconditionFailed("x".into()),
            AppError::PayloadTooLarge,
            AppError::UnsupportedMediaType("x".into()),
            AppError::IdempotencyKeyMismatch,
            AppError::RateLimited { retry_after_secs: 1, limit: 1 },
            AppError::ServiceUnavailable("x".into()),
            AppError::Internal(anyhow::anyhow!("x")),
        ];
        let mut codes: Vec<&str> = every_variant.iter().map(AppError::code).collect();
        codes.sort_unstable();
        let mut documented = ERROR_CODES.to_vec();
        documented.sort_unstable();
        assert_eq!(codes, documented);
    }
}

#[cfg(test)]
mod tests {
    /// A database error with a SQLSTATE, as Postgres would send it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "simulated"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn an_answer_lists_at_most_twenty_field_errors_and_counts_the_rest() {
        let fields: FieldErrors = (0..50).map(|i| (format!("f{i:02}"), vec!["bad".to_owned()])).collect();
        let envelope = AppError::invalid_fields(fields).envelope();
        let shown = envelope.error.fields.unwrap();
        assert_eq!(shown.len(), MAX_FIELD_ERRORS);
        assert!(shown.contains_key("f00") && !shown.contains_key("f20"));
        assert_eq!(envelope.error.details.unwrap()["omittedFieldErrors"], 30);
        let few: FieldErrors = (0..3).map(|i| (format!("f{i}"), vec!["bad".to_owned()])).collect();
        let envelope = AppError::invalid_fields(few).envelope();
        assert_eq!(envelope.error.fields.unwrap().len(), 3);
        assert!(envelope.error.details.is_none());
    }

    #[test]
    fn database_trouble_is_503_and_a_refused_check_is_400() {
        let status = |e: sqlx::Error| AppError::from(e).status().as_u16();
        for code in ["57014", "57P01", "57P03", "53300", "40P01"] {
            assert_eq!(status(sqlx::Error::Database(Box::new(Sqlstate(code)))), 503, "{code}");
        }
        assert_eq!(status(sqlx::Error::PoolClosed), 503);
        assert_eq!(status(sqlx::Error::PoolTimedOut), 503);
        assert_eq!(status(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))), 503);
        assert_eq!(status(sqlx::Error::Database(Box::new(Sqlstate("23514")))), 400);
        assert_eq!(status(sqlx::Error::Database(Box::new(Sqlstate("XX000")))), 500);
    }

    use super::*;

    async fn body_of(e: AppError) -> (StatusCode, axum::http::HeaderMap, Value) {
        let res = e.into_response();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_variant_has_its_spec_status_and_code() {
        let cases: Vec<(AppError, u16, &str)> = vec![
            (AppError::bad_request("x"), 400, "VALIDATION_ERROR"),
            (AppError::Unauthorized("x"), 401, "UNAUTHORIZED"),
            (AppError::Forbidden("x"), 403, "FORBIDDEN"),
            (AppError::not_found("thing"), 404, "NOT_FOUND"),
            (AppError::MethodNotAllowed, 405, "METHOD_NOT_ALLOWED"),
            (AppError::Conflict("x".into()), 409, "CONFLICT"),
            (AppError::InsufficientStock(Value::Null), 409, "INSUFFICIENT_STOCK"),
            (AppError::InvalidStatusTransition("x".into()), 409, "INVALID_STATUS_TRANSITION"),
            (AppError::TooManyPendingOrders { pending: 5 }, 409, "TOO_MANY_PENDING_ORDERS"),
            (AppError::PaymentsDisabled, 409, "PAYMENTS_DISABLED"),
            (AppError::InvalidSignature, 400, "INVALID_SIGNATURE"),
            (AppError::PaymentProviderError, 502, "PAYMENT_PROVIDER_ERROR"),
            (AppError::IdempotencyKeyInUse, 409, "IDEMPOTENCY_KEY_IN_USE"),
            (AppError::PreconditionFailed("x".into()), 412, "PRECONDITION_FAILED"),
            (AppError::PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
            (AppError::UnsupportedMediaType("x".into()), 415, "UNSUPPORTED_MEDIA_TYPE"),
            (AppError::IdempotencyKeyMismatch, 422, "IDEMPOTENCY_KEY_MISMATCH"),
            (AppError::RateLimited { retry_after_secs: 7, limit: 5 }, 429, "RATE_LIMITED"),
            (AppError::ServiceUnavailable("x".into()), 503, "SERVICE_UNAVAILABLE"),
            (AppError::Internal(anyhow::anyhow!("boom")), 500, "INTERNAL_SERVER_ERROR"),
        ];
        for (error, status, code) in cases {
            let (s, _, body) = body_of(error).await;
            assert_eq!(s.as_u16(), status, "{code}");
            assert_eq!(body["success"], false);
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["requestId"].is_string());
        }
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let (_, _, body) = body_of(AppError::Internal(anyhow::anyhow!("select * from secret_table"))).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("secret_table"));
    }

    #[tokio::test]
    async fn unauthorized_and_rate_limited_carry_their_headers() {
        let (_, h, _) = body_of(AppError::Unauthorized("no")).await;
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
        let (_, h, _) = body_of(AppError::RateLimited { retry_after_secs: 7, limit: 5 }).await;
        assert_eq!(h[header::RETRY_AFTER], "7");
    }

    #[tokio::test]
    async fn validation_errors_list_fields_and_domain_errors_details() {
        let (_, _, body) = body_of(AppError::field("email", "must be an e-mail address")).await;
        assert_eq!(body["error"]["fields"]["email"][0], "must be an e-mail address");
        let (_, _, body) = body_of(AppError::InsufficientStock(serde_json::json!({"products": []}))).await;
        assert!(body["error"]["details"]["products"].is_array());
        assert!(body["error"].get("fields").is_none());
    }

    #[test]
    fn bare_statuses_map_to_spec_codes() {
        assert_eq!(AppError::from_status(StatusCode::METHOD_NOT_ALLOWED).code(), "METHOD_NOT_ALLOWED");
        assert_eq!(AppError::from_status(StatusCode::REQUEST_TIMEOUT).code(), "SERVICE_UNAVAILABLE");
        assert_eq!(AppError::from_status(StatusCode::PAYLOAD_TOO_LARGE).code(), "PAYLOAD_TOO_LARGE");
        assert_eq!(AppError::from_status(StatusCode::IM_A_TEAPOT).code(), "VALIDATION_ERROR");
        assert_eq!(AppError::from_status(StatusCode::BAD_GATEWAY).code(), "INTERNAL_SERVER_ERROR");
    }

    #[test]
    fn only_refusals_that_depend_on_the_callers_state_are_kept_out_of_stored_answers() {
        use super::AppError;
        let limited = AppError::RateLimited { retry_after_secs: 1, limit: 10 };
        assert!(limited.depends_on_the_callers_state());
        assert!(AppError::TooManyPendingOrders { pending: 5 }.depends_on_the_callers_state());
        assert!(
            AppError::RateLimited { retry_after_secs: 1, limit: 0 }
                .because("x")
                .depends_on_the_callers_state()
        );
        for request_bound in [
            AppError::bad_request("x"),
            AppError::Conflict("x".to_owned()),
            AppError::InsufficientStock(serde_json::json!({})),
            AppError::IdempotencyKeyMismatch,
        ] {
            assert!(!request_bound.depends_on_the_callers_state(), "{request_bound:?}");
        }
    }
}
