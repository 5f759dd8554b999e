//! Registration, login, refresh-token rotation with reuse detection, logout (SPEC §3).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::domain::{hash_refresh_token, new_refresh_token};
use crate::shared::jobs::Job;
use crate::{
    features::users::{LoginRow, NewUser, UserRow},
    platform::http::error::{AppError, AppResult},
    shared::{
        auth::{ClientMeta, Role, TokenKeys},
        email::Email,
        password::PasswordHasher,
        sessions::{NewSession, Session},
    },
};

/// The one message for every failed login or refresh: it never tells which part failed.
pub const INVALID_CREDENTIALS: &str = "invalid e-mail or password";
pub const INVALID_REFRESH: &str = "invalid or expired refresh token";

/// What the auth service needs from storage: the seam unit tests fake.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Inserts the user and `welcome` in one transaction; `None` (and nothing written)
    /// when a live user already has the e-mail.
    async fn insert_user(&self, new: &NewUser<'_>, welcome: &Job) -> AppResult<Option<UserRow>>;
    async fn find_login(&self, email: &Email) -> AppResult<Option<LoginRow>>;
    async fn find_active_user(&self, id: Uuid) -> AppResult<Option<UserRow>>;
    /// Inserts `session`. With `password_hash` (a login), only if the user's password is
    /// still that one, checked under the lock revocations take: a login whose check
    /// raced a password reset or logout-all either is revoked by it or sees it and
    /// fails. `false`: not inserted.
    async fn insert_session(&self, session: &NewSession, password_hash: Option<&str>) -> AppResult<bool>;
    async fn find_session(&self, token_hash: &[u8; 32]) -> AppResult<Option<Session>>;
    /// Atomically inserts `new` and retires `old`; `false` (and nothing changed) when
    /// `old` was no longer live.
    async fn rotate_session(&self, old: Uuid, new: &NewSession) -> AppResult<bool>;
    /// Revokes the live sessions of `family_id`, a family of `user_id`.
    async fn revoke_family(&self, user_id: Uuid, family_id: Uuid) -> AppResult<()>;
    async fn revoke_session(&self, token_hash: &[u8; 32]) -> AppResult<()>;
    async fn revoke_all_sessions(&self, user_id: Uuid) -> AppResult<()>;
}

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
    store: Arc<dyn AuthStore>,
    hasher: PasswordHasher,
    tokens: Arc<TokenKeys>,
    refresh_ttl: Duration,
    family_max_age: Duration,
}

impl AuthService {
    pub fn new(
        store: Arc<dyn AuthStore>,
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
    use std::{collections::HashMap, sync::Mutex};

    use super::*;
    use crate::platform::config::{AppEnv, Settings};

    /// In-memory store with the same rules as the SQL (unique live e-mail, conditional rotation).
    #[derive(Default)]
    struct FakeStore {
        users: Mutex<Vec<(UserRow, String, bool)>>, // (row, hash, deleted)
        sessions: Mutex<HashMap<Uuid, (Session, [u8; 32])>>,
        jobs: Mutex<Vec<Job>>,
    }

    impl FakeStore {
        fn live_sessions(&self) -> usize {
            self.sessions.lock().unwrap().values().filter(|(s, _)| s.revoked_at.is_none()).count()
        }
        fn delete_user(&self, id: Uuid) {
            self.users.lock().unwrap().iter_mut().filter(|u| u.0.id == id).for_each(|u| u.2 = true);
        }
        fn expire_all(&self) {
            for (s, _) in self.sessions.lock().unwrap().values_mut() {
                s.expires_at = Utc::now() - chrono::Duration::seconds(1);
            }
        }
    }

    #[async_trait]
    impl AuthStore for FakeStore {
        async fn insert_user(&self, new: &NewUser<'_>, welcome: &Job) -> AppResult<Option<UserRow>> {
            let mut users = self.users.lock().unwrap();
            if users.iter().any(|(u, _, deleted)| u.email == new.email.as_str() && !deleted) {
                return Ok(None);
            }
            self.jobs.lock().unwrap().push(welcome.clone());
            let row = UserRow {
                id: new.id,
                email: new.email.to_string(),
                first_name: new.first_name.map(str::to_owned),
                last_name: new.last_name.map(str::to_owned),
                phone: None,
                role: new.role,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            };
            users.push((row.clone(), new.password_hash.to_owned(), false));
            Ok(Some(row))
        }
        async fn find_login(&self, email: &Email) -> AppResult<Option<LoginRow>> {
            Ok(self
                .users
                .lock()
                .unwrap()
                .iter()
                .find(|(u, _, d)| u.email == email.as_str() && !d)
                .map(|(u, h, _)| LoginRow { user: u.clone(), password_hash: h.clone() }))
        }
        async fn find_active_user(&self, id: Uuid) -> AppResult<Option<UserRow>> {
            Ok(self
                .users
                .lock()
                .unwrap()
                .iter()
                .find(|(u, _, d)| u.id == id && !d)
                .map(|(u, _, _)| u.clone()))
        }
        async fn insert_session(&self, s: &NewSession, password_hash: Option<&str>) -> AppResult<bool> {
            if let Some(expected) = password_hash {
                let current = self
                    .users
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(u, _, _)| u.id == s.user_id)
                    .map(|(_, h, _)| h.clone());
                if current.as_deref() != Some(expected) {
                    return Ok(false);
                }
            }
            let session = Session {
                id: s.id,
                user_id: s.user_id,
                family_id: s.family_id,
                expires_at: s.expires_at,
                revoked_at: None,
                replaced_by: None,
                family_started_at: s.family_started_at,
            };
            self.sessions.lock().unwrap().insert(s.id, (session, s.token_hash));
            Ok(true)
        }
        async fn find_session(&self, token_hash: &[u8; 32]) -> AppResult<Option<Session>> {
            Ok(self.sessions.lock().unwrap().values().find(|(_, h)| h == token_hash).map(|(s, _)| s.clone()))
        }
        async fn rotate_session(&self, old: Uuid, new: &NewSession) -> AppResult<bool> {
            {
                let mut sessions = self.sessions.lock().unwrap();
                let Some((s, _)) = sessions.get_mut(&old) else {
                    return Ok(false);
                };
                if s.revoked_at.is_some() || s.expires_at <= Utc::now() {
                    return Ok(false);
                }
                s.revoked_at = Some(Utc::now());
                s.replaced_by = Some(new.id);
            }
            self.insert_session(new, None).await
        }
        async fn revoke_family(&self, user_id: Uuid, family_id: Uuid) -> AppResult<()> {
            for (s, _) in self.sessions.lock().unwrap().values_mut() {
                if s.family_id == family_id && s.user_id == user_id && s.revoked_at.is_none() {
                    s.revoked_at = Some(Utc::now());
                }
            }
            Ok(())
        }
        async fn revoke_session(&self, token_hash: &[u8; 32]) -> AppResult<()> {
            for (s, h) in self.sessions.lock().unwrap().values_mut() {
                if h == token_hash && s.revoked_at.is_none() {
                    s.revoked_at = Some(Utc::now());
                }
            }
            Ok(())
        }
        async fn revoke_all_sessions(&self, user_id: Uuid) -> AppResult<()> {
            for (s, _) in self.sessions.lock().unwrap().values_mut() {
                if s.user_id == user_id {
                    s.revoked_at.get_or_insert(Utc::now());
                }
            }
            Ok(())
        }
    }

    fn service() -> (AuthService, Arc<FakeStore>) {
        let settings = Settings::load_for(AppEnv::Test).unwrap();
        let store = Arc::new(FakeStore::default());
        let tokens = Arc::new(TokenKeys::from_settings(&settings));
        let svc = AuthService::new(store.clone(), PasswordHasher::new(), tokens, settings.refresh_token_ttl);
        (svc, store)
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

    #[tokio::test]
    async fn register_normalises_the_email_and_issues_tokens() {
        let (svc, store) = service();
        let (user, tokens) = svc.register(registration("  Ann@Example.COM "), &meta()).await.unwrap();
        assert_eq!(user.email, "ann@example.com");
        assert_eq!(user.role, Role::User);
        assert_eq!(tokens.expires_in, 900);
        assert_eq!(store.live_sessions(), 1);
        let jobs = store.jobs.lock().unwrap().clone();
        assert_eq!(jobs, [Job::Welcome { user_id: user.id }]);
        let stored_hash = store.users.lock().unwrap()[0].1.clone();
        assert!(stored_hash.starts_with("$argon2id$"), "password stored hashed");
    }

    #[tokio::test]
    async fn register_with_a_taken_email_in_other_case_is_a_conflict() {
        let (svc, _) = service();
        svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let err = svc.register(registration("ANN@example.com"), &meta()).await.unwrap_err();
        assert_eq!(err.code(), "CONFLICT");
    }

    #[tokio::test]
    async fn login_succeeds_with_the_right_password_in_any_email_case() {
        let (svc, store) = service();
        svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let (user, _) = svc.login(email(" ANN@example.com").as_ref(), "password123", &meta()).await.unwrap();
        assert_eq!(user.email, "ann@example.com");
        assert_eq!(store.live_sessions(), 2);
    }

    #[tokio::test]
    async fn unknown_email_and_wrong_password_fail_identically() {
        let (svc, _) = service();
        svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let wrong =
            svc.login(email("ann@example.com").as_ref(), "wrong-password", &meta()).await.unwrap_err();
        let unknown = svc.login(email("bob@example.com").as_ref(), "password123", &meta()).await.unwrap_err();
        let not_an_address = svc.login(None, "password123", &meta()).await.unwrap_err();
        assert!(is_unauthorized(&wrong) && is_unauthorized(&unknown) && is_unauthorized(&not_an_address));
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert_eq!(wrong.to_string(), not_an_address.to_string());
    }

    #[tokio::test]
    async fn login_of_a_deleted_user_fails() {
        let (svc, store) = service();
        let (user, _) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        store.delete_user(user.id);
        assert!(is_unauthorized(
            &svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await.unwrap_err()
        ));
    }

    #[tokio::test]
    async fn refresh_rotates_and_the_old_token_stops_working() {
        let (svc, _) = service();
        let (_, first) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let second = svc.refresh(&first.refresh_token, &meta()).await.unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        let reuse = svc.refresh(&first.refresh_token, &meta()).await.unwrap_err();
        assert!(is_unauthorized(&reuse));
    }

    #[tokio::test]
    async fn reusing_a_rotated_token_revokes_the_whole_family() {
        let (svc, store) = service();
        let (_, first) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let second = svc.refresh(&first.refresh_token, &meta()).await.unwrap();
        let _ = svc.refresh(&first.refresh_token, &meta()).await.unwrap_err();
        // The newer token, never reused itself, is dead too.
        assert!(is_unauthorized(&svc.refresh(&second.refresh_token, &meta()).await.unwrap_err()));
        assert_eq!(store.live_sessions(), 0);
    }

    #[tokio::test]
    async fn unknown_revoked_and_expired_refresh_tokens_fail() {
        let (svc, store) = service();
        assert!(is_unauthorized(&svc.refresh("nonsense", &meta()).await.unwrap_err()));

        let (_, tokens) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        svc.logout(&tokens.refresh_token).await.unwrap();
        assert!(is_unauthorized(&svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err()));

        let (_, tokens) = svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await.unwrap();
        store.expire_all();
        assert!(is_unauthorized(&svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err()));
    }

    #[tokio::test]
    async fn refresh_for_a_deleted_user_fails() {
        let (svc, store) = service();
        let (user, tokens) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        store.delete_user(user.id);
        assert!(is_unauthorized(&svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err()));
    }

    #[tokio::test]
    async fn losing_a_rotation_race_counts_as_reuse() {
        // Arrange: a store whose conditional update always finds the session gone.
        struct Racy(FakeStore);
        #[async_trait]
        impl AuthStore for Racy {
            async fn insert_user(&self, n: &NewUser<'_>, j: &Job) -> AppResult<Option<UserRow>> {
                self.0.insert_user(n, j).await
            }
            async fn find_login(&self, e: &Email) -> AppResult<Option<LoginRow>> {
                self.0.find_login(e).await
            }
            async fn find_active_user(&self, id: Uuid) -> AppResult<Option<UserRow>> {
                self.0.find_active_user(id).await
            }
            async fn insert_session(&self, s: &NewSession, h: Option<&str>) -> AppResult<bool> {
                self.0.insert_session(s, h).await
            }
            async fn find_session(&self, h: &[u8; 32]) -> AppResult<Option<Session>> {
                self.0.find_session(h).await
            }
            async fn rotate_session(&self, _: Uuid, _: &NewSession) -> AppResult<bool> {
                Ok(false)
            }
            async fn revoke_family(&self, u: Uuid, f: Uuid) -> AppResult<()> {
                self.0.revoke_family(u, f).await
            }
            async fn revoke_session(&self, h: &[u8; 32]) -> AppResult<()> {
                self.0.revoke_session(h).await
            }
            async fn revoke_all_sessions(&self, u: Uuid) -> AppResult<()> {
                self.0.revoke_all_sessions(u).await
            }
        }
        let settings = Settings::load_for(AppEnv::Test).unwrap();
        let store = Arc::new(Racy(FakeStore::default()));
        let svc = AuthService::new(
            store.clone(),
            PasswordHasher::new(),
            Arc::new(TokenKeys::from_settings(&settings)),
            settings.refresh_token_ttl,
        );
        let (_, tokens) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        // Act
        let err = svc.refresh(&tokens.refresh_token, &meta()).await.unwrap_err();
        // Assert
        assert!(is_unauthorized(&err));
        assert_eq!(store.0.live_sessions(), 0, "family revoked");
    }

    #[tokio::test]
    async fn a_login_checked_against_a_password_changed_meanwhile_gets_no_session() {
        // Arrange: the password changes between the login's check and its session.
        let (svc, store) = service();
        let (user, _) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        let old_hash = store.users.lock().unwrap()[0].1.clone();
        let before = store.live_sessions();
        store.users.lock().unwrap()[0].1 = "$argon2id$a-new-password-hash".to_owned();
        let session = NewSession {
            id: Uuid::new_v4(),
            user_id: user.id,
            family_id: Uuid::new_v4(),
            family_started_at: Utc::now(),
            token_hash: [7; 32],
            expires_at: Utc::now() + chrono::Duration::days(1),
            user_agent: None,
            ip: None,
        };
        // Act: what login does after verifying against the old hash.
        let inserted = store.insert_session(&session, Some(&old_hash)).await.unwrap();
        // Assert
        assert!(!inserted);
        assert_eq!(store.live_sessions(), before, "no session outlives the password change");
    }

    #[tokio::test]
    async fn logout_all_revokes_every_session() {
        let (svc, store) = service();
        let (user, _) = svc.register(registration("ann@example.com"), &meta()).await.unwrap();
        svc.login(email("ann@example.com").as_ref(), "password123", &meta()).await.unwrap();
        svc.logout_all(user.id).await.unwrap();
        assert_eq!(store.live_sessions(), 0);
        // Logging out an unknown token is harmless.
        svc.logout("never-issued").await.unwrap();
    }
}
