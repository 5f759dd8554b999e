//! E-mail verification: the welcome e-mail (or one asked for again) carries a single-use
//! link, `PUBLIC_URL/verify-email#token=…` (in the fragment, so the token reaches no
//! server log and no `Referer`). The token is random (256 bits), stored hashed, valid for
//! 48 hours, and minted by the e-mail job when it sends ([`mint_token`]), so the raw
//! token exists only inside that e-mail. Consuming it marks the account verified.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    domain::{hash_refresh_token as hash_token, new_refresh_token as new_token},
    repository,
};
use crate::{
    features::users::{email_verified, mark_email_verified},
    platform::{
        http::error::{AppError, AppResult},
        jobs::outbox::Wakeup,
    },
};

/// How long a verification link works after its e-mail is sent.
pub const TOKEN_TTL_HOURS: i64 = 48;
const INVALID_TOKEN: &str = "is unknown, already used or expired";

/// E-mail verification use cases; cheap to clone.
#[derive(Clone)]
pub struct EmailVerificationService {
    db: PgPool,
    wakeup: Wakeup,
}

impl EmailVerificationService {
    pub fn new(db: PgPool, wakeup: Wakeup) -> Self {
        Self { db, wakeup }
    }

    /// Consumes `token` and marks its account verified, in one transaction.
    #[tracing::instrument(skip_all)]
    pub async fn verify(&self, token: &str) -> AppResult<()> {
        let mut tx = self.db.begin().await?;
        let user_id = repository::consume_verification_token(&mut *tx, &hash_token(token))
            .await?
            .ok_or_else(|| AppError::field("token", INVALID_TOKEN))?;
        mark_email_verified(&mut *tx, user_id).await?;
        tx.commit().await?;
        tracing::info!(user.id = %user_id, "e-mail address verified");
        Ok(())
    }

    /// Queues a new verification e-mail for `user_id`; `false` (and nothing queued) when
    /// the address is verified already.
    #[tracing::instrument(skip_all, fields(user.id = %user_id))]
    pub async fn resend(&self, user_id: Uuid) -> AppResult<bool> {
        if email_verified(&self.db, user_id).await? {
            return Ok(false);
        }
        repository::queue_verification_email(&self.db, user_id).await?;
        self.wakeup.committed();
        Ok(true)
    }
}

/// Mints the token of a verification e-mail about to be sent, inside the sending
/// transaction: older links of the account stop working (the newest e-mail wins), and
/// only the token's hash is stored. Returns the raw token, for the e-mail alone.
pub async fn mint_token(conn: &mut PgConnection, user_id: Uuid) -> sqlx::Result<String> {
    let (token, token_hash) = new_token();
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(TOKEN_TTL_HOURS);
    repository::lock_tokens(&mut *conn, repository::TokenKind::Verification, user_id).await?;
    repository::replace_verification_token(&mut *conn, user_id, &token_hash, expires_at).await?;
    Ok(token)
}
