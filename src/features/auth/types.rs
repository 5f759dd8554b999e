//! Request and response bodies of the auth endpoints.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::{Validate, ValidationError};

use super::service::{IssuedTokens, Registration};
use crate::{features::users::UserResponse, platform::http::error::AppError, shared::email::Email};

/// `POST /auth/register`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// Trimmed and lower-cased before use; unique case-insensitively.
    #[validate(custom(function = "crate::shared::email::validate"))]
    #[schema(example = "ann@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// 8..=128 characters.
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// 1..=100 characters, not blank.
    #[validate(custom(function = "person_name"))]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub first_name: Option<String>,
    /// 1..=100 characters, not blank.
    #[validate(custom(function = "person_name"))]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub last_name: Option<String>,
}

impl TryFrom<RegisterRequest> for Registration {
    type Error = AppError;

    fn try_from(body: RegisterRequest) -> Result<Self, AppError> {
        Ok(Self {
            email: Email::parse(&body.email).map_err(|e| AppError::field("email", e.to_string()))?,
            password: body.password,
            first_name: body.first_name,
            last_name: body.last_name,
        })
    }
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// Any text: one that is no address fails like an unknown one (401).
    #[validate(length(min = 1, max = 254, message = "is required"), custom(function = "storable"))]
    #[schema(min_length = 1, max_length = 254)]
    pub email: String,
    #[validate(length(min = 1, max = 128, message = "is required"))]
    #[schema(min_length = 1, max_length = 128)]
    pub password: String,
}

/// `POST /auth/refresh` and `POST /auth/logout`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    #[validate(length(min = 1, max = 512, message = "is required"))]
    #[schema(min_length = 1, max_length = 512)]
    pub refresh_token: String,
}

/// `POST /auth/password/forgot`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForgotPasswordRequest {
    #[validate(length(min = 1, max = 254, message = "is required"))]
    #[schema(min_length = 1, max_length = 254)]
    pub email: String,
}

/// `POST /auth/verify-email`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The token from the e-mailed link (the part after `#token=`).
    #[validate(length(min = 1, max = 512, message = "is required"))]
    #[schema(min_length = 1, max_length = 512)]
    pub token: String,
}

/// `POST /auth/password/reset`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The token from the e-mailed link.
    #[validate(length(min = 1, max = 512, message = "is required"))]
    #[schema(min_length = 1, max_length = 512)]
    pub token: String,
    /// 8..=128 characters.
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

/// Tokens and the signed-in user.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    /// Access token (JWT) for `Authorization: Bearer`.
    pub token: String,
    /// Opaque refresh token; single use.
    #[schema(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    pub refresh_token: String,
    /// Seconds until `token` expires.
    #[schema(minimum = 1)]
    pub expires_in: u64,
    pub user: UserResponse,
}

/// A rotated token pair.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub token: String,
    #[schema(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    pub refresh_token: String,
    #[schema(minimum = 1)]
    pub expires_in: u64,
}

impl From<IssuedTokens> for TokenResponse {
    fn from(t: IssuedTokens) -> Self {
        Self { token: t.access_token, refresh_token: t.refresh_token, expires_in: t.expires_in }
    }
}

impl AuthResponse {
    pub fn new(tokens: IssuedTokens, user: UserResponse) -> Self {
        Self {
            token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_in: tokens.expires_in,
            user,
        }
    }
}

/// Text Postgres could not store (NUL) is malformed input: a 400, like everywhere else.
fn storable(text: &str) -> Result<(), ValidationError> {
    if text.contains('\0') {
        Err(ValidationError::new("text").with_message("must not contain NUL characters".into()))
    } else {
        Ok(())
    }
}

fn person_name(name: &str) -> Result<(), ValidationError> {
    if crate::features::users::is_valid_name(name) {
        Ok(())
    } else {
        Err(ValidationError::new("name").with_message("must be 1 to 100 characters and not blank".into()))
    }
}
