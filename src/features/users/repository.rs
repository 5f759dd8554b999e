//! SQL for the `users` table. One statement per function; callers own transactions.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::shared::{auth::Role, email::Email};

/// A user as stored, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the account proved it receives mail at its address; `None`: not yet.
    pub email_verified_at: Option<DateTime<Utc>>,
}

/// A user for a login attempt: the row plus its password hash.
pub struct LoginRow {
    pub user: UserRow,
    pub password_hash: String,
}

/// Fields of a new user; `password_hash` a PHC string.
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a Email,
    pub password_hash: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub role: Role,
    /// Verified from the start (an admin made by the operator); otherwise the account
    /// verifies through the link of its welcome e-mail.
    pub email_verified: bool,
}

/// A partial profile update: `None` leaves a column alone, `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub struct ProfileChanges {
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub phone: Option<Option<String>>,
}

pub async fn find_active(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"select id, email, first_name, last_name, phone, role as "role: Role", created_at, updated_at, email_verified_at
           from users where id = $1 and deleted_at is null"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Like [`find_active`], locking the row until the transaction ends.
pub async fn lock_active(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"select id, email, first_name, last_name, phone, role as "role: Role", created_at, updated_at, email_verified_at
           from users where id = $1 and deleted_at is null for update"#,
        id
    )
    .fetch_optional(db)
    .await
}

pub async fn find_login(db: impl PgExecutor<'_>, email: &Email) -> sqlx::Result<Option<LoginRow>> {
    let row = sqlx::query!(
        r#"select id, email, first_name, last_name, phone, role as "role: Role", created_at, updated_at, email_verified_at,
                  password_hash
           from users where email = $1 and deleted_at is null"#,
        email.as_str()
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| LoginRow {
        user: UserRow {
            id: r.id,
            email: r.email,
            first_name: r.first_name,
            last_name: r.last_name,
            phone: r.phone,
            role: r.role,
            created_at: r.created_at,
            updated_at: r.updated_at,
            email_verified_at: r.email_verified_at,
        },
        password_hash: r.password_hash,
    }))
}

/// Marks live user `id` verified (once: a second call keeps the first time); whether
/// such a user exists.
pub async fn mark_email_verified(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query!(
        "update users set email_verified_at = coalesce(email_verified_at, now())
         where id = $1 and deleted_at is null",
        id
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// Whether live user `id` has verified its address (`false` for no such user).
pub async fn email_verified(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists(select 1 from users where id = $1 and deleted_at is null
                         and email_verified_at is not null) as "verified!""#,
        id
    )
    .fetch_one(db)
    .await
}

pub async fn find_password_hash(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!("select password_hash from users where id = $1 and deleted_at is null", id)
        .fetch_optional(db)
        .await
}

/// Inserts a user; a live user with the same e-mail violates `users_email_key`.
pub async fn insert(db: impl PgExecutor<'_>, new: &NewUser<'_>) -> sqlx::Result<UserRow> {
    sqlx::query_as!(
        UserRow,
        r#"insert into users (id, email, password_hash, first_name, last_name, role, email_verified_at)
           values ($1, $2, $3, $4, $5, $6, case when $7 then now() end)
           returning id, email, first_name, last_name, phone, role as "role: Role", created_at, updated_at, email_verified_at"#,
        new.id,
        new.email.as_str(),
        new.password_hash,
        new.first_name,
        new.last_name,
        new.role as Role,
        new.email_verified,
    )
    .fetch_one(db)
    .await
}

pub async fn update_profile(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: &ProfileChanges,
) -> sqlx::Result<Option<UserRow>> {
    // Each column: keep it unless its flag says the request mentioned it.
    sqlx::query_as!(
        UserRow,
        r#"update users set
               first_name = case when $2 then $3 else first_name end,
               last_name  = case when $4 then $5 else last_name end,
               phone      = case when $6 then $7 else phone end
           where id = $1 and deleted_at is null
           returning id, email, first_name, last_name, phone, role as "role: Role", created_at, updated_at, email_verified_at"#,
        id,
        changes.first_name.is_some(),
        changes.first_name.clone().flatten(),
        changes.last_name.is_some(),
        changes.last_name.clone().flatten(),
        changes.phone.is_some(),
        changes.phone.clone().flatten(),
    )
    .fetch_optional(db)
    .await
}

pub async fn set_password_hash(db: impl PgExecutor<'_>, id: Uuid, hash: &str) -> sqlx::Result<()> {
    sqlx::query!("update users set password_hash = $2 where id = $1 and deleted_at is null", id, hash)
        .execute(db)
        .await
        .map(|_| ())
}

pub async fn set_role(db: impl PgExecutor<'_>, id: Uuid, role: Role) -> sqlx::Result<UserRow> {
    sqlx::query_as!(
        UserRow,
        r#"update users set role = $2 where id = $1
           returning id, email, first_name, last_name, phone, role as "role: Role", created_at, updated_at, email_verified_at"#,
        id,
        role as Role,
    )
    .fetch_one(db)
    .await
}

pub async fn soft_delete(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("update users set deleted_at = now() where id = $1 and deleted_at is null", id)
        .execute(db)
        .await
        .map(|_| ())
}

/// Locks every live admin row: demotions and deletions of admins serialise on this, so two
/// admins removing each other concurrently cannot leave none.
pub async fn lock_active_admins(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        r#"select id from users where role = 'admin' and deleted_at is null order by id for update"#
    )
    .fetch_all(db)
    .await
}

/// Matches of a search counted at most; past it the list's `total` is this cap.
pub const SEARCH_TOTAL_CAP: i64 = 1000;

/// Live users matching the filters, and whether that is the cap rather than a count:
/// without a search, from `user_counts` (kept exact by a trigger), at the same cost for
/// any number of users; a search counts its matches up to [`SEARCH_TOTAL_CAP`].
pub async fn count(pool: &PgPool, role: Option<Role>, q: Option<&str>) -> sqlx::Result<(i64, bool)> {
    let Some(q) = q else {
        let live = sqlx::query_scalar!(
            r#"select coalesce(sum(live), 0)::bigint as "live!" from user_counts
               where $1::user_role is null or role = $1"#,
            role as Option<Role>,
        )
        .fetch_one(pool)
        .await?;
        return Ok((live, false));
    };
    let pattern = crate::platform::db::contains_pattern(q);
    let n = sqlx::query_scalar!(
        r#"select count(*) as "count!" from (
               select 1 from users
               where deleted_at is null
                 and ($1::user_role is null or role = $1)
                 and (email || ' ' || coalesce(first_name, '') || ' ' || coalesce(last_name, '')) ilike $2
               limit $3
           ) matches"#,
        role as Option<Role>,
        pattern,
        SEARCH_TOTAL_CAP + 1,
    )
    .fetch_one(pool)
    .await?;
    Ok((n.min(SEARCH_TOTAL_CAP), n > SEARCH_TOTAL_CAP))
}

/// A page of live users, newest first, optionally filtered by role and a search term
/// (matched against e-mail and names; the trigram index serves it): after `offset` rows,
/// or after the user at `after` (`created_at`, `id`: a keyset seek on the
/// `(created_at desc, id desc)` indexes). The page's ids are chosen first (an index-only
/// scan over the rows an offset skips), then only those rows are read.
pub async fn list(
    pool: &PgPool,
    role: Option<Role>,
    q: Option<&str>,
    limit: i64,
    offset: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> sqlx::Result<Vec<UserRow>> {
    let pattern = q.map(crate::platform::db::contains_pattern);
    let (after_at, after_id) = after.unzip();
    sqlx::query_as!(
        UserRow,
        r#"select u.id as "id!", u.email as "email!", u.first_name, u.last_name, u.phone,
                  u.role as "role!: Role", u.created_at as "created_at!", u.updated_at as "updated_at!",
                  u.email_verified_at
           from (
               select id from users
               where deleted_at is null
                 and ($1::user_role is null or role = $1)
                 and ($2::text is null
                      or (email || ' ' || coalesce(first_name, '') || ' ' || coalesce(last_name, '')) ilike $2)
                 and ($5::timestamptz is null or (created_at, id) < ($5, $6::uuid))
               order by created_at desc, id desc
               limit $3 offset $4
           ) page
           join users u using (id)
           order by u.created_at desc, u.id desc"#,
        role as Option<Role>,
        pattern.as_deref(),
        limit,
        offset,
        after_at,
        after_id,
    )
    .fetch_all(pool)
    .await
}
