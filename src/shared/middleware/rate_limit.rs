//! Rate limits kept in Redis (SPEC §9), so they hold across instances: a generous limit
//! per client IP on every route, a strict one per IP on the auth routes, and one per
//! e-mail address on login attempts. Fixed windows counted with one atomic script call;
//! answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, and a
//! refusal is a 429 `RATE_LIMITED` with `Retry-After`.
//!
//! When Redis cannot be reached the request is let through (and a warning logged):
//! losing the limiter for a while is better than losing the API.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use redis::Script;

use crate::shared::{config::Settings, error::AppError, redis::Redis};

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// `INCR` the window's counter, setting its expiry on first use; returns the count and
/// the milliseconds until the window ends.
const HIT: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
";

/// One limit: `max` hits per `window` for each key of a `scope`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub scope: &'static str,
    pub max: u32,
    pub window: Duration,
}

/// The outcome of counting one hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets (at least 1).
    pub reset_secs: u64,
}

impl Decision {
    fn headers(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(RESET.clone(), HeaderValue::from(self.reset_secs));
    }

    fn refusal(&self) -> Response {
        let mut res = AppError::RateLimited { retry_after_secs: self.reset_secs }.into_response();
        self.headers(res.headers_mut());
        res
    }
}

/// Counts hits in Redis; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Redis,
    script: Arc<Script>,
    pub enabled: bool,
    pub trust_proxy: bool,
    pub default: Quota,
    pub auth: Quota,
    pub login_email: Quota,
}

impl RateLimiter {
    pub fn new(redis: Redis, settings: &Settings) -> Self {
        Self {
            redis,
            script: Arc::new(Script::new(HIT)),
            enabled: settings.rate_limit_enabled,
            trust_proxy: settings.trust_proxy,
            default: Quota {
                scope: "ip",
                max: settings.rate_limit_default_per_minute,
                window: Duration::from_secs(60),
            },
            auth: Quota {
                scope: "auth-ip",
                max: settings.rate_limit_auth_per_minute,
                window: Duration::from_secs(60),
            },
            login_email: Quota {
                scope: "login-email",
                max: settings.rate_limit_login_per_email,
                window: Duration::from_secs(15 * 60),
            },
        }
    }

    /// Counts one hit of `key` against `quota`; `None` when disabled or Redis failed.
    pub async fn hit(&self, quota: Quota, key: &str) -> Option<Decision> {
        if !self.enabled {
            return None;
        }
        let window_ms = u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX);
        let redis_key = self.redis.key(&format!("rl:{}:{key}", quota.scope));
        let mut conn = self.redis.conn();
        let counted: redis::RedisResult<(u64, i64)> =
            self.script.key(redis_key).arg(window_ms).invoke_async(&mut conn).await;
        match counted {
            Ok((count, ttl_ms)) => {
                let reset_secs = u64::try_from(ttl_ms).unwrap_or(0).div_ceil(1000).max(1);
                let max = u64::from(quota.max);
                Some(Decision {
                    allowed: count <= max,
                    limit: quota.max,
                    remaining: u32::try_from(max.saturating_sub(count)).unwrap_or(0),
                    reset_secs,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, scope = quota.scope, "rate limiter unavailable; letting the request through");
                None
            }
        }
    }

    /// Refuses with 429 when `key` has used up `quota`.
    pub async fn check(&self, quota: Quota, key: &str) -> Result<(), AppError> {
        match self.hit(quota, key).await {
            Some(d) if !d.allowed => Err(AppError::RateLimited { retry_after_secs: d.reset_secs }),
            _ => Ok(()),
        }
    }

    /// The client's address: the socket peer, or with `TRUST_PROXY` the right-most
    /// `X-Forwarded-For` entry (the one our own proxy appended, which a client cannot forge).
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        if self.trust_proxy
            && let Some(ip) = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
                .next_back()
        {
            return Some(ip);
        }
        peer.map(|p| p.ip())
    }

    async fn limit(&self, quota: Quota, req: Request, next: Next) -> Response {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let Some(ip) = self.client_ip(req.headers(), peer) else {
            return next.run(req).await;
        };
        match self.hit(quota, &ip.to_string()).await {
            Some(d) if !d.allowed => d.refusal(),
            Some(d) => {
                let mut res = next.run(req).await;
                d.headers(res.headers_mut());
                res
            }
            None => next.run(req).await,
        }
    }
}

/// Middleware: the default per-IP limit. Health probes and metrics are exempt (load
/// balancers and scrapers poll them from one address). The limiter rides along in the request extensions for
/// the stricter route layers below.
pub async fn per_ip(State(limiter): State<RateLimiter>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(limiter.clone());
    let path = req.uri().path();
    if path.starts_with("/health") || path == "/metrics" {
        return next.run(req).await;
    }
    let quota = limiter.default;
    limiter.limit(quota, req, next).await
}

/// Route middleware: the strict per-IP limit of login, register and password routes.
pub async fn auth_per_ip(req: Request, next: Next) -> Response {
    let Some(limiter) = req.extensions().get::<RateLimiter>().cloned() else {
        return next.run(req).await;
    };
    let quota = limiter.auth;
    limiter.limit(quota, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::config::{AppEnv, Settings};

    fn limiter(trust_proxy: bool) -> RateLimiter {
        let mut settings = Settings::load_for(AppEnv::Test).unwrap();
        settings.trust_proxy = trust_proxy;
        RateLimiter::new(Redis::connect_lazy(&settings).unwrap(), &settings)
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    #[tokio::test]
    async fn the_client_ip_is_the_peer_unless_the_proxy_is_trusted() {
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let headers = xff("203.0.113.7, 198.51.100.2");
        assert_eq!(limiter(false).client_ip(&headers, Some(peer)), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(limiter(true).client_ip(&headers, Some(peer)), Some("198.51.100.2".parse().unwrap()));
        // A client-supplied garbage entry cannot hide the proxy's own.
        assert_eq!(
            limiter(true).client_ip(&xff("spoofed, 198.51.100.2"), Some(peer)),
            Some("198.51.100.2".parse().unwrap())
        );
        assert_eq!(limiter(true).client_ip(&HeaderMap::new(), Some(peer)), Some("10.0.0.9".parse().unwrap()));
    }
}
