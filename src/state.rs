//! [`AppState`]: what handlers and extractors can reach, built once per process.
//!
//! Features name `State<T>` of one part (`State<OrderService>`, `State<PgPool>`); the
//! `FromRef` derive provides those projections. This module sits below the routers and
//! above the services: `app → features → state → services/shared`, never back.

use std::{ops::Deref, sync::Arc};

use axum::extract::FromRef;
use secrecy::ExposeSecret;
use sqlx::PgPool;

use crate::{
    features::{
        auth::{AuthService, AuthStore, EmailVerificationService, PasswordResetService},
        orders::{OrderRules, OrderService},
        payments::PaymentService,
        products::ProductService,
        reports::ReportService,
        users::UserService,
        webhooks::{SecretBox, UrlRules, WebhookService},
    },
    platform::{
        config::Settings,
        db::{
            DbHealth,
            pipeline::{Pipeline, PipelineOptions},
            read_pool::{ReadPool, ReadPoolOptions},
        },
        http::{cursor::Cursors, middleware::rate_limit::RateLimiter},
        jobs::{Queues, outbox::Wakeup},
        metrics::Metrics,
        redis::Redis,
    },
    shared::{auth::TokenKeys, jobs, password::PasswordHasher},
};

/// A read-pool connection is replaced after this long (sqlx's pool default too).
const READ_POOL_MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Everything a request handler may need. One `Arc` inside: axum clones the state for
/// every request (and every `State<T>` extractor clones its part), so a clone must be one
/// atomic increment, not one per service (a quarter of a `/health` request's CPU was
/// cloning and dropping the dozen `Arc`s this used to hold).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// `State<T>` of each part, as `#[derive(FromRef)]` gave it.
macro_rules! parts {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(state: &AppState) -> Self {
                state.0.$field.clone()
            }
        })*
    };
}

parts!(
    config: Arc<Settings>,
    db: PgPool,
    redis: Redis,
    tokens: Arc<TokenKeys>,
    auth: AuthService,
    users: UserService,
    products: ProductService,
    orders: OrderService,
    payments: PaymentService,
    limiter: RateLimiter,
    metrics: Metrics,
    resets: PasswordResetService,
    verification: EmailVerificationService,
    queues: Queues,
    reports: ReportService,
    webhooks: WebhookService,
    db_health: DbHealth,
    reads: ReadPool,
    cursors: Cursors,
);

/// The parts of [`AppState`].
#[derive(Clone)]
pub struct AppParts {
    pub config: Arc<Settings>,
    pub db: PgPool,
    pub redis: Redis,
    pub tokens: Arc<TokenKeys>,
    pub auth: AuthService,
    pub users: UserService,
    pub products: ProductService,
    pub orders: OrderService,
    pub payments: PaymentService,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    pub resets: PasswordResetService,
    pub verification: EmailVerificationService,
    /// The Redis job queues (the outbox relay pushes to them).
    pub queues: Queues,
    pub reports: ReportService,
    pub webhooks: WebhookService,
    /// Whether the database is known to be unreachable (requests then answer 503 at once).
    pub db_health: DbHealth,
    /// Connections for the hottest reads, returned without sqlx's release ping.
    pub reads: ReadPool,
    /// Rung by writers after committing outbox rows: it wakes the relays.
    pub wakeup: Wakeup,
    /// Signs and opens the lists' cursors.
    pub cursors: Cursors,
}

impl AppState {
    /// Builds the state and its services from already-created connections (tests pass
    /// their own pool).
    pub fn new(config: Settings, db: PgPool, redis: Redis) -> Self {
        let hasher = PasswordHasher::new().with_queue_max(config.password_hash_queue_max);
        // List cursors are signed with a key derived from the token secret: every instance
        // of a deployment reads every other's.
        let cursors = Cursors::new(config.jwt_secret.expose_secret().as_bytes());
        let tokens = Arc::new(TokenKeys::from_settings(&config));
        let wakeup = Wakeup::new(db.clone());
        let store = AuthStore::new(db.clone(), wakeup.clone());
        let auth = AuthService::new(store, hasher.clone(), tokens.clone(), config.refresh_token_ttl)
            .with_family_max_age(config.refresh_family_max_age);
        let users = UserService::new(db.clone(), hasher.clone());
        let resets = PasswordResetService::new(db.clone(), hasher, wakeup.clone());
        let verification = EmailVerificationService::new(db.clone(), wakeup.clone());
        // The read pool reaches the database the given pool does (tests pass their own).
        let reads = ReadPool::new(
            &db,
            ReadPoolOptions {
                max_connections: config.db_read_pool_max,
                acquire_timeout: config.db_acquire_timeout,
                idle_timeout: config.db_idle_timeout,
                max_lifetime: READ_POOL_MAX_LIFETIME,
                statement_timeout: config.db_read_statement_timeout,
            },
        );
        let pipeline = (config.db_pipeline_connections > 0).then(|| {
            Pipeline::new(
                &db,
                PipelineOptions {
                    connections: config.db_pipeline_connections,
                    connect_timeout: config.db_acquire_timeout,
                    statement_timeout: config.db_read_statement_timeout,
                    slow_threshold: config.db_slow_query_threshold,
                    max_lifetime: READ_POOL_MAX_LIFETIME,
                },
            )
        });
        let pipeline = pipeline.flatten();
        let products =
            ProductService::new(db.clone(), reads.clone(), pipeline, &config.currency, cursors.clone());
        // A claim unanswered for twice the request timeout belongs to a request that died.
        let orders = OrderService::new(
            db.clone(),
            reads.clone(),
            wakeup.clone(),
            &config.currency,
            config.request_timeout * 2,
            cursors.clone(),
            OrderRules {
                expires_in: config.order_expiry(),
                max_pending: Some(i64::from(config.order_max_pending_per_user)).filter(|&n| n > 0),
            },
        );
        let provider = crate::features::payments::provider_from(&config)
            .expect("the payment provider's HTTP client builds (its settings were validated)");
        let payments = PaymentService::new(db.clone(), wakeup.clone(), provider);
        let limiter =
            RateLimiter::new(redis.clone(), &config).exempting(&[crate::features::payments::WEBHOOK_PATH]);
        let metrics = Metrics::default();
        let queues = Queues::new(&redis, &config, jobs::QUEUES);
        let reports = ReportService::new(db.clone(), wakeup.clone());
        let db_health = DbHealth::new(&db);
        // Outside production a missing key is derived from the token secret, so a local
        // stack needs no extra step; production stores no secret without its own key.
        let fallback = (config.app_env != crate::platform::config::AppEnv::Production)
            .then(|| config.jwt_secret.expose_secret().as_bytes().to_vec());
        let webhooks = WebhookService::new(
            db.clone(),
            SecretBox::new(config.webhook_key(), fallback.as_deref()),
            UrlRules {
                allow_http: config.webhook_allow_http,
                allow_private: config.webhook_allow_private_targets,
            },
        );
        Self(Arc::new(AppParts {
            config: Arc::new(config),
            db,
            redis,
            tokens,
            auth,
            users,
            products,
            orders,
            payments,
            limiter,
            metrics,
            resets,
            verification,
            queues,
            reports,
            webhooks,
            db_health,
            reads,
            wakeup,
            cursors,
        }))
    }

    /// The same state with other settings (benchmarks switch roles per run).
    pub fn with_config(self, config: Settings) -> Self {
        let parts = Arc::try_unwrap(self.0).unwrap_or_else(|shared| AppParts::clone(&shared));
        Self(Arc::new(AppParts { config: Arc::new(config), ..parts }))
    }
}
