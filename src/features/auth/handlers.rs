//! HTTP handlers of `/auth`.

use axum::{extract::State, http::StatusCode};

use super::{
    reset::PasswordResetService,
    service::AuthService,
    types::{
        AuthResponse, ForgotPasswordRequest, LoginRequest, RefreshRequest, RegisterRequest,
        ResetPasswordRequest, TokenResponse, VerifyEmailRequest,
    },
    verification::EmailVerificationService,
};
use crate::{
    platform::http::{
        error::{AppError, AppResult, ErrorEnvelope},
        extract::ValidJson,
        middleware::rate_limit::RateLimiter,
        response::ApiOk,
    },
    shared::{
        auth::{AuthUser, ClientMeta},
        email::Email,
    },
};

/// Creates an account (role `user`) and signs it in.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, body = ApiOk<AuthResponse>),
        (status = 400, description = "Invalid field (`fields.email`, `fields.password`, ...)", body = ErrorEnvelope),
        (status = 409, description = "E-mail already registered", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts from this IP; see Retry-After", body = ErrorEnvelope),
    ))]
pub async fn register(
    State(auth): State<AuthService>,
    meta: ClientMeta,
    ValidJson(body): ValidJson<RegisterRequest>,
) -> AppResult<(StatusCode, ApiOk<AuthResponse>)> {
    let (user, tokens) = auth.register(body.try_into()?, &meta).await?;
    Ok((StatusCode::CREATED, ApiOk::new(AuthResponse::new(tokens, user.into()))))
}

/// Exchanges e-mail and password for tokens.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, body = ApiOk<AuthResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, description = "Invalid e-mail or password (one message for both)", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts for this IP or e-mail; see Retry-After", body = ErrorEnvelope),
    ))]
pub async fn login(
    State(auth): State<AuthService>,
    State(limiter): State<RateLimiter>,
    meta: ClientMeta,
    ValidJson(body): ValidJson<LoginRequest>,
) -> AppResult<ApiOk<AuthResponse>> {
    // Per address, whatever IPs the attempts come from. A string that is no address
    // matches no account, so it fails like an unknown one (and has no quota to spend).
    // The attempt is counted before the password is checked, so parallel guesses cannot
    // outrun the count; a success (or a failure that checked nothing) gives it back, so
    // only wrong passwords use the quota up.
    let email = Email::parse(&body.email).ok();
    let reserved = match &email {
        Some(email) => limiter.reserve(limiter.login_email, email.as_str()).await?,
        None => None,
    };
    let result = auth.login(email.as_ref(), &body.password, &meta).await;
    if !matches!(result, Err(AppError::Unauthorized(_))) {
        limiter.release(reserved).await;
    }
    let (user, tokens) = result?;
    Ok(ApiOk::new(AuthResponse::new(tokens, user.into())))
}

/// Rotates a refresh token. Presenting an already-rotated token revokes its family.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, body = ApiOk<TokenResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, description = "Unknown, used, revoked or expired refresh token", body = ErrorEnvelope),
    ))]
pub async fn refresh(
    State(auth): State<AuthService>,
    meta: ClientMeta,
    ValidJson(body): ValidJson<RefreshRequest>,
) -> AppResult<ApiOk<TokenResponse>> {
    Ok(ApiOk::new(auth.refresh(&body.refresh_token, &meta).await?.into()))
}

/// Revokes one session (unknown tokens are accepted too).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 204, description = "Signed out"),
        (status = 400, body = ErrorEnvelope),
    ))]
pub async fn logout(
    State(auth): State<AuthService>,
    ValidJson(body): ValidJson<RefreshRequest>,
) -> AppResult<StatusCode> {
    auth.logout(&body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every session of the caller.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session revoked"),
        (status = 401, body = ErrorEnvelope),
    ))]
pub async fn logout_all(State(auth): State<AuthService>, user: AuthUser) -> AppResult<StatusCode> {
    auth.logout_all(user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a password reset: always 202, whether or not the address has an account (no
/// account enumeration). For an account, a single-use link valid for 1 hour is e-mailed.
#[utoipa::path(post, path = "/auth/password/forgot", tag = "auth", request_body = ForgotPasswordRequest,
    responses(
        (status = 202, description = "Accepted; an e-mail follows if the account exists"),
        (status = 400, body = ErrorEnvelope),
        (status = 429, description = "Too many attempts for this IP or e-mail; see Retry-After", body = ErrorEnvelope),
    ))]
pub async fn forgot_password(
    State(resets): State<PasswordResetService>,
    State(limiter): State<RateLimiter>,
    ValidJson(body): ValidJson<ForgotPasswordRequest>,
) -> AppResult<StatusCode> {
    // Not an address: no account can match, the answer is the same 202.
    let Ok(email) = Email::parse(&body.email) else {
        return Ok(StatusCode::ACCEPTED);
    };
    limiter.check(limiter.forgot_email, email.as_str()).await?;
    // Done before answering (nothing is lost at shutdown), in one statement that costs
    // the same whether or not the account exists.
    resets.forgot(&email).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Sets a new password with a reset token; the token is consumed and every session of
/// the user is revoked.
#[utoipa::path(post, path = "/auth/password/reset", tag = "auth", request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "Password changed; every session revoked"),
        (status = 400, description = "Unknown, used or expired token (`fields.token`) or invalid password", body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ))]
pub async fn reset_password(
    State(resets): State<PasswordResetService>,
    ValidJson(body): ValidJson<ResetPasswordRequest>,
) -> AppResult<StatusCode> {
    resets.reset(&body.token, &body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirms the account's address with the token of its verification link.
#[utoipa::path(post, path = "/auth/verify-email", tag = "auth", request_body = VerifyEmailRequest,
    responses(
        (status = 204, description = "Address verified"),
        (status = 400, description = "Unknown, used or expired token (`fields.token`)", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts from this IP; see Retry-After", body = ErrorEnvelope),
    ))]
pub async fn verify_email(
    State(verification): State<EmailVerificationService>,
    ValidJson(body): ValidJson<VerifyEmailRequest>,
) -> AppResult<StatusCode> {
    verification.verify(&body.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mails the caller a new verification link (the older ones stop working); nothing is
/// sent when the address is verified already. At most 3 an hour.
#[utoipa::path(post, path = "/auth/verify-email/resend", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; a link follows unless the address is verified already"),
        (status = 401, body = ErrorEnvelope),
        (status = 429, description = "3 requests an hour per account; see Retry-After", body = ErrorEnvelope),
    ))]
pub async fn resend_verification(
    State(verification): State<EmailVerificationService>,
    State(limiter): State<RateLimiter>,
    user: AuthUser,
) -> AppResult<StatusCode> {
    limiter.check(limiter.verify_resend, &user.id.to_string()).await?;
    verification.resend(user.id).await?;
    Ok(StatusCode::ACCEPTED)
}
