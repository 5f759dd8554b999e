//! Orders over HTTP: orders, stock, the status machine and idempotency.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_error_parts, expect_error, send};

const ORDERS: &str = "/api/v1/orders";

async fn stock_of(app: &TestApp, id: Uuid) -> i64 {
    sqlx::query_scalar::<_, i32>("select stock from products where id = $1")
        .bind(id)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
        .into()
}

async fn order_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from orders").fetch_one(&app.state.db).await.unwrap()
}

fn one(product: Uuid, quantity: i32) -> Value {
    json!({"items": [{"productId": product, "quantity": quantity}]})
}

async fn place(app: &TestApp, who: &Session, body: &Value) -> Value {
    let (status, _, res) = send(app.authed(Method::POST, ORDERS, &who.token).json(body)).await;
    assert_eq!(status, 201, "{res}");
    res["data"].clone()
}

fn address() -> Value {
    json!({"line1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"})
}

#[sqlx::test]
async fn placing_an_order_snapshots_prices_takes_stock_and_queues_the_email(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(1250).stock(10).create().await.id;
    let tea = app.product().sku("TEA").price_cents(399).stock(5).create().await.id;
    let ann = app.user().signed_in().await;

    let body = json!({"items": [{"productId": mug, "quantity": 2}, {"productId": tea, "quantity": 3}],
                      "shippingAddress": address()});
    let (status, headers, res) = send(app.authed(Method::POST, ORDERS, &ann.token).json(&body)).await;
    assert_eq!(status, 201, "{res}");
    let order = &res["data"];
    assert_eq!(headers["location"], format!("/api/v1/orders/{}", order["id"].as_str().unwrap()));
    assert_eq!(order["status"], "pending");
    assert_eq!(order["userId"], ann.id.to_string());
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["totalCents"], 2 * 1250 + 3 * 399);
    assert_eq!(order["shippingAddress"], address());
    assert_eq!(
        order["items"],
        json!([
            {"productId": mug, "sku": "MUG", "name": "Product MUG", "unitPriceCents": 1250, "quantity": 2, "lineTotalCents": 2500},
            {"productId": tea, "sku": "TEA", "name": "Product TEA", "unitPriceCents": 399, "quantity": 3, "lineTotalCents": 1197},
        ])
    );
    assert_eq!((stock_of(&app, mug).await, stock_of(&app, tea).await), (8, 2));
    let queued: i64 = sqlx::query_scalar(
        "select count(*) from outbox where kind = 'order-confirmation' and payload->>'orderId' = $1 and sent_at is null",
    )
    .bind(order["id"].as_str().unwrap())
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(queued, 1);

    // Later catalogue changes do not touch the order; archiving keeps it readable.
    let renamed = json!({"priceCents": 9999, "name": "Renamed"});
    let product_path = format!("/api/v1/products/{mug}");
    let (status, _, _) = send(app.authed(Method::PATCH, &product_path, &admin.token).json(&renamed)).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(app.authed(Method::DELETE, &product_path, &admin.token)).await;
    assert_eq!(status, 204);
    let (_, _, again) =
        send(app.authed(Method::GET, &format!("{ORDERS}/{}", order["id"].as_str().unwrap()), &ann.token))
            .await;
    assert_eq!(again["data"]["items"][0]["unitPriceCents"], 1250);
    assert_eq!(again["data"]["items"][0]["name"], "Product MUG");
}

#[sqlx::test]
async fn invalid_orders_are_400_naming_the_item_and_change_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let old = app.product().sku("OLD").price_cents(100).stock(10).create().await.id;
    send(app.authed(Method::DELETE, &format!("/api/v1/products/{old}"), &admin.token)).await;
    let ann = app.user().signed_in().await;
    let many: Vec<Value> = (0..101).map(|_| json!({"productId": Uuid::new_v4(), "quantity": 1})).collect();
    let cases = [
        (json!({"items": []}), "items"),
        (json!({"items": many}), "items"),
        (one(mug, 0), "items[0].quantity"),
        (one(mug, 1001), "items[0].quantity"),
        (
            json!({"items": [{"productId": mug, "quantity": 1}, {"productId": mug, "quantity": 2}]}),
            "items[1].productId",
        ),
        (one(Uuid::new_v4(), 1), "items[0].productId"),
        (
            json!({"items": [{"productId": mug, "quantity": 1}, {"productId": old, "quantity": 1}]}),
            "items[1].productId",
        ),
        (json!({"items": [{"productId": "nope", "quantity": 1}]}), "items[0].productId"),
        (
            json!({"items": [{"productId": mug, "quantity": 1}], "shippingAddress": {"line1": "x", "city": "y", "postalCode": "1", "country": "XX"}}),
            "shippingAddress.country",
        ),
        (json!({"items": [{"productId": mug, "quantity": 1}], "userId": Uuid::new_v4()}), "userId"),
        (
            json!({"items": [{"productId": mug, "quantity": 1, "unitPriceCents": 1}]}),
            "items[0].unitPriceCents",
        ),
    ];
    for (body, field) in cases {
        let err =
            expect_error(app.authed(Method::POST, ORDERS, &ann.token).json(&body), 400, "VALIDATION_ERROR")
                .await;
        assert!(err["error"]["fields"][field].is_array(), "{field}: {err}");
    }
    assert_eq!(stock_of(&app, mug).await, 10);
    assert_eq!(order_count(&app).await, 0);
    expect_error(app.request(Method::POST, ORDERS).json(&one(mug, 1)), 401, "UNAUTHORIZED").await;
}

#[sqlx::test]
async fn insufficient_stock_is_a_409_naming_the_products_and_takes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let plenty = app.product().sku("PLENTY").price_cents(100).stock(50).create().await.id;
    let scarce = app.product().sku("SCARCE").price_cents(100).stock(2).create().await.id;
    let ann = app.user().signed_in().await;
    let body = json!({"items": [{"productId": plenty, "quantity": 5}, {"productId": scarce, "quantity": 3}]});
    let err =
        expect_error(app.authed(Method::POST, ORDERS, &ann.token).json(&body), 409, "INSUFFICIENT_STOCK")
            .await;
    assert_eq!(
        err["error"]["details"]["products"],
        json!([{"productId": scarce, "requested": 3, "available": 2}])
    );
    assert_eq!((stock_of(&app, plenty).await, stock_of(&app, scarce).await), (50, 2), "all or nothing");
    assert_eq!(order_count(&app).await, 0);
}

#[sqlx::test]
async fn users_see_their_own_orders_and_admins_everyones(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(100).create().await.id;
    let (ann, bob) = (app.user().signed_in().await, app.user().signed_in().await);
    let a1 = place(&app, &ann, &one(mug, 1)).await;
    let a2 = place(&app, &ann, &one(mug, 2)).await;
    let b1 = place(&app, &bob, &one(mug, 3)).await;
    send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{}/status", a1["id"].as_str().unwrap()), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;

    let ids =
        |body: &Value| body["data"].as_array().unwrap().iter().map(|o| o["id"].clone()).collect::<Vec<_>>();
    let (_, _, mine) = send(app.authed(Method::GET, ORDERS, &ann.token)).await;
    assert_eq!(ids(&mine), [a2["id"].clone(), a1["id"].clone()], "own orders, newest first");
    assert_eq!(
        mine["pagination"],
        json!({"page": 1, "limit": 20, "total": 2, "pages": 1, "nextCursor": null})
    );
    assert_eq!(mine["data"][0]["items"][0]["quantity"], 2, "items come with the page");
    let (_, _, paid) = send(app.authed(Method::GET, &format!("{ORDERS}?status=paid"), &ann.token)).await;
    assert_eq!(ids(&paid), [a1["id"].clone()]);

    let (_, _, all) = send(app.authed(Method::GET, ORDERS, &admin.token)).await;
    assert_eq!(all["pagination"]["total"], 3);
    let (_, _, bobs) =
        send(app.authed(Method::GET, &format!("{ORDERS}?userId={}", bob.id), &admin.token)).await;
    assert_eq!(ids(&bobs), [b1["id"].clone()]);
    let (_, _, page2) =
        send(app.authed(Method::GET, &format!("{ORDERS}?limit=2&page=2"), &admin.token)).await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);

    expect_error(
        app.authed(Method::GET, &format!("{ORDERS}?userId={}", bob.id), &ann.token),
        403,
        "FORBIDDEN",
    )
    .await;
    expect_error(
        app.authed(Method::GET, &format!("{ORDERS}?status=lost"), &ann.token),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    expect_error(app.request(Method::GET, ORDERS), 401, "UNAUTHORIZED").await;

    let b1_path = format!("{ORDERS}/{}", b1["id"].as_str().unwrap());
    expect_error(app.authed(Method::GET, &b1_path, &ann.token), 404, "NOT_FOUND").await;
    assert_eq!(send(app.authed(Method::GET, &b1_path, &bob.token)).await.0, 200);
    assert_eq!(send(app.authed(Method::GET, &b1_path, &admin.token)).await.0, 200);
    expect_error(
        app.authed(Method::GET, &format!("{ORDERS}/{}", Uuid::new_v4()), &admin.token),
        404,
        "NOT_FOUND",
    )
    .await;
    expect_error(app.authed(Method::GET, &format!("{ORDERS}/x"), &admin.token), 400, "VALIDATION_ERROR")
        .await;
}

#[sqlx::test]
async fn the_address_changes_while_pending_for_owners_and_while_paid_for_admins(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(100).create().await.id;
    let (ann, bob) = (app.user().signed_in().await, app.user().signed_in().await);
    let order = place(&app, &ann, &one(mug, 1)).await;
    let path = format!("{ORDERS}/{}", order["id"].as_str().unwrap());
    let patch = |who: &Session, body: Value| app.authed(Method::PATCH, &path, &who.token).json(&body);

    let (status, _, res) = send(patch(&ann, json!({"shippingAddress": address()}))).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["data"]["shippingAddress"], address());
    let (_, _, res) = send(patch(&ann, json!({"shippingAddress": null}))).await;
    assert_eq!(res["data"]["shippingAddress"], Value::Null);
    expect_error(patch(&ann, json!({})), 400, "VALIDATION_ERROR").await;
    expect_error(patch(&ann, json!({"shippingAddress": {"line1": "x"}})), 400, "VALIDATION_ERROR").await;
    expect_error(patch(&ann, json!({"status": "paid"})), 400, "VALIDATION_ERROR").await;
    expect_error(patch(&bob, json!({"shippingAddress": address()})), 404, "NOT_FOUND").await;

    send(app.authed(Method::PATCH, &format!("{path}/status"), &admin.token).json(&json!({"status": "paid"})))
        .await;
    expect_error(patch(&ann, json!({"shippingAddress": address()})), 409, "INVALID_STATUS_TRANSITION").await;
    assert_eq!(send(patch(&admin, json!({"shippingAddress": address()}))).await.0, 200);
    send(
        app.authed(Method::PATCH, &format!("{path}/status"), &admin.token)
            .json(&json!({"status": "shipped"})),
    )
    .await;
    expect_error(patch(&admin, json!({"shippingAddress": address()})), 409, "INVALID_STATUS_TRANSITION")
        .await;
}

#[sqlx::test]
async fn cancelling_follows_the_rules_and_restocks_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let (ann, bob) = (app.user().signed_in().await, app.user().signed_in().await);

    let first = place(&app, &ann, &one(mug, 3)).await;
    let cancel = |who: &Session, order: &Value| {
        app.authed(Method::POST, &format!("{ORDERS}/{}/cancel", order["id"].as_str().unwrap()), &who.token)
    };
    expect_error(cancel(&bob, &first), 404, "NOT_FOUND").await;
    let (status, _, res) = send(cancel(&ann, &first)).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["data"]["status"], "cancelled");
    assert_eq!(stock_of(&app, mug).await, 10);
    expect_error(cancel(&ann, &first), 409, "INVALID_STATUS_TRANSITION").await;
    expect_error(cancel(&admin, &first), 409, "INVALID_STATUS_TRANSITION").await;
    assert_eq!(stock_of(&app, mug).await, 10, "no second restock");

    let paid = place(&app, &ann, &one(mug, 4)).await;
    send(
        app.authed(Method::PATCH, &format!("{ORDERS}/{}/status", paid["id"].as_str().unwrap()), &admin.token)
            .json(&json!({"status": "paid"})),
    )
    .await;
    expect_error(cancel(&ann, &paid), 409, "INVALID_STATUS_TRANSITION").await;
    assert_eq!(stock_of(&app, mug).await, 6);
    assert_eq!(send(cancel(&admin, &paid)).await.0, 200);
    assert_eq!(stock_of(&app, mug).await, 10);
}

#[sqlx::test]
async fn admins_move_orders_along_the_status_machine_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let ann = app.user().signed_in().await;
    let order = place(&app, &ann, &one(mug, 2)).await;
    let path = format!("{ORDERS}/{}/status", order["id"].as_str().unwrap());
    let set = |who: &Session, status: &str| {
        app.authed(Method::PATCH, &path, &who.token).json(&json!({"status": status}))
    };

    expect_error(set(&ann, "paid"), 403, "FORBIDDEN").await;
    expect_error(set(&admin, "shipped"), 409, "INVALID_STATUS_TRANSITION").await;
    expect_error(set(&admin, "pending"), 409, "INVALID_STATUS_TRANSITION").await;
    expect_error(set(&admin, "lost"), 400, "VALIDATION_ERROR").await;
    for next in ["paid", "shipped", "delivered"] {
        let (status, _, res) = send(set(&admin, next)).await;
        assert_eq!(status, 200, "{next}: {res}");
        assert_eq!(res["data"]["status"], next);
    }
    expect_error(set(&admin, "cancelled"), 409, "INVALID_STATUS_TRANSITION").await;
    assert_eq!(stock_of(&app, mug).await, 8, "delivered orders keep their stock");
    let missing = format!("{ORDERS}/{}/status", Uuid::new_v4());
    expect_error(
        app.authed(Method::PATCH, &missing, &admin.token).json(&json!({"status": "paid"})),
        404,
        "NOT_FOUND",
    )
    .await;
}

#[sqlx::test]
async fn fifty_concurrent_orders_for_ten_units_sell_exactly_ten(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let mut shoppers = Vec::new();
    for _ in 0..5 {
        shoppers.push(app.user().signed_in().await);
    }
    let body = one(mug, 1);
    let attempts =
        (0..50).map(|i| send(app.authed(Method::POST, ORDERS, &shoppers[i % 5].token).json(&body)));
    let results = futures::future::join_all(attempts).await;

    let created = results.iter().filter(|(s, _, _)| *s == StatusCode::CREATED).count();
    let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == StatusCode::CONFLICT).collect();
    assert_eq!(created, 10);
    assert_eq!(refused.len(), 40);
    for (status, headers, body) in refused {
        assert_error_parts(*status, headers, body, 409, "INSUFFICIENT_STOCK");
    }
    assert_eq!(stock_of(&app, mug).await, 0);
    assert_eq!(order_count(&app).await, 10);
    // The catalogue's in-stock total followed the sell-out.
    let (_, _, in_stock) = send(app.request(Method::GET, "/api/v1/products?inStock=true")).await;
    assert_eq!(in_stock["pagination"]["total"], 0);
}

/// Runs `change` on `product` in a transaction that holds the product's row lock while an
/// order for it is sent, and commits only once the order waits for that lock: the order
/// was priced from the product before the change and is written after it.
async fn change_while_ordering(
    app: &TestApp,
    who: &Session,
    product: Uuid,
    change: &'static str,
) -> (StatusCode, Value) {
    let mut tx = app.state.db.begin().await.unwrap();
    sqlx::query("select 1 from products where id = $1 for update")
        .bind(product)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(change).bind(product).execute(&mut *tx).await.unwrap();
    let request = tokio::spawn(send(app.authed(Method::POST, ORDERS, &who.token).json(&one(product, 2))));
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&app.state.db)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the order never waited for the lock");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tx.commit().await.unwrap();
    let (status, _, body) = request.await.unwrap();
    (status, body)
}

#[sqlx::test]
async fn a_product_changed_while_an_order_is_placed_prices_it_again_or_refuses_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(1000).stock(5).create().await.id;

    // A new price between the read the order is priced from and its write: the order is
    // priced again, at the price it was written against, and takes stock once.
    let (status, body) =
        change_while_ordering(&app, &ann, mug, "update products set price_cents = 1500 where id = $1").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["totalCents"], 3000);
    assert_eq!(body["data"]["items"][0]["unitPriceCents"], 1500);
    assert_eq!(stock_of(&app, mug).await, 3);
    let stored: (i64, i64) = sqlx::query_as(
        "select o.total_cents, i.unit_price_cents from orders o join order_items i on i.order_id = o.id",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(stored, (3000, 1500));

    // Sold out, or archived, in between: refused as if that had happened first, nothing taken.
    let (status, body) =
        change_while_ordering(&app, &ann, mug, "update products set stock = 1 where id = $1").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "INSUFFICIENT_STOCK");
    assert_eq!(body["error"]["details"]["products"][0]["available"], 1);
    sqlx::query("update products set stock = 5 where id = $1")
        .bind(mug)
        .execute(&app.state.db)
        .await
        .unwrap();
    let (status, body) =
        change_while_ordering(&app, &ann, mug, "update products set archived_at = now() where id = $1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(stock_of(&app, mug).await, 5);
    assert_eq!(order_count(&app).await, 1);
    let announced: i64 = sqlx::query_scalar("select count(*) from outbox where kind = 'order-confirmation'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(announced, 1, "a refused attempt queues no e-mail");
}

#[sqlx::test]
async fn concurrent_cancels_of_one_order_restock_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let ann = app.user().signed_in().await;
    let order = place(&app, &ann, &one(mug, 4)).await;
    let path = format!("{ORDERS}/{}/cancel", order["id"].as_str().unwrap());
    let attempts = (0..10).map(|i| {
        let who = if i % 2 == 0 { &ann } else { &admin };
        send(app.authed(Method::POST, &path, &who.token))
    });
    let statuses: Vec<u16> =
        futures::future::join_all(attempts).await.iter().map(|(s, _, _)| s.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9, "{statuses:?}");
    assert_eq!(stock_of(&app, mug).await, 10);
}

#[sqlx::test]
async fn an_idempotency_key_replays_the_first_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let (ann, bob) = (app.user().signed_in().await, app.user().signed_in().await);
    let post = |who: &Session, key: &str, body: &Value| {
        app.authed(Method::POST, ORDERS, &who.token).header("idempotency-key", key).json(body)
    };

    let (s1, h1, first) = send(post(&ann, "key-1", &one(mug, 2))).await;
    assert_eq!(s1, 201);
    assert!(!h1.contains_key("idempotent-replayed"));
    let (s2, h2, again) = send(post(&ann, "key-1", &one(mug, 2))).await;
    assert_eq!(s2, 201);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(h2["location"], h1["location"]);
    assert_eq!(again, first, "the stored body, unchanged");
    assert_eq!(stock_of(&app, mug).await, 8, "one decrement");

    expect_error(post(&ann, "key-1", &one(mug, 3)), 422, "IDEMPOTENCY_KEY_MISMATCH").await;
    // Keys are per caller: Bob's "key-1" is a new order.
    assert_eq!(send(post(&bob, "key-1", &one(mug, 2))).await.0, 201);
    assert_eq!(stock_of(&app, mug).await, 6);
    expect_error(post(&ann, "", &one(mug, 1)), 400, "VALIDATION_ERROR").await;
    expect_error(post(&ann, &"k".repeat(256), &one(mug, 1)), 400, "VALIDATION_ERROR").await;

    // A final 4xx is replayed too, even once stock is back.
    let (s, h, refused) = send(post(&ann, "key-2", &one(mug, 50))).await;
    assert_error_parts(s, &h, &refused, 409, "INSUFFICIENT_STOCK");
    let (s, h, replayed) = send(post(&ann, "key-2", &one(mug, 50))).await;
    assert_eq!(s, 409);
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(replayed, refused);
    assert_eq!(order_count(&app).await, 2);
}

#[sqlx::test]
async fn twenty_concurrent_retries_with_one_key_make_one_order(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").price_cents(100).stock(100).create().await.id;
    let ann = app.user().signed_in().await;
    let body = one(mug, 1);
    let attempts = (0..20).map(|_| {
        send(app.authed(Method::POST, ORDERS, &ann.token).header("idempotency-key", "same").json(&body))
    });
    let results = futures::future::join_all(attempts).await;
    let mut order_ids = std::collections::HashSet::new();
    for (status, headers, body) in &results {
        match status.as_u16() {
            201 => {
                order_ids.insert(body["data"]["id"].clone());
            }
            409 => assert_error_parts(*status, headers, body, 409, "IDEMPOTENCY_KEY_IN_USE"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(order_ids.len(), 1, "every 201 is the same order");
    assert_eq!(order_count(&app).await, 1);
    assert_eq!(stock_of(&app, mug).await, 99);
}

/// Puts an idempotency record for `user` and `key` straight into the table.
async fn put_claim(app: &TestApp, user: Uuid, key: &str, body: &Value, age: &str, completed: bool) {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(serde_json::to_vec(body).unwrap()).to_vec();
    let (status, response) = if completed {
        (Some(201_i16), Some(json!({"success": true, "data": {"stored": true}})))
    } else {
        (None, None)
    };
    sqlx::query(
        "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body, created_at, completed_at)
         values ($1, $2, $3, $4, $5, now() - $6::interval, case when $4 is null then null else now() - $6::interval end)",
    )
    .bind(user)
    .bind(key)
    .bind(hash)
    .bind(status)
    .bind(response)
    .bind(age)
    .execute(&app.state.db)
    .await
    .unwrap();
}

#[sqlx::test]
async fn a_key_still_in_flight_is_409_until_its_request_is_presumed_dead(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let ann = app.user().signed_in().await;
    let body = one(mug, 1);
    let post =
        |key: &str| app.authed(Method::POST, ORDERS, &ann.token).header("idempotency-key", key).json(&body);

    put_claim(&app, ann.id, "running", &body, "1 second", false).await;
    expect_error(post("running"), 409, "IDEMPOTENCY_KEY_IN_USE").await;
    assert_eq!(order_count(&app).await, 0);

    // A claim far older than any request may run belonged to a request that died.
    put_claim(&app, ann.id, "orphaned", &body, "1 hour", false).await;
    assert_eq!(send(post("orphaned")).await.0, 201);
    assert_eq!(order_count(&app).await, 1);
}

#[sqlx::test]
async fn answers_are_replayed_for_24_hours_and_not_after(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let ann = app.user().signed_in().await;
    let body = one(mug, 1);
    let post =
        |key: &str| app.authed(Method::POST, ORDERS, &ann.token).header("idempotency-key", key).json(&body);

    put_claim(&app, ann.id, "recent", &body, "23 hours", true).await;
    let (status, headers, replayed) = send(post("recent")).await;
    assert_eq!((status.as_u16(), &replayed["data"]["stored"]), (201, &json!(true)));
    assert_eq!(headers["idempotent-replayed"], "true");

    put_claim(&app, ann.id, "stale", &body, "25 hours", true).await;
    let (status, headers, fresh) = send(post("stale")).await;
    assert_eq!(status, 201, "{fresh}");
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(order_count(&app).await, 1);
}

#[sqlx::test]
async fn cancelling_after_stock_was_raised_to_the_bound_caps_the_restock(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let ann = app.user().signed_in().await;
    let order = place(&app, &ann, &one(mug, 5)).await;
    let raise = json!({"stock": 1_000_000});
    let (status, _, _) =
        send(app.authed(Method::PATCH, &format!("/api/v1/products/{mug}"), &admin.token).json(&raise)).await;
    assert_eq!(status, 200);
    let (status, _, body) = send(app.authed(
        Method::POST,
        &format!("{ORDERS}/{}/cancel", order["id"].as_str().unwrap()),
        &ann.token,
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stock_of(&app, mug).await, 1_000_000);
}

#[sqlx::test]
async fn cancels_and_placements_over_shared_products_never_deadlock(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let a = app.product().sku("A").price_cents(100).stock(100_000).create().await.id;
    let b = app.product().sku("B").price_cents(100).stock(100_000).create().await.id;
    let ann = app.user().signed_in().await;
    let ab = json!({"items": [{"productId": a, "quantity": 1}, {"productId": b, "quantity": 1}]});
    let ba = json!({"items": [{"productId": b, "quantity": 1}, {"productId": a, "quantity": 1}]});
    let mut existing = Vec::new();
    for i in 0..16 {
        existing.push(place(&app, &ann, if i % 2 == 0 { &ab } else { &ba }).await);
    }
    // Cancels (lines in both orders) racing placements (lines in both orders).
    let cancels = existing.iter().map(|o| {
        send(app.authed(Method::POST, &format!("{ORDERS}/{}/cancel", o["id"].as_str().unwrap()), &ann.token))
    });
    let placements = (0..16)
        .map(|i| send(app.authed(Method::POST, ORDERS, &ann.token).json(if i % 2 == 0 { &ba } else { &ab })));
    let (cancelled, placed) =
        tokio::join!(futures::future::join_all(cancels), futures::future::join_all(placements));
    assert!(
        cancelled.iter().all(|(s, _, _)| *s == 200),
        "{:?}",
        cancelled.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(placed.iter().all(|(s, _, _)| *s == 201), "{:?}", placed.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!((stock_of(&app, a).await, stock_of(&app, b).await), (100_000 - 16, 100_000 - 16));
}

#[sqlx::test]
async fn an_over_long_order_gets_one_error_and_a_small_stored_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    // 5 000 lines, each wrong twice over (quantity 0, the same product again).
    let product = Uuid::new_v4();
    let lines: Vec<Value> = (0..5000).map(|_| json!({"productId": product, "quantity": 0})).collect();
    let req = app
        .authed(Method::POST, "/api/v1/orders", &ann.token)
        .header("idempotency-key", "too-long")
        .json(&json!({"items": lines}));
    let err = expect_error(req, 400, "VALIDATION_ERROR").await;
    let fields = err["error"]["fields"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["items"], "{err}");
    let stored: i32 = sqlx::query_scalar(
        "select pg_column_size(response_body) from idempotency_keys where key = 'too-long'",
    )
    .fetch_optional(&app.state.db)
    .await
    .unwrap()
    .unwrap_or(0);
    assert!(stored < 4096, "stored answer of {stored} bytes");
    // Within the limit, many bad lines still answer with at most 20 fields and a count.
    let lines: Vec<Value> = (0..60).map(|_| json!({"productId": Uuid::new_v4(), "quantity": 0})).collect();
    let err = expect_error(
        app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&json!({"items": lines})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(err["error"]["fields"].as_object().unwrap().len(), 20, "{err}");
    assert_eq!(err["error"]["details"]["omittedFieldErrors"], 40);
}

/// The stored answer of `key` (its length in bytes as JSON text), if any.
async fn stored_answer_bytes(app: &TestApp, key: &str) -> Option<i32> {
    sqlx::query_scalar("select octet_length(response_body::text) from idempotency_keys where key = $1")
        .bind(key)
        .fetch_optional(&app.state.db)
        .await
        .unwrap()
        .flatten()
}

#[sqlx::test]
async fn input_is_never_echoed_into_errors_nor_into_a_stored_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let big = "A".repeat(1_000_000);
    let post = |key: &str, body: String| {
        app.authed(Method::POST, ORDERS, &ann.token)
            .header("idempotency-key", key.to_owned())
            .header("content-type", "application/json")
            .body(body)
    };
    // A 1 MB string where a number belongs.
    let body = format!(r#"{{"items":[{{"productId":"{}","quantity":"{big}"}}]}}"#, Uuid::new_v4());
    let (status, _, err) = send(post("wrong-type", body)).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "VALIDATION_ERROR");
    let text = err.to_string();
    assert!(text.len() < 4096, "an answer of {} bytes", text.len());
    assert!(!text.contains("AAAAAAAA"), "the input is echoed: {}", &text[..200.min(text.len())]);
    assert!(err["error"]["fields"]["items[0].quantity"].is_array(), "{text}");
    let stored = stored_answer_bytes(&app, "wrong-type").await.expect("the 400 is stored against the key");
    assert!(stored < 4096, "a stored answer of {stored} bytes");

    // A 1 MB unknown field name: named, but cut.
    let body = format!(r#"{{"items":[],"{big}":1}}"#);
    let (status, _, err) = send(post("unknown-field", body)).await;
    assert_eq!(status, 400);
    let text = err.to_string();
    assert!(text.len() < 4096, "an answer of {} bytes", text.len());
    assert!(stored_answer_bytes(&app, "unknown-field").await.is_some_and(|n| n < 4096));

    // A 1 MB unknown enum value in a query string.
    let res =
        app.authed(Method::GET, &format!("{ORDERS}?status={}", "B".repeat(6_000)), &ann.token).send().await;
    let text = res.unwrap().text().await.unwrap();
    // The unknown value is named, cut to 64 characters.
    assert!(text.len() < 4096 && !text.contains(&"B".repeat(65)), "{}", &text[..200.min(text.len())]);
    assert!(text.contains(&"B".repeat(64)), "{text}");
}

#[sqlx::test]
async fn an_error_answer_over_4_kib_cannot_be_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let big = serde_json::json!({"success": false, "error": {"message": "x".repeat(5000)}});
    let stored = sqlx::query(
        "insert into idempotency_keys (user_id, key, request_hash, response_status, response_body, completed_at)
         values ($1, 'k', '\\x00', 400, $2, now())",
    )
    .bind(ann.id)
    .bind(&big)
    .execute(&app.state.db)
    .await;
    let err = stored.expect_err("the check constraint refuses it");
    assert!(err.to_string().contains("idempotency_keys_error_size_check"), "{err}");
}

#[sqlx::test]
async fn a_retry_that_re_encodes_the_same_request_is_replayed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").price_cents(100).stock(10).create().await.id;
    let ann = app.user().signed_in().await;
    let post = |body: String| {
        app.authed(Method::POST, ORDERS, &ann.token)
            .header("idempotency-key", "re-encoded")
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, _, first) =
        send(post(format!(r#"{{"items":[{{"productId":"{mug}","quantity":2}}]}}"#))).await;
    assert_eq!(status, 201, "{first}");
    // Other key order, spacing, an integral float and an explicit null: the same request.
    let again = format!(
        r#"{{ "shippingAddress" : null, "items" : [ {{ "quantity" : 2.0, "productId" : "{mug}" }} ] }}"#
    );
    let (status, headers, replayed) = send(post(again)).await;
    assert_eq!(status, 201, "{replayed}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replayed["data"]["id"], first["data"]["id"]);
    assert_eq!(order_count(&app).await, 1);
    // Another quantity is another request.
    let other = format!(r#"{{"items":[{{"productId":"{mug}","quantity":3}}]}}"#);
    expect_error(post(other), 422, "IDEMPOTENCY_KEY_MISMATCH").await;
}
