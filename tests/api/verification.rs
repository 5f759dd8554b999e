//! E-mail verification and the bounds on mail a stranger can trigger, end to end through a
//! real SMTP server.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::{
    helpers::{TestApp, expect_error, send},
    mail::{SmtpServer, part},
};

const VERIFY: &str = "/api/v1/auth/verify-email";
const RESEND: &str = "/api/v1/auth/verify-email/resend";
const PROFILE: &str = "/api/v1/users/profile";

/// The tokens of the verification links `smtp` received for `email`, once there are at
/// least `expected`.
async fn verify_tokens(smtp: &SmtpServer, email: &str, expected: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let tokens: Vec<String> = smtp
            .messages()
            .iter()
            .filter(|m| m.contains(&format!("To: {email}")))
            .filter_map(|m| {
                let text = part(m, "text/plain");
                let link = text.split_whitespace().find(|w| w.contains("/verify-email#token="))?;
                Some(link.split("#token=").nth(1).unwrap().to_owned())
            })
            .collect();
        if tokens.len() >= expected {
            return tokens;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no verification link for {email}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn verified(app: &TestApp, token: &str) -> bool {
    let (status, _, body) = send(app.authed(Method::GET, PROFILE, token)).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["emailVerified"].as_bool().expect("emailVerified")
}

#[sqlx::test]
async fn the_welcome_link_verifies_the_account_once(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let ann = app.register("ann@example.com", "password123").await;
    assert!(!verified(&app, &ann.token).await);
    let token = verify_tokens(&smtp, "ann@example.com", 1).await.remove(0);
    assert!(token.len() >= 43, "256 random bits");
    // The raw token is stored nowhere: only its hash.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from email_verification_tokens where token_hash = convert_to($1, 'UTF8')",
    )
    .bind(&token)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(stored, 0);

    assert_eq!(send(app.request(Method::POST, VERIFY).json(&json!({"token": token}))).await.0, 204);
    assert!(verified(&app, &ann.token).await);
    for bad in [token.as_str(), "made-up"] {
        let err = expect_error(
            app.request(Method::POST, VERIFY).json(&json!({"token": bad})),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err["error"]["fields"]["token"].is_array(), "{err}");
    }
    // Verified: a resend is accepted and sends nothing.
    assert_eq!(send(app.authed(Method::POST, RESEND, &ann.token)).await.0, 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(verify_tokens(&smtp, "ann@example.com", 1).await.len(), 1);
}

#[sqlx::test]
async fn a_resent_link_replaces_the_old_one_and_resends_are_limited(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let ann = app.register("ann@example.com", "password123").await;
    let first = verify_tokens(&smtp, "ann@example.com", 1).await.remove(0);
    for _ in 0..3 {
        assert_eq!(send(app.authed(Method::POST, RESEND, &ann.token)).await.0, 202);
    }
    expect_error(app.authed(Method::POST, RESEND, &ann.token), 429, "RATE_LIMITED").await;
    expect_error(app.request(Method::POST, RESEND), 401, "UNAUTHORIZED").await;
    let tokens = verify_tokens(&smtp, "ann@example.com", 4).await;
    // Each e-mail's transaction commits just after its send: wait for the last.
    let started = Instant::now();
    while sqlx::query_scalar::<_, i64>(
        "select count(*) from sent_emails where template in ('welcome', 'verify-email')",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap()
        < 4
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Only the newest link works.
    expect_error(app.request(Method::POST, VERIFY).json(&json!({"token": first})), 400, "VALIDATION_ERROR")
        .await;
    let newest =
        sqlx::query_scalar::<_, i64>("select count(*) from email_verification_tokens where used_at is null")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(newest, 1);
    let works: Vec<u16> = futures::future::join_all(tokens.iter().filter(|t| **t != first).map(|t| {
        let req = app.request(Method::POST, VERIFY).json(&json!({"token": t}));
        async move { send(req).await.0.as_u16() }
    }))
    .await;
    assert_eq!(works.iter().filter(|s| **s == 204).count(), 1, "{works:?}");
    assert!(verified(&app, &ann.token).await);
}

#[sqlx::test]
async fn an_unverified_account_may_not_order_until_it_confirms(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |s| s.require_verified_email = true).await;
    let mug = app.product().price_cents(500).stock(5).create().await;
    let ann = app.register("ann@example.com", "password123").await;
    let order = json!({"items": [{"productId": mug.id, "quantity": 1}]});
    let place = || {
        app.authed(Method::POST, "/api/v1/orders", &ann.token).header("idempotency-key", "k-1").json(&order)
    };
    expect_error(place(), 403, "EMAIL_NOT_VERIFIED").await;
    let stock: i32 = sqlx::query_scalar("select stock from products where id = $1")
        .bind(mug.id)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(stock, 5, "nothing changed");
    let token = verify_tokens(&smtp, "ann@example.com", 1).await.remove(0);
    assert_eq!(send(app.request(Method::POST, VERIFY).json(&json!({"token": token}))).await.0, 204);
    // The refusal was not stored against the key: the same key now places the order.
    let (status, _, body) = send(place()).await;
    assert_eq!(status, 201, "{body}");
}

#[sqlx::test]
async fn an_admin_made_by_the_operator_is_verified_and_a_registered_account_is_not(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let registered = app.register("bob@example.com", "password123").await;
    assert!(!verified(&app, &registered.token).await);
    let email = storefront::shared::email::Email::parse("root@example.com").unwrap();
    let created =
        app.state.users.create_admin(&email, false, || Ok("a-long-password".to_owned())).await.unwrap();
    let storefront::features::users::AdminProvisioned::Created(_) = created else { panic!("{created:?}") };
    let root = app.login("root@example.com", "a-long-password").await;
    assert!(verified(&app, &root.token).await);
    // Promoting an existing account verifies it too (the operator vouches for it).
    app.state
        .users
        .create_admin(&storefront::shared::email::Email::parse("bob@example.com").unwrap(), true, || {
            Ok("another-long-password".to_owned())
        })
        .await
        .unwrap();
    let bob = app.login("bob@example.com", "another-long-password").await;
    assert!(verified(&app, &bob.token).await);
}

#[sqlx::test]
async fn an_address_the_mailer_refuses_cannot_register(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for email in ["a@x y[1.2.3.4]", "a b@example.com"] {
        let err = expect_error(
            app.request(Method::POST, "/api/v1/auth/register")
                .json(&json!({"email": email, "password": "password123"})),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err["error"]["fields"]["email"].is_array(), "{err}");
        assert!(!err.to_string().contains("1.2.3.4"), "the input is not echoed: {err}");
    }
}

fn subject(message: &str) -> &str {
    message.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default()
}

/// The `emails_total` series of the metrics listener, by template and outcome.
async fn email_counts(app: &TestApp) -> String {
    let text = app
        .client
        .get(format!("http://{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().filter(|l| l.starts_with("emails_total{")).collect::<Vec<_>>().join("\n")
}

#[sqlx::test]
async fn mail_to_one_address_is_bounded_an_hour_and_account_mail_has_its_own_budget(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |s| {
        s.mail_max_per_recipient_per_hour = 3;
        s.rate_limit_enabled = false;
    })
    .await;
    let mug = app.product().price_cents(500).stock(100).create().await;
    let ann = app.register("ann@example.com", "password123").await;
    // Welcome + 5 confirmations: the budget of 3 lets the welcome and 2 confirmations out.
    for _ in 0..5 {
        let (status, _, body) = send(
            app.authed(Method::POST, "/api/v1/orders", &ann.token)
                .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let started = Instant::now();
    while !email_counts(&app).await.contains(r#"outcome="suppressed"} 3"#) {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", email_counts(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    smtp.wait_for(3, Duration::from_secs(10)).await;
    let to_ann = |m: &&String| m.contains("To: ann@example.com");
    assert_eq!(smtp.messages().iter().filter(to_ann).count(), 3);
    // The reset link still goes out: its own budget.
    send(
        app.request(Method::POST, "/api/v1/auth/password/forgot").json(&json!({"email": "ann@example.com"})),
    )
    .await;
    let messages = smtp.wait_for(4, Duration::from_secs(10)).await;
    assert!(messages.iter().any(|m| subject(m) == "Reset your Storefront password"));
    // Nothing suppressed was dead-lettered.
    let (_, _, dead) =
        send(app.authed(Method::GET, "/api/v1/admin/jobs/dead", &app.user().admin().signed_in().await.token))
            .await;
    assert_eq!(dead["data"], json!([]), "{dead}");
    let counts = email_counts(&app).await;
    assert!(
        counts.contains(r#"emails_total{template="order-confirmation",outcome="suppressed"} 3"#),
        "{counts}"
    );
}

#[sqlx::test]
async fn a_confirmation_for_an_order_cancelled_before_it_went_out_is_not_sent(pool: PgPool) {
    // The order is placed and cancelled while no worker runs; the mailing app starts after.
    let quiet = TestApp::spawn(pool.clone()).await;
    let mug = quiet.product().price_cents(500).stock(5).create().await;
    let ann = quiet.user().email("ann@example.com").signed_in().await;
    let (status, _, order) = send(
        quiet
            .authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    let id = order["data"]["id"].as_str().unwrap();
    let path = format!("/api/v1/orders/{id}/cancel");
    assert_eq!(send(quiet.authed(Method::POST, &path, &ann.token)).await.0, 200);
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let started = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar("select count(*) from outbox where sent_at is null")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The welcome arrives; the confirmation job ran and sent nothing.
    smtp.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let subjects: Vec<String> = smtp.messages().iter().map(|m| subject(m).to_owned()).collect();
    assert_eq!(subjects, ["Welcome to Storefront"], "{subjects:?}");
}
