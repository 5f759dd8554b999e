//! Password reset: `forgot` queues a `reset-password` job through the
//! outbox; the job mints the single-use token (random, hashed, 1 h) when it sends the
//! e-mail ([`mint_token`]), so the raw token exists only inside that e-mail. `reset`
//! consumes the token, sets the password and revokes every session, in one transaction.

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    domain::{hash_refresh_token as hash_token, new_refresh_token as new_token},
    repository,
};
use crate::{
    features::users::set_password_hash,
    platform::{
        http::error::{AppError, AppResult},
        jobs::outbox::Wakeup,
    },
    shared::{email::Email, password::PasswordHasher, sessions},
};

/// How long a reset link works after its e-mail is sent.
pub const TOKEN_TTL_MINUTES: i64 = 60;
const INVALID_TOKEN: &str = "is unknown, already used or expired";

/// Password reset use cases; cheap to clone.
#[derive(Clone)]
pub struct PasswordResetService {
    db: PgPool,
    hasher: PasswordHasher,
    wakeup: Wakeup,
}

impl PasswordResetService {
    pub fn new(db: PgPool, hasher: PasswordHasher, wakeup: Wakeup) -> Self {
        Self { db, hasher, wakeup }
    }

    /// Queues the reset e-mail for a live account; for an unknown address does nothing.
    /// Either way the caller learns nothing (the handler answers 202), not even from the
    /// time it takes: it is one statement either way (see
    /// [`repository::queue_reset_email`]).
    #[tracing::instrument(skip_all)]
    pub async fn forgot(&self, email: &Email) -> AppResult<()> {
        if let Some(user_id) = repository::queue_reset_email(&self.db, email).await? {
            // In-process and without waiting: no time the caller could measure.
            self.wakeup.committed();
            tracing::info!(user.id = %user_id, "password reset requested");
        }
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
        set_password_hash(&mut *tx, user_id, &password_hash).await?;
        let revoked = sessions::revoke_all(&mut tx, user_id, None).await?;
        tx.commit().await?;
        tracing::info!(user.id = %user_id, sessions.revoked = revoked, "password reset");
        Ok(())
    }
}

/// How long a mailed link is safe from being superseded by a newer request: someone
/// repeating "forgot password" for another's address cannot keep cancelling the link
/// its owner is about to use.
pub const KEEP_LINK_SECONDS: i32 = 60;

/// Mints the single-use token of a reset e-mail about to be sent, inside the sending
/// transaction: it supersedes the user's older links (a newer e-mail wins) and stores only
/// the token's hash. Returns the raw token, for the e-mail alone, and when it expires;
/// `None` when a live link was minted less than [`KEEP_LINK_SECONDS`] ago: that one stays,
/// and this request sends no e-mail.
pub async fn mint_token(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> sqlx::Result<Option<(String, DateTime<Utc>)>> {
    let (token, token_hash) = new_token();
    let expires_at = Utc::now() + Duration::minutes(TOKEN_TTL_MINUTES);
    // Serialise mints for this user, so exactly one link stays live. The lock is held
    // while the e-mail is sent; it is not the user-row lock, so sign-ins and refreshes
    // do not wait on an SMTP server.
    repository::lock_tokens(&mut *conn, repository::TokenKind::Reset, user_id).await?;
    if repository::has_fresh_reset_token(&mut *conn, user_id, KEEP_LINK_SECONDS).await? {
        return Ok(None);
    }
    repository::supersede_reset_tokens(&mut *conn, user_id).await?;
    repository::insert_reset_token(&mut *conn, user_id, &token_hash, expires_at).await?;
    Ok(Some((token, expires_at)))
}
