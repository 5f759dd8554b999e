//! Rate limits kept in Redis, so they hold across instances: a generous limit
//! per client IP on every route, a strict one per IP on the auth routes, and one per
//! e-mail address on login attempts. Fixed windows counted with one atomic script call;
//! answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, and a
//! refusal is a 429 `RATE_LIMITED` with `Retry-After`. Limits on failed attempts (a wrong
//! password) reserve the attempt before the check and give it back on success
//! ([`RateLimiter::reserve`]), so parallel attempts cannot outrun the count.
//!
//! Redis is never allowed to slow the API down: every call has a budget of
//! [`REDIS_BUDGET`]; a call over budget or failing counts against a circuit breaker, and
//! after [`TRIP_AFTER`] failures in a row Redis is skipped for [`COOL_DOWN`] (then one
//! request probes it again). Meanwhile the limits are counted in process, per instance
//! ([`LocalCounts`]): weaker than shared counts across instances, but never no limit, so
//! a Redis outage does not open login to brute force.
//!
//! **Why it is owned here, and when it goes.** The crates for this (`tower_governor`,
//! `governor`) count in process only, so N instances would each allow the full quota;
//! none keeps fixed windows in Redis with a budget and a local fallback. Exit plan: a
//! maintained crate that counts in Redis (or a gateway in front that does, such as
//! nginx with a shared store) replaces it; the tests in `tests/api/rate_limit.rs` are
//! the contract it must meet.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ipnet::IpNet;
use redis::Script;

use crate::platform::{config::Settings, http::error::AppError, redis::Redis};

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

/// `INCRBY` the window's counter by a lease of hits, setting its expiry on first use;
/// returns the count and the milliseconds until the window ends.
const LEASE: &str = r"
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
";

/// Counts one attempt only while the window has room (`ARGV[2]` = the limit): returns the
/// count, the milliseconds until the window ends, and 1 when admitted (0 when refused:
/// the refused attempt is not counted, so the count never passes the limit).
const RESERVE: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
if count > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
  return {count - 1, ttl, 0}
end
return {count, ttl, 1}
";

/// Gives one reserved attempt back (never below zero, never into a new window).
const RELEASE: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('DECR', KEYS[1]) end
return 0
";

/// Longest a request waits for Redis on the limiter's behalf.
pub const REDIS_BUDGET: Duration = Duration::from_millis(50);
/// Failures in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker keeps requests away from Redis.
pub const COOL_DOWN: Duration = Duration::from_secs(5);
/// Keys the in-process counts hold at most (expired ones are dropped first).
const LOCAL_MAX_KEYS: usize = 100_000;

/// Keeps an in-process map under [`LOCAL_MAX_KEYS`] before an insert: drops the entries
/// whose window has ended (`ends`), and if that is not enough, the tenth whose windows end
/// soonest. Live counts of other keys are never reset wholesale, so flooding the map with
/// fresh keys cannot wipe an address's failed attempts.
fn bound<K, V>(map: &mut HashMap<K, V>, now: Instant, ends: impl Fn(&V) -> Instant) {
    if map.len() < LOCAL_MAX_KEYS {
        return;
    }
    map.retain(|_, v| ends(v) > now);
    if map.len() >= LOCAL_MAX_KEYS {
        let mut ends_at: Vec<Instant> = map.values().map(&ends).collect();
        let tenth = ends_at.len() / 10;
        let (_, cutoff, _) = ends_at.select_nth_unstable(tenth);
        let cutoff = *cutoff;
        map.retain(|_, v| ends(v) > cutoff);
    }
}

/// Per (scope, key): the hits counted and when the window ends.
type Windows = HashMap<(&'static str, String), (u64, Instant)>;

/// Fixed-window counts in this process: the fallback while Redis is out.
#[derive(Default)]
struct LocalCounts {
    windows: Mutex<Windows>,
}

impl LocalCounts {
    /// Counts one hit; with `reserve`, only while the window has room (a refused hit is
    /// not counted). Returns the count and the time left.
    fn hit(&self, quota: Quota, key: &str, reserve: bool) -> (u64, Duration) {
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else { return (0, quota.window) };
        bound(&mut windows, now, |(_, end)| *end);
        let entry = windows.entry((quota.scope, key.to_owned())).or_insert((0, now + quota.window));
        if now >= entry.1 {
            *entry = (0, now + quota.window);
        }
        if !reserve || entry.0 < u64::from(quota.max) {
            entry.0 += 1;
        } else {
            // Refused: reported as one over the limit, and not counted.
            return (entry.0 + 1, entry.1 - now);
        }
        (entry.0, entry.1 - now)
    }

    /// Gives one hit back, within the window it was counted in.
    fn release(&self, quota: Quota, key: &str) {
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else { return };
        if let Some(entry) = windows.get_mut(&(quota.scope, key.to_owned()))
            && now < entry.1
        {
            entry.0 = entry.0.saturating_sub(1);
        }
    }
}

/// The hits of the default per-IP quota this process may admit without asking Redis: a
/// lease of [`Quota::lease`] hits taken from the shared window counter at a time, the next
/// one fetched in the background when half is spent. Redis counts every leased hit, so
/// the instances together never admit more than the limit; a lease another instance has
/// not spent yet makes the others refuse early, by at most (instances − 1) × (lease − 1)
/// hits per window and address.
#[derive(Default)]
struct Leases {
    shards: [Mutex<HashMap<String, Lease>>; 16],
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Hits left in this process's lease.
    left: u32,
    /// Hits the shared window had left beyond all leases at the last fetch.
    beyond: u32,
    window_end: Instant,
    refilling: bool,
}

/// What a look at the local lease decided.
enum Local {
    Decided(Decision, bool),
    AskRedis,
}

impl Leases {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Lease>> {
        let hash = key.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        &self.shards[hash as usize % self.shards.len()]
    }

    /// Spends one hit of the lease when there is one; the `bool` asks for a refill.
    fn spend(&self, quota: Quota, key: &str) -> Local {
        let now = Instant::now();
        let Ok(mut shard) = self.shard(key).lock() else { return Local::AskRedis };
        let Some(lease) = shard.get_mut(key).filter(|l| now < l.window_end) else { return Local::AskRedis };
        let reset_secs = lease.window_end.duration_since(now).as_millis().div_ceil(1000).max(1) as u64;
        let decision = |allowed, remaining| Decision { allowed, limit: quota.max, remaining, reset_secs };
        if lease.left > 0 {
            lease.left -= 1;
            let refill = !lease.refilling && lease.beyond > 0 && lease.left <= quota.lease() / 2;
            lease.refilling |= refill;
            return Local::Decided(decision(true, lease.beyond + lease.left), refill);
        }
        if lease.beyond == 0 {
            // The shared window was used up at the last fetch: it stays so until it ends.
            return Local::Decided(decision(false, 0), false);
        }
        Local::AskRedis
    }

    /// Adds a lease fetched from Redis (`count` after the `INCRBY` of `asked`, `ttl` left)
    /// and, when `spend`, takes this request's hit from it.
    fn add(&self, quota: Quota, key: &str, asked: u32, count: u64, ttl: Duration, spend: bool) -> Decision {
        let now = Instant::now();
        let max = u64::from(quota.max);
        let before = count.saturating_sub(u64::from(asked));
        let granted = u32::try_from(max.saturating_sub(before).min(u64::from(asked))).unwrap_or(0);
        let beyond = u32::try_from(max.saturating_sub(count)).unwrap_or(0);
        let window_end = now + ttl;
        let mut allowed = false;
        let mut left = 0;
        if let Ok(mut shard) = self.shard(key).lock() {
            bound(&mut shard, now, |l| l.window_end);
            let lease = shard.entry(key.to_owned()).or_insert(Lease {
                left: 0,
                beyond,
                window_end,
                refilling: false,
            });
            if now >= lease.window_end || window_end > lease.window_end + Duration::from_secs(1) {
                // A new window: what is left of the old lease is gone with it.
                *lease = Lease { left: 0, beyond, window_end, refilling: false };
            }
            lease.left += granted;
            lease.beyond = beyond;
            lease.refilling = false;
            if spend && lease.left > 0 {
                lease.left -= 1;
                allowed = true;
            }
            left = lease.left;
        }
        if !spend {
            allowed = true;
        }
        Decision {
            allowed,
            limit: quota.max,
            remaining: beyond + left,
            reset_secs: ttl.as_millis().div_ceil(1000).max(1) as u64,
        }
    }

    /// Marks a failed background refill, so the next spend may ask again.
    fn refill_failed(&self, key: &str) {
        if let Ok(mut shard) = self.shard(key).lock()
            && let Some(lease) = shard.get_mut(key)
        {
            lease.refilling = false;
        }
    }
}

/// Keeps requests away from a Redis that keeps failing.
struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which Redis is skipped (0: closed).
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { failures: AtomicU32::new(0), open_until_ms: AtomicU64::new(0), epoch: Instant::now() }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this request may ask Redis. When the cool-down is over, the first one
    /// to ask probes it (and pushes the next probe one cool-down further).
    fn allows(&self) -> bool {
        let until = self.open_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .open_until_ms
                .compare_exchange(until, now + COOL_DOWN.as_millis() as u64, Relaxed, Relaxed)
                .is_ok()
    }

    fn success(&self) {
        self.failures.store(0, Relaxed);
        if self.open_until_ms.swap(0, Relaxed) != 0 {
            tracing::info!("rate limiter: Redis answers again; shared limits are back");
        }
    }

    fn failure(&self, error: &str) {
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures >= TRIP_AFTER {
            let until = self.now_ms() + COOL_DOWN.as_millis() as u64;
            if self.open_until_ms.swap(until, Relaxed) == 0 {
                tracing::warn!(
                    error,
                    cool_down_s = COOL_DOWN.as_secs(),
                    "rate limiter: Redis keeps failing; counting limits in this process meanwhile"
                );
            }
        }
    }
}

/// One limit: `max` hits per `window` for each key of a `scope`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub scope: &'static str,
    pub max: u32,
    pub window: Duration,
}

impl Quota {
    /// Hits taken from Redis at a time when leased: a twentieth of the limit, 1 to 50
    /// (600 a minute: 30; a limit of 20 or less is counted hit by hit, exactly).
    pub fn lease(&self) -> u32 {
        (self.max / 20).clamp(1, 50)
    }
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
    /// Sets the `RateLimit-*` headers unless an inner, stricter limiter already did: the
    /// client sees the quota that binds.
    fn headers(&self, headers: &mut HeaderMap) {
        if headers.contains_key(&LIMIT) {
            return;
        }
        headers.insert(LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(RESET.clone(), HeaderValue::from(self.reset_secs));
    }

    fn error(&self) -> AppError {
        AppError::RateLimited { retry_after_secs: self.reset_secs, limit: self.limit }
    }
}

/// Counts hits in Redis (in process while Redis is out). One `Arc` inside: the per-IP
/// layer clones it for every request.
#[derive(Clone)]
pub struct RateLimiter(Arc<Limits>);

impl std::ops::Deref for RateLimiter {
    type Target = Limits;

    fn deref(&self) -> &Limits {
        &self.0
    }
}

/// What a [`RateLimiter`] holds.
pub struct Limits {
    redis: Redis,
    script: Arc<Script>,
    lease_script: Script,
    reserve_script: Script,
    release_script: Script,
    leases: Leases,
    local: Arc<LocalCounts>,
    breaker: Arc<Breaker>,
    pub enabled: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Paths the default per-IP limit leaves alone (besides the health probes).
    exempt: Vec<&'static str>,
    pub default: Quota,
    pub auth: Quota,
    pub login_email: Quota,
    /// Same size as `login_email`, counted apart: forgot requests must not lock the owner
    /// out of logging in.
    pub forgot_email: Quota,
    /// Failed current-password checks per account.
    pub password_change: Quota,
    /// Requests for a new verification e-mail per account.
    pub verify_resend: Quota,
}

/// An attempt counted by [`RateLimiter::reserve`]; [`RateLimiter::release`] gives it back.
#[derive(Debug)]
pub struct Reservation {
    quota: Quota,
    key: String,
    /// Counted in this process (Redis was out), so given back here too.
    local: bool,
}

impl RateLimiter {
    /// The same limiter, with `paths` exempt from the default per-IP limit (a provider's
    /// webhook, sent from a few addresses and retried for days when refused).
    pub fn exempting(self, paths: &[&'static str]) -> Self {
        let mut limits =
            Arc::try_unwrap(self.0).unwrap_or_else(|_| unreachable!("called once, at construction"));
        limits.exempt.extend_from_slice(paths);
        Self(Arc::new(limits))
    }

    pub fn new(redis: Redis, settings: &Settings) -> Self {
        Self(Arc::new(Limits {
            redis,
            script: Arc::new(Script::new(HIT)),
            lease_script: Script::new(LEASE),
            reserve_script: Script::new(RESERVE),
            release_script: Script::new(RELEASE),
            leases: Leases::default(),
            local: Arc::default(),
            breaker: Arc::default(),
            enabled: settings.rate_limit_enabled,
            trusted_proxies: settings.trusted_proxies.clone(),
            exempt: Vec::new(),
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
            forgot_email: Quota {
                scope: "forgot-email",
                max: settings.rate_limit_login_per_email,
                window: Duration::from_secs(15 * 60),
            },
            password_change: Quota {
                scope: "password-change",
                max: settings.rate_limit_password_change_failures,
                window: Duration::from_secs(15 * 60),
            },
            verify_resend: Quota { scope: "verify-resend", max: 3, window: Duration::from_secs(60 * 60) },
        }))
    }

    /// The decision for `count` hits so far (this one included) with `ttl` left.
    fn decide(quota: Quota, count: u64, ttl: Duration) -> Decision {
        let max = u64::from(quota.max);
        Decision {
            allowed: count <= max,
            limit: quota.max,
            remaining: u32::try_from(max.saturating_sub(count)).unwrap_or(0),
            reset_secs: ttl.as_millis().div_ceil(1000).max(1) as u64,
        }
    }

    /// Counts one hit of `key` against `quota`; `None` when limits are disabled.
    pub async fn hit(&self, quota: Quota, key: &str) -> Option<Decision> {
        if !self.enabled {
            return None;
        }
        if self.breaker.allows() {
            let redis_key = self.redis.key(&format!("rl:{}:{key}", quota.scope));
            let mut conn = self.redis.conn();
            let window_ms = u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX);
            let mut invocation = self.script.key(&redis_key);
            invocation.arg(window_ms);
            let call = invocation.invoke_async::<(u64, i64)>(&mut conn);
            match tokio::time::timeout(REDIS_BUDGET, call).await {
                Ok(Ok((count, ttl_ms))) => {
                    self.breaker.success();
                    let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
                    return Some(Self::decide(quota, count, ttl));
                }
                Ok(Err(e)) => self.breaker.failure(&e.to_string()),
                Err(_) => self.breaker.failure("no answer within the budget"),
            }
        }
        let (count, ttl) = self.local.hit(quota, key, false);
        Some(Self::decide(quota, count, ttl))
    }

    /// Counts an attempt of `key` against `quota` before the work it guards (a password
    /// check), atomically: of any number of parallel attempts at most `quota.max` are
    /// admitted per window. A 429 when the window is full; `None` when limits are off.
    /// Keep the reservation for a failed attempt; [`Self::release`] it after a success, so
    /// only failures use the quota up.
    pub async fn reserve(&self, quota: Quota, key: &str) -> Result<Option<Reservation>, AppError> {
        if !self.enabled {
            return Ok(None);
        }
        let mut local = true;
        let mut outcome = None;
        if self.breaker.allows() {
            let redis_key = self.redis.key(&format!("rl:{}:{key}", quota.scope));
            let mut conn = self.redis.conn();
            let window_ms = u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX);
            let mut invocation = self.reserve_script.key(&redis_key);
            invocation.arg(window_ms).arg(quota.max);
            let call = invocation.invoke_async::<(u64, i64, u8)>(&mut conn);
            match tokio::time::timeout(REDIS_BUDGET, call).await {
                Ok(Ok((count, ttl_ms, admitted))) => {
                    self.breaker.success();
                    let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
                    let count = if admitted == 1 { count } else { u64::from(quota.max) + 1 };
                    outcome = Some(Self::decide(quota, count, ttl));
                    local = false;
                }
                Ok(Err(e)) => self.breaker.failure(&e.to_string()),
                Err(_) => self.breaker.failure("no answer within the budget"),
            }
        }
        let decision = outcome.unwrap_or_else(|| {
            let (count, ttl) = self.local.hit(quota, key, true);
            Self::decide(quota, count, ttl)
        });
        if !decision.allowed {
            return Err(decision.error());
        }
        Ok(Some(Reservation { quota, key: key.to_owned(), local }))
    }

    /// Gives a reserved attempt back (it succeeded). Best effort: if Redis fails now,
    /// the attempt stays counted until its window ends.
    pub async fn release(&self, reservation: Option<Reservation>) {
        let Some(Reservation { quota, key, local }) = reservation else { return };
        if local {
            self.local.release(quota, &key);
            return;
        }
        let redis_key = self.redis.key(&format!("rl:{}:{key}", quota.scope));
        let mut conn = self.redis.conn();
        let invocation = self.release_script.key(&redis_key);
        let call = invocation.invoke_async::<i64>(&mut conn);
        match tokio::time::timeout(REDIS_BUDGET, call).await {
            Ok(Ok(_)) => self.breaker.success(),
            Ok(Err(e)) => self.breaker.failure(&e.to_string()),
            Err(_) => self.breaker.failure("no answer within the budget"),
        }
    }

    /// Counts one hit of `key` against `quota` from this process's lease (see [`Leases`]):
    /// Redis is asked only when the lease is spent or in the background to refill it.
    pub async fn hit_leased(&self, quota: Quota, key: &str) -> Option<Decision> {
        if !self.enabled {
            return None;
        }
        match self.leases.spend(quota, key) {
            Local::Decided(decision, refill) => {
                if refill {
                    let (limiter, key) = (self.clone(), key.to_owned());
                    tokio::spawn(async move {
                        match limiter.fetch_lease(quota, &key).await {
                            Some((count, ttl)) => {
                                limiter.leases.add(quota, &key, quota.lease(), count, ttl, false);
                            }
                            None => limiter.leases.refill_failed(&key),
                        }
                    });
                }
                Some(decision)
            }
            Local::AskRedis => match self.fetch_lease(quota, key).await {
                Some((count, ttl)) => Some(self.leases.add(quota, key, quota.lease(), count, ttl, true)),
                None => {
                    let (count, ttl) = self.local.hit(quota, key, false);
                    Some(Self::decide(quota, count, ttl))
                }
            },
        }
    }

    /// Takes a lease of `quota.lease()` hits from the shared counter: the count after it
    /// and the time left in the window, or `None` when Redis is out (breaker, budget).
    async fn fetch_lease(&self, quota: Quota, key: &str) -> Option<(u64, Duration)> {
        if !self.breaker.allows() {
            return None;
        }
        let redis_key = self.redis.key(&format!("rl:{}:{key}", quota.scope));
        let mut conn = self.redis.conn();
        let window_ms = u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.lease_script.key(&redis_key);
        invocation.arg(window_ms).arg(quota.lease());
        let call = invocation.invoke_async::<(u64, i64)>(&mut conn);
        match tokio::time::timeout(REDIS_BUDGET, call).await {
            Ok(Ok((count, ttl_ms))) => {
                self.breaker.success();
                Some((count, Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0))))
            }
            Ok(Err(e)) => {
                self.breaker.failure(&e.to_string());
                None
            }
            Err(_) => {
                self.breaker.failure("no answer within the budget");
                None
            }
        }
    }

    /// Refuses with 429 when `key` has used up `quota`.
    pub async fn check(&self, quota: Quota, key: &str) -> Result<(), AppError> {
        match self.hit(quota, key).await {
            Some(d) if !d.allowed => Err(d.error()),
            _ => Ok(()),
        }
    }

    /// The client's address: the socket peer, unless that peer is a trusted proxy
    /// (`TRUSTED_PROXIES`). Then the `X-Forwarded-For` entries are walked from the right,
    /// past every trusted address, and the first untrusted one is the client: entries
    /// further left were written by whoever sent the request to that hop and are
    /// forgeable. An entry that does not parse stops the walk at the last trusted hop
    /// (strict rather than forgeable). From any other peer the header is ignored.
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        let peer = peer.map(|p| p.ip().to_canonical())?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else { return Some(client) };
            for entry in value.rsplit(',') {
                let Some(ip) = parse_forwarded(entry) else { return Some(client) };
                client = ip.to_canonical();
                if !self.trusted(client) {
                    return Some(client);
                }
            }
        }
        Some(client)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    async fn limit<F: Future<Output = Response>>(
        &self,
        quota: Quota,
        req: Request,
        next: impl FnOnce(Request) -> F,
    ) -> Response {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let Some(ip) = self.client_ip(req.headers(), peer) else {
            return next(req).await;
        };
        // The default quota is leased; the strict ones are counted hit by hit.
        let decision = if quota.scope == self.default.scope {
            self.hit_leased(quota, &ip_key(ip)).await
        } else {
            self.hit(quota, &ip_key(ip)).await
        };
        match decision {
            Some(d) if !d.allowed => d.error().into_response(),
            Some(d) => {
                let mut res = next(req).await;
                d.headers(res.headers_mut());
                res
            }
            None => next(req).await,
        }
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    None
}

/// The bucket of an address: IPv4 as is; IPv6 by its /64, since one subscriber usually
/// holds a whole /64 and could otherwise rotate addresses past any limit.
fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Middleware: the default per-IP limit. Health probes and metrics are exempt (load
/// balancers and scrapers poll them from one address), and the paths given to
/// [`RateLimiter::exempting`]. The limiter rides along in the request extensions for
/// the stricter route layers below.
pub async fn per_ip<F: Future<Output = Response>>(
    limiter: &RateLimiter,
    mut req: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let path = req.uri().path();
    if path.starts_with("/health") || path == "/metrics" || limiter.exempt.contains(&path) {
        return next(req).await;
    }
    req.extensions_mut().insert(limiter.clone());
    let quota = limiter.default;
    limiter.limit(quota, req, next).await
}

/// Route middleware: the strict per-IP limit of login, register and password routes.
pub async fn auth_per_ip(req: Request, next: Next) -> Response {
    let Some(limiter) = req.extensions().get::<RateLimiter>().cloned() else {
        return next.run(req).await;
    };
    let quota = limiter.auth;
    limiter.limit(quota, req, |req| next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::config::{AppEnv, Settings};

    fn limiter(trusted: &str) -> RateLimiter {
        let mut settings = Settings::load_for(AppEnv::Test).unwrap();
        settings.trusted_proxies =
            trusted.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
        RateLimiter::new(Redis::connect_lazy(&settings).unwrap(), &settings)
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for value in values {
            h.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.50:5000".parse().unwrap();
        let headers = xff(&["203.0.113.7, 198.51.100.2"]);
        // No trusted proxies: the peer, whatever the header says.
        assert_eq!(limiter("").client_ip(&headers, Some(proxy)), ip("10.0.0.9"));
        let one = limiter("10.0.0.0/8");
        // From an untrusted peer the header is ignored.
        assert_eq!(one.client_ip(&headers, Some(stranger)), ip("203.0.113.50"));
        // From a trusted peer: the right-most untrusted entry.
        assert_eq!(one.client_ip(&headers, Some(proxy)), ip("198.51.100.2"));
        // Trusted hops on the right are walked past (two proxies in a row).
        assert_eq!(
            one.client_ip(&xff(&["203.0.113.7, 198.51.100.2, 10.1.2.3"]), Some(proxy)),
            ip("198.51.100.2")
        );
        // Several header lines read as one list, the last line right-most.
        assert_eq!(one.client_ip(&xff(&["198.51.100.2", "10.1.2.3"]), Some(proxy)), ip("198.51.100.2"));
        // A client-supplied garbage entry left of the client's cannot hide it.
        assert_eq!(one.client_ip(&xff(&["spoofed, 198.51.100.2"]), Some(proxy)), ip("198.51.100.2"));
        // An entry with a port is read without it.
        assert_eq!(
            one.client_ip(&xff(&["203.0.113.66, 198.51.100.2:4711"]), Some(proxy)),
            ip("198.51.100.2")
        );
        // An unparseable entry stops the walk at the last trusted hop, never a client entry.
        assert_eq!(one.client_ip(&xff(&["203.0.113.66, junk"]), Some(proxy)), ip("10.0.0.9"));
        assert_eq!(one.client_ip(&xff(&["203.0.113.66, junk, 10.1.2.3"]), Some(proxy)), ip("10.1.2.3"));
        assert_eq!(one.client_ip(&HeaderMap::new(), Some(proxy)), ip("10.0.0.9"));
        // IPv4-mapped IPv6 peers match IPv4 ranges.
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:5000".parse().unwrap();
        assert_eq!(one.client_ip(&headers, Some(mapped)), ip("198.51.100.2"));
    }

    #[test]
    fn a_reserve_in_process_admits_no_more_than_the_limit_and_gives_back() {
        let local = LocalCounts::default();
        let quota = Quota { scope: "t", max: 3, window: Duration::from_secs(60) };
        let admitted = (0..10).filter(|_| local.hit(quota, "k", true).0 <= 3).count();
        assert_eq!(admitted, 3);
        local.release(quota, "k");
        assert_eq!(local.hit(quota, "k", true).0, 3, "a released attempt frees one place");
        assert_eq!(local.hit(quota, "k", true).0, 4, "then the window is full again");
    }

    #[test]
    fn a_full_map_drops_ended_windows_then_the_soonest_ending_never_all() {
        let now = Instant::now();
        let mut map: HashMap<u32, Instant> = HashMap::new();
        for i in 0..LOCAL_MAX_KEYS as u32 {
            let end = if i % 2 == 0 {
                now - Duration::from_secs(1)
            } else {
                now + Duration::from_secs(u64::from(i))
            };
            map.insert(i, end);
        }
        bound(&mut map, now, |end| *end);
        assert_eq!(map.len(), LOCAL_MAX_KEYS / 2, "only the ended windows went");
        for i in 0..LOCAL_MAX_KEYS as u32 {
            map.insert(LOCAL_MAX_KEYS as u32 + i, now + Duration::from_secs(10_000_000));
        }
        bound(&mut map, now, |end| *end);
        assert!(map.len() >= LOCAL_MAX_KEYS * 8 / 10, "a tenth went, not everything: {}", map.len());
        assert!(!map.contains_key(&1), "the soonest-ending went first");
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_bucketed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        assert_eq!(ip_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(ip_key("192.0.2.1".parse().unwrap()), "192.0.2.1");
    }
}
