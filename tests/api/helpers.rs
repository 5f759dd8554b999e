//! Test harness: spawns the real application on 127.0.0.1:0 and offers a small client.

use std::{net::SocketAddr, sync::Once};

use axum::Router;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use storefront::{
    app,
    features::products::{NewProduct, ProductRow},
    platform::{
        config::{AppEnv, EmailTransport, Settings},
        http::server::{self, ServerLimits},
        redis::Redis,
    },
    shared::email::Email,
    state::AppState,
};

use crate::mail::SmtpServer;

/// A running application bound to a random port.
pub struct TestApp {
    pub address: SocketAddr,
    /// The metrics listener (`/metrics`, `/health`), apart from the API port.
    pub metrics_address: SocketAddr,
    pub client: reqwest::Client,
    /// The state the app runs with (pool, Redis, settings, services) for direct checks.
    pub state: AppState,
    /// The background roles, when started ([`TestApp::spawn_mailing`]).
    pub background: Option<app::Background>,
}

static TRACING: Once = Once::new();

/// Test settings: `config/test.toml` plus environment, with a unique Redis prefix.
pub fn test_settings() -> Settings {
    let mut settings = Settings::load_for(AppEnv::Test).expect("test configuration loads");
    settings.redis_prefix = format!("test:{}", uuid::Uuid::new_v4());
    settings
}

/// Settings of a process that relays and sends e-mail through the SMTP server at `url`,
/// with short poll and heartbeat intervals so tests see results quickly.
pub fn mailing_settings(s: &mut Settings, url: &str) {
    s.email_transport = EmailTransport::Smtp;
    s.smtp_url = Some(url.to_owned().into());
    s.smtp_timeout = std::time::Duration::from_secs(5);
    s.relay_enabled = true;
    s.relay_poll_interval = std::time::Duration::from_millis(500);
    s.jobs_enabled = true;
    s.jobs_poll_interval = std::time::Duration::from_millis(100);
    s.jobs_heartbeat_interval = std::time::Duration::from_secs(1);
    s.jobs_missed_heartbeats = 3;
    s.shutdown_timeout = std::time::Duration::from_secs(5);
}

impl TestApp {
    /// The application with test settings on `pool`.
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, |_| {}, Router::new()).await
    }

    /// The application with adjusted settings and extra routes under the real stack.
    pub async fn spawn_with(
        pool: PgPool,
        adjust: impl FnOnce(&mut Settings),
        extra: Router<AppState>,
    ) -> Self {
        TRACING.call_once(|| {
            // Quiet unless asked: TEST_LOG=debug cargo test ...
            if let Ok(level) = std::env::var("TEST_LOG") {
                let _ = tracing_subscriber::fmt().with_env_filter(level).with_test_writer().try_init();
            }
        });
        let mut settings = test_settings();
        settings.metrics_host = "127.0.0.1".to_owned();
        settings.metrics_port = 0;
        adjust(&mut settings);
        let redis = Redis::connect_lazy(&settings).expect("redis handle");
        let state = AppState::new(settings, pool, redis);
        let router = app::build_router_with(state.clone(), extra);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local addr");
        let limits = ServerLimits::from(&*state.config);
        tokio::spawn(server::run(
            listener,
            router,
            std::future::pending(),
            std::time::Duration::from_secs(1),
            limits,
        ));
        let (metrics_address, _) = app::start_metrics_listener(&state).await.expect("metrics listener");
        let client =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { address, metrics_address, client, state, background: None }
    }

    /// The application with its background roles running as in production (outbox
    /// relay and job workers, tuned to react fast) and e-mail sent to `smtp`.
    pub async fn spawn_mailing(pool: PgPool, smtp: &SmtpServer, adjust: impl FnOnce(&mut Settings)) -> Self {
        let url = smtp.url();
        let mut app = Self::spawn_with(
            pool,
            move |s| {
                mailing_settings(s, &url);
                adjust(s);
            },
            Router::new(),
        )
        .await;
        app.background = Some(app::start_background(&app.state).await.expect("background roles start"));
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("request sent")
    }

    /// `GET path` on the metrics listener.
    pub async fn get_metrics_listener(&self, path: &str) -> Response {
        let url = format!("http://{}{}", self.metrics_address, path);
        self.client.get(url).send().await.expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path).json(body).send().await.expect("request sent")
    }
}

/// Asserts `res` is an error envelope with `status` and `code`, whose `requestId`
/// matches the `X-Request-Id` header; returns the body.
#[track_caller]
pub fn assert_error_parts(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want_status: u16,
    code: &str,
) {
    assert_eq!(status.as_u16(), want_status, "status; body: {body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let header_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("X-Request-Id header");
    assert_eq!(body["error"]["requestId"], header_id, "{body}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "error bodies are JSON"
    );
}

/// Reads the body of an error response and checks its envelope (see [`assert_error_parts`]).
pub async fn assert_error(res: Response, want_status: u16, code: &str) -> Value {
    let status = res.status();
    let headers = res.headers().clone();
    let body: Value = res.json().await.expect("JSON error body");
    assert_error_parts(status, &headers, &body, want_status, code);
    body
}

/// A signed-in user as the tests see it.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: uuid::Uuid,
    pub email: String,
    pub token: String,
    pub refresh_token: String,
}

impl TestApp {
    /// Registers `email` with `password`; panics unless 201.
    pub async fn register(&self, email: &str, password: &str) -> Session {
        let res = self
            .post_json("/api/v1/auth/register", &serde_json::json!({"email": email, "password": password}))
            .await;
        assert_eq!(res.status(), 201, "register {email}");
        session_from(res.json().await.unwrap())
    }

    /// Logs in; panics unless 200.
    pub async fn login(&self, email: &str, password: &str) -> Session {
        let res = self
            .post_json("/api/v1/auth/login", &serde_json::json!({"email": email, "password": password}))
            .await;
        assert_eq!(res.status(), 200, "login {email}");
        session_from(res.json().await.unwrap())
    }

    /// A user to create: `app.user().signed_in().await`, `app.user().admin().signed_in().await`.
    pub fn user(&self) -> UserBuilder<'_> {
        UserBuilder { app: self, email: None, password: "password123".to_owned(), admin: false }
    }

    /// A product to create: `app.product().price_cents(1_250).stock(1).create().await`.
    pub fn product(&self) -> ProductBuilder<'_> {
        ProductBuilder { app: self, sku: None, name: None, description: None, price_cents: 100, stock: 10 }
    }

    /// A request with `Authorization: Bearer <token>`.
    pub fn authed(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(token)
    }
}

fn session_from(body: Value) -> Session {
    let data = &body["data"];
    Session {
        id: data["user"]["id"].as_str().unwrap().parse().unwrap(),
        email: data["user"]["email"].as_str().unwrap().to_owned(),
        token: data["token"].as_str().unwrap().to_owned(),
        refresh_token: data["refreshToken"].as_str().unwrap().to_owned(),
    }
}

/// Sends a request and returns status, headers and JSON body (`Null` when empty).
pub async fn send(req: RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let res = req.send().await.expect("request sent");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("body");
    let body =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    (status, headers, body)
}

/// Sends `req` and checks the error envelope (see [`assert_error_parts`]); returns the body.
pub async fn expect_error(req: RequestBuilder, want_status: u16, code: &str) -> Value {
    assert_error(req.send().await.expect("request sent"), want_status, code).await
}

/// `DATABASE_URL` of the per-test database behind `pool`.
pub fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let db = pool.connect_options().get_database().expect("database name").to_owned();
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    format!("{server}/{db}")
}

/// Builds a user (see [`TestApp::user`]): a `user` registered over HTTP, or an admin
/// created the way `storefront create-admin` does; both signed in over HTTP.
pub struct UserBuilder<'a> {
    app: &'a TestApp,
    email: Option<String>,
    password: String,
    admin: bool,
}

impl UserBuilder<'_> {
    /// Default: a unique address.
    pub fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_owned());
        self
    }

    /// Default: `password123`.
    pub fn password(mut self, password: &str) -> Self {
        self.password = password.to_owned();
        self
    }

    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Creates the account and signs it in.
    pub async fn signed_in(self) -> Session {
        let kind = if self.admin { "admin" } else { "user" };
        let email =
            self.email.unwrap_or_else(|| format!("{kind}-{}@example.com", uuid::Uuid::new_v4().simple()));
        if !self.admin {
            return self.app.register(&email, &self.password).await;
        }
        let address = Email::parse(&email).expect("a valid test address");
        let password = self.password.clone();
        self.app.state.users.create_admin(&address, false, || Ok(password)).await.expect("admin created");
        self.app.login(&email, &self.password).await
    }
}

/// Builds a product (see [`TestApp::product`]) through the catalogue service. Defaults:
/// a unique SKU, name `Product {sku}`, 100 cents, stock 10.
pub struct ProductBuilder<'a> {
    app: &'a TestApp,
    sku: Option<String>,
    name: Option<String>,
    description: Option<String>,
    price_cents: i64,
    stock: i32,
}

impl ProductBuilder<'_> {
    pub fn sku(mut self, sku: &str) -> Self {
        self.sku = Some(sku.to_owned());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.to_owned());
        self
    }

    pub fn price_cents(mut self, price_cents: i64) -> Self {
        self.price_cents = price_cents;
        self
    }

    pub fn stock(mut self, stock: i32) -> Self {
        self.stock = stock;
        self
    }

    pub async fn create(self) -> ProductRow {
        let sku = self.sku.unwrap_or_else(|| format!("SKU-{}", uuid::Uuid::new_v4().simple()));
        let name = self.name.unwrap_or_else(|| format!("Product {sku}"));
        let new = NewProduct {
            sku: &sku,
            name: &name,
            description: self.description.as_deref(),
            price_cents: self.price_cents,
            stock: self.stock,
        };
        self.app.state.products.create(&new).await.expect("product created")
    }
}

/// The catalogue's sorts: the `sort` parameter and the SQL `order by` it means.
pub const PRODUCT_SORTS: [(&str, &str); 6] = [
    ("name", "name asc, id asc"),
    ("-name", "name desc, id desc"),
    ("price", "price_cents asc, id asc"),
    ("-price", "price_cents desc, id desc"),
    ("createdAt", "created_at asc, id asc"),
    ("-createdAt", "created_at desc, id desc"),
];

/// Every broken data invariant (`storefront check`), described; empty when all hold.
pub async fn broken_invariants(pool: &PgPool) -> Vec<String> {
    storefront::features::maintenance::check_invariants(pool)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.count > 0)
        .map(|f| format!("{}: {:?}", f.invariant.name, f.sample))
        .collect()
}

/// A server a test starts on a free loopback port with a fresh directory (the SMTP
/// server, the Stripe stand-in): files in the directory steer it; killed and its
/// directory removed on drop.
pub struct LocalServer {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: std::process::Child,
}

impl LocalServer {
    /// Runs `command(port, dir)` (output discarded) and waits until it listens.
    pub fn start(what: &str, command: impl FnOnce(u16, &std::path::Path) -> std::process::Command) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("storefront-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = command(port, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} runs: {e}"));
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{what} did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { port, dir, child }
    }

    /// Writes the control file `name` (`Some`), or removes it (`None`).
    pub fn flag(&self, name: &str, content: Option<&str>) {
        let path = self.dir.join(name);
        match content {
            Some(c) => std::fs::write(path, c).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
