//! SQL of the auth feature: the `password_reset_tokens` table, and [`AuthStore`], what
//! the auth service reads and writes (users through the users feature, sessions through
//! `shared::sessions`, which owns them).

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::shared::jobs::Job;
use crate::{
    features::users::{LoginRow, NewUser, UserRow, find_active_user, find_login, insert_user},
    platform::{
        http::error::AppResult,
        jobs::outbox::{self, Wakeup},
    },
    shared::{
        email::Email,
        sessions::{self, NewSession, Session},
    },
};

/// Writes the `reset-password` outbox job (`Job::ResetPassword { user_id }`: payload
/// `{"userId"}`) for the live account of `email`, if there is one; returns its id. One
/// statement, committed without waiting for the WAL flush, so it costs the same whether
/// or not the account exists (a request lost to a crash in that instant is simply asked
/// again). The caller wakes the relays when a row was written.
pub async fn queue_reset_email(db: impl PgExecutor<'_>, email: &Email) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        r#"with quick as (select set_config('synchronous_commit', 'off', true))
           insert into outbox (queue, kind, payload)
           select 'emails', 'reset-password', jsonb_build_object('userId', u.id)
           from users u cross join quick
           where u.email = $1 and u.deleted_at is null
           returning (payload->>'userId')::uuid as "user_id!""#,
        email.as_str()
    )
    .fetch_optional(db)
    .await
}

/// The kinds of single-use token minted per user, each serialised on its own lock.
#[derive(Debug, Clone, Copy)]
pub enum TokenKind {
    Reset,
    Verification,
}

/// Takes the transaction-scoped lock serialising `kind` token mints for `user_id`.
pub async fn lock_tokens(db: impl PgExecutor<'_>, kind: TokenKind, user_id: Uuid) -> sqlx::Result<()> {
    let scope = match kind {
        TokenKind::Reset => "reset-token:",
        TokenKind::Verification => "verification-token:",
    };
    sqlx::query!(
        "select pg_advisory_xact_lock(hashtextextended($1 || $2::text, 0))",
        scope,
        user_id.to_string()
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Whether `user_id` has a live reset token minted less than `seconds` ago.
pub async fn has_fresh_reset_token(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    seconds: i32,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists(
             select 1 from password_reset_tokens
              where user_id = $1 and used_at is null and expires_at > now()
                and created_at > now() - make_interval(secs => $2)
           ) as "fresh!""#,
        user_id,
        f64::from(seconds)
    )
    .fetch_one(db)
    .await
}

/// Marks every unused reset token of `user_id` used: a new request supersedes older links.
pub async fn supersede_reset_tokens(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<u64> {
    sqlx::query!(
        "update password_reset_tokens set used_at = now() where user_id = $1 and used_at is null",
        user_id
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
}

pub async fn insert_reset_token(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into password_reset_tokens (user_id, token_hash, expires_at) values ($1, $2, $3)",
        user_id,
        token_hash,
        expires_at
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// The live user owning an unused, unexpired reset token.
pub async fn live_reset_token_owner(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "select t.user_id from password_reset_tokens t join users u on u.id = t.user_id
         where t.token_hash = $1 and t.used_at is null and t.expires_at > now() and u.deleted_at is null",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// Consumes a reset token in one conditional update (two concurrent resets cannot both
/// win); the owner when it was still live.
pub async fn consume_reset_token(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "update password_reset_tokens set used_at = now()
         where token_hash = $1 and used_at is null and expires_at > now()
         returning user_id",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// The auth service's storage: users (through the users feature), sessions (through
/// the kernel's `sessions`, which owns them) and the outbox.
#[derive(Clone)]
pub struct AuthStore {
    pool: PgPool,
    /// Rung after a commit that wrote an outbox row.
    wakeup: Wakeup,
}

impl AuthStore {
    pub fn new(pool: PgPool, wakeup: Wakeup) -> Self {
        Self { pool, wakeup }
    }

    /// Inserts the user and `welcome` in one transaction; `None` (and nothing written)
    /// when a live user already has the e-mail.
    pub async fn insert_user(&self, new: &NewUser<'_>, welcome: &Job) -> AppResult<Option<UserRow>> {
        let mut tx = self.pool.begin().await?;
        let user = match insert_user(&mut *tx, new).await {
            Ok(user) => user,
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_email_key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        outbox::push(&mut *tx, &welcome.into()).await?;
        tx.commit().await?;
        self.wakeup.committed();
        Ok(Some(user))
    }

    pub async fn find_login(&self, email: &Email) -> AppResult<Option<LoginRow>> {
        Ok(find_login(&self.pool, email).await?)
    }

    pub async fn find_active_user(&self, id: Uuid) -> AppResult<Option<UserRow>> {
        Ok(find_active_user(&self.pool, id).await?)
    }

    /// Inserts `session`. With `password_hash` (a login), only if the user's password is
    /// still that one, checked under the lock revocations take: a login whose check
    /// raced a password reset or logout-all either is revoked by it or sees it and
    /// fails. `false`: not inserted.
    pub async fn insert_session(&self, session: &NewSession, password_hash: Option<&str>) -> AppResult<bool> {
        match password_hash {
            None => Ok(sessions::insert(&self.pool, session).await.map(|()| true)?),
            Some(hash) => Ok(sessions::insert_for_login(&self.pool, session, hash).await?),
        }
    }

    pub async fn find_session(&self, token_hash: &[u8; 32]) -> AppResult<Option<Session>> {
        Ok(sessions::find_by_hash(&self.pool, token_hash).await?)
    }

    /// Atomically inserts `new` and retires `old`; `false` (and nothing changed) when
    /// `old` was no longer live.
    pub async fn rotate_session(&self, old: Uuid, new: &NewSession) -> AppResult<bool> {
        Ok(sessions::rotate(&self.pool, old, new).await?)
    }

    pub async fn revoke_family(&self, user_id: Uuid, family_id: Uuid) -> AppResult<()> {
        Ok(sessions::revoke_family(&self.pool, user_id, family_id).await?)
    }

    pub async fn revoke_session(&self, token_hash: &[u8; 32]) -> AppResult<()> {
        Ok(sessions::revoke_token(&self.pool, token_hash).await?)
    }

    pub async fn revoke_all_sessions(&self, user_id: Uuid) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        sessions::revoke_all(&mut tx, user_id, None).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Nightly cleanup: used or expired reset tokens, in batches; how many.
pub async fn delete_spent_reset_tokens(pool: &PgPool) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from password_reset_tokens where id = any(array(
                 select id from password_reset_tokens
                 where used_at is not null or expires_at < now() limit $1))",
            n
        )
    })
    .await
}

/// Nightly cleanup: used or expired e-mail verification tokens, in batches; how many.
pub async fn delete_spent_verification_tokens(pool: &PgPool) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from email_verification_tokens where id = any(array(
                 select id from email_verification_tokens
                 where used_at is not null or expires_at < now() limit $1))",
            n
        )
    })
    .await
}

/// Stores a new verification token of `user_id`, superseding its older ones (the newest
/// e-mail's link is the one that works).
pub async fn replace_verification_token(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "with old as (
             update email_verification_tokens set used_at = now()
             where user_id = $1 and used_at is null)
         insert into email_verification_tokens (user_id, token_hash, expires_at) values ($1, $2, $3)",
        user_id,
        token_hash,
        expires_at
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Consumes a verification token (one conditional update); its live owner when it was
/// still valid.
pub async fn consume_verification_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "update email_verification_tokens t set used_at = now()
         from users u
         where t.token_hash = $1 and t.used_at is null and t.expires_at > now()
           and u.id = t.user_id and u.deleted_at is null
         returning t.user_id",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// Writes the `verify-email` outbox job for `user_id`.
pub async fn queue_verification_email(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<()> {
    outbox::push(db, &(&Job::VerifyEmail { user_id }).into()).await.map(|_| ())
}
