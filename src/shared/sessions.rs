//! Refresh sessions: the one owner of the `sessions` table and of the user-row
//! locks that order revocations against rotations. Auth (issue, rotate, revoke), users
//! (password change, delete), password reset and the access-token extractor all call in
//! here; nothing else writes session SQL.
//!
//! Locking rule: a rotation takes the user's row in share mode
//! ([`lock_user_for_rotation`]), a revocation in exclusive mode
//! ([`lock_user_for_revocation`]). Without it, a revocation's UPDATE would not see a
//! successor session inserted by a rotation that commits while the UPDATE waits, and
//! the successor would stay live.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::role::Role;

/// A refresh session as stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<Uuid>,
    /// When the family began (its login); rotations carry it along.
    pub family_started_at: DateTime<Utc>,
}

/// A session to insert.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub family_started_at: DateTime<Utc>,
    pub token_hash: [u8; 32],
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// What the auth extractor needs to know about a token's subject right now.
pub struct Identity {
    pub email: String,
    pub role: Role,
}

/// The live user behind an access token, provided the token's session family still has
/// a live session: logout, logout-all, a password change or reuse detection thereby end
/// the access tokens of the revoked sessions too, not only their refresh tokens.
pub async fn find_identity(pool: &PgPool, user_id: Uuid, session_id: Uuid) -> sqlx::Result<Option<Identity>> {
    sqlx::query_as!(
        Identity,
        r#"select u.email, u.role as "role: Role"
           from users u
           join sessions issued on issued.id = $2 and issued.user_id = u.id
           where u.id = $1 and u.deleted_at is null
             and exists (select 1 from sessions live
                         where live.family_id = issued.family_id
                           and live.revoked_at is null and live.expires_at > now())"#,
        user_id,
        session_id
    )
    .fetch_optional(pool)
    .await
}

pub async fn insert(db: impl PgExecutor<'_>, s: &NewSession) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into sessions (id, user_id, family_id, token_hash, expires_at, user_agent, ip, family_started_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        s.id,
        s.user_id,
        s.family_id,
        &s.token_hash[..],
        s.expires_at,
        s.user_agent,
        s.ip,
        s.family_started_at,
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Inserts a login's session only if `password_hash` (the one the login checked) is
/// still the user's, under the user-row lock that revocations (reset, logout-all,
/// password change) take: a racing revocation either commits first (and the check fails)
/// or waits for this insert (and revokes it). `false`: not inserted.
pub async fn insert_for_login(pool: &PgPool, s: &NewSession, password_hash: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    lock_user_for_revocation(&mut *tx, s.user_id).await?;
    let unchanged = sqlx::query_scalar!(
        r#"select password_hash = $2 as "unchanged!" from users where id = $1 and deleted_at is null"#,
        s.user_id,
        password_hash
    )
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or(false);
    if !unchanged {
        return Ok(false);
    }
    insert(&mut *tx, s).await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn find_by_hash(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<Session>> {
    sqlx::query_as!(
        Session,
        "select id, user_id, family_id, expires_at, revoked_at, replaced_by, family_started_at
         from sessions where token_hash = $1",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// The family of `session_id` (the caller's own, kept by a password change).
pub async fn family_of(db: impl PgExecutor<'_>, session_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("select family_id from sessions where id = $1", session_id).fetch_optional(db).await
}

/// Takes the user's row in share mode: rotations of that user's sessions run side by side
/// but wait for (and are waited on by) a revocation holding [`lock_user_for_revocation`].
pub async fn lock_user_for_rotation(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("select 1 as one from users where id = $1 for share", user_id)
        .fetch_optional(db)
        .await
        .map(|_| ())
}

/// The exclusive side of [`lock_user_for_rotation`], taken before revoking sessions (and
/// by anything else that must serialise per user, such as issuing reset links).
pub async fn lock_user_for_revocation(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("select 1 as one from users where id = $1 for no key update", user_id)
        .fetch_optional(db)
        .await
        .map(|_| ())
}

/// Marks `old` as rotated into `new`, only if it is still live. Returns whether it was.
async fn mark_rotated(db: impl PgExecutor<'_>, old: Uuid, new: Uuid) -> sqlx::Result<bool> {
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

/// Atomically inserts `new` and retires `old`; `false` (and nothing changed) when `old`
/// was no longer live. The successor goes in first (the old row's `replaced_by`
/// references it); if the conditional update finds `old` already gone, roll back.
pub async fn rotate(pool: &PgPool, old: Uuid, new: &NewSession) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    lock_user_for_rotation(&mut *tx, new.user_id).await?;
    insert(&mut *tx, new).await?;
    if mark_rotated(&mut *tx, old, new.id).await? {
        tx.commit().await?;
        Ok(true)
    } else {
        tx.rollback().await?;
        Ok(false)
    }
}

/// Revokes every live session of `family_id`, a family of `user_id` (reuse detection).
/// The caller read the owner from the presented session, so nothing scans the family
/// for it (the family index holds live sessions only).
pub async fn revoke_family(pool: &PgPool, user_id: Uuid, family_id: Uuid) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    lock_user_for_revocation(&mut *tx, user_id).await?;
    sqlx::query!(
        "update sessions set revoked_at = now()
         where family_id = $1 and user_id = $2 and revoked_at is null",
        family_id,
        user_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Revokes the session of `token_hash` (logout); unknown tokens change nothing.
pub async fn revoke_token(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let owner = sqlx::query_scalar!("select user_id from sessions where token_hash = $1", token_hash)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(owner) = owner {
        lock_user_for_revocation(&mut *tx, owner).await?;
        sqlx::query!(
            "update sessions set revoked_at = now() where token_hash = $1 and revoked_at is null",
            token_hash
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Inside the caller's transaction: locks the user for revocation and revokes every live
/// session of `user_id`, except those of `keep_family` if given. Returns how many.
pub async fn revoke_all(
    conn: &mut PgConnection,
    user_id: Uuid,
    keep_family: Option<Uuid>,
) -> sqlx::Result<u64> {
    lock_user_for_revocation(&mut *conn, user_id).await?;
    sqlx::query!(
        "update sessions set revoked_at = now()
         where user_id = $1 and revoked_at is null and ($2::uuid is null or family_id <> $2)",
        user_id,
        keep_family
    )
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected())
}

/// Nightly cleanup of the sessions table; how many rows went. Deletes sessions whose
/// whole family is dead (revoked or expired throughout: a rotated session of a live
/// family is kept, however old, so presenting a stolen rotated token is still recognised
/// as reuse), then rotated sessions whose own token expired (presenting one can no longer
/// sign anyone in, so reuse detection loses nothing worth keeping).
pub async fn delete_dead(pool: &PgPool) -> sqlx::Result<u64> {
    let families = delete_dead_families(pool).await?;
    let rotated = crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from sessions where id = any(array(
                 select id from sessions where replaced_by is not null and expires_at < now() limit $1))",
            n
        )
    })
    .await?;
    Ok(families + rotated)
}

/// Sessions whose whole family is dead, in batches walked in id order (each row is
/// looked at once, however many batches). Deleting a session clears `replaced_by` of
/// its predecessor (`on delete set null`), which `sessions_replaced_by_idx` serves.
async fn delete_dead_families(pool: &PgPool) -> sqlx::Result<u64> {
    let batch = crate::platform::db::DELETE_BATCH;
    let mut total = 0;
    let mut after = Uuid::nil();
    loop {
        let deleted: Vec<Uuid> = sqlx::query_scalar!(
            "delete from sessions where id = any(array(
                 select s.id from sessions s
                 where s.id > $1
                   and not exists (select 1 from sessions live
                                   where live.family_id = s.family_id and live.revoked_at is null
                                     and live.expires_at > now())
                 order by s.id limit $2))
             returning id",
            after,
            batch
        )
        .fetch_all(pool)
        .await?;
        total += deleted.len() as u64;
        match deleted.iter().max() {
            Some(last) if deleted.len() as i64 == batch => after = *last,
            _ => return Ok(total),
        }
    }
}
