//! Registration, login, refresh-token rotation with reuse detection, logout.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    domain::{hash_refresh_token, new_refresh_token},
    repository::AuthStore,
};
use crate::shared::jobs::Job;
use crate::{
    features::users::{LoginRow, NewUser, UserRow},
    platform::http::error::{AppError, AppResult},
    shared::{
        auth::{ClientMeta, Role, TokenKeys},
        email::Email,
        password::PasswordHasher,
        sessions::NewSession,
    },
};

/// The one message for every failed login or refresh: it never tells which part failed.
pub const INVALID_CREDENTIALS: &str = "invalid e-mail or password";
pub const INVALID_REFRESH: &str = "invalid or expired refresh token";

/// A validated registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: Email,
    pub password: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

/// Tokens handed to a client.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

/// Auth use cases; cheap to clone.
#[derive(Clone)]
pub struct AuthService {
    store: AuthStore,
    hasher: PasswordHasher,
    tokens: Arc<TokenKeys>,
    refresh_ttl: Duration,
    family_max_age: Duration,
}

impl AuthService {
    pub fn new(
        store: AuthStore,
        hasher: PasswordHasher,
        tokens: Arc<TokenKeys>,
        refresh_ttl: Duration,
    ) -> Self {
        Self { store, hasher, tokens, refresh_ttl, family_max_age: Duration::from_secs(30 * 86_400) }
    }

    /// How long a session family (a login and its rotations) may live at most
    /// (`REFRESH_FAMILY_MAX_AGE`); then its owner signs in again.
    pub fn with_family_max_age(mut self, max_age: Duration) -> Self {
        self.family_max_age = max_age;
        self
    }

    /// Creates a `user` account and signs it in. A live account with the same e-mail
    /// (compared after normalisation) is a 409.
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, reg: Registration, meta: &ClientMeta) -> AppResult<(UserRow, IssuedTokens)> {
        let password_hash = self.hasher.hash(&reg.password).await?;
        let new = NewUser {
            id: Uuid::new_v4(),
            email: &reg.email,
            password_hash: &password_hash,
            first_name: reg.first_name.as_deref(),
            last_name: reg.last_name.as_deref(),
            role: Role::User,
            // Confirmed through the link its welcome e-mail carries.
            email_verified: false,
        };
        // The account and its welcome e-mail commit together or not at all.
        let welcome = Job::Welcome { user_id: new.id };
        let user = self
            .store
            .insert_user(&new, &welcome)
            .await?
            .ok_or_else(|| AppError::Conflict("an account with this e-mail already exists".to_owned()))?;
        tracing::info!(user.id = %user.id, "user registered");
        let tokens = self
            .start_session(&user, Uuid::new_v4(), meta, None)
            .await?
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("new session refused")))?;
        Ok((user, tokens))
    }

    /// Checks credentials. Unknown e-mail (or one that is not an address at all) and wrong
    /// password fail identically, and an unknown e-mail still pays for one argon2
    /// verification.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: Option<&Email>,
        password: &str,
        meta: &ClientMeta,
    ) -> AppResult<(UserRow, IssuedTokens)> {
        let found = match email {
            Some(email) => self.store.find_login(email).await?,
            None => None,
        };
        let Some(LoginRow { user, password_hash }) = found else {
            self.hasher.verify_dummy(password).await?;
            return Err(AppError::Unauthorized(INVALID_CREDENTIALS));
        };
        if !self.hasher.verify(password, &password_hash).await? {
            return Err(AppError::Unauthorized(INVALID_CREDENTIALS));
        }
        let tokens = self
            .start_session(&user, Uuid::new_v4(), meta, Some(&password_hash))
            .await?
            .ok_or(AppError::Unauthorized(INVALID_CREDENTIALS))?;
        tracing::info!(user.id = %user.id, "user logged in");
        Ok((user, tokens))
    }

    /// Rotates a refresh token. A token that was already rotated is a theft signal: the
    /// whole family (every descendant) is revoked and the caller gets 401.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str, meta: &ClientMeta) -> AppResult<IssuedTokens> {
        let unauthorized = || AppError::Unauthorized(INVALID_REFRESH);
        let hash = hash_refresh_token(refresh_token);
        let session = self.store.find_session(&hash).await?.ok_or_else(unauthorized)?;
        if session.replaced_by.is_some() {
            tracing::warn!(session.family = %session.family_id, "rotated refresh token presented again: revoking its family");
            self.store.revoke_family(session.user_id, session.family_id).await?;
            return Err(unauthorized());
        }
        let now = Utc::now();
        if session.revoked_at.is_some() || session.expires_at <= now {
            return Err(unauthorized());
        }
        // The family's absolute lifetime is over: sign in again.
        if session.family_started_at + self.family_max_age_chrono() <= now {
            return Err(unauthorized());
        }
        let user = self.store.find_active_user(session.user_id).await?.ok_or_else(unauthorized)?;
        let (token, token_hash) = new_refresh_token();
        let next = self.new_session(&user, session.family_id, session.family_started_at, token_hash, meta);
        if !self.store.rotate_session(session.id, &next).await? {
            // Someone rotated it between our read and our write: the same reuse signal.
            tracing::warn!(session.family = %session.family_id, "concurrent refresh token reuse: revoking its family");
            self.store.revoke_family(session.user_id, session.family_id).await?;
            return Err(unauthorized());
        }
        self.access_token(&user, next.id, token)
    }

    /// Revokes the session of `refresh_token`; unknown tokens are ignored.
    pub async fn logout(&self, refresh_token: &str) -> AppResult<()> {
        self.store.revoke_session(&hash_refresh_token(refresh_token)).await
    }

    /// Revokes every session of `user_id`.
    pub async fn logout_all(&self, user_id: Uuid) -> AppResult<()> {
        self.store.revoke_all_sessions(user_id).await
    }

    fn family_max_age_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.family_max_age).unwrap_or(chrono::Duration::days(30))
    }

    fn new_session(
        &self,
        user: &UserRow,
        family_id: Uuid,
        family_started_at: DateTime<Utc>,
        token_hash: [u8; 32],
        meta: &ClientMeta,
    ) -> NewSession {
        let ttl = chrono::Duration::from_std(self.refresh_ttl).unwrap_or(chrono::Duration::days(7));
        let family_ends = family_started_at + self.family_max_age_chrono();
        NewSession {
            id: Uuid::new_v4(),
            user_id: user.id,
            family_id,
            family_started_at,
            token_hash,
            // No session outlives its family's absolute lifetime.
            expires_at: (Utc::now() + ttl).min(family_ends),
            user_agent: meta.user_agent.clone(),
            ip: meta.ip.clone(),
        }
    }

    /// A new session family for `user`; `None` when `password_hash` (a login's) is no
    /// longer the user's.
    async fn start_session(
        &self,
        user: &UserRow,
        family_id: Uuid,
        meta: &ClientMeta,
        password_hash: Option<&str>,
    ) -> AppResult<Option<IssuedTokens>> {
        let (token, token_hash) = new_refresh_token();
        let session = self.new_session(user, family_id, Utc::now(), token_hash, meta);
        if !self.store.insert_session(&session, password_hash).await? {
            return Ok(None);
        }
        self.access_token(user, session.id, token).map(Some)
    }

    fn access_token(
        &self,
        user: &UserRow,
        session_id: Uuid,
        refresh_token: String,
    ) -> AppResult<IssuedTokens> {
        Ok(IssuedTokens {
            access_token: self.tokens.issue(user.id, &user.email, user.role, session_id)?,
            refresh_token,
            expires_in: self.tokens.ttl_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::PgPool;

    use super::*;
    use crate::platform::{
        config::{AppEnv, Settings},
        jobs::outbox::Wakeup,
    };

    fn service(db: &PgPool) -> AuthService {
        let settings = Settings::load_for(AppEnv::Test).unwrap();
        let store = AuthStore::new(db.clone(), Wakeup::new(db.clone()));
        let tokens = Arc::new(TokenKeys::from_settings(&settings));
        AuthService::new(store, PasswordHasher::new(), tokens, settings.refresh_token_ttl)
    }

    fn registration(email: &str) -> Registration {
        Registration {
            email: Email::parse(email).unwrap(),
            password: "password123".to_owned(),
            first_name: None,
            last_name: None,
        }
    }

    fn email(raw: &str) -> Option<Email> {
        Email::parse(raw).ok()
    }

    fn meta() -> ClientMeta {
        ClientMeta { ip: Some("127.0.0.1".into()), user_agent: Some("unit-test".into()) }
    }

    fn is_unauthorized(e: &AppError) -> bool {
        matches!(e, AppError::Unauthorized(_))
    }

    async fn live_sessions(db: &PgPool) -> i64 {
        sqlx::query_scalar("select count(*) from sessions where revoked_at is null and expires_at > now()")
            .fetch_one(db)
            .await
            .unwrap()
    }

    async fn delete_user(db: &PgPool, id: Uuid) {
        sqlx::query("update users set deleted_at = now() where id = $1").bind(id).execute(db).await.unwrap();
    }

    /// Waits (at most 10 s) until some session of this database waits for a row lock.
    async fn someone_waits_for_a_lock(db: &PgPool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting: bool = sqlx::query_scalar(
                "select exists(select 1 from pg_stat_activity
                               where datname = current_database() and wait_event_type = 'Lock')",
            )
            .fetch_one(db)
            .await
            .unwrap();
            if waiting {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "nothing waited for the lock");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn register_normalises_the_email_and_issues_tokens(db: PgPool) {
        let svc = service(&db);
        let (user, tokens) = svc.register(registration("  Ann@Example.COM "), &meta()).await.unwrap();
        assert_eq!(user.email, "ann@example.com");
        assert_eq!(user.role, Role::User);
        assert_eq!(tokens.expires_in, 900);
        assert_eq!(live_sessions(&db).await, 1);
        let jobs: Vec<(String, String, serde_json::Value)> =
            sqlx::query_as("select queue, kind, payload from outbox").fetch_all(&db).await.unwrap();
        let welcome = crate::platform::jobs::outbox::OutboxJob::from(Job::Welcome { user_id: user.id });
        assert_eq!(jobs, [(welcome.queue.to_owned(), welcome.kind.to_owned(), welcome.payload)]);
        let stored_hash: String = sqlx::query_scalar("select password_hash from users where id = $1")
            .bind(user.id)
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(stored_hash.starts_with("$argon2id$"), "password stored hashed");
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn register_with_a_taken_email_in_other_case_is_a_conflict_and_writes_nothing(db: PgPool) {
        let svc = service(&db);
        svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let err = svc.register(registration("ANN@example.com"), &meta()).await.unwrap_err();
        assert_eq!(err.code(), "CONFLICT");
        let outbox: i64 = sqlx::query_scalar("select count(*) from outbox").fetch_one(&db).await.unwrap();
        assert_eq!(outbox, 1, "no welcome for the refused registration");
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn login_succeeds_with_the_right_password_in_any_email_case(db: PgPool) {
        let svc = service(&db);
        svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let (user, _) = svc.login(email(" ANN@example.com").as_ref(), "password123", &meta()).await.unwrap();
        assert_eq!(user.email, "ann@example.com");
        assert_eq!(live_sessions(&db).await, 2);
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn unknown_email_and_wrong_password_fail_identically(db: PgPool) {
        let svc = service(&db);
        svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let wrong =
            svc.login(email("ann@example.com").as_ref(), "wrong-password", &meta()).await.unwrap_err();
        let unknown = svc.login(email("bob@example.com").as_ref(), "password123", &meta()).await.unwrap_err();
        let not_an_address = svc.login(None, "password123", &meta()).await.unwrap_err();
        assert!(is_unauthorized(&wrong) && is_unauthorized(&unknown) && is_unauthorized(&not_an_address));
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert_eq!(wrong.to_string(), not_an_address.to_string());
        assert_eq!(live_sessions(&db).await, 1, "only the registration's session");
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn login_of_a_deleted_user_fails(db: PgPool) {
        let svc = service(&db);
        let (user, _) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        delete_user(&db, user.id).await;
        assert!(is_unauthorized(
            &svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await.unwrap_err()
        ));
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn refresh_rotates_and_the_old_token_stops_working(db: PgPool) {
        let svc = service(&db);
        let (_, first) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let second = svc.refresh(&first.refresh_token, &meta()).await.unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        let reuse = svc.refresh(&first.refresh_token, &meta()).await.unwrap_err();
        assert!(is_unauthorized(&reuse));
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn reusing_a_rotated_token_revokes_the_whole_family(db: PgPool) {
        let svc = service(&db);
        let (_, first) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let second = svc.refresh(&first.refresh_token, &meta()).await.unwrap();
        let _ = svc.refresh(&first.refresh_token, &meta()).await.unwrap_err();
        // The newer token, never reused itself, is dead too.
        assert!(is_unauthorized(&svc.refresh(&second.refresh_token, &meta()).await.unwrap_err()));
        assert_eq!(live_sessions(&db).await, 0);
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn unknown_revoked_and_expired_refresh_tokens_fail(db: PgPool) {
        let svc = service(&db);
        assert!(is_unauthorized(&svc.refresh("nonsense", &meta()).await.unwrap_err()));

        let (_, tokens) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        svc.logout(&tokens.refresh_token).await.unwrap();
        assert!(is_unauthorized(&svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err()));

        let (_, tokens) = svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await.unwrap();
        sqlx::query("update sessions set expires_at = now() - interval '1 second'")
            .execute(&db)
            .await
            .unwrap();
        assert!(is_unauthorized(&svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err()));
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn refresh_for_a_deleted_user_fails(db: PgPool) {
        let svc = service(&db);
        let (user, tokens) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        delete_user(&db, user.id).await;
        assert!(is_unauthorized(&svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err()));
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn losing_a_rotation_race_counts_as_reuse(db: PgPool) {
        // Arrange: the session is retired by another transaction between the refresh's
        // read and its rotation. That transaction holds the user's row lock (as a
        // revocation does), so the rotation waits for it, then finds the session gone.
        let svc = service(&db);
        let (user, tokens) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let mut other = db.begin().await.unwrap();
        sqlx::query("select 1 from users where id = $1 for no key update")
            .bind(user.id)
            .execute(&mut *other)
            .await
            .unwrap();
        let refresh = tokio::spawn({
            let (svc, token) = (svc.clone(), tokens.refresh_token.clone());
            async move { svc.refresh(&token, &meta()).await }
        });
        someone_waits_for_a_lock(&db).await;
        sqlx::query("update sessions set revoked_at = now() where user_id = $1")
            .bind(user.id)
            .execute(&mut *other)
            .await
            .unwrap();
        other.commit().await.unwrap();
        // Act
        let err = refresh.await.unwrap().unwrap_err();
        // Assert: a 401, and no session of the family left alive (the new one rolled back).
        assert!(is_unauthorized(&err));
        assert_eq!(live_sessions(&db).await, 0, "family revoked");
        let total: i64 = sqlx::query_scalar("select count(*) from sessions").fetch_one(&db).await.unwrap();
        assert_eq!(total, 1, "the successor was never stored");
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn a_login_checked_against_a_password_changed_meanwhile_gets_no_session(db: PgPool) {
        // Arrange: a password change holds the user's row lock (as every revocation does)
        // while the login verifies the old password; it commits while the login waits to
        // store its session.
        let svc = service(&db);
        let (user, _) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let before = live_sessions(&db).await;
        let mut change = db.begin().await.unwrap();
        sqlx::query("select 1 from users where id = $1 for no key update")
            .bind(user.id)
            .execute(&mut *change)
            .await
            .unwrap();
        sqlx::query("update users set password_hash = '$argon2id$a-new-password-hash' where id = $1")
            .bind(user.id)
            .execute(&mut *change)
            .await
            .unwrap();
        let login = tokio::spawn({
            let svc = svc.clone();
            async move { svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await }
        });
        someone_waits_for_a_lock(&db).await;
        change.commit().await.unwrap();
        // Act
        let err = login.await.unwrap().unwrap_err();
        // Assert
        assert!(is_unauthorized(&err), "{err:?}");
        assert_eq!(live_sessions(&db).await, before, "no session outlives the password change");
    }

    #[sqlx::test(migrations = "./migrations")]
    async fn logout_all_revokes_every_session(db: PgPool) {
        let svc = service(&db);
        let (user, _) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await.unwrap();
        svc.logout_all(user.id).await.unwrap();
        assert_eq!(live_sessions(&db).await, 0);
        // Logging out an unknown token is harmless.
        svc.logout("never-issued").await.unwrap();
    }
}
