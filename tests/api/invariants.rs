//! `storefront check`: every invariant holds through orders, cancels, restocks over the
//! cap and idempotent retries; each one reports the rows that break it.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use storefront::features::maintenance;

use crate::helpers::{TestApp, send, url_of};

/// Runs the `check` command against the test database: exit status and output.
fn run_check(pool: &PgPool) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_DOTENV", "1")
        .env("APP_ENV", "test")
        .env("DATABASE_URL", url_of(pool))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

async fn broken(pool: &PgPool) -> Vec<(&'static str, i64, Vec<String>)> {
    maintenance::check_invariants(pool)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.count > 0)
        .map(|f| (f.invariant.name, f.count, f.sample))
        .collect()
}

async fn order(app: &TestApp, token: &str, key: Option<&str>, items: Value) -> (u16, Value) {
    let mut req = app.authed(Method::POST, "/api/v1/orders", token).json(&json!({ "items": items }));
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let (status, _, body) = send(req).await;
    (status.as_u16(), body)
}

#[sqlx::test]
async fn the_invariants_hold_through_orders_cancels_restocks_and_retries(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.user().admin().signed_in().await;
    let buyer = app.user().signed_in().await;
    let a = app.product().price_cents(250).stock(10).create().await;
    let b = app.product().price_cents(1_000).stock(3).create().await;

    let lines = json!([{"productId": a.id, "quantity": 2}, {"productId": b.id, "quantity": 1}]);
    let (status, first) = order(&app, &buyer.token, Some("k-1"), lines.clone()).await;
    assert_eq!(status, 201);
    // The retry replays; a different key is a second order.
    let (status, replay) = order(&app, &buyer.token, Some("k-1"), lines).await;
    assert_eq!((status, &replay["data"]["id"]), (201, &first["data"]["id"]));
    let (status, second) =
        order(&app, &buyer.token, Some("k-2"), json!([{"productId": a.id, "quantity": 3}])).await;
    assert_eq!(status, 201);
    assert_eq!(order(&app, &buyer.token, None, json!([{"productId": b.id, "quantity": 2}])).await.0, 201);

    // Staff restock a (an adjustment), then raise it to the cap; cancelling the second
    // order cannot give its 3 units back over the cap, and records what it dropped.
    let patch = |id, stock: i64| {
        app.authed(Method::PATCH, &format!("/api/v1/products/{id}"), &admin.token)
            .json(&json!({ "stock": stock }))
    };
    assert_eq!(send(patch(a.id, 20)).await.0, 200);
    assert_eq!(send(patch(a.id, 999_999)).await.0, 200);
    let cancel = app.authed(
        Method::POST,
        &format!("/api/v1/orders/{}/cancel", second["data"]["id"].as_str().unwrap()),
        &buyer.token,
    );
    assert_eq!(send(cancel).await.0, 200);
    let stock: i32 = sqlx::query_scalar("select stock from products where id = $1")
        .bind(a.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stock, 1_000_000);

    assert_eq!(broken(&pool).await, vec![]);
    let (ok, out) = run_check(&pool);
    assert!(ok, "{out}");
    assert!(out.contains("ok    stock-conserved") && out.contains("all 12 invariants hold"), "{out}");
}

#[sqlx::test]
async fn each_broken_invariant_is_reported_with_the_rows_that_break_it(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let buyer = app.user().signed_in().await;
    let p = app.product().price_cents(500).stock(5).create().await;
    let (status, placed) =
        order(&app, &buyer.token, Some("key-1"), json!([{"productId": p.id, "quantity": 1}])).await;
    assert_eq!(status, 201);
    let order_id: uuid::Uuid = placed["data"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(broken(&pool).await, vec![]);

    // Off the books: stock written behind the API's back, a total that is not its lines,
    // a second order under the same key (and without lines), an outbox row nobody
    // relayed, a stored answer naming a stranger.
    let tamper = [
        "update products set stock = stock + 2".to_owned(),
        format!("update orders set total_cents = total_cents + 1 where id = '{order_id}'"),
        format!("update orders set status = 'shipped' where id = '{order_id}'"),
        format!(
            "insert into orders (user_id, total_cents, currency, idempotency_key) values ('{}', 0, 'USD', 'key-1')",
            buyer.id
        ),
        "insert into outbox (queue, kind, payload, created_at) values ('emails', 'welcome', '{}', now() - interval '2 minutes')"
            .to_owned(),
        "update idempotency_keys set response_body = jsonb_set(response_body, '{data,id}', to_jsonb(gen_random_uuid()::text))"
            .to_owned(),
    ];
    for sql in &tamper {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await.unwrap();
    }

    let found = broken(&pool).await;
    let names: Vec<&str> = found.iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        [
            "stock-conserved",
            "order-totals",
            "orders-have-items",
            "outbox-drained",
            "idempotency-keys-single-order",
            "history-follows-status"
        ]
    );
    assert!(found[0].2[0].contains(&format!("product {}: stock 6, expected 4", p.id)), "{:?}", found[0].2);
    assert!(
        found[1].2[0].contains(&format!("order {order_id}: total 501, lines sum to 500")),
        "{:?}",
        found[1].2
    );
    let counts: Vec<i64> = found.iter().map(|f| f.1).collect();
    assert_eq!(counts, [1, 1, 1, 1, 2, 1], "{found:?}");
    assert!(found[4].2.iter().any(|v| v.contains("key key-1: orders")), "{:?}", found[4].2);
    assert_eq!(found[5].2, [format!("order {order_id} is shipped; its history last says pending")]);

    let (ok, out) = run_check(&pool);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  order-totals") && out.contains("6 of 12 invariants broken"), "{out}");
}
