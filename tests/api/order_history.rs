//! Each order's history, the cap on unpaid orders per user, and the expiry of unpaid
//! orders, over HTTP against the real stack.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use storefront::{features::orders, platform::jobs::outbox::Wakeup};
use uuid::Uuid;

use crate::helpers::{Session, TestApp, broken_invariants, expect_error, send};

const ORDERS: &str = "/api/v1/orders";

async fn place(app: &TestApp, who: &Session, product: Uuid) -> Value {
    let body = json!({"items": [{"productId": product, "quantity": 2}]});
    let (status, _, res) = send(app.authed(Method::POST, ORDERS, &who.token).json(&body)).await;
    assert_eq!(status, 201, "{res}");
    res["data"].clone()
}

async fn events(app: &TestApp, who: &Session, order: &str) -> Vec<Value> {
    let (status, _, body) =
        send(app.authed(Method::GET, &format!("{ORDERS}/{order}/events?limit=100"), &who.token)).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// `(type, fromStatus, toStatus, actor.kind, actor.userId)` of each event.
fn summary(events: &[Value]) -> Vec<(String, Value, Value, String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["fromStatus"].clone(),
                e["toStatus"].clone(),
                e["actor"]["kind"].as_str().unwrap().to_owned(),
                e["actor"]["userId"].clone(),
            )
        })
        .collect()
}

async fn stock_of(app: &TestApp, id: Uuid) -> i32 {
    sqlx::query_scalar("select stock from products where id = $1")
        .bind(id)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

async fn outbox_kinds(app: &TestApp, order: &str) -> Vec<String> {
    sqlx::query_scalar("select kind from outbox where payload->>'orderId' = $1 order by created_at, kind")
        .bind(order)
        .fetch_all(&app.state.db)
        .await
        .unwrap()
}

#[sqlx::test]
async fn every_change_writes_one_history_row_naming_who_made_it(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let ann = app.user().signed_in().await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let id = order["id"].as_str().unwrap();
    assert_eq!(order["payment"], Value::Null);
    assert_eq!(order["expiresAt"], Value::Null, "expiry is off by default");

    let address = json!({"line1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"});
    let (status, _, _) = send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{id}"), &ann.token)
            .json(&json!({"shippingAddress": address})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{id}/status"), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) =
        send(app.authed(Method::POST, &format!("{ORDERS}/{id}/cancel"), &admin.token)).await;
    assert_eq!(status, 200, "{body}");

    let (ann_id, admin_id) = (json!(ann.id), json!(admin.id));
    let history = events(&app, &ann, id).await;
    assert_eq!(
        summary(&history),
        [
            ("created".to_owned(), Value::Null, json!("pending"), "user".to_owned(), ann_id.clone()),
            ("address_changed".to_owned(), Value::Null, Value::Null, "user".to_owned(), ann_id),
            (
                "status_changed".to_owned(),
                json!("pending"),
                json!("paid"),
                "admin".to_owned(),
                admin_id.clone()
            ),
            ("status_changed".to_owned(), json!("paid"), json!("cancelled"), "admin".to_owned(), admin_id),
        ]
    );
    assert_eq!(history[3]["detail"], json!({"reason": "cancelled"}));
    assert_eq!(history, events(&app, &admin, id).await, "staff read the same history");
    // A cancel by staff tells the owner; the owner's own cancel does not (below).
    assert_eq!(outbox_kinds(&app, id).await, ["order-confirmation", "order-cancelled"]);

    let own = place(&app, &ann, mug).await;
    let own_id = own["id"].as_str().unwrap();
    let (status, _, _) =
        send(app.authed(Method::POST, &format!("{ORDERS}/{own_id}/cancel"), &ann.token)).await;
    assert_eq!(status, 200);
    assert_eq!(outbox_kinds(&app, own_id).await, ["order-confirmation"]);
    assert_eq!(events(&app, &ann, own_id).await[1]["actor"]["kind"], "user");

    // Someone else's order's history, like the order, does not exist for them.
    let bob = app.user().signed_in().await;
    expect_error(app.authed(Method::GET, &format!("{ORDERS}/{id}/events"), &bob.token), 404, "NOT_FOUND")
        .await;
    expect_error(
        app.authed(Method::GET, &format!("{ORDERS}/{}/events", Uuid::new_v4()), &admin.token),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(broken_invariants(&pool).await, Vec::<String>::new());
}

#[sqlx::test]
async fn the_history_pages_by_cursor_and_refuses_a_cursor_of_another_order(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let id = order["id"].as_str().unwrap();
    for line1 in ["1 A St", "2 B St", "3 C St", "4 D St"] {
        let address = json!({"line1": line1, "city": "Berlin", "postalCode": "10115", "country": "DE"});
        let (status, _, _) = send(
            app.authed(Method::PATCH, &format!("{ORDERS}/{id}"), &ann.token)
                .json(&json!({"shippingAddress": address})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let all: Vec<Value> = events(&app, &ann, id).await.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(all.len(), 5);

    let (_, _, first) =
        send(app.authed(Method::GET, &format!("{ORDERS}/{id}/events?limit=2"), &ann.token)).await;
    assert_eq!(first["pagination"]["total"], 5);
    let mut seen: Vec<Value> = first["data"].as_array().unwrap().iter().map(|e| e["id"].clone()).collect();
    let mut cursor = first["pagination"]["nextCursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (status, headers, page) =
            send(app.authed(Method::GET, &format!("{ORDERS}/{id}/events?limit=2&cursor={c}"), &ann.token))
                .await;
        assert_eq!(status, 200, "{page}");
        assert!(page["pagination"].get("total").is_none(), "cursor mode has no total");
        seen.extend(page["data"].as_array().unwrap().iter().map(|e| e["id"].clone()));
        cursor = page["pagination"]["nextCursor"].as_str().map(str::to_owned);
        assert_eq!(
            headers.get("link").is_some(),
            cursor.is_some(),
            "a Link header exactly when there is more"
        );
    }
    assert_eq!(seen, all);

    let cursor = first["pagination"]["nextCursor"].as_str().unwrap();
    let other = place(&app, &ann, mug).await;
    let other_id = other["id"].as_str().unwrap();
    let mut tampered = cursor.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for path in [
        format!("{ORDERS}/{other_id}/events?cursor={cursor}"),
        format!("{ORDERS}/{id}/events?cursor={tampered}"),
        format!("{ORDERS}/{id}/events?cursor={cursor}&page=2"),
    ] {
        expect_error(app.authed(Method::GET, &path, &ann.token), 400, "VALIDATION_ERROR").await;
    }
}

#[sqlx::test]
async fn twenty_parallel_orders_of_one_user_at_the_cap_place_no_more_than_the_cap(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool.clone(), |s| s.order_max_pending_per_user = 3, Default::default()).await;
    let ann = app.user().signed_in().await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().stock(1000).create().await.id;
    let attempts = (0..20).map(|_| {
        let req = app
            .authed(Method::POST, ORDERS, &ann.token)
            .json(&json!({"items": [{"productId": mug, "quantity": 1}]}));
        send(req)
    });
    let answers = futures::future::join_all(attempts).await;
    let placed = answers.iter().filter(|(status, _, _)| *status == 201).count();
    assert_eq!(placed, 3, "{answers:?}");
    for (status, _, body) in answers.iter().filter(|(status, _, _)| *status != 201) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["error"]["code"], "TOO_MANY_PENDING_ORDERS");
        assert_eq!(body["error"]["details"]["pending"], 3);
    }
    assert_eq!(stock_of(&app, mug).await, 997, "refused orders took no stock");

    // The refusal depends on the caller's state, so it is not stored against a key: once
    // an order is paid, the same key places one.
    let keyed = || {
        app.authed(Method::POST, ORDERS, &ann.token)
            .header("Idempotency-Key", "one-more")
            .json(&json!({"items": [{"productId": mug, "quantity": 1}]}))
    };
    expect_error(keyed(), 409, "TOO_MANY_PENDING_ORDERS").await;
    let pending: Uuid = sqlx::query_scalar("select id from orders where status = 'pending' limit 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (status, _, _) = send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{pending}/status"), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = send(keyed()).await;
    assert_eq!(status, 201, "{body}");
    let (status, headers, again) = send(keyed()).await;
    assert_eq!((status.as_u16(), headers.get("idempotent-replayed").is_some()), (201, true));
    assert_eq!(again["data"]["id"], body["data"]["id"]);
    // The cap is per user.
    let bob = app.user().signed_in().await;
    place(&app, &bob, mug).await;
}

/// Sets the order's expiry time `ago` in the past.
async fn due(pool: &PgPool, order: &str, ago: &str) {
    sqlx::query("update orders set expires_at = now() - $2::interval where id = $1::uuid")
        .bind(order)
        .bind(ago)
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test]
async fn unpaid_orders_expire_once_restocked_and_told_and_paid_ones_never(pool: PgPool) {
    let timeout = Duration::from_secs(30 * 60);
    let app =
        TestApp::spawn_with(pool.clone(), |s| s.order_payment_timeout = Some(timeout), Default::default())
            .await;
    let ann = app.user().signed_in().await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let late = place(&app, &ann, mug).await;
    let paid = place(&app, &ann, mug).await;
    let waiting = place(&app, &ann, mug).await;
    let expires_at: chrono::DateTime<chrono::Utc> = late["expiresAt"].as_str().unwrap().parse().unwrap();
    let placed_at: chrono::DateTime<chrono::Utc> = late["createdAt"].as_str().unwrap().parse().unwrap();
    assert_eq!((expires_at - placed_at).num_seconds(), 30 * 60);
    let paid_id = paid["id"].as_str().unwrap();
    let (status, _, body) = send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{paid_id}/status"), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["expiresAt"], Value::Null, "only pending orders expire");
    assert_eq!(stock_of(&app, mug).await, 4);

    let late_id = late["id"].as_str().unwrap();
    due(&pool, late_id, "1 second").await;
    due(&pool, paid_id, "1 second").await;
    // Two processes' runs at once: each order is expired by one of them.
    let wakeup = Wakeup::new(pool.clone());
    let (a, b) = tokio::join!(
        orders::expire_unpaid(&pool, &wakeup, timeout),
        orders::expire_unpaid(&pool, &wakeup, timeout)
    );
    assert_eq!(a.unwrap().expired + b.unwrap().expired, 1);

    let (_, _, body) = send(app.authed(Method::GET, &format!("{ORDERS}/{late_id}"), &ann.token)).await;
    assert_eq!(body["data"]["status"], "cancelled");
    assert_eq!(body["data"]["expiresAt"], Value::Null);
    assert_eq!(stock_of(&app, mug).await, 6, "restocked once");
    let history = events(&app, &ann, late_id).await;
    assert_eq!(
        summary(&history[1..]),
        [("expired".to_owned(), json!("pending"), json!("cancelled"), "system".to_owned(), Value::Null)]
    );
    assert_eq!(history[1]["detail"], json!({"reason": "expired"}));
    assert_eq!(outbox_kinds(&app, late_id).await, ["order-confirmation", "order-cancelled"]);
    let reason: String = sqlx::query_scalar(
        "select payload->>'reason' from outbox where kind = 'order-cancelled' and payload->>'orderId' = $1",
    )
    .bind(late_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reason, "expired");
    let status_of = |id: &str| {
        let (pool, id) = (pool.clone(), id.to_owned());
        async move {
            sqlx::query_scalar::<_, String>("select status::text from orders where id = $1::uuid")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(status_of(paid_id).await, "paid");
    assert_eq!(status_of(waiting["id"].as_str().unwrap()).await, "pending", "not due yet");

    // A cancelled order cannot be expired again, nor cancelled.
    let report = orders::expire_unpaid(&pool, &wakeup, timeout).await.unwrap();
    assert_eq!(report.expired, 0);
    expect_error(
        app.authed(Method::POST, &format!("{ORDERS}/{late_id}/cancel"), &ann.token),
        409,
        "INVALID_STATUS_TRANSITION",
    )
    .await;
    assert_eq!(broken_invariants(&pool).await, Vec::<String>::new());
}

#[sqlx::test]
async fn orders_waiting_when_expiry_is_turned_on_expire_one_timeout_later(pool: PgPool) {
    // Placed while expiry was off: no expiry time.
    let app = TestApp::spawn(pool.clone()).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let old = place(&app, &ann, mug).await;
    let old_id = old["id"].as_str().unwrap();
    sqlx::query("update orders set created_at = now() - interval '3 days' where id = $1::uuid")
        .bind(old_id)
        .execute(&pool)
        .await
        .unwrap();

    let timeout = Duration::from_secs(15 * 60);
    let report = orders::expire_unpaid(&pool, &Wakeup::new(pool.clone()), timeout).await.unwrap();
    assert_eq!((report.stamped, report.expired), (1, 0), "stamped, not expired at once");
    let app =
        TestApp::spawn_with(pool.clone(), |s| s.order_payment_timeout = Some(timeout), Default::default())
            .await;
    let (_, _, body) = send(app.authed(Method::GET, &format!("{ORDERS}/{old_id}"), &ann.token)).await;
    let expires_at: chrono::DateTime<chrono::Utc> =
        body["data"]["expiresAt"].as_str().unwrap().parse().unwrap();
    let left = expires_at - chrono::Utc::now();
    assert!(left > chrono::Duration::minutes(14) && left <= chrono::Duration::minutes(15), "{left}");

    // Turned off again: the time is cleared (it would not happen); turned on later, a
    // full timeout from then, never an expiry at once for the time it had before.
    sqlx::query("update orders set expires_at = now() - interval '1 hour' where id = $1::uuid")
        .bind(old_id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(orders::clear_expiry(&pool).await.unwrap(), 1);
    let (_, _, body) = send(app.authed(Method::GET, &format!("{ORDERS}/{old_id}"), &ann.token)).await;
    assert_eq!(body["data"]["expiresAt"], Value::Null);
    let report = orders::expire_unpaid(&pool, &Wakeup::new(pool.clone()), timeout).await.unwrap();
    assert_eq!((report.stamped, report.expired), (1, 0));
}

#[sqlx::test]
async fn the_expiry_task_runs_from_the_command_line_and_refuses_when_expiry_is_off(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(10).create().await.id;
    let order = place(&app, &ann, mug).await;
    let id = order["id"].as_str().unwrap();
    due(&pool, id, "1 minute").await;
    let run = |timeout: &str| {
        crate::maintenance::run_task_with(&app, "order-expiry", &[("ORDER_PAYMENT_TIMEOUT", timeout)])
    };
    let (ok, out) = run("0");
    assert!(!ok && out.contains("order expiry is off"), "{out}");
    let (ok, out) = run("30m");
    assert!(ok && out.contains("expired: 1"), "{out}");
    assert_eq!(stock_of(&app, mug).await, 10);
}
