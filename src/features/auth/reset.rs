//! Password reset (SPEC §3): `forgot` stores a single-use token (random, hashed, 1 h) and
//! queues a `reset-password` e-mail through the outbox; `reset` consumes the token, sets
//! the password and revokes every session, in one transaction.

use std::sync::Arc;

use chrono::{Duration, Utc};
use sqlx::PgPool;

use super::{
    domain::{hash_refresh_token as hash_token, new_refresh_token as new_token},
    repository,
};
use crate::{
    features::users::repository as users,
    shared::{
        email::Email,
        error::{AppError, AppResult},
        outbox::{self, Job},
        password::PasswordHasher,
        sessions,
    },
};

const TOKEN_TTL_MINUTES: i64 = 60;
const INVALID_TOKEN: &str = "is unknown, already used or expired";

/// Password reset use cases; cheap to clone.
#[derive(Clone)]
pub struct PasswordResetService {
    db: PgPool,
    hasher: PasswordHasher,
    public_url: Arc<str>,
}

impl PasswordResetService {
    pub fn new(db: PgPool, hasher: PasswordHasher, public_url: &str) -> Self {
        Self { db, hasher, public_url: Arc::from(public_url.trim_end_matches('/')) }
    }

    /// Issues a token for a live account and queues the e-mail; for an unknown address
    /// does nothing. Either way the caller learns nothing (the handler answers 202).
    #[tracing::instrument(skip_all)]
    pub async fn forgot(&self, email: &Email) -> AppResult<()> {
        let Some(user) = users::find_login(&self.db, email).await? else {
            return Ok(());
        };
        let (token, token_hash) = new_token();
        let expires_at = Utc::now() + Duration::minutes(TOKEN_TTL_MINUTES);
        let link = format!("{}/reset-password?token={token}", self.public_url);
        let mut tx = self.db.begin().await?;
        // Serialise concurrent requests for one user, so exactly one link stays live.
        sessions::lock_user_for_revocation(&mut *tx, user.user.id).await?;
        // A new request supersedes older links.
        repository::supersede_reset_tokens(&mut *tx, user.user.id).await?;
        repository::insert_reset_token(&mut *tx, user.user.id, &token_hash, expires_at).await?;
        // The mail job needs the link; the outbox row lives at most a week and the token
        // an hour, and the stored token itself is only a hash.
        let job =
            Job::ResetPassword { user_id: user.user.id, email: user.user.email, reset_url: link, expires_at };
        outbox::push(&mut *tx, &job).await?;
        tx.commit().await?;
        tracing::info!(user.id = %user.user.id, "password reset requested");
        Ok(())
    }

    /// Sets a new password with a valid token and revokes every session of the user.
    #[tracing::instrument(skip_all)]
    pub async fn reset(&self, token: &str, password: &str) -> AppResult<()> {
        let token_hash = hash_token(token);
        // Cheap check first, so a bad token costs no argon2 work.
        let user_id = repository::live_reset_token_owner(&self.db, &token_hash)
            .await?
            .ok_or_else(|| AppError::field("token", INVALID_TOKEN))?;
        let password_hash = self.hasher.hash(password).await?;

        let mut tx = self.db.begin().await?;
        // Consuming is one conditional update: two concurrent resets cannot both win.
        let consumed = repository::consume_reset_token(&mut *tx, &token_hash).await?;
        if consumed != Some(user_id) {
            return Err(AppError::field("token", INVALID_TOKEN));
        }
        sessions::lock_user_for_revocation(&mut *tx, user_id).await?;
        users::set_password_hash(&mut *tx, user_id, &password_hash).await?;
        let revoked = sessions::revoke_all(&mut tx, user_id, None).await?;
        tx.commit().await?;
        tracing::info!(user.id = %user_id, sessions.revoked = revoked, "password reset");
        Ok(())
    }
}
