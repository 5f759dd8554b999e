//! HTTP handlers of `/users`.

use axum::{
    extract::{OriginalUri, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    service::UserService,
    types::{
        AdminUpdateUserRequest, ChangePasswordRequest, UpdateProfileRequest, UserFilter, UserIdPath,
        UserResponse,
    },
};
use crate::{
    platform::http::{
        cursor::Cursors,
        error::{AppError, AppResult, ErrorEnvelope},
        extract::{JsonBody, PathParam, QueryParams, ValidJson},
        middleware::rate_limit::RateLimiter,
        response::{ApiList, ApiOk, PageParams, Pagination, split_page},
    },
    shared::auth::{Require, perm},
};

/// The signed-in user's profile.
#[utoipa::path(get, path = "/users/profile", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, body = ApiOk<UserResponse>),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
    ))]
pub async fn get_profile(
    State(users): State<UserService>,
    Require(user, _): Require<perm::ProfileRead>,
) -> AppResult<ApiOk<UserResponse>> {
    Ok(ApiOk::new(users.get(user.id).await?.into()))
}

/// Updates names and phone: absent = unchanged, `null` = cleared; other fields are a 400.
#[utoipa::path(patch, path = "/users/profile", tag = "users", security(("bearer" = [])),
    request_body = UpdateProfileRequest,
    responses(
        (status = 200, body = ApiOk<UserResponse>),
        (status = 400, description = "Invalid or unknown field", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
    ))]
pub async fn update_profile(
    State(users): State<UserService>,
    Require(user, _): Require<perm::ProfileUpdate>,
    JsonBody(body): JsonBody<UpdateProfileRequest>,
) -> AppResult<ApiOk<UserResponse>> {
    let changes = body.into_changes()?;
    Ok(ApiOk::new(users.update_profile(user.id, &changes).await?.into()))
}

/// Changes the password; every other session of the user is revoked.
#[utoipa::path(post, path = "/users/profile/password", tag = "users", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Password changed"),
        (status = 400, description = "Wrong current password (`fields.currentPassword`) or invalid new one", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 429, description = "Too many attempts from this IP, or too many wrong current passwords for this account; see Retry-After", body = ErrorEnvelope),
        (status = 503, description = "Too many password checks queued; try again shortly", body = ErrorEnvelope),
    ))]
pub async fn change_password(
    State(users): State<UserService>,
    State(limiter): State<RateLimiter>,
    Require(user, _): Require<perm::ProfileUpdate>,
    ValidJson(body): ValidJson<ChangePasswordRequest>,
) -> AppResult<StatusCode> {
    // A stolen access token must not become a password oracle: wrong current passwords
    // are limited per account, counted before the check (as logins are).
    let reserved = limiter.reserve(limiter.password_change, &user.id.to_string()).await?;
    let result = users.change_password(&user, &body.current_password, &body.new_password).await;
    if !matches!(&result, Err(e) if wrong_current_password(e)) {
        limiter.release(reserved).await;
    }
    result?;
    Ok(StatusCode::NO_CONTENT)
}

/// The refusal of a wrong current password (the one failure the per-account limit counts).
fn wrong_current_password(e: &AppError) -> bool {
    matches!(e, AppError::Validation { fields, .. } if fields.contains_key("currentPassword"))
}

/// Lists live users, newest first (admin).
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    params(PageParams, UserFilter),
    responses(
        (status = 200, body = ApiList<UserResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
    ))]
pub async fn list_users(
    State(users): State<UserService>,
    State(cursors): State<Cursors>,
    _: Require<perm::UsersRead>,
    OriginalUri(uri): OriginalUri,
    QueryParams(page): QueryParams<PageParams>,
    QueryParams(filter): QueryParams<UserFilter>,
) -> AppResult<ApiList<UserResponse>> {
    const LIST: &str = "users";
    let filters = (filter.q.as_deref().map(str::trim), filter.role);
    let after = cursors.start::<(DateTime<Utc>, Uuid)>(LIST, &filters, &page)?;
    let (rows, total) = users.list(&page, after, filter.role, filter.q.as_deref()).await?;
    let (rows, next) =
        split_page(rows, page.limit, |last| cursors.encode(LIST, &filters, &(last.created_at, last.id)));
    let pagination = match total {
        Some((total, true)) => Pagination::new(page.number(), page.limit, total).capped(),
        Some((total, false)) => Pagination::new(page.number(), page.limit, total),
        None => Pagination::cursor(page.limit),
    };
    Ok(ApiList::new(rows.into_iter().map(Into::into).collect(), pagination.next(next)).linked(&uri))
}

/// One user (admin).
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = ApiOk<UserResponse>),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_user(
    State(users): State<UserService>,
    _: Require<perm::UsersRead>,
    PathParam(path): PathParam<UserIdPath>,
) -> AppResult<ApiOk<UserResponse>> {
    Ok(ApiOk::new(users.get(path.id).await?.into()))
}

/// Changes a user's role and profile fields (admin). Demoting the last admin is a 409.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    request_body = AdminUpdateUserRequest,
    responses(
        (status = 200, body = ApiOk<UserResponse>),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "The last admin cannot be demoted", body = ErrorEnvelope),
    ))]
pub async fn update_user(
    State(users): State<UserService>,
    _: Require<perm::UsersWrite>,
    PathParam(path): PathParam<UserIdPath>,
    JsonBody(body): JsonBody<AdminUpdateUserRequest>,
) -> AppResult<ApiOk<UserResponse>> {
    let role = body.role;
    let changes =
        UpdateProfileRequest { first_name: body.first_name, last_name: body.last_name, phone: body.phone }
            .into_changes()?;
    Ok(ApiOk::new(users.admin_update(path.id, role, &changes).await?.into()))
}

/// Soft-deletes a user (admin): sessions revoked, orders kept, e-mail free again.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "The last admin cannot be deleted", body = ErrorEnvelope),
    ))]
pub async fn delete_user(
    State(users): State<UserService>,
    _: Require<perm::UsersWrite>,
    PathParam(path): PathParam<UserIdPath>,
) -> AppResult<StatusCode> {
    users.delete(path.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
