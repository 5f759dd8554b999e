//! Authentication and authorisation: access tokens (JWT, HS256 pinned), roles,
//! the one permission table, and the extractors handlers use to state what they need:
//!
//! ```ignore
//! async fn list_users(Require(admin, ..): Require<perm::UsersRead>, ...) -> ...
//! async fn get_profile(user: AuthUser, ...) -> ...
//! ```
//!
//! No handler compares role strings: it names a permission, the table decides.

use std::{marker::PhantomData, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

pub use super::role::Role;
use {
    super::sessions,
    crate::platform::{
        config::Settings,
        http::{error::AppError, middleware::rate_limit::RateLimiter},
    },
};

/// The message of every authentication failure: it never says which check failed.
pub const INVALID_TOKEN: &str = "missing, invalid or expired access token";

/// Declares [`Permission`], its [`Permission::ALL`] list and, in [`perm`], one marker
/// type per permission for [`Require`], from a single list.
macro_rules! permissions {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Everything a caller may be allowed to do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Permission {
            $($(#[$doc])* $name,)*
        }

        impl Permission {
            /// Every permission, in declaration order.
            pub const ALL: &[Permission] = &[$(Permission::$name),*];
        }

        /// Marker types naming a permission at the type level, for [`Require`].
        pub mod perm {
            use super::Permission;

            /// A permission named by a type.
            pub trait Perm: Send + Sync + 'static {
                const PERMISSION: Permission;
            }

            $(
                #[doc = concat!("Requires [`Permission::", stringify!($name), "`].")]
                pub struct $name;
                impl Perm for $name {
                    const PERMISSION: Permission = Permission::$name;
                }
            )*
        }
    };
}

permissions!(
    ProductsRead,
    ProductsWrite,
    OrdersCreate,
    /// Read own orders.
    OrdersRead,
    /// Update (shipping address, cancel) own orders.
    OrdersUpdate,
    /// Read and manage every order.
    OrdersManage,
    ProfileRead,
    ProfileUpdate,
    UsersRead,
    UsersWrite,
    ReportsManage,
    JobsManage,
    AnalyticsRead,
    /// Register and manage outbound webhook endpoints.
    WebhooksManage,
);

/// The permission table. Admin: everything. User: catalogue, own orders, own
/// profile. Guest: catalogue only.
pub fn can(role: Option<Role>, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Some(Role::Admin) => true,
        Some(Role::User) => matches!(
            permission,
            ProductsRead | OrdersCreate | OrdersRead | OrdersUpdate | ProfileRead | ProfileUpdate
        ),
        None => matches!(permission, ProductsRead),
    }
}

/// Access-token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub email: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// Unique per token; it is the id of the refresh session issued alongside, so a
    /// request can tell which session (and family) it belongs to.
    pub jti: Uuid,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl TokenKeys {
    pub fn from_settings(settings: &Settings) -> Self {
        crate::platform::jwt_crypto::install();
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        // Pin HS256: a token claiming any other algorithm (`none` included) is rejected.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.jwt_issuer]);
        validation.set_audience(&[&settings.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            ttl: settings.jwt_expires_in,
        }
    }

    /// Access-token lifetime in seconds (`expiresIn`).
    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }

    /// Signs an access token for `user`, tied to session `session_id`.
    pub fn issue(&self, user_id: Uuid, email: &str, role: Role, session_id: Uuid) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            email: email.to_owned(),
            role,
            iat: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: session_id,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// Verifies signature, algorithm, `exp`, `iss` and `aud`.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|data| data.claims)
    }
}

/// The authenticated caller. Extraction fails with 401 (and `WWW-Authenticate: Bearer`)
/// for a missing, malformed, forged or expired token, or a user who no longer exists.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub email: String,
    /// The role as stored now (a demotion takes effect at once, not at token expiry).
    pub role: Role,
    /// The refresh session the token was issued with.
    pub session_id: Uuid,
}

impl AuthUser {
    pub fn can(&self, permission: Permission) -> bool {
        can(Some(self.role), permission)
    }

    pub fn is_admin(&self) -> bool {
        self.can(Permission::UsersWrite)
    }
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<TokenKeys>: FromRef<S>,
    PgPool: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let token = bearer_token(parts).ok_or(AppError::Unauthorized(INVALID_TOKEN))?;
        let claims =
            <Arc<TokenKeys>>::from_ref(state).verify(token).ok_or(AppError::Unauthorized(INVALID_TOKEN))?;
        // Two index lookups: deleted users and revoked sessions are locked out at once, and
        // role changes apply now rather than at token expiry.
        let pool = PgPool::from_ref(state);
        let current = sessions::find_identity(&pool, claims.sub, claims.jti)
            .await?
            .ok_or(AppError::Unauthorized(INVALID_TOKEN))?;
        let user =
            AuthUser { id: claims.sub, email: current.email, role: current.role, session_id: claims.jti };
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// An authenticated caller holding permission `P`; 401 without a valid token, 403
/// without the permission.
pub struct Require<P: perm::Perm>(pub AuthUser, pub PhantomData<P>);

impl<S, P> FromRequestParts<S> for Require<P>
where
    S: Send + Sync,
    P: perm::Perm,
    Arc<TokenKeys>: FromRef<S>,
    PgPool: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.can(P::PERMISSION) {
            Ok(Require(user, PhantomData))
        } else {
            Err(AppError::Forbidden("you do not have permission to do this"))
        }
    }
}

/// Who is calling from where: recorded on sessions.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientMeta
where
    RateLimiter: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The same client address the rate limits count (behind TRUSTED_PROXIES, the address
        // the proxies forwarded), not the proxy's.
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr);
        let ip = RateLimiter::from_ref(state).client_ip(&parts.headers, peer).map(|ip| ip.to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect());
        Ok(Self { ip, user_agent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::config::{AppEnv, Settings};

    fn keys() -> TokenKeys {
        TokenKeys::from_settings(&Settings::load_for(AppEnv::Test).unwrap())
    }

    #[test]
    fn the_permission_table_is_least_privilege() {
        use Permission::*;
        let all = Permission::ALL;
        assert!(all.iter().all(|p| can(Some(Role::Admin), *p)));
        let user: Vec<_> = all.iter().copied().filter(|p| can(Some(Role::User), *p)).collect();
        assert_eq!(user, [ProductsRead, OrdersCreate, OrdersRead, OrdersUpdate, ProfileRead, ProfileUpdate]);
        let guest: Vec<_> = all.iter().copied().filter(|p| can(None, *p)).collect();
        assert_eq!(guest, [ProductsRead]);
    }

    #[test]
    fn issued_tokens_verify_with_every_claim() {
        let keys = keys();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys.issue(user, "a@b.co", Role::User, session).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.jti, claims.role), (user, session, Role::User));
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.iss, "storefront");
        assert_eq!(claims.aud, "storefront-api");
    }

    #[test]
    fn tampered_tokens_fail() {
        let keys = keys();
        let token = keys.issue(Uuid::new_v4(), "a@b.co", Role::User, Uuid::new_v4()).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[2] = parts[2].chars().rev().collect();
        assert!(keys.verify(&parts.join(".")).is_none());
        assert!(keys.verify("not.a.token").is_none());
    }
}
