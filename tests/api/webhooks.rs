//! Outbound webhooks end to end: a receiver on loopback (the test's own axum server)
//! records what it is sent; orders placed and changed through the API reach it, signed.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    helpers::{TestApp, broken_invariants, expect_error, send},
    mail::SmtpServer,
};

const ENDPOINTS: &str = "/api/v1/webhook-endpoints";

/// What the receiver got: headers and body of each POST.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver on a free loopback port answering `status`; its URL and what it received.
async fn receiver(status: u16) -> (String, Received) {
    let (url, received, _) = switchable_receiver(status).await;
    (url, received)
}

/// A receiver like [`receiver`], with the answer it gives, which the test may change.
async fn switchable_receiver(status: u16) -> (String, Received, Arc<AtomicU16>) {
    let received: Received = Arc::default();
    let answer = Arc::new(AtomicU16::new(status));
    let (store, code) = (received.clone(), answer.clone());
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let (store, code) = (store.clone(), code.clone());
            async move {
                store.lock().unwrap().push((headers, body));
                axum::http::StatusCode::from_u16(code.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received, answer)
}

async fn wait_for(received: &Received, n: usize) -> Vec<(HeaderMap, Bytes)> {
    let started = Instant::now();
    loop {
        let got = received.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{} of {n} deliveries arrived", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use hmac::{KeyInit, Mac};
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    headers["webhook-signature"].to_str().unwrap().split(' ').any(|s| s == expected)
}

/// Whether the Standard Webhooks reference library (Python) accepts the delivery as signed
/// by `secret`.
fn standard_verifier_accepts(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/openapi-venv/bin/python");
    assert!(python.exists(), "run scripts/openapi-check --install-only first (scripts/test does)");
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys\nfrom standardwebhooks import Webhook\n\
             h = {'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], 'webhook-signature': sys.argv[4]}\n\
             Webhook(sys.argv[1]).verify(sys.stdin.buffer.read(), h)\nprint('ok')",
            secret,
            headers["webhook-id"].to_str().unwrap(),
            headers["webhook-timestamp"].to_str().unwrap(),
            headers["webhook-signature"].to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body)?;
            child.wait_with_output()
        })
        .unwrap();
    out.status.success() && out.stdout.starts_with(b"ok")
}

async fn mailing_app(pool: PgPool, smtp: &SmtpServer) -> TestApp {
    TestApp::spawn_mailing(pool, smtp, |s| {
        s.webhook_allow_http = true;
        s.webhook_allow_private_targets = true;
        s.webhook_retry_base = Duration::from_millis(200);
        s.webhook_max_attempts = 3;
        s.webhook_timeout = Duration::from_secs(2);
    })
    .await
}

#[sqlx::test]
async fn order_events_reach_a_subscribed_endpoint_signed(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = mailing_app(pool, &smtp).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (url, received) = receiver(204).await;
    let (status, headers, endpoint) =
        send(app.authed(Method::POST, ENDPOINTS, &admin.token).json(
            &json!({"url": url, "events": ["order.created", "order.paid"], "description": "fulfilment"}),
        ))
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(headers["location"], format!("/api/v1/webhook-endpoints/{id}"));
    let secret = endpoint["data"]["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // Never shown again.
    let (_, _, got) = send(app.authed(Method::GET, &format!("{ENDPOINTS}/{id}"), &admin.token)).await;
    assert!(got["data"].get("secret").is_none(), "{got}");
    let stored: Vec<u8> = sqlx::query_scalar("select secret_sealed from webhook_endpoints")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(!stored.windows(secret.len()).any(|w| w == secret.as_bytes()), "stored sealed");

    let mug = app.product().price_cents(500).stock(5).create().await;
    let (status, _, order) = send(
        app.authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 2}]})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    let order_id = order["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/orders/{order_id}/status");
    assert_eq!(
        send(app.authed(Method::PATCH, &path, &admin.token).json(&json!({"status": "paid"}))).await.0,
        200
    );
    // Shipped is not subscribed: only two deliveries.
    assert_eq!(
        send(app.authed(Method::PATCH, &path, &admin.token).json(&json!({"status": "shipped"}))).await.0,
        200
    );

    let got = wait_for(&received, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.lock().unwrap().len(), 2, "shipped was not subscribed");
    let mut types = Vec::new();
    for (headers, body) in &got {
        assert!(verify(&secret, headers, body), "signature");
        assert!(
            standard_verifier_accepts(&secret, headers, body),
            "the Standard Webhooks library verifies it"
        );
        assert!(!standard_verifier_accepts(&other_secret(), headers, body), "and not with another secret");
        assert_eq!(headers["content-type"], "application/json");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["data"]["id"], order_id.as_str());
        assert_eq!(event["data"]["totalCents"], 1000);
        types.push((
            event["type"].as_str().unwrap().to_owned(),
            event["data"]["status"].as_str().unwrap().to_owned(),
        ));
    }
    types.sort();
    assert_eq!(
        types,
        [("order.created".to_owned(), "pending".to_owned()), ("order.paid".to_owned(), "paid".to_owned())]
    );

    // The deliveries, listed.
    let (_, _, list) =
        send(app.authed(Method::GET, &format!("{ENDPOINTS}/{id}/deliveries"), &admin.token)).await;
    let statuses: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["delivered", "delivered"], "{list}");
    assert_eq!(
        (list["pagination"]["total"].as_i64(), list["pagination"]["pages"].as_i64()),
        (Some(2), Some(1))
    );
    // Filtered by status; and in cursor mode, page by page without a count.
    let (_, _, failed) =
        send(app.authed(Method::GET, &format!("{ENDPOINTS}/{id}/deliveries?status=failed"), &admin.token))
            .await;
    assert_eq!((failed["data"].clone(), failed["pagination"]["total"].as_i64()), (json!([]), Some(0)));
    let (_, _, first) =
        send(app.authed(Method::GET, &format!("{ENDPOINTS}/{id}/deliveries?limit=1"), &admin.token)).await;
    let cursor = first["pagination"]["nextCursor"].as_str().unwrap();
    let (_, _, second) = send(app.authed(
        Method::GET,
        &format!("{ENDPOINTS}/{id}/deliveries?limit=1&cursor={cursor}"),
        &admin.token,
    ))
    .await;
    assert_eq!(second["data"][0]["id"], list["data"][1]["id"], "{second}");
    assert!(second["pagination"].get("total").is_none(), "{second}");
    assert_eq!(second["pagination"]["nextCursor"], Value::Null);
}

#[sqlx::test]
async fn a_failing_receiver_is_retried_then_failed_and_can_be_retried_by_hand(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = mailing_app(pool, &smtp).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (url, received) = receiver(500).await;
    let (_, _, endpoint) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": url, "events": ["order.created"]})),
    )
    .await;
    let id = endpoint["data"]["id"].as_str().unwrap().to_owned();
    let mug = app.product().price_cents(500).stock(5).create().await;
    send(
        app.authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
    )
    .await;
    // Three attempts (WEBHOOK_MAX_ATTEMPTS), the same webhook-id each time.
    let got = wait_for(&received, 3).await;
    let ids: Vec<&str> = got.iter().map(|(h, _)| h["webhook-id"].to_str().unwrap()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let deliveries = format!("{ENDPOINTS}/{id}/deliveries");
    let delivery = settled(&app, &admin.token, &id, |d| d["status"] == "failed").await;
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["lastStatusCode"], 500);
    // Retried by hand: three more attempts.
    let retry = format!("{deliveries}/{}/retry", delivery["id"].as_str().unwrap());
    assert_eq!(send(app.authed(Method::POST, &retry, &admin.token)).await.0, 202);
    wait_for(&received, 4).await;
    expect_error(
        app.authed(Method::POST, &format!("{deliveries}/{}/retry", uuid::Uuid::new_v4()), &admin.token),
        404,
        "NOT_FOUND",
    )
    .await;
}

#[sqlx::test]
async fn endpoint_urls_and_events_are_checked_and_only_admins_manage_them(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    for (body, field) in [
        (json!({"url": "http://hooks.example.com/x", "events": ["order.paid"]}), "url"),
        (json!({"url": "https://127.0.0.1/x", "events": ["order.paid"]}), "url"),
        (json!({"url": "https://[::ffff:169.254.169.254]/x", "events": ["order.paid"]}), "url"),
        (json!({"url": "https://hooks.example.com/x", "events": []}), "events"),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["order.paid", "order.teleported"]}),
            "events[1]",
        ),
    ] {
        let err = expect_error(
            app.authed(Method::POST, ENDPOINTS, &admin.token).json(&body),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err["error"]["fields"][field].is_array(), "{body}: {err}");
    }
    expect_error(
        app.authed(Method::POST, ENDPOINTS, &ann.token)
            .json(&json!({"url": "https://hooks.example.com/x", "events": ["order.paid"]})),
        403,
        "FORBIDDEN",
    )
    .await;
    let (status, _, created) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": "https://hooks.example.com/x", "events": ["order.paid"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap();
    let (status, _, rotated) = send(
        app.authed(Method::POST, &format!("{ENDPOINTS}/{id}/rotate-secret"), &admin.token)
            .json(&json!({"graceSeconds": 60})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["data"]["secret"], created["data"]["secret"]);
    let (status, _, patched) = send(
        app.authed(Method::PATCH, &format!("{ENDPOINTS}/{id}"), &admin.token)
            .json(&json!({"enabled": false, "description": null})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["enabled"], false);
    let (_, _, list) = send(app.authed(Method::GET, ENDPOINTS, &admin.token)).await;
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(send(app.authed(Method::DELETE, &format!("{ENDPOINTS}/{id}"), &admin.token)).await.0, 204);
    expect_error(app.authed(Method::GET, &format!("{ENDPOINTS}/{id}"), &admin.token), 404, "NOT_FOUND").await;
}

fn other_secret() -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    format!("whsec_{}", STANDARD.encode([9u8; 32]))
}

#[sqlx::test]
async fn during_a_rotations_grace_both_secrets_verify(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = mailing_app(pool, &smtp).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (url, received) = receiver(200).await;
    let (_, _, created) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": url, "events": ["order.created"]})),
    )
    .await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let old = created["data"]["secret"].as_str().unwrap().to_owned();
    let (_, _, rotated) = send(
        app.authed(Method::POST, &format!("{ENDPOINTS}/{id}/rotate-secret"), &admin.token)
            .json(&json!({"graceSeconds": 3600})),
    )
    .await;
    let new = rotated["data"]["secret"].as_str().unwrap().to_owned();
    let mug = app.product().price_cents(500).stock(5).create().await;
    send(
        app.authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
    )
    .await;
    let got = wait_for(&received, 1).await;
    let (headers, body) = &got[0];
    assert_eq!(headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);
    assert!(standard_verifier_accepts(&new, headers, body), "the new secret verifies");
    assert!(standard_verifier_accepts(&old, headers, body), "the old one too, during the grace");
    // A rotation without grace: the old secret stops at once.
    let (_, _, again) = send(
        app.authed(Method::POST, &format!("{ENDPOINTS}/{id}/rotate-secret"), &admin.token)
            .json(&json!({"graceSeconds": 0})),
    )
    .await;
    let newest = again["data"]["secret"].as_str().unwrap().to_owned();
    send(
        app.authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
    )
    .await;
    let got = wait_for(&received, 2).await;
    let (headers, body) =
        got.iter().find(|(h, _)| h["webhook-signature"].to_str().unwrap().split(' ').count() == 1).unwrap();
    assert!(standard_verifier_accepts(&newest, headers, body));
    assert!(!standard_verifier_accepts(&new, headers, body));
}

#[sqlx::test]
async fn a_host_resolving_to_loopback_fails_at_once_and_redirects_are_not_followed(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |s| {
        s.webhook_allow_http = true;
        s.webhook_allow_private_targets = false;
        s.webhook_retry_base = Duration::from_millis(200);
        s.webhook_max_attempts = 3;
    })
    .await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (url, received) = receiver(204).await;
    // The receiver's own address, spelled as a name that resolves to it.
    let by_name = url.replace("127.0.0.1", "localhost");
    let (status, _, endpoint) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": by_name, "events": ["order.created"]})),
    )
    .await;
    assert_eq!(status, 201, "a name is judged when it is resolved: {endpoint}");
    let id = endpoint["data"]["id"].as_str().unwrap().to_owned();
    // A literal loopback address is refused at once.
    expect_error(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": url, "events": ["order.created"]})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    let mug = app.product().price_cents(500).stock(5).create().await;
    send(
        app.authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
    )
    .await;
    let delivery = settled(&app, &admin.token, &id, |d| d["status"] == "failed").await;
    assert_eq!(delivery["attempts"], 1, "a forbidden address is not retried: {delivery}");
    assert!(delivery["lastError"].as_str().unwrap().contains("loopback"), "{delivery}");
    assert!(received.lock().unwrap().is_empty(), "nothing reached the loopback receiver");
}

#[sqlx::test]
async fn a_redirect_is_not_followed(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = mailing_app(pool, &smtp).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (target, received) = receiver(204).await;
    // A receiver that redirects every delivery to another loopback receiver.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting = format!("http://{}/hook", listener.local_addr().unwrap());
    let to = target.clone();
    let router = Router::new().route(
        "/hook",
        post(move || {
            let to = to.clone();
            async move { (axum::http::StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, to)]) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (_, _, endpoint) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": redirecting, "events": ["order.created"]})),
    )
    .await;
    let id = endpoint["data"]["id"].as_str().unwrap().to_owned();
    let mug = app.product().price_cents(500).stock(5).create().await;
    send(
        app.authed(Method::POST, "/api/v1/orders", &ann.token)
            .json(&json!({"items": [{"productId": mug.id, "quantity": 1}]})),
    )
    .await;
    settled(&app, &admin.token, &id, |d| d["lastStatusCode"] == 307).await;
    assert!(received.lock().unwrap().is_empty(), "the redirect's target got nothing");
}

/// An endpoint following every event, pointed at `url`; its id and secret.
async fn follow_all(app: &TestApp, admin: &str, url: &str) -> (String, String) {
    let (status, _, endpoint) = send(app.authed(Method::POST, ENDPOINTS, admin).json(&json!({
        "url": url,
        "events": ["order.created", "order.paid", "order.shipped", "order.delivered",
                   "order.cancelled", "order.refunded"],
    })))
    .await;
    assert_eq!(status, 201, "{endpoint}");
    (
        endpoint["data"]["id"].as_str().unwrap().to_owned(),
        endpoint["data"]["secret"].as_str().unwrap().to_owned(),
    )
}

/// The `(order id, event type)` of each delivery received, in arrival order.
fn events_of(got: &[(HeaderMap, Bytes)]) -> Vec<(String, String)> {
    got.iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            (v["data"]["id"].as_str().unwrap().to_owned(), v["type"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn place(app: &TestApp, token: &str, product: uuid::Uuid) -> String {
    let (status, _, order) = send(
        app.authed(Method::POST, "/api/v1/orders", token)
            .json(&json!({"items": [{"productId": product, "quantity": 1}]})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    order["data"]["id"].as_str().unwrap().to_owned()
}

#[sqlx::test]
async fn every_order_event_reaches_its_followers_in_the_apis_order_shape(pool: PgPool) {
    use crate::payments::{Standin, deliver, event, order_of, started, stripe_settings, succeeded};
    let standin = Standin::start();
    let smtp = SmtpServer::start();
    let timeout = Duration::from_secs(30 * 60);
    let app = TestApp::spawn_mailing(pool.clone(), &smtp, |s| {
        s.webhook_allow_http = true;
        s.webhook_allow_private_targets = true;
        s.order_payment_timeout = Some(timeout);
        stripe_settings(s, &standin);
    })
    .await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (url, received) = receiver(204).await;
    follow_all(&app, &admin.token, &url).await;
    let mug = app.product().price_cents(500).stock(10).create().await.id;

    // Paid through the provider, shipped, delivered, then refunded from its dashboard.
    let a = place(&app, &ann.token, mug).await;
    let (intent, total) = started(&app, &ann, &a).await;
    assert_eq!(deliver(&app, &succeeded(&intent, total, "usd")).await.0, 200);
    for status in ["shipped", "delivered"] {
        let req = app
            .authed(Method::PATCH, &format!("/api/v1/orders/{a}/status"), &admin.token)
            .json(&json!({ "status": status }));
        assert_eq!(send(req).await.0, 200);
    }
    let refund = event(
        "charge.refunded",
        json!({"id": "ch_1", "object": "charge", "payment_intent": intent, "refunded": true, "amount_refunded": total}),
    );
    assert_eq!(deliver(&app, &refund).await.0, 200);
    // Cancelled by its customer; cancelled by staff; cancelled for want of payment.
    let b = place(&app, &ann.token, mug).await;
    assert_eq!(
        send(app.authed(Method::POST, &format!("/api/v1/orders/{b}/cancel"), &ann.token)).await.0,
        200
    );
    let c = place(&app, &ann.token, mug).await;
    let req = app
        .authed(Method::PATCH, &format!("/api/v1/orders/{c}/status"), &admin.token)
        .json(&json!({"status": "cancelled"}));
    assert_eq!(send(req).await.0, 200);
    let d = place(&app, &ann.token, mug).await;
    sqlx::query("update orders set expires_at = now() - interval '1 second' where id = $1::uuid")
        .bind(&d)
        .execute(&pool)
        .await
        .unwrap();
    let wakeup = storefront::platform::jobs::outbox::Wakeup::new(pool.clone());
    let report = storefront::features::orders::expire_unpaid(&pool, &wakeup, timeout).await.unwrap();
    assert_eq!(report.expired, 1);

    wait_for(&received, 11).await;
    // And no more than the eleven.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = received.lock().unwrap().clone();
    let events = events_of(&got);
    let of = |order: &str| -> Vec<&str> {
        events.iter().filter(|(o, _)| o == order).map(|(_, t)| t.as_str()).collect()
    };
    // Deliveries are concurrent: compare as sets per order, then the order by timestamp.
    fn sorted(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_unstable();
        v
    }
    assert_eq!(
        sorted(of(&a)),
        sorted(vec!["order.created", "order.paid", "order.shipped", "order.delivered", "order.refunded"])
    );
    for order in [&b, &c, &d] {
        assert_eq!(sorted(of(order)), ["order.cancelled", "order.created"], "{order}");
    }
    assert_eq!(events.len(), 11, "{events:?}");
    let mut timeline: Vec<(String, String)> = got
        .iter()
        .filter_map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            (v["data"]["id"] == a.as_str()).then(|| {
                (v["timestamp"].as_str().unwrap().to_owned(), v["type"].as_str().unwrap().to_owned())
            })
        })
        .collect();
    timeline.sort();
    let types: Vec<&str> = timeline.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(types, ["order.created", "order.paid", "order.shipped", "order.delivered", "order.refunded"]);

    // `data` is the order as the API answers it: the same fields, the same values.
    let last = got
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap())
        .find(|v| v["type"] == "order.refunded")
        .unwrap();
    let api = order_of(&app, &ann, &a).await;
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&last["data"]), keys(&api));
    for field in ["id", "userId", "status", "items", "totalCents", "currency", "shippingAddress"] {
        assert_eq!(last["data"][field], api[field], "{field}");
    }
    assert_eq!(last["data"]["payment"]["status"], api["payment"]["status"]);
    assert_eq!(broken_invariants(&pool).await, Vec::<String>::new());
}

#[sqlx::test]
async fn each_event_carries_the_order_as_its_change_committed_it(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool.clone(), &smtp, |s| {
        s.webhook_allow_http = true;
        s.webhook_allow_private_targets = true;
        s.webhook_retry_base = Duration::from_millis(100);
        s.webhook_max_attempts = 30;
    })
    .await;
    // A receiver answering 503 until told otherwise: every delivery waits, retried, while
    // the order changes on.
    let (url, received, answer) = switchable_receiver(503).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (endpoint, _) = follow_all(&app, &admin.token, &url).await;
    let mug = app.product().price_cents(500).stock(10).create().await.id;

    let first = json!({"line1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"});
    let second = json!({"line1": "9 Quay", "city": "Dublin", "postalCode": "D02", "country": "IE"});
    let order = place(&app, &ann.token, mug).await;
    let path = format!("/api/v1/orders/{order}");
    let patch = |token: &str, body: Value| app.authed(Method::PATCH, &path, token).json(&body);
    let status = |s: &str| {
        app.authed(Method::PATCH, &format!("{path}/status"), &admin.token).json(&json!({ "status": s }))
    };
    assert_eq!(send(patch(&ann.token, json!({ "shippingAddress": first }))).await.0, 200);
    assert_eq!(send(status("paid")).await.0, 200);
    assert_eq!(send(patch(&admin.token, json!({ "shippingAddress": second }))).await.0, 200);
    assert_eq!(send(status("shipped")).await.0, 200);
    let api = send(app.authed(Method::GET, &path, &ann.token)).await.2["data"].clone();

    // Only now are deliveries taken: each is sent after every change above.
    answer.store(204, Ordering::SeqCst);
    // Wait until the server counts all three delivered (each answered 204).
    let delivered = format!("{ENDPOINTS}/{endpoint}/deliveries?status=delivered");
    let started = Instant::now();
    while send(app.authed(Method::GET, &delivered, &admin.token)).await.2["pagination"]["total"] != 3 {
        assert!(started.elapsed() < Duration::from_secs(15), "three deliveries were not made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().unwrap().clone();
    // Every attempt of an event, before and after the changes, carried the same body.
    for (headers, body) in &got {
        let id = &headers["webhook-id"];
        let same = got.iter().filter(|(h, _)| h["webhook-id"] == *id).all(|(_, b)| b == body);
        assert!(same, "attempts of {id:?} differ");
    }
    let delivered: std::collections::HashMap<String, Value> = got
        .iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            (v["type"].as_str().unwrap().to_owned(), v["data"].clone())
        })
        .collect();
    assert_eq!(delivered.len(), 3, "{:?}", delivered.keys());
    let created = &delivered["order.created"];
    assert_eq!((created["status"].as_str(), &created["shippingAddress"]), (Some("pending"), &Value::Null));
    assert_eq!(created["updatedAt"], created["createdAt"], "{created}");
    let paid = &delivered["order.paid"];
    assert_eq!((paid["status"].as_str(), &paid["shippingAddress"]), (Some("paid"), &first));
    // The last change's event is the order as it stands, written as the API writes it.
    assert_eq!(delivered["order.shipped"], api, "the last change's event is the order as it stands");
    for data in delivered.values() {
        assert_eq!(
            (&data["id"], &data["items"], &data["totalCents"]),
            (&api["id"], &api["items"], &api["totalCents"])
        );
    }
    assert_eq!(broken_invariants(&pool).await, Vec::<String>::new());

    // An order deleted by hand before its event went out: nothing is left to send, and
    // the delivery fails at once, saying why.
    answer.store(503, Ordering::SeqCst);
    let gone = place(&app, &ann.token, mug).await;
    sqlx::query("delete from orders where id = $1::uuid").bind(&gone).execute(&pool).await.unwrap();
    answer.store(204, Ordering::SeqCst);
    let last = settled(&app, &admin.token, &endpoint, |d| d["status"] == "failed").await;
    assert_eq!(last["lastError"], "the event's order no longer exists", "{last}");
}

#[sqlx::test]
async fn a_disabled_endpoint_gets_nothing_and_a_deleted_one_stops_its_retries(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = mailing_app(pool.clone(), &smtp).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (healthy_url, healthy) = receiver(204).await;
    let (off_url, off) = receiver(204).await;
    let (failing_url, failing) = receiver(503).await;
    follow_all(&app, &admin.token, &healthy_url).await;
    let (off_id, _) = follow_all(&app, &admin.token, &off_url).await;
    let (failing_id, _) = follow_all(&app, &admin.token, &failing_url).await;
    let req = app
        .authed(Method::PATCH, &format!("{ENDPOINTS}/{off_id}"), &admin.token)
        .json(&json!({"enabled": false}));
    assert_eq!(send(req).await.0, 200);
    let mug = app.product().price_cents(500).stock(5).create().await.id;
    place(&app, &ann.token, mug).await;
    wait_for(&healthy, 1).await;
    // The failing endpoint's first attempt was made; delete it before its retries.
    wait_for(&failing, 1).await;
    assert_eq!(
        send(app.authed(Method::DELETE, &format!("{ENDPOINTS}/{failing_id}"), &admin.token)).await.0,
        204
    );
    let attempts = failing.lock().unwrap().len();
    let left: i64 =
        sqlx::query_scalar("select count(*) from webhook_deliveries where endpoint_id = $1::uuid")
            .bind(&failing_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0, "its deliveries went with it");
    // Longer than the retries would take (3 attempts, 200 ms base backoff).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failing.lock().unwrap().len(), attempts, "no attempt after the delete");
    assert!(off.lock().unwrap().is_empty(), "a disabled endpoint gets nothing");
    let (_, _, list) =
        send(app.authed(Method::GET, &format!("{ENDPOINTS}/{off_id}/deliveries"), &admin.token)).await;
    assert_eq!(list["data"], json!([]), "nor is anything queued for it");
    // Enabled again, it follows events from then on (not the ones it missed).
    let req = app
        .authed(Method::PATCH, &format!("{ENDPOINTS}/{off_id}"), &admin.token)
        .json(&json!({"enabled": true}));
    assert_eq!(send(req).await.0, 200);
    let second = place(&app, &ann.token, mug).await;
    let got = wait_for(&off, 1).await;
    assert_eq!(events_of(&got), [(second, "order.created".to_owned())]);
    assert_eq!(broken_invariants(&pool).await, Vec::<String>::new());
}

#[sqlx::test]
async fn a_hung_endpoint_does_not_hold_up_another(pool: PgPool) {
    let smtp = SmtpServer::start();
    // One attempt at a time per endpoint and two in the process: a hung receiver takes a
    // slot for the whole timeout, and the healthy one still gets its deliveries at once.
    let app = TestApp::spawn_mailing(pool.clone(), &smtp, |s| {
        s.webhook_allow_http = true;
        s.webhook_allow_private_targets = true;
        s.webhook_timeout = Duration::from_secs(5);
        s.webhook_concurrency = 2;
        s.webhook_endpoint_concurrency = 1;
    })
    .await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let hung: Received = Arc::default();
    let store = hung.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push((headers, body));
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (healthy_url, healthy) = receiver(204).await;
    follow_all(&app, &admin.token, &hung_url).await;
    follow_all(&app, &admin.token, &healthy_url).await;
    let mug = app.product().price_cents(500).stock(10).create().await.id;
    for _ in 0..3 {
        place(&app, &ann.token, mug).await;
    }
    // The hung receiver holds its first delivery; the healthy one gets all three, each
    // well within the timeout.
    let started = Instant::now();
    wait_for(&hung, 1).await;
    wait_for(&healthy, 3).await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(hung.lock().unwrap().len(), 1, "one attempt at a time per endpoint");
}

#[sqlx::test]
async fn production_without_a_secrets_key_stores_no_endpoint(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool.clone(),
        |s| {
            s.app_env = storefront::platform::config::AppEnv::Production;
            s.webhook_secrets_key = None;
        },
        Router::new(),
    )
    .await;
    let admin = app.user().admin().signed_in().await;
    let err = expect_error(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": "https://hooks.example.com/x", "events": ["order.paid"]})),
        503,
        "SERVICE_UNAVAILABLE",
    )
    .await;
    assert!(err["error"]["message"].as_str().unwrap().contains("WEBHOOK_SECRETS_KEY"), "{err}");
    let n: i64 = sqlx::query_scalar("select count(*) from webhook_endpoints").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test]
async fn deliveries_are_counted_and_a_missing_fanout_is_a_broken_invariant(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = mailing_app(pool.clone(), &smtp).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (ok_url, ok) = receiver(204).await;
    let (bad_url, bad) = receiver(500).await;
    follow_all(&app, &admin.token, &ok_url).await;
    follow_all(&app, &admin.token, &bad_url).await;
    let mug = app.product().price_cents(500).stock(5).create().await.id;
    place(&app, &ann.token, mug).await;
    wait_for(&ok, 1).await;
    wait_for(&bad, 3).await;
    let started = Instant::now();
    let metrics = loop {
        let text = app.get_metrics_listener("/metrics").await.text().await.unwrap();
        if text.contains(r#"webhook_deliveries_total{outcome="failed"} 1"#) {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains(r#"webhook_deliveries_total{outcome="delivered"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"webhook_deliveries_total{outcome="retrying"} 2"#), "{metrics}");
    assert!(metrics.contains("webhook_delivery_lag_seconds_count 1"), "{metrics}");
    assert!(metrics.contains(r#"jobs{queue="webhooks",state="pending"}"#), "{metrics}");
    assert!(metrics.contains("webhook_deliveries_pending 0"), "{metrics}");
    assert!(metrics.contains("webhook_endpoints_failing 0"), "{metrics}");
    assert_eq!(broken_invariants(&pool).await, Vec::<String>::new());

    // A delivery lost behind the feature's back is found by `storefront check`.
    sqlx::query("delete from webhook_deliveries where status = 'failed'").execute(&pool).await.unwrap();
    let broken = broken_invariants(&pool).await;
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].starts_with("webhook-fanout-complete") && broken[0].contains("has no delivery"),
        "{broken:?}"
    );
}

#[sqlx::test]
async fn every_spelling_of_loopback_is_refused_at_create_and_update(pool: PgPool) {
    // Plain http allowed, private targets not: only the address can be the reason.
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.webhook_allow_http = true;
            s.webhook_allow_private_targets = false;
        },
        Router::new(),
    )
    .await;
    let admin = app.user().admin().signed_in().await;
    let (status, _, created) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": "http://hooks.example.com/x", "events": ["order.paid"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap();
    for spelling in [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "017700000001",
        "127.255.255.254",
        "0.0.0.0",
        "0",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[::]",
    ] {
        let url = format!("http://{spelling}:8080/hook");
        for req in [
            app.authed(Method::POST, ENDPOINTS, &admin.token)
                .json(&json!({"url": url, "events": ["order.paid"]})),
            app.authed(Method::PATCH, &format!("{ENDPOINTS}/{id}"), &admin.token).json(&json!({"url": url})),
        ] {
            let err = expect_error(req, 400, "VALIDATION_ERROR").await;
            assert!(err["error"]["fields"]["url"].is_array(), "{spelling}: {err}");
        }
    }
    let (_, _, got) = send(app.authed(Method::GET, &format!("{ENDPOINTS}/{id}"), &admin.token)).await;
    assert_eq!(got["data"]["url"], "http://hooks.example.com/x", "nothing changed");
    let (_, _, list) = send(app.authed(Method::GET, ENDPOINTS, &admin.token)).await;
    assert_eq!(list["pagination"]["total"], 1, "nothing stored");
}

#[sqlx::test]
async fn stored_secrets_need_their_key_at_start_up(pool: PgPool) {
    use storefront::features::webhooks::{SecretBox, UrlRules, WebhookService};
    let rules = UrlRules { allow_http: false, allow_private: false };
    let service = |key: Option<[u8; 32]>| WebhookService::new(pool.clone(), SecretBox::new(key, None), rules);
    // No endpoint: no key is needed.
    service(None).check_key().await.unwrap();
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.user().admin().signed_in().await;
    let (status, _, _) = send(
        app.authed(Method::POST, ENDPOINTS, &admin.token)
            .json(&json!({"url": "https://hooks.example.com/x", "events": ["order.paid"]})),
    )
    .await;
    assert_eq!(status, 201);
    app.state.webhooks.check_key().await.unwrap();
    let missing = service(None).check_key().await.unwrap_err().to_string();
    assert!(missing.contains("WEBHOOK_SECRETS_KEY is not set"), "{missing}");
    let wrong = service(Some([7; 32])).check_key().await.unwrap_err().to_string();
    assert!(wrong.contains("not the key they were stored with"), "{wrong}");
}

/// The newest delivery of endpoint `id` once `done` says it is settled (10 s at most).
async fn settled(app: &TestApp, admin: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deliveries = format!("{ENDPOINTS}/{id}/deliveries");
    let started = Instant::now();
    loop {
        let (_, _, list) = send(app.authed(Method::GET, &deliveries, admin)).await;
        if done(&list["data"][0]) {
            return list["data"][0].clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn refused_connections_timeouts_and_endless_answers_are_bounded(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |s| {
        s.webhook_allow_http = true;
        s.webhook_allow_private_targets = true;
        s.webhook_retry_base = Duration::from_millis(200);
        s.webhook_max_attempts = 2;
        s.webhook_timeout = Duration::from_secs(2);
    })
    .await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    // Nothing listens here.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    // Accepts, reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    // Answers 200 with a body that never ends.
    let endless = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless_url = format!("http://{}/hook", endless.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = endless.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 65_536];
                let _ = socket.read(&mut buf).await;
                let head =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let mut ids = Vec::new();
    for url in [&closed, &silent_url, &endless_url] {
        let (status, _, endpoint) = send(
            app.authed(Method::POST, ENDPOINTS, &admin.token)
                .json(&json!({"url": url, "events": ["order.created"]})),
        )
        .await;
        assert_eq!(status, 201, "{endpoint}");
        ids.push(endpoint["data"]["id"].as_str().unwrap().to_owned());
    }
    let mug = app.product().price_cents(500).stock(5).create().await.id;
    place(&app, &ann.token, mug).await;

    let refused = settled(&app, &admin.token, &ids[0], |d| d["status"] == "failed").await;
    assert_eq!(refused["attempts"], 2, "retried, then failed: {refused}");
    assert_eq!(refused["lastError"], "the connection was refused or failed");
    let hung = settled(&app, &admin.token, &ids[1], |d| d["attempts"].as_i64() >= Some(1)).await;
    assert_eq!(hung["lastError"], "no answer within the timeout", "{hung}");
    assert_eq!(hung["lastStatusCode"], Value::Null);
    // The endless answer's first 4 KiB are read, the rest dropped: delivered.
    let endless = settled(&app, &admin.token, &ids[2], |d| d["status"] != "pending").await;
    assert_eq!((endless["status"].as_str(), endless["attempts"].as_i64()), (Some("delivered"), Some(1)));
}

#[sqlx::test]
async fn the_test_build_never_connects_off_this_machine(pool: PgPool) {
    // The suite's guard (WEBHOOK_LOOPBACK_ONLY, set by config/test.toml) stands even with
    // every other rule lifted: the delivery fails before any lookup or connection.
    let smtp = SmtpServer::start();
    let app = mailing_app(pool, &smtp).await;
    assert!(app.state.config.webhook_loopback_only, "config/test.toml sets WEBHOOK_LOOPBACK_ONLY");
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let mut ids = Vec::new();
    // A private address, and a name that is never resolved (.invalid).
    for url in ["http://10.255.255.1:9/hook", "https://hooks.example.invalid/x"] {
        let (status, _, endpoint) = send(
            app.authed(Method::POST, ENDPOINTS, &admin.token)
                .json(&json!({"url": url, "events": ["order.created"]})),
        )
        .await;
        assert_eq!(status, 201, "{endpoint}");
        ids.push(endpoint["data"]["id"].as_str().unwrap().to_owned());
    }
    let mug = app.product().price_cents(500).stock(5).create().await.id;
    place(&app, &ann.token, mug).await;
    for id in &ids {
        let d = settled(&app, &admin.token, id, |d| d["status"] == "failed").await;
        assert_eq!(d["attempts"], 1, "refused at once: {d}");
        assert!(d["lastError"].as_str().unwrap().contains("WEBHOOK_LOOPBACK_ONLY"), "{d}");
    }
}
