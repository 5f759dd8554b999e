//! Payments through Stripe, against a local stand-in (`scripts/stripe-standin`, one per
//! test on a free loopback port): starting a payment, the signed webhook, refunds and
//! intent cancels, and the race of a late payment with the expiry.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use storefront::{
    features::{orders, payments},
    platform::{
        config::{PaymentProvider, Settings},
        jobs::{
            QueuedJob,
            outbox::Wakeup,
            worker::{JobError, JobHandler},
        },
    },
};
use uuid::Uuid;

use crate::helpers::{LocalServer, Session, TestApp, expect_error, send};

const ORDERS: &str = "/api/v1/orders";
const WEBHOOK: &str = "/api/v1/payments/stripe/webhook";
const SECRET: &str = "whsec_test_standin_secret";

/// The Stripe stand-in, killed on drop.
pub struct Standin {
    server: LocalServer,
}

impl Standin {
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stripe-standin");
        let server = LocalServer::start("stripe", |port, dir| {
            let mut c = Command::new("/usr/bin/python3");
            c.arg(script).args(["--port", &port.to_string(), "--dir"]).arg(dir);
            c
        });
        Self { server }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.server.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The requests to `path` (and `method`).
    pub fn calls(&self, method: &str, path: &str) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["method"] == method && r["path"] == path).collect()
    }

    /// A call as the customer's side would make it (confirm, cancel); whether it succeeded.
    pub async fn call(&self, path: &str) -> bool {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.url()))
            .bearer_auth("sk_test_standin")
            .send()
            .await;
        res.is_ok_and(|r| r.status().is_success())
    }

    /// Answers every request with `status code` while set.
    pub fn fail(&self, how: Option<&str>) {
        self.flag("fail", how);
    }

    /// Waits `seconds` before each answer while set.
    pub fn hang(&self, seconds: Option<&str>) {
        self.flag("hang", seconds);
    }

    fn flag(&self, name: &str, content: Option<&str>) {
        self.server.flag(name, content);
    }
}

pub fn stripe_settings(s: &mut Settings, standin: &Standin) {
    s.payment_provider = PaymentProvider::Stripe;
    s.stripe_secret_key = Some("sk_test_standin".to_owned().into());
    s.stripe_webhook_secret = Some(SECRET.to_owned().into());
    s.stripe_api_base = standin.url();
    s.payment_provider_timeout = Duration::from_secs(1);
}

async fn spawn(pool: PgPool, standin: &Standin) -> TestApp {
    let url = standin.url();
    TestApp::spawn_with(
        pool,
        |s| {
            stripe_settings(s, standin);
            s.stripe_api_base = url;
        },
        Default::default(),
    )
    .await
}

async fn place(app: &TestApp, who: &Session, product: Uuid) -> String {
    let body = json!({"items": [{"productId": product, "quantity": 2}]});
    let (status, _, res) = send(app.authed(Method::POST, ORDERS, &who.token).json(&body)).await;
    assert_eq!(status, 201, "{res}");
    res["data"]["id"].as_str().unwrap().to_owned()
}

async fn pay(app: &TestApp, who: &Session, order: &str) -> (u16, Value) {
    let (status, _, body) =
        send(app.authed(Method::POST, &format!("{ORDERS}/{order}/payment"), &who.token)).await;
    (status.as_u16(), body)
}

/// Starts the payment of `order` (201); its intent id and amount.
pub(crate) async fn started(app: &TestApp, who: &Session, order: &str) -> (String, i64) {
    let (status, body) = pay(app, who, order).await;
    assert_eq!(status, 201, "{body}");
    (
        body["data"]["providerPaymentId"].as_str().unwrap().to_owned(),
        body["data"]["amountCents"].as_i64().unwrap(),
    )
}

pub(crate) async fn order_of(app: &TestApp, who: &Session, order: &str) -> Value {
    let (status, _, body) = send(app.authed(Method::GET, &format!("{ORDERS}/{order}"), &who.token)).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn history(app: &TestApp, who: &Session, order: &str) -> Vec<String> {
    let (_, _, body) =
        send(app.authed(Method::GET, &format!("{ORDERS}/{order}/events?limit=100"), &who.token)).await;
    body["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

/// A Stripe event of `kind` about `object`, with a fresh id.
pub(crate) fn event(kind: &str, object: Value) -> Value {
    json!({"id": format!("evt_{}", Uuid::new_v4().simple()), "object": "event", "type": kind,
           "data": {"object": object}})
}

pub(crate) fn succeeded(intent: &str, amount: i64, currency: &str) -> Value {
    event(
        "payment_intent.succeeded",
        json!({"id": intent, "object": "payment_intent", "amount_received": amount, "currency": currency}),
    )
}

/// Delivers `event` signed as Stripe signs, now.
pub(crate) async fn deliver(app: &TestApp, event: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let header = payments::sign_stripe_event(&body, SECRET.as_bytes(), chrono::Utc::now().timestamp());
    deliver_raw(app, body, Some(header)).await
}

async fn deliver_raw(app: &TestApp, body: Vec<u8>, header: Option<String>) -> (u16, Value) {
    let mut req = app.request(Method::POST, WEBHOOK).header("content-type", "application/json").body(body);
    if let Some(h) = header {
        req = req.header("Stripe-Signature", h);
    }
    let (status, _, body) = send(req).await;
    (status.as_u16(), body)
}

async fn scalar<T>(pool: &PgPool, sql: &'static str, id: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).bind(id).fetch_one(pool).await.unwrap()
}

async fn payment_status(pool: &PgPool, intent: &str) -> String {
    scalar(pool, "select status::text from payments where provider_payment_id = $1", intent).await
}

async fn stock_of(pool: &PgPool, id: Uuid) -> i32 {
    sqlx::query_scalar("select stock from products where id = $1").bind(id).fetch_one(pool).await.unwrap()
}

/// Runs every `payments` job in the outbox not yet run here, as the queue's worker would.
async fn run_payment_jobs(app: &TestApp, pool: &PgPool, window: Duration) -> Vec<Result<(), String>> {
    let jobs = payments::PaymentJobs::new(pool.clone(), app.state.payments.provider(), window);
    let rows: Vec<(Uuid, String, Value)> = sqlx::query_as(
        "update outbox set sent_at = now() where queue = 'payments' and sent_at is null returning id, kind, payload",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut results = Vec::new();
    for (outbox_id, kind, payload) in rows {
        let job = QueuedJob { outbox_id, kind, payload };
        let result = jobs.handle(&job).await;
        if let Err(JobError::Permanent(e)) = &result {
            jobs.dead(&job, e).await;
        }
        results.push(result.map_err(|e| e.to_string()));
    }
    results
}

#[sqlx::test]
async fn starting_a_payment_creates_one_intent_and_asking_again_returns_it(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().price_cents(1250).stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    assert!(order_of(&app, &ann, &order).await["expiresAt"].is_string(), "expiry is on with stripe");

    let (status, first) = pay(&app, &ann, &order).await;
    assert_eq!(status, 201, "{first}");
    let intent = first["data"]["providerPaymentId"].as_str().unwrap().to_owned();
    assert_eq!(first["data"]["orderId"], order);
    assert_eq!(first["data"]["provider"], "stripe");
    assert_eq!(
        (first["data"]["amountCents"].as_i64(), first["data"]["currency"].as_str()),
        (Some(2500), Some("USD"))
    );
    assert_eq!(first["data"]["status"], "requires_payment");
    let secret = first["data"]["clientSecret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&format!("{intent}_secret_")));
    let created = standin.calls("POST", "/v1/payment_intents");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["idempotencyKey"], format!("order-{order}-payment"));
    assert_eq!(created[0]["bearer"], true);
    assert_eq!(
        created[0]["form"],
        json!({"amount": "2500", "currency": "usd", "metadata[order_id]": order,
               "automatic_payment_methods[enabled]": "true"})
    );

    // Asked again (or twice at once): the same intent, read back from the provider.
    let (a, b) = tokio::join!(pay(&app, &ann, &order), pay(&app, &ann, &order));
    for (status, body) in [a, b] {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["providerPaymentId"], intent);
        assert_eq!(body["data"]["clientSecret"], secret);
    }
    assert_eq!(standin.calls("POST", "/v1/payment_intents").len(), 1);
    assert_eq!(standin.calls("GET", &format!("/v1/payment_intents/{intent}")).len(), 2);
    let payment = &order_of(&app, &ann, &order).await["payment"];
    assert_eq!(
        (payment["status"].as_str(), payment["providerPaymentId"].as_str()),
        (Some("requires_payment"), Some(intent.as_str()))
    );
    assert_eq!(history(&app, &ann, &order).await, ["created", "payment_started"]);
    // The client secret is never stored.
    let stored: i64 = sqlx::query_scalar(
        "select (select count(*) from payments p where row_to_json(p)::text like '%' || $1 || '%')
              + (select count(*) from order_events e where row_to_json(e)::text like '%' || $1 || '%')
              + (select count(*) from outbox o where row_to_json(o)::text like '%' || $1 || '%')",
    )
    .bind(&secret)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);

    // A cancelled intent cannot be paid: asking again (twice at once) makes one new
    // intent, under one new key.
    assert!(standin.call(&format!("/v1/payment_intents/{intent}/cancel")).await);
    let (a, b) = tokio::join!(pay(&app, &ann, &order), pay(&app, &ann, &order));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201], "{a:?} {b:?}");
    let renewed = a.1["data"]["providerPaymentId"].as_str().unwrap().to_owned();
    assert_eq!(b.1["data"]["providerPaymentId"], renewed);
    assert_ne!(renewed, intent);
    let keys: Vec<Value> =
        standin.calls("POST", "/v1/payment_intents").iter().map(|r| r["idempotencyKey"].clone()).collect();
    let renewal = format!("order-{order}-payment-after-{intent}");
    assert!(keys[1..].iter().all(|k| *k == renewal), "{keys:?}");
    let intents: i64 = sqlx::query_scalar("select count(*) from payments").fetch_one(&pool).await.unwrap();
    assert_eq!(intents, 2);
    // Paid at the provider, its webhook not here yet: asked again, the same intent (a new
    // one would be paid twice).
    assert!(standin.call(&format!("/v1/payment_intents/{renewed}/confirm")).await);
    let (status, same) = pay(&app, &ann, &order).await;
    assert_eq!((status, same["data"]["providerPaymentId"].as_str()), (200, Some(renewed.as_str())));

    // Someone else's order does not exist for them; a paid one cannot be paid.
    let bob = app.user().signed_in().await;
    expect_error(
        app.authed(Method::POST, &format!("{ORDERS}/{order}/payment"), &bob.token),
        404,
        "NOT_FOUND",
    )
    .await;
    let admin = app.user().admin().signed_in().await;
    let (status, _, _) = send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{order}/status"), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;
    assert_eq!(status, 200);
    expect_error(
        app.authed(Method::POST, &format!("{ORDERS}/{order}/payment"), &ann.token),
        409,
        "INVALID_STATUS_TRANSITION",
    )
    .await;
}

#[sqlx::test]
async fn with_manual_payments_there_is_nothing_to_start_and_no_webhook(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    expect_error(
        app.authed(Method::POST, &format!("{ORDERS}/{order}/payment"), &ann.token),
        409,
        "PAYMENTS_DISABLED",
    )
    .await;
    let (status, body) = deliver(&app, &succeeded("pi_x", 1, "usd")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("NOT_FOUND")));
}

#[sqlx::test]
async fn an_unreachable_slow_or_refusing_provider_is_a_502_that_stores_nothing(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let payments = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from payments").fetch_one(&pool).await.unwrap()
    };

    standin.fail(Some("500"));
    let (status, body) = pay(&app, &ann, &order).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("PAYMENT_PROVIDER_ERROR")), "{body}");
    assert!(!body.to_string().contains("stand-in"), "no provider text leaks: {body}");
    standin.fail(Some("402 card_declined"));
    assert_eq!(pay(&app, &ann, &order).await.0, 502);
    standin.fail(None);
    // Slower than PAYMENT_PROVIDER_TIMEOUT: no answer, so the next try keeps the key.
    standin.hang(Some("2"));
    assert_eq!(pay(&app, &ann, &order).await.0, 502);
    standin.hang(None);
    assert_eq!(payments().await, 0, "nothing stored");

    let (status, body) = pay(&app, &ann, &order).await;
    assert_eq!(status, 201, "{body}");
    let keys: Vec<Value> =
        standin.calls("POST", "/v1/payment_intents").iter().map(|r| r["idempotencyKey"].clone()).collect();
    let base = format!("order-{order}-payment");
    // After each error answer a fresh key (the provider would replay the error for the
    // old one); after the timeout, the same key again.
    assert_eq!(
        keys,
        [json!(base), json!(format!("{base}-1")), json!(format!("{base}-2")), json!(format!("{base}-2"))]
    );
    assert_eq!(payments().await, 1);
}

#[sqlx::test]
async fn missing_malformed_wrong_stale_future_and_altered_signatures_are_400_and_change_nothing(
    pool: PgPool,
) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let (_, started) = pay(&app, &ann, &order).await;
    let intent = started["data"]["providerPaymentId"].as_str().unwrap();
    let body = serde_json::to_vec(&succeeded(intent, 2000, "usd")).unwrap();
    let now = chrono::Utc::now().timestamp();
    let sign = |body: &[u8], secret: &str, t: i64| payments::sign_stripe_event(body, secret.as_bytes(), t);
    let mut altered = body.clone();
    altered.extend_from_slice(b" ");
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("missing", body.clone(), None),
        ("malformed", body.clone(), Some("t=now,v1=nothex".to_owned())),
        ("no v1", body.clone(), Some(format!("t={now}"))),
        ("wrong key", body.clone(), Some(sign(&body, "whsec_someone_else", now))),
        ("stale", body.clone(), Some(sign(&body, SECRET, now - 301))),
        ("future", body.clone(), Some(sign(&body, SECRET, now + 301))),
        ("body altered", altered, Some(sign(&body, SECRET, now))),
    ];
    for (case, body, header) in cases {
        let (status, answer) = deliver_raw(&app, body, header).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("INVALID_SIGNATURE")),
            "{case}: {answer}"
        );
    }
    let ledger: i64 =
        sqlx::query_scalar("select count(*) from payment_events").fetch_one(&pool).await.unwrap();
    assert_eq!(ledger, 0);
    assert_eq!(order_of(&app, &ann, &order).await["status"], "pending");
    // Signed but not an event this server reads: 200, nothing (a non-2xx is retried for days).
    let odd = b"[1, 2, 3]".to_vec();
    let (status, answer) = deliver_raw(&app, odd.clone(), Some(sign(&odd, SECRET, now))).await;
    assert_eq!((status, answer["data"]["duplicate"].as_bool()), (200, Some(false)), "{answer}");
    // Exempt from the per-IP limit, and signed right it passes.
    let (status, answer) = deliver_raw(&app, body.clone(), Some(sign(&body, SECRET, now))).await;
    assert_eq!((status, &answer["data"]), (200, &json!({"received": true, "duplicate": false})));
}

#[sqlx::test]
async fn a_success_pays_the_order_once_even_delivered_twenty_times_at_once(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let (intent, total) = started(&app, &ann, &order).await;
    let paid = succeeded(&intent, total, "usd");
    let answers = futures::future::join_all((0..20).map(|_| deliver(&app, &paid))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let fresh = answers.iter().filter(|(_, b)| b["data"]["duplicate"] == false).count();
    assert_eq!(fresh, 1, "{answers:?}");

    let now = order_of(&app, &ann, &order).await;
    assert_eq!(
        (now["status"].as_str(), now["payment"]["status"].as_str()),
        (Some("paid"), Some("succeeded"))
    );
    assert_eq!(now["expiresAt"], Value::Null);
    assert_eq!(history(&app, &ann, &order).await, ["created", "payment_started", "payment_succeeded"]);
    let (_, _, events) = send(app.authed(Method::GET, &format!("{ORDERS}/{order}/events"), &ann.token)).await;
    let applied = &events["data"][2];
    assert_eq!(
        (applied["fromStatus"].as_str(), applied["toStatus"].as_str()),
        (Some("pending"), Some("paid"))
    );
    assert_eq!(applied["actor"], json!({"kind": "provider", "userId": null}));
    let mails: i64 = scalar(
        &pool,
        "select count(*) from outbox where kind = 'payment-received' and payload->>'orderId' = $1",
        &order,
    )
    .await;
    assert_eq!(mails, 1);
    // A late failure never undoes a success.
    let late = event("payment_intent.payment_failed", json!({"id": intent, "object": "payment_intent"}));
    assert_eq!(deliver(&app, &late).await.0, 200);
    assert_eq!(payment_status(&pool, &intent).await, "succeeded");
    // Unknown types and unknown intents: 200, nothing.
    assert_eq!(deliver(&app, &event("customer.created", json!({"id": "cus_1"}))).await.0, 200);
    assert_eq!(deliver(&app, &succeeded("pi_unknown", 100, "usd")).await.0, 200);
}

#[sqlx::test]
async fn money_that_pays_nothing_goes_back(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().stock(100).create().await.id;
    let start = |order: String| {
        let (app, ann) = (&app, &ann);
        async move {
            let (intent, total) = started(app, ann, &order).await;
            (order, intent, total)
        }
    };
    // 1. The owner cancels, then the money arrives.
    let (cancelled, intent1, total) = start(place(&app, &ann, mug).await).await;
    let (status, _, _) =
        send(app.authed(Method::POST, &format!("{ORDERS}/{cancelled}/cancel"), &ann.token)).await;
    assert_eq!(status, 200);
    // The open intent is cancelled at the provider, so it cannot be paid any more...
    assert!(run_payment_jobs(&app, &pool, Duration::from_secs(3600)).await.iter().all(Result::is_ok));
    assert_eq!(standin.calls("POST", &format!("/v1/payment_intents/{intent1}/cancel")).len(), 1);
    // ...but a payment that raced the cancel still arrives: it goes back.
    assert_eq!(deliver(&app, &succeeded(&intent1, total, "usd")).await.0, 200);
    assert_eq!(order_of(&app, &ann, &cancelled).await["status"], "cancelled");
    assert_eq!(payment_status(&pool, &intent1).await, "refund_pending");
    // 2. Staff marked it paid by hand (money received offline), then it is paid online.
    let (by_hand, intent2, total2) = start(place(&app, &ann, mug).await).await;
    let (status, _, _) = send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{by_hand}/status"), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(deliver(&app, &succeeded(&intent2, total2, "usd")).await.0, 200);
    assert_eq!(payment_status(&pool, &intent2).await, "refund_pending");
    // 3. The amount does not match: the order stays as it is.
    let (short, intent3, total3) = start(place(&app, &ann, mug).await).await;
    assert_eq!(deliver(&app, &succeeded(&intent3, total3 - 1, "usd")).await.0, 200);
    assert_eq!(order_of(&app, &ann, &short).await["status"], "pending");
    assert_eq!(payment_status(&pool, &intent3).await, "refund_pending");
    assert_eq!(
        history(&app, &ann, &short).await,
        ["created", "payment_started", "payment_mismatch", "refund_requested"]
    );

    // The refunds and the intent cancel run as jobs: each refund once, keyed by intent.
    let results = run_payment_jobs(&app, &pool, Duration::from_secs(3600)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let refunds = standin.calls("POST", "/v1/refunds");
    let keys: Vec<&str> = refunds.iter().map(|r| r["idempotencyKey"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for intent in [&intent1, &intent2, &intent3] {
        assert!(keys.contains(&format!("refund-{intent}").as_str()), "{keys:?}");
        assert_eq!(payment_status(&pool, intent).await, "refunded");
    }
    assert_eq!(
        order_of(&app, &admin, &by_hand).await["status"],
        "paid",
        "a refund leaves the order's status alone"
    );
    assert_eq!(crate::helpers::broken_invariants(&pool).await, Vec::<String>::new());
}

#[sqlx::test]
async fn refunds_are_retried_with_fresh_keys_after_errors_and_dead_after_the_window(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().stock(100).create().await.id;
    let order = place(&app, &ann, mug).await;
    let (intent, total) = started(&app, &ann, &order).await;
    assert_eq!(deliver(&app, &succeeded(&intent, total, "usd")).await.0, 200);
    // Staff cancel the paid order: its money goes back.
    let (status, _, _) =
        send(app.authed(Method::POST, &format!("{ORDERS}/{order}/cancel"), &admin.token)).await;
    assert_eq!(status, 200);
    assert_eq!(payment_status(&pool, &intent).await, "refund_pending");

    standin.fail(Some("500"));
    let results = run_payment_jobs(&app, &pool, Duration::from_secs(3600)).await;
    assert!(matches!(results.as_slice(), [Err(_)]), "{results:?}");
    // Run again as the queue's retry would.
    sqlx::query("update outbox set sent_at = null where queue = 'payments'").execute(&pool).await.unwrap();
    standin.hang(Some("2"));
    standin.fail(None);
    assert!(run_payment_jobs(&app, &pool, Duration::from_secs(3600)).await[0].is_err(), "timed out");
    sqlx::query("update outbox set sent_at = null where queue = 'payments'").execute(&pool).await.unwrap();
    standin.hang(None);
    assert!(run_payment_jobs(&app, &pool, Duration::from_secs(3600)).await[0].is_ok());
    let keys: Vec<String> = standin
        .calls("POST", "/v1/refunds")
        .iter()
        .map(|r| r["idempotencyKey"].as_str().unwrap().to_owned())
        .collect();
    let base = format!("refund-{intent}");
    assert_eq!(keys, [base.clone(), format!("{base}-1"), format!("{base}-1")]);
    assert_eq!(payment_status(&pool, &intent).await, "refunded");
    assert_eq!(
        history(&app, &ann, &order).await,
        ["created", "payment_started", "payment_succeeded", "status_changed", "refund_requested", "refunded"]
    );

    // A refund the provider keeps refusing past the window is dead: staff are told.
    let order = place(&app, &ann, mug).await;
    let (intent, total) = started(&app, &ann, &order).await;
    assert_eq!(deliver(&app, &succeeded(&intent, total + 5, "usd")).await.0, 200);
    standin.fail(Some("500"));
    let results = run_payment_jobs(&app, &pool, Duration::ZERO).await;
    assert!(results[0].as_ref().unwrap_err().contains("retry window"), "{results:?}");
    let metrics =
        reqwest::get(format!("http://{}/metrics", app.metrics_address)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("payment_refunds_dead 1"), "{metrics}");
}

#[sqlx::test]
async fn failures_partial_refunds_and_dashboard_refunds_are_recorded_without_moving_the_order(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(100).create().await.id;
    let order = place(&app, &ann, mug).await;
    let (intent, total) = started(&app, &ann, &order).await;
    let failed = event("payment_intent.payment_failed", json!({"id": intent, "object": "payment_intent"}));
    assert_eq!(deliver(&app, &failed).await.0, 200);
    let now = order_of(&app, &ann, &order).await;
    assert_eq!(
        (now["status"].as_str(), now["payment"]["status"].as_str()),
        (Some("pending"), Some("failed"))
    );
    // The client tries again with the same intent.
    let (status, again) = pay(&app, &ann, &order).await;
    assert_eq!((status, again["data"]["providerPaymentId"].as_str()), (200, Some(intent.as_str())));
    assert_eq!(payment_status(&pool, &intent).await, "requires_payment");
    assert_eq!(deliver(&app, &succeeded(&intent, total, "usd")).await.0, 200);
    let refund = |full: bool, amount: i64| {
        event(
            "charge.refunded",
            json!({"id": "ch_1", "object": "charge", "payment_intent": intent, "refunded": full, "amount_refunded": amount}),
        )
    };
    assert_eq!(deliver(&app, &refund(false, 100)).await.0, 200);
    assert_eq!(payment_status(&pool, &intent).await, "succeeded", "a partial refund is an event only");
    assert_eq!(deliver(&app, &refund(true, total)).await.0, 200);
    assert_eq!(payment_status(&pool, &intent).await, "refunded");
    assert_eq!(
        order_of(&app, &ann, &order).await["status"],
        "paid",
        "a dashboard refund leaves the status to staff"
    );
    assert_eq!(
        history(&app, &ann, &order).await,
        [
            "created",
            "payment_started",
            "payment_failed",
            "payment_started",
            "payment_succeeded",
            "refunded",
            "refunded"
        ]
    );
}

#[sqlx::test]
async fn a_late_payment_racing_the_expiry_ends_paid_or_refunded_never_both_never_neither(pool: PgPool) {
    let standin = Standin::start();
    let timeout = Duration::from_secs(60);
    let url = standin.url();
    let app = TestApp::spawn_with(
        pool.clone(),
        |s| {
            stripe_settings(s, &standin);
            s.stripe_api_base = url;
            s.order_payment_timeout = Some(timeout);
        },
        Default::default(),
    )
    .await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(1_000).create().await.id;
    let wakeup = Wakeup::new(pool.clone());
    let started = Instant::now();
    let (mut paid, mut expired) = (0, 0);
    for round in 0..200 {
        let before = stock_of(&pool, mug).await;
        let order = place(&app, &ann, mug).await;
        let (_, body) = pay(&app, &ann, &order).await;
        let intent = body["data"]["providerPaymentId"].as_str().unwrap().to_owned();
        let total = body["data"]["amountCents"].as_i64().unwrap();
        sqlx::query("update orders set expires_at = now() - interval '1 second' where id = $1::uuid")
            .bind(&order)
            .execute(&pool)
            .await
            .unwrap();
        let (a, b) = (rand::random_range(0..3_000u64), rand::random_range(0..3_000u64));
        let expire = async {
            tokio::time::sleep(Duration::from_micros(a)).await;
            orders::expire_unpaid(&pool, &wakeup, timeout).await.unwrap()
        };
        let webhook = async {
            tokio::time::sleep(Duration::from_micros(b)).await;
            deliver(&app, &succeeded(&intent, total, "usd")).await
        };
        let (_, (status, _)) = tokio::join!(expire, webhook);
        assert_eq!(status, 200);
        let state: (String, String) = sqlx::query_as(
            "select o.status::text, p.status::text from orders o join payments p on p.order_id = o.id where o.id = $1::uuid",
        )
        .bind(&order)
        .fetch_one(&pool)
        .await
        .unwrap();
        let after = stock_of(&pool, mug).await;
        match (state.0.as_str(), state.1.as_str()) {
            ("paid", "succeeded") => {
                assert_eq!(after, before - 2, "round {round}: paid and not restocked");
                paid += 1;
            }
            ("cancelled", "refund_pending") => {
                assert_eq!(after, before, "round {round}: cancelled and restocked once");
                expired += 1;
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert_eq!(paid + expired, 200);
    eprintln!("200 races: {paid} paid, {expired} expired and refunded");
    assert_eq!(crate::helpers::broken_invariants(&pool).await, Vec::<String>::new());
}

#[test]
fn the_signer_the_tests_use_passes_stripes_own_verifier() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/openapi-venv/bin/python");
    assert!(python.exists(), "run scripts/openapi-check --install-only first (scripts/test does)");
    let body = serde_json::to_vec(&succeeded("pi_123", 2500, "usd")).unwrap();
    let header = payments::sign_stripe_event(&body, SECRET.as_bytes(), chrono::Utc::now().timestamp());
    let check = |secret: &str| {
        Command::new(&python)
            .args([
                "-c",
                "import sys, stripe; e = stripe.Webhook.construct_event(sys.argv[1], sys.argv[2], sys.argv[3]); print(e['id'])",
            ])
            .arg(String::from_utf8(body.clone()).unwrap())
            .arg(&header)
            .arg(secret)
            .output()
            .unwrap()
    };
    let out = check(SECRET);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("evt_"));
    let wrong = check("whsec_another");
    assert!(!wrong.status.success(), "Stripe's verifier refuses another secret");
}

/// docs/payments.md, "Without Stripe: the local stand-in", step by step: the documented
/// event, signed by the stand-in's `--sign-event`, pays the order.
#[sqlx::test]
async fn the_documented_local_walkthrough_pays_an_order(pool: PgPool) {
    let standin = Standin::start();
    let app = spawn(pool.clone(), &standin).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().price_cents(1250).stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let (status, started) = pay(&app, &ann, &order).await;
    assert_eq!(status, 201);
    let pi = started["data"]["providerPaymentId"].as_str().unwrap();
    let event = format!(
        r#"{{"id":"evt_1","type":"payment_intent.succeeded","data":{{"object":{{"id":"{pi}","amount_received":2500,"currency":"usd"}}}}}}"#
    );
    let file = standin.server.dir.join("event.json");
    std::fs::write(&file, format!("{event}\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stripe-standin");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["--sign-event"])
        .arg(&file)
        .args(["--secret", SECRET])
        .output()
        .unwrap();
    assert!(out.status.success());
    let header = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, body) = deliver_raw(&app, std::fs::read(&file).unwrap(), Some(header)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(order_of(&app, &ann, &order).await["status"], "paid");
}
