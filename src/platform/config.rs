//! Typed settings: built-in defaults < `config/default.toml` <
//! `config/{APP_ENV}.toml` < environment variables (a `.env` file is read by `main`).
//!
//! Every key is flat and named after its environment variable, lower-cased
//! (`DATABASE_URL` ↔ `database_url`), so the TOML files, `.env.example` and the
//! environment all speak the same names. Loading never stops at the first problem:
//! each key is extracted on its own and then checked, and every problem is reported.

use std::{fmt, str::FromStr, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// The secret shipped in the built-in defaults so development works out of the box.
/// Production refuses to start with it.
pub const DEVELOPMENT_JWT_SECRET: &str = "development-only-secret-change-me-0123456789";

/// The placeholder `.env.example` documents; refused in production like the default, so
/// a copied example file cannot go live (a unit test keeps the two in step).
pub const EXAMPLE_JWT_SECRET: &str = "change-me-to-a-long-random-string-of-32+-chars";

/// Declares every setting once: the [`Settings`] field (named after its environment
/// variable, lower-cased), its type, its built-in default (a TOML value) and its doc.
/// From this one list come the struct, [`KEYS`] (the only variables read from the
/// environment), the built-in defaults layer and the extraction. Adding a setting is one
/// line here plus its entry in `.env.example` and its row in `docs/configuration.md` (unit
/// tests check both files).
macro_rules! settings {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:literal,)*) => {
        /// The validated configuration of one process.
        #[derive(Clone)]
        pub struct Settings {
            $($(#[doc = $doc])* pub $name: $ty,)*
        }

        /// Every setting key, as its environment variable is spelled (lower-cased).
        pub const KEYS: &[&str] = &[$(stringify!($name)),*];

        /// Built-in defaults: the lowest layer, valid on their own for local development.
        const BUILTIN_DEFAULTS: &str = concat!($(stringify!($name), " = ", stringify!($default), "\n"),*);

        impl Settings {
            /// Extracts every key, noting each one that does not parse.
            fn extract(figment: &Figment, builtin: &Figment, problems: &mut Vec<String>) -> Self {
                Self { $($name: read::<$ty>(stringify!($name), figment, builtin, problems),)* }
            }
        }

        impl fmt::Debug for Settings {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Secrets (URLs that may hold passwords included) are `SecretString`s,
                // which print redacted.
                f.debug_struct("Settings")$(.field(stringify!($name), &self.$name))*.finish()
            }
        }
    };
}

settings! {
    /// development | test | production.
    app_env: AppEnv = "development",
    host: String = "0.0.0.0",
    port: u16 = 3000,
    database_url: SecretString = "postgres://storefront:storefront@127.0.0.1:5432/storefront",
    db_pool_min: u32 = 1,
    db_pool_max: u32 = 10,
    /// Connections of the read pool (product reads, which skip sqlx's release ping).
    db_read_pool_max: u32 = 8,
    /// Connections shared by every request for pipelined product reads (0: those reads
    /// use the read pool instead).
    db_pipeline_connections: u32 = 2,
    db_acquire_timeout: Duration = "5s",
    db_idle_timeout: Duration = "10m",
    db_statement_timeout: Duration = "10s",
    /// Statement timeout of the reads that serve public and list pages (the read pool
    /// and the pipelined product reads): a read that runs longer is cancelled (503).
    db_read_statement_timeout: Duration = "2s",
    db_slow_query_threshold: Duration = "500ms",
    run_migrations: bool = true,
    /// How long a starting process waits for Postgres and Redis to answer (services
    /// starting together); Postgres still silent then stops the start.
    startup_wait: Duration = "60s",
    redis_url: SecretString = "redis://127.0.0.1:6379",
    /// With `rediss://`: a PEM file of the CA that signed the Redis server's certificate
    /// (blank: the system's trust store).
    redis_ca_file: String = "",
    /// Prefix of every Redis key this process writes (`{prefix}:...`); tests use a unique one.
    redis_prefix: String = "storefront",
    jwt_secret: SecretString = "development-only-secret-change-me-0123456789",
    jwt_expires_in: Duration = "15m",
    jwt_issuer: String = "storefront",
    jwt_audience: String = "storefront-api",
    refresh_token_ttl: Duration = "7d",
    /// Longest a login's session family lives, however often it is refreshed.
    refresh_family_max_age: Duration = "30d",
    /// Allowed origins (`CORS_ORIGIN`, comma-separated; `*` for any).
    cors_origin: Vec<String> = "http://localhost:3000",
    log_level: String = "info",
    log_format: LogFormat = "auto",
    public_url: String = "http://localhost:3000",
    currency: String = "USD",
    email_transport: EmailTransport = "file",
    /// Required for `EMAIL_TRANSPORT=smtp`; blank means unset.
    smtp_url: Option<SecretString> = "",
    mail_from: String = "Storefront <no-reply@storefront.local>",
    mail_dir: String = "var/mail",
    /// E-mails one address may get an hour (past it they are suppressed, counted and
    /// logged with a hash of the address); `0`: no limit. Reset and verification mails
    /// have their own budget of 5.
    mail_max_per_recipient_per_hour: u32 = 30,
    /// Unverified accounts may not order, and get no mail but the welcome, verification
    /// and reset ones.
    require_verified_email: bool = false,
    /// Longest an SMTP (or file) send may take before it counts as failed.
    smtp_timeout: Duration = "10s",
    /// Pooled SMTP connections per process.
    smtp_pool_size: u32 = 4,
    request_timeout: Duration = "30s",
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may sit idle; then it is closed (a proxy in front must close idle
    /// upstream connections sooner).
    http_header_read_timeout: Duration = "30s",
    /// Connections served at once; past it new ones wait in the accept queue.
    http_max_connections: usize = 4096,
    body_limit_bytes: usize = 1048576,
    shutdown_timeout: Duration = "30s",
    hsts_enabled: bool = false,
    rate_limit_enabled: bool = true,
    /// Requests per minute per client IP, every route.
    rate_limit_default_per_minute: u32 = 600,
    /// Requests per minute per client IP on login, register and password routes.
    rate_limit_auth_per_minute: u32 = 20,
    /// Failed logins (and, apart, forgot requests) per e-mail address per 15 minutes.
    rate_limit_login_per_email: u32 = 10,
    /// Proxies whose `X-Forwarded-For` is believed (comma-separated CIDRs or addresses);
    /// the client is the right-most entry that is not one of them. Empty: the socket peer.
    trusted_proxies: Vec<IpNet> = "",
    /// Failed current-password checks of `POST /users/profile/password` per account per
    /// 15 minutes.
    rate_limit_password_change_failures: u32 = 5,
    /// Password hashes queued or running at once before new ones answer 503 at once; `0`:
    /// four per hashing thread.
    password_hash_queue_max: usize = 0,
    /// In production, allow backends without transport security: Postgres below
    /// `sslmode=verify-full`, plain `redis://` to another host, plain SMTP with
    /// credentials, the `file` and `log` mail transports.
    allow_insecure_backends: bool = false,
    /// Serve `GET /metrics` on the metrics listener.
    metrics_enabled: bool = true,
    /// Address of the metrics listener (`/metrics` and `/health`), apart from the API.
    metrics_host: String = "0.0.0.0",
    /// Port of the metrics listener; 0 picks a free one (logged at start).
    metrics_port: u16 = 9100,
    /// Run the scheduled tasks in this process.
    scheduler_enabled: bool = true,
    /// Run the outbox relay (outbox rows to the Redis queues) in this process.
    relay_enabled: bool = true,
    /// How often the relay looks at the outbox when no notification woke it.
    relay_poll_interval: Duration = "1s",
    /// Run the job workers (e-mail and report queues) in this process.
    jobs_enabled: bool = true,
    /// Jobs one process runs at once, per queue.
    jobs_concurrency: usize = 4,
    /// How often an idle worker looks for due jobs (new pushes are not announced).
    jobs_poll_interval: Duration = "100ms",
    /// How often a worker proves it is alive; a worker silent for
    /// `JOBS_HEARTBEAT_INTERVAL × JOBS_MISSED_HEARTBEATS` is presumed dead and its jobs
    /// are run again by another.
    jobs_heartbeat_interval: Duration = "10s",
    jobs_missed_heartbeats: usize = 3,
    /// Longest one attempt of a job may run before it counts as failed.
    jobs_timeout: Duration = "2m",
    /// While this process serves more HTTP requests at once than twice its CPUs, a job
    /// waits up to this long before it starts, so background work does not slow the API
    /// down at its peak (`0s`: never wait).
    jobs_yield_max: Duration = "1s",
    /// How long finished jobs stay in Redis (worker processes trim every 5 minutes).
    jobs_done_retention: Duration = "1h",
    /// How long dead jobs stay listed and retryable.
    jobs_dead_retention: Duration = "14d",
    /// Dead jobs kept per queue at most; the oldest beyond are deleted at the next trim
    /// (every 5 minutes), so a flood of failures cannot fill Redis.
    jobs_dead_max: u64 = 10000,
    /// Cron expression (seconds first, UTC) of the nightly cleanup.
    schedule_cleanup: String = "0 0 2 * * *",
    /// Cron expression (seconds first, UTC) of the hourly analytics roll-up.
    schedule_analytics: String = "0 5 * * * *",
    /// How orders are paid: `manual` (staff mark them paid) or `stripe`.
    payment_provider: PaymentProvider = "manual",
    /// With `stripe`: the secret (`sk_…`) or restricted (`rk_…`) API key.
    stripe_secret_key: Option<SecretString> = "",
    /// With `stripe`: the webhook endpoint's signing secret (`whsec_…`).
    stripe_webhook_secret: Option<SecretString> = "",
    /// Where Stripe's API is (a stand-in in tests and local development).
    stripe_api_base: String = "https://api.stripe.com",
    /// Oldest (or furthest in the future) a webhook signature's timestamp may be.
    stripe_webhook_tolerance: Duration = "300s",
    /// Longest one call to the payment provider may take.
    payment_provider_timeout: Duration = "10s",
    /// How long a refund or an intent cancel is retried before it is dead-lettered.
    payment_retry_window: Duration = "24h",
    /// How long an unpaid order stays pending before the expiry task cancels it and
    /// restocks; `0` turns expiry off; blank: the payment provider's default (`30m` with
    /// `stripe`, `0` with `manual`, where money arrives offline).
    order_payment_timeout: Option<Duration> = "",
    /// Pending (unpaid) orders one user may hold at once; `0`: no limit.
    order_max_pending_per_user: u32 = 5,
    /// Cron expression (seconds first, UTC) of the expiry of unpaid orders.
    schedule_order_expiry: String = "0 * * * * *",
    /// The key webhook signing secrets are stored under: 32 bytes as 64 hex characters or
    /// base64 (blank: derived from JWT_SECRET outside production; production refuses to
    /// store or use a secret without it).
    webhook_secrets_key: Option<SecretString> = "",
    /// Allow plain `http://` webhook URLs (local receivers only).
    webhook_allow_http: bool = false,
    /// Allow webhook deliveries to loopback, private and other non-global addresses.
    webhook_allow_private_targets: bool = false,
    /// Longest one webhook delivery attempt may take (a 2xx within it is delivered).
    webhook_timeout: Duration = "10s",
    /// The wait before a failed delivery's second attempt; each next one waits twice as long.
    webhook_retry_base: Duration = "30s",
    /// Attempts of one delivery before it is `failed`.
    webhook_max_attempts: u32 = 8,
    /// Delivery attempts one process makes at once.
    webhook_concurrency: usize = 16,
    /// Attempts in flight at once to one endpoint, across processes.
    webhook_endpoint_concurrency: u32 = 2,
    /// Deliver webhooks to loopback addresses only, refusing any other loudly (the test
    /// suite's guard: no test can send a packet off the machine).
    webhook_loopback_only: bool = false,
}

/// How a setting's type is read: from which raw (deserialisable) form, converted how.
pub trait Setting: Sized {
    type Raw: DeserializeOwned;
    fn from_raw(raw: Self::Raw) -> Self;
}

macro_rules! plain_settings {
    ($($ty:ty),*) => {$(
        impl Setting for $ty {
            type Raw = Self;
            fn from_raw(raw: Self) -> Self {
                raw
            }
        }
    )*};
}

plain_settings!(String, u16, u32, u64, usize, bool, AppEnv, LogFormat, EmailTransport, PaymentProvider);

/// `500ms`, `30s`, `15m`, `2h`, `7d` or a bare number of seconds.
impl Setting for Duration {
    type Raw = HumanDuration;
    fn from_raw(raw: HumanDuration) -> Self {
        raw.0
    }
}

impl Setting for SecretString {
    type Raw = String;
    fn from_raw(raw: String) -> Self {
        raw.into()
    }
}

/// Blank is unset.
impl Setting for Option<SecretString> {
    type Raw = String;
    fn from_raw(raw: String) -> Self {
        Some(raw).filter(|s| !s.trim().is_empty()).map(Into::into)
    }
}

/// A duration, or blank for unset.
impl Setting for Option<Duration> {
    type Raw = OptionalDuration;
    fn from_raw(raw: OptionalDuration) -> Self {
        raw.0
    }
}

/// A comma-separated list; blank entries are dropped.
impl Setting for Vec<String> {
    type Raw = String;
    fn from_raw(raw: String) -> Self {
        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }
}

/// A comma-separated list of CIDRs (`10.0.0.0/8`) or addresses (`127.0.0.1`, one host).
impl Setting for Vec<IpNet> {
    type Raw = CidrList;
    fn from_raw(raw: CidrList) -> Self {
        raw.0
    }
}

/// [`Vec<IpNet>`]'s raw form: fails on the first entry that is neither a CIDR nor an address.
pub struct CidrList(Vec<IpNet>);

impl<'de> Deserialize<'de> for CidrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        let shown: String = entry.chars().take(64).collect();
                        serde::de::Error::custom(format!(
                            "`{shown}` is not a CIDR or an address (e.g. 10.0.0.0/8, 127.0.0.1)"
                        ))
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Settings that were replaced: present anywhere, they stop the start with what to use.
const RETIRED: &[(&str, &str)] = &[(
    "trust_proxy",
    "TRUST_PROXY: replaced by TRUSTED_PROXIES, the comma-separated CIDRs of the proxies in front \
     (e.g. TRUSTED_PROXIES=10.0.0.0/8); remove TRUST_PROXY",
)];

/// Secrets that may be given as a file instead (`JWT_SECRET_FILE=/run/secrets/jwt`): the
/// value is the file's content without its trailing newline.
pub const SECRET_FILES: &[&str] = &[
    "database_url",
    "redis_url",
    "jwt_secret",
    "smtp_url",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "webhook_secrets_key",
];

/// Reads every `NAME_FILE` of [`SECRET_FILES`] set in the environment; a problem for a
/// file that cannot be read or a secret given both ways. The path is named, never the
/// content.
fn secret_files(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    problems: &mut Vec<String>,
) -> Vec<(&'static str, String)> {
    let mut values = Vec::new();
    for key in SECRET_FILES {
        let name = key.to_ascii_uppercase();
        let Some(path) = var(&format!("{name}_FILE")) else { continue };
        if var(&name).is_some() {
            problems.push(format!("{name} and {name}_FILE: set one of them, not both"));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(content) => values.push((*key, content.trim_end_matches(['\r', '\n']).to_owned())),
            Err(e) => {
                problems.push(format!("{name}_FILE: cannot read {}: {}", path.to_string_lossy(), e.kind()))
            }
        }
    }
    values
}

/// Reads `key` as `T`; on failure notes the problem and falls back to the built-in
/// default, so that the remaining checks still run.
fn read<T: Setting>(key: &str, figment: &Figment, builtin: &Figment, problems: &mut Vec<String>) -> T {
    let value = figment.find_value(key).ok();
    let value = value.unwrap_or_else(|| builtin.find_value(key).expect("every key has a built-in default"));
    match value.deserialize::<T::Raw>() {
        Ok(raw) => T::from_raw(raw),
        Err(e) => {
            problems.push(format!("{}: {}", key.to_ascii_uppercase(), e.kind));
            T::from_raw(builtin.extract_inner(key).expect("built-in defaults are valid"))
        }
    }
}

/// Deployment environment (`APP_ENV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppEnv {
    Development,
    Test,
    Production,
}

impl AppEnv {
    /// The name used for `config/{name}.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Test => "test",
            Self::Production => "production",
        }
    }
}

/// Log line format (`LOG_FORMAT`); `auto` means JSON in production, text elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// How e-mail leaves the process (`EMAIL_TRANSPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTransport {
    Smtp,
    File,
    Log,
}

/// How orders are paid (`PAYMENT_PROVIDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentProvider {
    /// No online payment: staff mark orders paid when the money arrived.
    Manual,
    /// Stripe PaymentIntents and webhooks.
    Stripe,
}

/// A duration as `humantime` reads it (`500ms`, `30s`, `15m`, `2h`, `7d`, `1h 30m`), or a
/// bare number of seconds (`30`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let s = raw.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .map(|secs| Self(Duration::from_secs(secs)))
                .map_err(|_| format!("`{raw}` is too long"));
        }
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("`{raw}` is not a duration ({e}; examples: 500ms, 30s, 15m, 7d)"))
    }
}

/// A duration as a configuration layer holds it: a number of seconds or text.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl HumanDuration {
    fn deserialize_raw(raw: RawDuration) -> Result<Self, String> {
        match raw {
            RawDuration::Seconds(s) => Ok(Self(Duration::from_secs(s))),
            RawDuration::Text(t) => t.parse(),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_raw(RawDuration::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A [`HumanDuration`] or blank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

impl<'de> Deserialize<'de> for OptionalDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawDuration::deserialize(d)? {
            RawDuration::Text(t) if t.trim().is_empty() => Ok(Self(None)),
            raw => {
                HumanDuration::deserialize_raw(raw).map(|h| Self(Some(h.0))).map_err(serde::de::Error::custom)
            }
        }
    }
}

/// Every problem found while loading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    /// Loads the layers for the `APP_ENV` found in the environment (default `development`).
    pub fn load() -> Result<Self, ConfigError> {
        let env = std::env::var("APP_ENV").unwrap_or_else(|_| "development".into());
        let app_env = match env.trim().to_ascii_lowercase().as_str() {
            "development" => AppEnv::Development,
            "test" => AppEnv::Test,
            "production" => AppEnv::Production,
            other => {
                return Err(ConfigError(vec![format!(
                    "APP_ENV: `{other}` is not one of development, test, production"
                )]));
            }
        };
        Self::load_for(app_env)
    }

    /// Loads defaults < `config/default.toml` < `config/{env}.toml` < environment.
    pub fn load_for(app_env: AppEnv) -> Result<Self, ConfigError> {
        let retired: Vec<&str> = RETIRED.iter().map(|(key, _)| *key).collect();
        let mut problems = Vec::new();
        let mut figment = Figment::from(Toml::string(BUILTIN_DEFAULTS))
            .merge(Toml::file("config/default.toml"))
            .merge(Toml::file(format!("config/{}.toml", app_env.as_str())))
            .merge(Env::raw().only(KEYS))
            .merge(Env::raw().only(&retired));
        for (key, value) in secret_files(|name| std::env::var_os(name), &mut problems) {
            figment = figment.merge((key, value));
        }
        Self::from_figment_with(&figment.merge(("app_env", app_env.as_str())), problems)
    }

    /// Extracts and validates every key of `figment`, collecting all problems.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        Self::from_figment_with(figment, Vec::new())
    }

    fn from_figment_with(figment: &Figment, mut problems: Vec<String>) -> Result<Self, ConfigError> {
        let builtin = Figment::from(Toml::string(BUILTIN_DEFAULTS));
        for (key, problem) in RETIRED {
            if figment.find_value(key).is_ok() {
                problems.push((*problem).to_owned());
            }
        }
        let settings = Self::extract(figment, &builtin, &mut problems);
        problems.extend(settings.problems());
        if problems.is_empty() { Ok(settings) } else { Err(ConfigError(problems)) }
    }

    /// Semantic checks across keys; an empty list means the settings are usable.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.host.trim().is_empty() {
            p.push("HOST: must not be empty".to_owned());
        }
        if let Err(e) = check_database_url(self.database_url.expose_secret()) {
            p.push(format!("DATABASE_URL: {e}"));
        }
        if self.db_read_pool_max == 0 {
            p.push("DB_READ_POOL_MAX: must be at least 1".to_owned());
        }
        if self.db_pool_max == 0 {
            p.push("DB_POOL_MAX: must be at least 1".to_owned());
        }
        if self.db_pool_min > self.db_pool_max {
            p.push(format!(
                "DB_POOL_MIN ({}) must not exceed DB_POOL_MAX ({})",
                self.db_pool_min, self.db_pool_max
            ));
        }
        if self.db_acquire_timeout.is_zero() {
            p.push("DB_ACQUIRE_TIMEOUT: must be greater than zero".to_owned());
        }
        if let Err(e) = redis::Client::open(self.redis_url.expose_secret()) {
            p.push(format!("REDIS_URL: not a valid Redis URL ({})", e.kind_label()));
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            p.push("REDIS_PREFIX: must be non-empty without whitespace".to_owned());
        }
        let secret = self.jwt_secret.expose_secret();
        if secret.chars().count() < 32 {
            p.push("JWT_SECRET: must be at least 32 characters".to_owned());
        }
        if self.app_env == AppEnv::Production
            && [DEVELOPMENT_JWT_SECRET, EXAMPLE_JWT_SECRET].contains(&secret)
        {
            p.push("JWT_SECRET: the development default and the .env.example placeholder are refused in production".to_owned());
        }
        if self.app_env == AppEnv::Production && !strong_secret(secret) {
            p.push(
                "JWT_SECRET: in production, at least 64 hex characters, or base64/base64url of at least 32 bytes \
                 (e.g. `openssl rand -base64 48`)"
                    .to_owned(),
            );
        }
        if self.app_env == AppEnv::Production && !self.allow_insecure_backends {
            p.extend(self.insecure_backends());
        }
        if self.jwt_expires_in < Duration::from_secs(1) {
            p.push("JWT_EXPIRES_IN: must be at least 1s".to_owned());
        }
        if self.refresh_family_max_age < self.refresh_token_ttl {
            p.push("REFRESH_FAMILY_MAX_AGE: must be at least REFRESH_TOKEN_TTL".to_owned());
        }
        if self.refresh_token_ttl <= self.jwt_expires_in {
            p.push("REFRESH_TOKEN_TTL: must be longer than JWT_EXPIRES_IN".to_owned());
        }
        if self.jwt_issuer.is_empty() || self.jwt_audience.is_empty() {
            p.push("JWT_ISSUER and JWT_AUDIENCE: must not be empty".to_owned());
        }
        for origin in &self.cors_origin {
            if origin != "*" && !is_http_url(origin) {
                p.push(format!("CORS_ORIGIN: `{origin}` is not an http(s) origin"));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            p.push(format!("LOG_LEVEL: `{}` is not a valid filter", self.log_level));
        }
        if !is_http_url(&self.public_url) {
            p.push("PUBLIC_URL: must be an http(s) URL".to_owned());
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            p.push("CURRENCY: must be an ISO 4217 code such as USD".to_owned());
        }
        if self.email_transport == EmailTransport::Smtp && self.smtp_url.is_none() {
            p.push("SMTP_URL: required when EMAIL_TRANSPORT=smtp".to_owned());
        }
        if self.mail_from.parse::<lettre::message::Mailbox>().is_err() {
            p.push("MAIL_FROM: must be a mailbox such as `Shop <no-reply@example.com>`".to_owned());
        }
        if self.smtp_timeout.is_zero() || self.smtp_pool_size == 0 {
            p.push("SMTP_TIMEOUT and SMTP_POOL_SIZE: must be greater than zero".to_owned());
        }
        if self.jobs_concurrency == 0 || self.jobs_missed_heartbeats == 0 {
            p.push("JOBS_CONCURRENCY and JOBS_MISSED_HEARTBEATS: must be at least 1".to_owned());
        }
        if self.jobs_poll_interval.is_zero() {
            p.push("JOBS_POLL_INTERVAL: must be greater than zero".to_owned());
        }
        // apalis keeps heartbeats in whole seconds.
        if self.jobs_heartbeat_interval < Duration::from_secs(1) || self.jobs_timeout < Duration::from_secs(1)
        {
            p.push("JOBS_HEARTBEAT_INTERVAL and JOBS_TIMEOUT: must be at least 1s".to_owned());
        }
        if self.jobs_enabled && self.jobs_concurrency >= self.db_pool_max as usize {
            p.push(format!(
                "JOBS_CONCURRENCY ({}) must be below DB_POOL_MAX ({}): every running e-mail job holds a connection",
                self.jobs_concurrency, self.db_pool_max
            ));
        }
        if self.http_header_read_timeout.is_zero() || self.http_max_connections == 0 {
            p.push("HTTP_HEADER_READ_TIMEOUT and HTTP_MAX_CONNECTIONS: must be greater than zero".to_owned());
        }
        if self.request_timeout.is_zero() {
            p.push("REQUEST_TIMEOUT: must be greater than zero".to_owned());
        }
        for (name, value) in [
            ("RATE_LIMIT_DEFAULT_PER_MINUTE", self.rate_limit_default_per_minute),
            ("RATE_LIMIT_AUTH_PER_MINUTE", self.rate_limit_auth_per_minute),
            ("RATE_LIMIT_LOGIN_PER_EMAIL", self.rate_limit_login_per_email),
            ("RATE_LIMIT_PASSWORD_CHANGE_FAILURES", self.rate_limit_password_change_failures),
        ] {
            if value == 0 {
                p.push(format!(
                    "{name}: must be at least 1 (use RATE_LIMIT_ENABLED=false to switch limits off)"
                ));
            }
        }
        if self.payment_provider == PaymentProvider::Stripe {
            let key = self.stripe_secret_key.as_ref().map(|k| k.expose_secret().to_owned());
            match key {
                None => p.push("STRIPE_SECRET_KEY: required when PAYMENT_PROVIDER=stripe".to_owned()),
                Some(k) if !(k.starts_with("sk_") || k.starts_with("rk_")) => {
                    p.push("STRIPE_SECRET_KEY: must be a secret (sk_…) or restricted (rk_…) key".to_owned());
                }
                Some(_) => {}
            }
            match self.stripe_webhook_secret.as_ref().map(|k| k.expose_secret().starts_with("whsec_")) {
                None => p.push("STRIPE_WEBHOOK_SECRET: required when PAYMENT_PROVIDER=stripe".to_owned()),
                Some(false) => {
                    p.push("STRIPE_WEBHOOK_SECRET: must be a webhook signing secret (whsec_…)".to_owned())
                }
                Some(true) => {}
            }
            if !is_http_url(&self.stripe_api_base) {
                p.push("STRIPE_API_BASE: must be an http(s) URL".to_owned());
            }
        }
        if self.payment_provider_timeout.is_zero() || self.stripe_webhook_tolerance.is_zero() {
            p.push(
                "PAYMENT_PROVIDER_TIMEOUT and STRIPE_WEBHOOK_TOLERANCE: must be greater than zero".to_owned(),
            );
        }
        if self.webhook_timeout.is_zero()
            || self.webhook_retry_base.is_zero()
            || self.webhook_max_attempts == 0
            || self.webhook_concurrency == 0
            || self.webhook_endpoint_concurrency == 0
        {
            p.push("WEBHOOK_TIMEOUT, WEBHOOK_RETRY_BASE, WEBHOOK_MAX_ATTEMPTS, WEBHOOK_CONCURRENCY and WEBHOOK_ENDPOINT_CONCURRENCY: must be greater than zero".to_owned());
        }
        if self.webhook_secrets_key.is_some() && self.webhook_key().is_none() {
            p.push(
                "WEBHOOK_SECRETS_KEY: must be 32 bytes, as 64 hex characters or base64 (e.g. `openssl rand -hex 32`)"
                    .to_owned(),
            );
        }
        if self.body_limit_bytes < 1024 {
            p.push("BODY_LIMIT_BYTES: must be at least 1024".to_owned());
        }
        for (name, expression) in [
            ("SCHEDULE_CLEANUP", &self.schedule_cleanup),
            ("SCHEDULE_ANALYTICS", &self.schedule_analytics),
            ("SCHEDULE_ORDER_EXPIRY", &self.schedule_order_expiry),
        ] {
            if super::schedule::parse(expression).is_err() {
                p.push(format!(
                    "{name}: `{expression}` is not a cron expression (seconds first, e.g. 0 0 2 * * *)"
                ));
            }
        }
        p
    }

    /// How long an unpaid order may stay pending; `None` when expiry is off.
    pub fn order_expiry(&self) -> Option<Duration> {
        let default = match self.payment_provider {
            PaymentProvider::Manual => Duration::ZERO,
            PaymentProvider::Stripe => Duration::from_secs(30 * 60),
        };
        Some(self.order_payment_timeout.unwrap_or(default)).filter(|t| !t.is_zero())
    }

    /// What production refuses without `ALLOW_INSECURE_BACKENDS=true`. No URL is echoed
    /// (they hold passwords): each problem names its setting.
    fn insecure_backends(&self) -> Vec<String> {
        let mut p = Vec::new();
        let allow = "(or set ALLOW_INSECURE_BACKENDS=true)";
        let db = url::Url::parse(self.database_url.expose_secret()).ok();
        let sslmode = db
            .as_ref()
            .and_then(|u| u.query_pairs().find(|(k, _)| k == "sslmode").map(|(_, v)| v.into_owned()));
        if sslmode.as_deref() != Some("verify-full") {
            p.push(format!(
                "DATABASE_URL: production needs sslmode=verify-full (the server's certificate checked) {allow}"
            ));
        }
        let redis = url::Url::parse(self.redis_url.expose_secret()).ok();
        if let Some(r) = redis.filter(|r| r.scheme() == "redis")
            && !loopback(r.host_str().unwrap_or(""))
        {
            p.push(format!("REDIS_URL: plain redis:// to another host is refused in production {allow}"));
        }
        match self.email_transport {
            EmailTransport::File | EmailTransport::Log => p.push(format!(
                "EMAIL_TRANSPORT: `file` and `log` send nothing; production needs smtp {allow}"
            )),
            EmailTransport::Smtp => {
                let smtp = self.smtp_url.as_ref().and_then(|u| url::Url::parse(u.expose_secret()).ok());
                if let Some(u) = smtp
                    && u.scheme() == "smtp"
                    && !u.username().is_empty()
                    && !u.query_pairs().any(|(k, v)| k == "tls" && v == "required")
                {
                    p.push(format!(
                        "SMTP_URL: credentials over plain SMTP are refused in production; use smtps:// or ?tls=required {allow}"
                    ));
                }
            }
        }
        p
    }

    /// The 32-byte key of `WEBHOOK_SECRETS_KEY` (64 hex characters or base64), if set
    /// and well-formed.
    pub fn webhook_key(&self) -> Option<[u8; 32]> {
        use base64::{Engine, engine::general_purpose};
        let raw = self.webhook_secrets_key.as_ref()?.expose_secret().trim().to_owned();
        let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(&raw).ok()?
        } else {
            general_purpose::STANDARD
                .decode(&raw)
                .or_else(|_| general_purpose::URL_SAFE_NO_PAD.decode(&raw))
                .ok()?
        };
        bytes.try_into().ok()
    }

    /// `host:port` to bind.
    pub fn bind_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Whether logs are written as JSON lines.
    pub fn json_logs(&self) -> bool {
        match self.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => self.app_env == AppEnv::Production,
        }
    }
}

/// A production token secret: 64+ hex characters, or base64 / base64url (padded or not)
/// of 32+ bytes.
fn strong_secret(secret: &str) -> bool {
    use base64::{Engine, engine::general_purpose};
    if secret.len() >= 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    [
        general_purpose::STANDARD,
        general_purpose::URL_SAFE,
        general_purpose::STANDARD_NO_PAD,
        general_purpose::URL_SAFE_NO_PAD,
    ]
    .iter()
    .any(|engine| engine.decode(secret).is_ok_and(|bytes| bytes.len() >= 32))
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_database_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a postgres:// URL".to_owned());
    }
    sqlx::postgres::PgConnectOptions::from_str(url)
        .map(|_| ())
        .map_err(|_| "is not a valid PostgreSQL connection URL".to_owned())
}

fn is_http_url(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(host) if !host.is_empty() && !host.starts_with('/') && !host.contains(char::is_whitespace))
}

/// Short labels for redis URL errors, without echoing the URL (it may hold a password).
trait KindLabel {
    fn kind_label(&self) -> String;
}

impl KindLabel for redis::RedisError {
    fn kind_label(&self) -> String {
        format!("{:?}", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Serialized;

    use super::*;

    /// Loads the built-in defaults overlaid with `pairs`, parsed the way `Env` parses.
    fn with(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut f = Figment::from(Toml::string(BUILTIN_DEFAULTS));
        for (k, v) in pairs {
            let value: figment::value::Value = v.parse().expect("infallible");
            f = f.merge(Serialized::default(k, value));
        }
        Settings::from_figment(&f)
    }

    #[test]
    fn builtin_defaults_are_valid() {
        let s = with(&[]).expect("defaults load");
        assert_eq!(s.port, 3000);
        assert_eq!(s.jwt_expires_in, Duration::from_secs(900));
        assert_eq!(s.refresh_token_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(s.cors_origin, vec!["http://localhost:3000"]);
        assert_eq!(s.schedule_cleanup, "0 0 2 * * *");
        assert!(s.smtp_url.is_none());
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = with(&[
            ("jwt_secret", "short"),
            ("database_url", "nonsense"),
            ("db_pool_min", "20"),
            ("db_pool_max", "5"),
            ("port", "not-a-port"),
        ])
        .unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("JWT_SECRET"), "{all}");
        assert!(all.contains("DATABASE_URL"), "{all}");
        assert!(all.contains("DB_POOL_MIN (20) must not exceed DB_POOL_MAX (5)"), "{all}");
        assert!(all.contains("PORT"), "{all}");
        assert_eq!(err.0.len(), 4, "{all}");
    }

    #[test]
    fn a_client_certificate_is_accepted_with_pipelined_reads_on() {
        // The pipeline steps aside for it (product reads use the read pool).
        let url = "postgres://u:p@db.internal/app?sslmode=verify-full&sslcert=/c.pem&sslkey=/k.pem";
        assert!(with(&[("database_url", url)]).is_ok());
    }

    #[test]
    fn production_refuses_the_development_secret() {
        let err = with(&[("app_env", "production")]).unwrap_err();
        assert!(err.0.iter().any(|p| p.contains("refused in production")));
        let ok = with(&[
            ("app_env", "production"),
            ("jwt_secret", &"ab".repeat(32)),
            ("allow_insecure_backends", "true"),
        ]);
        assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.0));
    }

    #[test]
    fn production_wants_a_strong_secret_and_secure_backends_unless_told_otherwise() {
        let strong = "ab".repeat(32);
        let weak = with(&[
            ("app_env", "production"),
            ("jwt_secret", &"x".repeat(40)),
            ("allow_insecure_backends", "true"),
        ])
        .unwrap_err();
        assert!(weak.0.iter().any(|p| p.starts_with("JWT_SECRET: in production")), "{:?}", weak.0);
        for secret in [
            strong.as_str(),
            "3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w",
            "3q2-7w3q2-7w3q2-7w3q2-7w3q2-7w3q2-7w3q2-7w3q2-7w",
        ] {
            let ok = with(&[
                ("app_env", "production"),
                ("jwt_secret", secret),
                ("allow_insecure_backends", "true"),
            ]);
            assert!(ok.is_ok(), "{secret}: {:?}", ok.err().map(|e| e.0));
        }
        // The built-in defaults: no TLS to Postgres, the file transport.
        let err = with(&[("app_env", "production"), ("jwt_secret", &strong)]).unwrap_err();
        let problems: Vec<&str> = err.0.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(problems, ["DATABASE_URL", "EMAIL_TRANSPORT"], "{:?}", err.0);
        let secure = [
            ("app_env", "production"),
            ("jwt_secret", strong.as_str()),
            ("database_url", "postgres://app:secret-pw@db.internal:5432/shop?sslmode=verify-full"),
            ("redis_url", "redis://127.0.0.1:6379"),
            ("email_transport", "smtp"),
            ("smtp_url", "smtps://mailer:secret-pw@smtp.example.com:465"),
        ];
        assert!(with(&secure).is_ok(), "{:?}", with(&secure).err().map(|e| e.0));
        let mut over_tls = secure.to_vec();
        over_tls[3].1 = "rediss://:secret-pw@cache.internal:6380";
        assert!(
            with(&over_tls).is_ok(),
            "rediss:// to another host: {:?}",
            with(&over_tls).err().map(|e| e.0)
        );
        let mut insecure = secure.to_vec();
        insecure[2].1 = "postgres://app:secret-pw@db.internal:5432/shop?sslmode=require";
        insecure[3].1 = "redis://:secret-pw@cache.internal:6379";
        insecure[5].1 = "smtp://mailer:secret-pw@smtp.example.com:25";
        let err = with(&insecure).unwrap_err();
        let problems: Vec<&str> = err.0.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(problems, ["DATABASE_URL", "REDIS_URL", "SMTP_URL"], "{:?}", err.0);
        assert!(err.0.iter().all(|p| !p.contains("secret-pw")), "no URL is echoed: {:?}", err.0);
        insecure.push(("allow_insecure_backends", "true"));
        assert!(with(&insecure).is_ok());
    }

    #[test]
    fn production_refuses_the_placeholder_of_env_example() {
        let example = include_str!("../../.env.example");
        let placeholder =
            example.lines().find_map(|l| l.strip_prefix("JWT_SECRET=")).expect("JWT_SECRET in .env.example");
        assert_eq!(placeholder, EXAMPLE_JWT_SECRET, "keep the constant in step with .env.example");
        let err = with(&[("app_env", "production"), ("jwt_secret", placeholder)]).unwrap_err();
        assert!(err.0.iter().any(|p| p.contains("refused in production")), "{:?}", err.0);
        assert!(with(&[("app_env", "development"), ("jwt_secret", placeholder)]).is_ok());
    }

    #[test]
    fn smtp_transport_needs_a_url() {
        let err = with(&[("email_transport", "smtp")]).unwrap_err();
        assert!(err.0.iter().any(|p| p.starts_with("SMTP_URL")));
        assert!(with(&[("email_transport", "smtp"), ("smtp_url", "smtp://localhost:25")]).is_ok());
    }

    #[test]
    fn stripe_needs_both_keys_of_the_right_kind_and_turns_expiry_on() {
        let err = with(&[("payment_provider", "stripe")]).unwrap_err();
        for key in ["STRIPE_SECRET_KEY: required", "STRIPE_WEBHOOK_SECRET: required"] {
            assert!(err.0.iter().any(|p| p.starts_with(key)), "{key}: {:?}", err.0);
        }
        let wrong = with(&[
            ("payment_provider", "stripe"),
            ("stripe_secret_key", "pk_test_x"),
            ("stripe_webhook_secret", "x"),
        ])
        .unwrap_err();
        assert_eq!(wrong.0.len(), 2, "{:?}", wrong.0);
        assert!(wrong.0.iter().all(|p| !p.contains("pk_test_x")), "a key is never echoed: {:?}", wrong.0);
        let ok = with(&[
            ("payment_provider", "stripe"),
            ("stripe_secret_key", "rk_test_x"),
            ("stripe_webhook_secret", "whsec_x"),
        ])
        .unwrap();
        assert_eq!(ok.order_expiry(), Some(Duration::from_secs(1800)), "30m by default with stripe");
        let manual = with(&[]).unwrap();
        assert_eq!(manual.order_expiry(), None, "off by default with manual payments");
        let off = with(&[
            ("payment_provider", "stripe"),
            ("stripe_secret_key", "sk_x"),
            ("stripe_webhook_secret", "whsec_x"),
            ("order_payment_timeout", "0"),
        ])
        .unwrap();
        assert_eq!(off.order_expiry(), None);
    }

    #[test]
    fn durations_parse_in_every_unit() {
        let d = |s: &str| s.parse::<HumanDuration>().map(|h| h.0);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("30"), Ok(Duration::from_secs(30)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(d("7d"), Ok(Duration::from_secs(604_800)));
        assert!(d("").is_err());
        assert_eq!(d("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(d("5 fortnights").is_err());
        assert!(d("m").is_err());
        assert!(d("99999999999999999999d").is_err());
    }

    #[test]
    fn the_retired_trust_proxy_is_refused_naming_its_replacement() {
        let problems = with(&[("trust_proxy", "true")]).unwrap_err().0;
        assert!(
            problems.iter().any(|p| p.contains("TRUST_PROXY") && p.contains("TRUSTED_PROXIES")),
            "{problems:?}"
        );
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let s = with(&[("trusted_proxies", "10.0.0.0/8, 127.0.0.1,::1")]).unwrap();
        let shown: Vec<String> = s.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        assert!(with(&[]).unwrap().trusted_proxies.is_empty());
        let problems = with(&[("trusted_proxies", "10.0.0.0/8,true")]).unwrap_err().0;
        assert!(
            problems.iter().any(|p| p.starts_with("TRUSTED_PROXIES") && p.contains("`true`")),
            "{problems:?}"
        );
    }

    #[test]
    fn secrets_can_be_read_from_files() {
        let dir = std::env::temp_dir().join(format!("storefront-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwt");
        std::fs::write(&file, "from-a-file-0123456789abcdef0123456789\n").unwrap();
        let vars = |set: &'static [(&'static str, bool)]| {
            let file = file.clone();
            move |name: &str| {
                set.iter().find(|(n, _)| *n == name).map(|(_, is_file)| {
                    if *is_file { file.clone().into_os_string() } else { "direct".into() }
                })
            }
        };
        let mut problems = Vec::new();
        let values = secret_files(vars(&[("JWT_SECRET_FILE", true)]), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(values, [("jwt_secret", "from-a-file-0123456789abcdef0123456789".to_owned())]);
        // Both ways at once, and a file that is not there: each named, no content shown.
        let values = secret_files(vars(&[("JWT_SECRET_FILE", true), ("JWT_SECRET", false)]), &mut problems);
        assert!(values.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        secret_files(vars(&[("REDIS_URL_FILE", true)]), &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("JWT_SECRET and JWT_SECRET_FILE"));
        assert!(problems[1].starts_with("REDIS_URL_FILE: cannot read"));
    }

    #[test]
    fn env_example_documents_every_key() {
        let example = include_str!("../../.env.example");
        for key in KEYS {
            let var = format!("\n{}=", key.to_ascii_uppercase());
            assert!(example.contains(&var), "{} missing from .env.example", key.to_ascii_uppercase());
        }
    }

    #[test]
    fn configuration_doc_lists_every_key_and_no_other() {
        let doc = include_str!("../../docs/configuration.md");
        for key in KEYS {
            let var = format!("`{}`", key.to_ascii_uppercase());
            assert!(doc.contains(&var), "{var} missing from docs/configuration.md");
        }
        // The first cell of a table row names settings: each must be one (or the file form
        // of a secret), so a removed or renamed setting cannot linger in the docs.
        for row in doc.lines().filter(|l| l.starts_with('|')) {
            let first = row.split('|').nth(1).unwrap_or_default();
            for name in first.split('`').skip(1).step_by(2) {
                let env_name = name.starts_with(|c: char| c.is_ascii_uppercase())
                    && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if !env_name {
                    continue;
                }
                let key = name.to_ascii_lowercase();
                let secret_file = key.strip_suffix("_file").is_some_and(|k| SECRET_FILES.contains(&k));
                assert!(
                    KEYS.contains(&key.as_str()) || secret_file || name == "NAME_FILE",
                    "docs/configuration.md has a row for `{name}`, which is not a setting"
                );
            }
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = with(&[("jwt_secret", "a-very-secret-value-that-is-long-enough")]).unwrap();
        assert!(!format!("{s:?}").contains("a-very-secret"));
    }

    #[test]
    fn bad_enums_and_urls_are_reported() {
        let err = with(&[
            ("email_transport", "pigeon"),
            ("currency", "usd"),
            ("public_url", "localhost"),
            ("cors_origin", "http://a.example, ftp://b"),
            ("redis_url", "nope://"),
            ("schedule_cleanup", "every night"),
        ])
        .unwrap_err();
        let all = err.0.join("\n");
        for key in
            ["EMAIL_TRANSPORT", "CURRENCY", "PUBLIC_URL", "CORS_ORIGIN", "REDIS_URL", "SCHEDULE_CLEANUP"]
        {
            assert!(all.contains(key), "{key} missing in {all}");
        }
    }
}
