//! Profiles and user administration.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::repository::{self, ProfileChanges, UserRow};
use crate::{
    platform::http::{
        error::{AppError, AppResult},
        response::PageParams,
    },
    shared::{
        auth::{AuthUser, Role},
        email::Email,
        password::PasswordHasher,
        sessions,
    },
};

/// What `create_admin` did.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminProvisioned {
    Created(Uuid),
    Promoted(Uuid),
    AlreadyAdmin(Uuid),
}

/// User use cases; cheap to clone.
#[derive(Clone)]
pub struct UserService {
    db: PgPool,
    hasher: PasswordHasher,
}

impl UserService {
    pub fn new(db: PgPool, hasher: PasswordHasher) -> Self {
        Self { db, hasher }
    }

    pub async fn get(&self, id: Uuid) -> AppResult<UserRow> {
        repository::find_active(&self.db, id).await?.ok_or_else(|| AppError::not_found("user"))
    }

    pub async fn update_profile(&self, id: Uuid, changes: &ProfileChanges) -> AppResult<UserRow> {
        repository::update_profile(&self.db, id, changes).await?.ok_or_else(|| AppError::not_found("user"))
    }

    /// Changes the caller's password after checking the current one, and revokes every
    /// session except the caller's own (its whole rotation family).
    #[tracing::instrument(skip_all, fields(user.id = %user.id))]
    pub async fn change_password(&self, user: &AuthUser, current: &str, new: &str) -> AppResult<()> {
        let stored = repository::find_password_hash(&self.db, user.id)
            .await?
            .ok_or_else(|| AppError::not_found("user"))?;
        if !self.hasher.verify(current, &stored).await? {
            return Err(AppError::field("currentPassword", "is not your current password"));
        }
        let hash = self.hasher.hash(new).await?;
        let mut tx = self.db.begin().await?;
        sessions::lock_user_for_revocation(&mut *tx, user.id).await?;
        repository::set_password_hash(&mut *tx, user.id, &hash).await?;
        let keep = sessions::family_of(&mut *tx, user.session_id).await?;
        let revoked = sessions::revoke_all(&mut tx, user.id, keep).await?;
        tx.commit().await?;
        tracing::info!(sessions.revoked = revoked, "password changed");
        Ok(())
    }

    /// A page of users (one row more than `page.limit`, so the caller knows whether
    /// another follows), from `after` in cursor mode; with the total in page mode.
    pub async fn list(
        &self,
        page: &PageParams,
        after: Option<(DateTime<Utc>, Uuid)>,
        role: Option<Role>,
        q: Option<&str>,
    ) -> AppResult<(Vec<UserRow>, Option<(i64, bool)>)> {
        let q = q.map(str::trim).filter(|q| !q.is_empty());
        let offset = if after.is_some() { 0 } else { page.offset() };
        let rows = repository::list(&self.db, role, q, i64::from(page.limit) + 1, offset, after).await?;
        let total = match after {
            Some(_) => None,
            None => Some(repository::count(&self.db, role, q).await?),
        };
        Ok((rows, total))
    }

    /// Admin update: role and profile fields in one transaction. Demoting the last admin
    /// is a 409.
    #[tracing::instrument(skip_all, fields(user.id = %id))]
    pub async fn admin_update(
        &self,
        id: Uuid,
        role: Option<Role>,
        changes: &ProfileChanges,
    ) -> AppResult<UserRow> {
        let mut tx = self.db.begin().await?;
        // Lock order everywhere: admins, then the target row.
        let admins = repository::lock_active_admins(&mut *tx).await?;
        let target =
            repository::lock_active(&mut *tx, id).await?.ok_or_else(|| AppError::not_found("user"))?;
        if let Some(role) = role
            && role != target.role
        {
            if target.role == Role::Admin && admins.len() <= 1 {
                return Err(AppError::Conflict("the last admin cannot be demoted".to_owned()));
            }
            repository::set_role(&mut *tx, id, role).await?;
            tracing::info!(user.role = role.as_str(), "role changed");
        }
        let user = repository::update_profile(&mut *tx, id, changes)
            .await?
            .ok_or_else(|| AppError::not_found("user"))?;
        tx.commit().await?;
        Ok(user)
    }

    /// Soft delete: login and refresh stop working, sessions are revoked, orders stay,
    /// the e-mail is free again. Deleting the last admin is a 409.
    #[tracing::instrument(skip_all, fields(user.id = %id))]
    pub async fn delete(&self, id: Uuid) -> AppResult<()> {
        let mut tx = self.db.begin().await?;
        let admins = repository::lock_active_admins(&mut *tx).await?;
        let target =
            repository::lock_active(&mut *tx, id).await?.ok_or_else(|| AppError::not_found("user"))?;
        if target.role == Role::Admin && admins.len() <= 1 {
            return Err(AppError::Conflict("the last admin cannot be deleted".to_owned()));
        }
        repository::soft_delete(&mut *tx, id).await?;
        let revoked = sessions::revoke_all(&mut tx, id, None).await?;
        tx.commit().await?;
        tracing::info!(sessions.revoked = revoked, "user deleted");
        Ok(())
    }

    /// `storefront create-admin`: creates an admin. An account that already exists is
    /// promoted only when `promote` says so, and then it gets the supplied password and
    /// loses every session: whoever registered the address first (perhaps not the
    /// operator) must not keep a way in. Without `promote` an existing non-admin account
    /// is an error and nothing changes.
    pub async fn create_admin(
        &self,
        email: &Email,
        promote: bool,
        password: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<AdminProvisioned> {
        if let Some(login) = repository::find_login(&self.db, email).await? {
            if !promote {
                if login.user.role == Role::Admin {
                    return Ok(AdminProvisioned::AlreadyAdmin(login.user.id));
                }
                anyhow::bail!(
                    "an account with this e-mail already exists; pass --promote to make it an admin \
                     (its password is replaced and its sessions are revoked)"
                );
            }
            let password = password()?;
            let hash = self.hasher.hash(&password).await?;
            let mut tx = self.db.begin().await?;
            sessions::lock_user_for_revocation(&mut *tx, login.user.id).await?;
            repository::set_role(&mut *tx, login.user.id, Role::Admin).await?;
            repository::mark_email_verified(&mut *tx, login.user.id).await?;
            repository::set_password_hash(&mut *tx, login.user.id, &hash).await?;
            let revoked = sessions::revoke_all(&mut tx, login.user.id, None).await?;
            tx.commit().await?;
            tracing::info!(user.id = %login.user.id, sessions.revoked = revoked, "account promoted to admin");
            return Ok(AdminProvisioned::Promoted(login.user.id));
        }
        let password = password()?;
        let hash = self.hasher.hash(&password).await?;
        let user = repository::insert(
            &self.db,
            &repository::NewUser {
                id: Uuid::new_v4(),
                email,
                password_hash: &hash,
                first_name: None,
                last_name: None,
                role: Role::Admin,
                email_verified: true,
            },
        )
        .await?;
        Ok(AdminProvisioned::Created(user.id))
    }
}
