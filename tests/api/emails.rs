//! Promised e-mails end to end, with real components only: a business change writes the outbox,
//! the relay moves it to Redis, a worker sends the e-mail to a real SMTP server
//! (aiosmtpd), and each promised e-mail arrives once: across a Redis outage, a failing
//! transport (dead letters, admin retry), a worker killed mid-send, and SIGTERM.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use storefront::platform::jobs::{QueuedJob, store};

use crate::{
    helpers::{TestApp, expect_error, send, url_of},
    mail::{SmtpServer, part},
};

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.state.db).await.unwrap()
}

/// Polls `check` every 50 ms until it holds; panics after `within`.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subject(message: &str) -> &str {
    message.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default()
}

async fn place_order(app: &TestApp, token: &str, body: &Value) {
    let (status, _, res) = send(app.authed(Method::POST, "/api/v1/orders", token).json(body)).await;
    assert_eq!(status, 201, "{res}");
}

#[sqlx::test]
async fn each_business_email_arrives_once_with_its_details(pool: PgPool) {
    // Arrange
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().sku("MUG").name("Mug").price_cents(1250).stock(5).create().await;
    let tea = app.product().sku("TEA").name("Tea").price_cents(99).stock(5).create().await;
    // Act
    let order = json!({
        "items": [{"productId": mug.id, "quantity": 2}, {"productId": tea.id, "quantity": 3}],
        "shippingAddress": {"line1": "1 Main St", "city": "Springfield", "postalCode": "12345", "country": "US"},
    });
    place_order(&app, &ann.token, &order).await;
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    // Assert: a welcome and a confirmation, multipart, to the user.
    let welcome = messages.iter().find(|m| subject(m) == "Welcome to Storefront").expect("welcome");
    assert!(welcome.contains(&format!("To: {}", ann.email)), "{welcome}");
    assert!(welcome.contains("From: Storefront <no-reply@storefront.local>"), "{welcome}");
    assert!(part(welcome, "text/plain").contains(&format!("Your account {} is ready", ann.email)));
    assert!(part(welcome, "text/html").contains("<html"));
    let confirmation = messages.iter().find(|m| subject(m).starts_with("Your order ")).expect("confirmation");
    assert!(confirmation.contains(&format!("To: {}", ann.email)));
    let text = part(confirmation, "text/plain");
    assert!(text.contains("2 x Mug (MUG) at $12.50 = $25.00"), "{text}");
    assert!(text.contains("3 x Tea (TEA) at $0.99 = $2.97"), "{text}");
    assert!(text.contains("Total: $27.97") && text.contains("Springfield"), "{text}");
    assert!(part(confirmation, "text/html").contains("$27.97"));
    // Payloads hold ids only; the ledger has one row per e-mail.
    assert_eq!(count(&app, "select count(*) from outbox where payload::text like '%@%'").await, 0);
    assert_eq!(count(&app, "select count(*) from sent_emails").await, 2);

    // A job delivered again (a crash after the send, say) sends nothing.
    let welcome_id: uuid::Uuid = sqlx::query_scalar("select id from outbox where kind = 'welcome'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let again =
        QueuedJob { outbox_id: welcome_id, kind: "welcome".into(), payload: json!({"userId": ann.id}) };
    apalis::prelude::TaskSink::push(&mut app.state.queues.get("emails").unwrap().clone(), again)
        .await
        .unwrap();
    eventually("the duplicate job finishes", Duration::from_secs(10), async || {
        store::counts(&app.state.queues).await.unwrap()[0].done == 3
    })
    .await;
    assert_eq!(smtp.messages().len(), 2, "no second welcome");

    // Metrics count what was sent and what waits.
    let (_, _, _) = send(app.request(Method::GET, "/health")).await;
    let metrics = app.get_metrics_listener("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"emails_total{template="welcome",outcome="sent"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"emails_total{template="order-confirmation",outcome="sent"} 1"#));
    assert!(metrics.contains(r#"jobs{queue="emails",state="dead"} 0"#), "{metrics}");
    assert!(metrics.contains("outbox_lag_seconds 0"), "{metrics}");
    assert!(metrics.contains(r#"job_duration_seconds_count{queue="emails",kind="welcome"} 2"#), "{metrics}");
}

#[sqlx::test]
async fn forgot_sends_a_working_link_that_no_table_or_queue_holds(pool: PgPool) {
    // Arrange
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let ann = app.user().signed_in().await;
    smtp.wait_for(1, Duration::from_secs(10)).await;
    // Act
    let (status, _, _) =
        send(app.request(Method::POST, "/api/v1/auth/password/forgot").json(&json!({"email": ann.email})))
            .await;
    assert_eq!(status, 202);
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    let mail = messages.iter().find(|m| subject(m) == "Reset your Storefront password").unwrap();
    let text = part(mail, "text/plain");
    let link = text.split_whitespace().find(|w| w.contains("/reset-password#token=")).unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    // Assert: the token appears in no outbox row, ledger row or Redis value.
    let in_db: i64 = sqlx::query_scalar(
        "select (select count(*) from outbox where payload::text like '%' || $1 || '%')
              + (select count(*) from sent_emails where template like '%' || $1 || '%')",
    )
    .bind(&token)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(in_db, 0);
    let mut conn = app.state.redis.conn();
    let keys: Vec<String> = conn.keys(format!("{}*", app.state.redis.prefix())).await.unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let dumped: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(
            !dumped.windows(token.len()).any(|w| w == token.as_bytes()),
            "the reset token is stored in Redis key {key}"
        );
    }
    // The link works, once.
    let reset = |password: &str| {
        app.request(Method::POST, "/api/v1/auth/password/reset")
            .json(&json!({"token": token, "password": password}))
    };
    assert_eq!(send(reset("brand-new-pass")).await.0, 204);
    app.login(&ann.email, "brand-new-pass").await;
    expect_error(reset("another-pass"), 400, "VALIDATION_ERROR").await;
}

#[sqlx::test]
async fn a_failing_transport_kills_the_job_after_three_attempts_and_a_retry_delivers_it_once(pool: PgPool) {
    // Arrange: the SMTP server refuses everything (451).
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let admin = app.user().admin().signed_in().await;
    let user = app.user().signed_in().await;
    smtp.wait_for(1, Duration::from_secs(10)).await;
    smtp.fail(true);
    let seen_before = smtp.recipients_seen();
    let ann = app.user().signed_in().await;
    // Act: 3 attempts, 2 s then 4 s apart (plus jitter), then dead.
    let started = Instant::now();
    let mut dead = Value::Null;
    eventually("the job is dead", Duration::from_secs(30), async || {
        let (_, _, body) = send(app.authed(Method::GET, "/api/v1/admin/jobs/dead", &admin.token)).await;
        dead = body;
        dead["pagination"]["total"] == 1
    })
    .await;
    // Assert: listed with its failure, no payload.
    assert!(started.elapsed() >= Duration::from_secs(6), "backoff of 2 s + 4 s: {:?}", started.elapsed());
    assert_eq!(smtp.recipients_seen() - seen_before, 3, "three attempts reached the server");
    let job = &dead["data"][0];
    assert_eq!(job["queue"], "emails");
    assert_eq!(job["kind"], "welcome");
    assert_eq!(job["attempts"], 3);
    assert!(job["lastError"].as_str().unwrap().contains("451"), "{job}");
    assert!(
        job["outboxId"].is_string() && job["firstAttemptAt"].is_string() && job["lastAttemptAt"].is_string()
    );
    assert!(job.get("payload").is_none() && !dead.to_string().contains(&ann.email), "{dead}");
    let (_, _, counts) = send(app.authed(Method::GET, "/api/v1/admin/jobs", &admin.token)).await;
    let emails = counts["data"].as_array().unwrap().iter().find(|q| q["queue"] == "emails").unwrap().clone();
    assert_eq!((emails["dead"].as_u64(), emails["pending"].as_u64()), (Some(1), Some(0)), "{counts}");
    let (_, _, by_queue) =
        send(app.authed(Method::GET, "/api/v1/admin/jobs/dead?queue=reports", &admin.token)).await;
    assert_eq!(by_queue["pagination"]["total"], 0);
    expect_error(
        app.authed(Method::GET, "/api/v1/admin/jobs/dead?queue=nope", &admin.token),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    expect_error(app.authed(Method::GET, "/api/v1/admin/jobs", &user.token), 403, "FORBIDDEN").await;
    expect_error(app.request(Method::GET, "/api/v1/admin/jobs/dead"), 401, "UNAUTHORIZED").await;

    // The transport recovers; an admin retry delivers it, once.
    smtp.fail(false);
    let id = job["id"].as_str().unwrap().to_owned();
    let retry = format!("/api/v1/admin/jobs/dead/{id}/retry");
    expect_error(app.authed(Method::POST, &retry, &user.token), 403, "FORBIDDEN").await;
    let (status, _, body) = send(app.authed(Method::POST, &retry, &admin.token)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "pending");
    let messages = smtp.wait_for(2, Duration::from_secs(10)).await;
    assert!(messages.iter().any(|m| m.contains(&format!("To: {}", ann.email))));
    expect_error(app.authed(Method::POST, &retry, &admin.token), 404, "NOT_FOUND").await;
    let unknown = "/api/v1/admin/jobs/dead/01JD5ZP8Y6M3W0Q9K2V7T4B1XC/retry";
    expect_error(app.authed(Method::POST, unknown, &admin.token), 404, "NOT_FOUND").await;
    expect_error(
        app.authed(Method::POST, "/api/v1/admin/jobs/dead/not-an-id/retry", &admin.token),
        404,
        "NOT_FOUND",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 2, "the retried e-mail arrived once");
    assert_eq!(count(&app, "select count(*) from sent_emails").await, 2);
}

/// A Redis server of the test's own, to stop and start again on the same port.
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, child: None };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/services installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[sqlx::test]
async fn with_redis_down_orders_and_registrations_succeed_and_their_emails_arrive_once_it_is_back(
    pool: PgPool,
) {
    // Arrange
    let smtp = SmtpServer::start();
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = TestApp::spawn_mailing(pool, &smtp, |s| s.redis_url = url.into()).await;
    let buyer = app.user().signed_in().await;
    let mug = app.product().stock(100).create().await;
    smtp.wait_for(1, Duration::from_secs(10)).await;
    // Act: Redis goes away; the business goes on.
    redis.stop();
    let order = json!({"items": [{"productId": mug.id, "quantity": 1}]});
    for _ in 0..20 {
        place_order(&app, &buyer.token, &order).await;
    }
    for _ in 0..5 {
        app.user().signed_in().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&app, "select count(*) from outbox where sent_at is null").await, 25, "rows wait");
    assert_eq!(smtp.messages().len(), 1);
    redis.resume();
    // Assert: all 25 arrive, each once.
    let messages = smtp.wait_for(26, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages_after = smtp.messages();
    assert_eq!(messages_after.len(), 26, "no duplicates");
    let mut confirmations: Vec<&str> =
        messages.iter().map(|m| subject(m)).filter(|s| s.starts_with("Your order ")).collect();
    confirmations.sort_unstable();
    confirmations.dedup();
    assert_eq!(confirmations.len(), 20, "one confirmation per order");
    assert_eq!(messages.iter().filter(|m| subject(m) == "Welcome to Storefront").count(), 6);
    assert_eq!(count(&app, "select count(*) from sent_emails").await, 26);
    assert_eq!(count(&app, "select count(*) from outbox where sent_at is null").await, 0);
}

/// `storefront worker` on the test's database, Redis prefix and SMTP server, with
/// heartbeats fast enough for a test (a silent worker is presumed dead after 3 s).
fn worker(app: &TestApp, smtp: &SmtpServer) -> Child {
    worker_with_metrics(app, smtp, 0)
}

/// [`worker`] with its metrics listener on `metrics_port` (0: any free port).
fn worker_with_metrics(app: &TestApp, smtp: &SmtpServer, metrics_port: u16) -> Child {
    let c = &app.state.config;
    Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_DOTENV", "1")
        .env("APP_ENV", "test")
        .env("DATABASE_URL", url_of(&app.state.db))
        .env("REDIS_URL", secrecy::ExposeSecret::expose_secret(&c.redis_url))
        .env("REDIS_PREFIX", &c.redis_prefix)
        .env("RUN_MIGRATIONS", "false")
        .env("RELAY_ENABLED", "true")
        .env("JOBS_ENABLED", "true")
        .env("SCHEDULER_ENABLED", "false")
        .env("EMAIL_TRANSPORT", "smtp")
        .env("SMTP_URL", smtp.url())
        .env("SMTP_TIMEOUT", "10m")
        .env("JOBS_TIMEOUT", "10m")
        .env("JOBS_POLL_INTERVAL", "100ms")
        .env("JOBS_HEARTBEAT_INTERVAL", "1s")
        .env("JOBS_MISSED_HEARTBEATS", "3")
        .env("SHUTDOWN_TIMEOUT", "20s")
        .env("METRICS_PORT", metrics_port.to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, signal: &str) {
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
}

#[sqlx::test]
async fn a_job_of_a_worker_killed_mid_send_is_finished_by_another_and_arrives_once(pool: PgPool) {
    // Arrange: a worker stuck in the middle of a send (the server stalls after RCPT).
    let smtp = SmtpServer::start();
    smtp.slow(Some(600));
    let app = TestApp::spawn(pool).await;
    let mut first = worker(&app, &smtp);
    let ann = app.user().signed_in().await;
    eventually("the first worker is sending", Duration::from_secs(20), async || smtp.recipients_seen() == 1)
        .await;
    // Act: SIGKILL it, the server recovers, another worker starts.
    signal(&first, "-KILL");
    first.wait().unwrap();
    let killed_at = Instant::now();
    smtp.slow(None);
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut second = worker_with_metrics(&app, &smtp, metrics_port);
    // Assert: rescued within a minute, received once.
    let messages = smtp.wait_for(1, Duration::from_secs(60)).await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(60), "rescued after {took:?}");
    assert!(messages[0].contains(&format!("To: {}", ann.email)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.messages().len(), 1, "received once");
    assert_eq!(count(&app, "select count(*) from sent_emails").await, 1);
    // The worker's own metrics listener counts the e-mail it sent and the job it ran.
    let text =
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"emails_total{template="welcome",outcome="sent"} 1"#), "{text}");
    assert!(text.contains(r#"job_duration_seconds_count{queue="emails",kind="welcome"} 1"#), "{text}");
    signal(&second, "-TERM");
    assert!(second.wait().unwrap().success());
}

#[sqlx::test]
async fn sigterm_lets_a_running_job_finish_before_the_worker_exits(pool: PgPool) {
    // Arrange: each send takes 2 s.
    let smtp = SmtpServer::start();
    smtp.slow(Some(2));
    let app = TestApp::spawn(pool).await;
    let mut child = worker(&app, &smtp);
    app.user().signed_in().await;
    eventually("the worker is sending", Duration::from_secs(20), async || smtp.recipients_seen() == 1).await;
    // Act
    signal(&child, "-TERM");
    // Assert: the send completes, then the process exits cleanly.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    assert_eq!(smtp.messages().len(), 1, "the running job finished");
    assert_eq!(count(&app, "select count(*) from sent_emails").await, 1);
}
