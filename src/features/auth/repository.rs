//! SQL for the `sessions` table, and the Postgres implementation of [`AuthStore`].

use async_trait::async_trait;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::service::{AuthStore, NewSession, Session};
use crate::{
    features::users::repository::{self as users, LoginRow, NewUser, UserRow},
    shared::{error::AppResult, outbox},
};

pub async fn insert_session(db: impl PgExecutor<'_>, s: &NewSession) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into sessions (id, user_id, family_id, token_hash, expires_at, user_agent, ip)
         values ($1, $2, $3, $4, $5, $6, $7)",
        s.id,
        s.user_id,
        s.family_id,
        &s.token_hash[..],
        s.expires_at,
        s.user_agent,
        s.ip,
    )
    .execute(db)
    .await
    .map(|_| ())
}

pub async fn find_by_hash(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<Session>> {
    sqlx::query_as!(
        Session,
        "select id, user_id, family_id, expires_at, revoked_at, replaced_by
         from sessions where token_hash = $1",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// Marks `old` as rotated into `new`, only if it is still live. Returns whether it was.
pub async fn mark_rotated(db: impl PgExecutor<'_>, old: Uuid, new: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update sessions set revoked_at = now(), replaced_by = $2
         where id = $1 and revoked_at is null and expires_at > now()",
        old,
        new
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn revoke_family(db: impl PgExecutor<'_>, family_id: Uuid) -> sqlx::Result<u64> {
    sqlx::query!(
        "update sessions set revoked_at = now() where family_id = $1 and revoked_at is null",
        family_id
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
}

pub async fn revoke_by_hash(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<()> {
    sqlx::query!(
        "update sessions set revoked_at = now() where token_hash = $1 and revoked_at is null",
        token_hash
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Revokes every live session of `user_id`, except those of `keep_family` if given.
pub async fn revoke_user_sessions(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    keep_family: Option<Uuid>,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "update sessions set revoked_at = now()
         where user_id = $1 and revoked_at is null and ($2::uuid is null or family_id <> $2)",
        user_id,
        keep_family
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
}

/// Takes the user's row in share mode: rotations of that user's sessions run side by side
/// but wait for (and are waited on by) a revocation holding [`lock_user_for_revocation`].
/// Without it, a revocation's UPDATE would not see a successor session inserted by a
/// rotation that commits while the UPDATE waits, and the successor would stay live.
pub async fn lock_user_for_rotation(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("select 1 as one from users where id = $1 for share", user_id)
        .fetch_optional(db)
        .await
        .map(|_| ())
}

/// The exclusive side of [`lock_user_for_rotation`], taken before revoking sessions.
pub async fn lock_user_for_revocation(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("select 1 as one from users where id = $1 for no key update", user_id)
        .fetch_optional(db)
        .await
        .map(|_| ())
}

/// The user owning the sessions of `family_id`.
pub async fn owner_of_family(db: impl PgExecutor<'_>, family_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("select user_id from sessions where family_id = $1 limit 1", family_id)
        .fetch_optional(db)
        .await
}

/// The user owning the session of `token_hash`.
pub async fn owner_of_token(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("select user_id from sessions where token_hash = $1", token_hash)
        .fetch_optional(db)
        .await
}

pub async fn family_of(db: impl PgExecutor<'_>, session_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("select family_id from sessions where id = $1", session_id).fetch_optional(db).await
}

/// The production [`AuthStore`].
#[derive(Clone)]
pub struct PgAuthStore {
    pub pool: PgPool,
}

#[async_trait]
impl AuthStore for PgAuthStore {
    async fn insert_user(&self, new: &NewUser<'_>) -> AppResult<Option<UserRow>> {
        // The account and its welcome e-mail job commit together or not at all.
        let mut tx = self.pool.begin().await?;
        let user = match users::insert(&mut *tx, new).await {
            Ok(user) => user,
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_email_key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        outbox::push(
            &mut *tx,
            outbox::EMAILS,
            "welcome",
            &serde_json::json!({"userId": user.id, "email": user.email}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn find_login(&self, email: &str) -> AppResult<Option<LoginRow>> {
        Ok(users::find_login(&self.pool, email).await?)
    }

    async fn find_active_user(&self, id: Uuid) -> AppResult<Option<UserRow>> {
        Ok(users::find_active(&self.pool, id).await?)
    }

    async fn insert_session(&self, session: &NewSession) -> AppResult<()> {
        Ok(insert_session(&self.pool, session).await?)
    }

    async fn find_session(&self, token_hash: &[u8; 32]) -> AppResult<Option<Session>> {
        Ok(find_by_hash(&self.pool, token_hash).await?)
    }

    async fn rotate_session(&self, old: Uuid, new: &NewSession) -> AppResult<bool> {
        // The successor goes in first (the old row's `replaced_by` references it); if the
        // conditional update finds the old session already rotated or revoked, roll back.
        let mut tx = self.pool.begin().await?;
        lock_user_for_rotation(&mut *tx, new.user_id).await?;
        insert_session(&mut *tx, new).await?;
        if mark_rotated(&mut *tx, old, new.id).await? {
            tx.commit().await?;
            Ok(true)
        } else {
            tx.rollback().await?;
            Ok(false)
        }
    }

    async fn revoke_family(&self, family_id: Uuid) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(owner) = owner_of_family(&mut *tx, family_id).await? {
            lock_user_for_revocation(&mut *tx, owner).await?;
            revoke_family(&mut *tx, family_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_session(&self, token_hash: &[u8; 32]) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(owner) = owner_of_token(&mut *tx, token_hash).await? {
            lock_user_for_revocation(&mut *tx, owner).await?;
            revoke_by_hash(&mut *tx, token_hash).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_all_sessions(&self, user_id: Uuid) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        lock_user_for_revocation(&mut *tx, user_id).await?;
        revoke_user_sessions(&mut *tx, user_id, None).await?;
        tx.commit().await?;
        Ok(())
    }
}
