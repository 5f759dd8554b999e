//! The catalogue over HTTP.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{PRODUCT_SORTS, Session, TestApp, expect_error, send, url_of};

const PRODUCTS: &str = "/api/v1/products";

async fn create(app: &TestApp, admin: &Session, body: Value) -> Value {
    let (status, _, res) = send(app.authed(Method::POST, PRODUCTS, &admin.token).json(&body)).await;
    assert_eq!(status, 201, "{res}");
    res["data"].clone()
}

fn product(sku: &str, name: &str, price: i64, stock: i32) -> Value {
    json!({"sku": sku, "name": name, "priceCents": price, "stock": stock})
}

/// SKUs and pagination of `GET /products?{q}`.
async fn list(app: &TestApp, q: &str) -> (Vec<String>, Value) {
    let (status, _, body) = send(app.request(Method::GET, &format!("{PRODUCTS}?{q}"))).await;
    assert_eq!(status, 200, "{q}: {body}");
    let skus =
        body["data"].as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap().to_owned()).collect();
    // Page mode's numbers only: the cursors are followed in tests/api/lists.rs.
    let mut pagination = body["pagination"].clone();
    pagination.as_object_mut().map(|p| p.remove("nextCursor"));
    (skus, pagination)
}

async fn total(app: &TestApp, q: &str) -> i64 {
    list(app, q).await.1["total"].as_i64().unwrap()
}

#[sqlx::test]
async fn admins_create_products_with_location_and_etag(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let (status, headers, body) = send(app.authed(Method::POST, PRODUCTS, &admin.token).json(&json!({
        "sku": "MUG-001", "name": "Mug", "description": "A sturdy mug", "priceCents": 1250, "stock": 10
    })))
    .await;
    assert_eq!(status, 201, "{body}");
    let data = &body["data"];
    assert_eq!(headers["location"], format!("/api/v1/products/{}", data["id"].as_str().unwrap()));
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(data["priceCents"], 1250);
    assert_eq!(data["currency"], "USD");
    assert_eq!(data["stock"], 10);
    assert_eq!(data["version"], 1);

    let user = app.user().signed_in().await;
    let req = app.authed(Method::POST, PRODUCTS, &user.token).json(&product("X-1", "X", 1, 1));
    expect_error(req, 403, "FORBIDDEN").await;
    expect_error(app.request(Method::POST, PRODUCTS).json(&product("X-1", "X", 1, 1)), 401, "UNAUTHORIZED")
        .await;
    let req = app.authed(Method::POST, PRODUCTS, &admin.token).json(&product("MUG-001", "Other", 1, 1));
    expect_error(req, 409, "CONFLICT").await;
}

#[sqlx::test]
async fn product_bounds_are_enforced_field_by_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let cases = [
        (json!({"sku": "A", "name": "n", "priceCents": -1, "stock": 0}), "priceCents"),
        (json!({"sku": "A", "name": "n", "priceCents": 100_000_001, "stock": 0}), "priceCents"),
        (json!({"sku": "A", "name": "n", "priceCents": 0, "stock": 1_000_001}), "stock"),
        (json!({"sku": "A", "name": "n", "priceCents": 0, "stock": -1}), "stock"),
        (json!({"sku": "bad sku!", "name": "n", "priceCents": 0, "stock": 0}), "sku"),
        (json!({"sku": "x".repeat(65), "name": "n", "priceCents": 0, "stock": 0}), "sku"),
        (json!({"sku": "A", "name": "", "priceCents": 0, "stock": 0}), "name"),
        (json!({"sku": "A", "name": "n".repeat(201), "priceCents": 0, "stock": 0}), "name"),
        (
            json!({"sku": "A", "name": "n", "description": "d".repeat(5001), "priceCents": 0, "stock": 0}),
            "description",
        ),
        (json!({"sku": "A", "name": "n", "priceCents": 1.5, "stock": 0}), "priceCents"),
        (json!({"sku": "A", "name": "n", "priceCents": 0, "stock": 0, "version": 9}), "version"),
    ];
    for (body, field) in cases {
        let err = expect_error(
            app.authed(Method::POST, PRODUCTS, &admin.token).json(&body),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err["error"]["fields"][field].is_array(), "{field}: {err}");
    }
    let (_, _, list) = send(app.request(Method::GET, PRODUCTS)).await;
    assert_eq!(list["pagination"]["total"], 0, "nothing was created");
    // The edges themselves are fine.
    create(
        &app,
        &admin,
        json!({"sku": "a.B_c-9", "name": "n", "priceCents": 100_000_000, "stock": 1_000_000}),
    )
    .await;
}

#[sqlx::test]
async fn get_answers_with_an_etag_and_304_when_unchanged(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mug = app.product().sku("MUG").name("Mug").price_cents(100).stock(1).create().await;
    let path = format!("{PRODUCTS}/{}", mug.id);

    let (status, headers, body) = send(app.request(Method::GET, &path)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["sku"], "MUG");
    let tag = headers["etag"].to_str().unwrap().to_owned();

    let res = app.request(Method::GET, &path).header("if-none-match", &tag).send().await.unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"], tag.as_str());
    assert!(res.bytes().await.unwrap().is_empty());
    let res = app.request(Method::GET, &path).header("if-none-match", "\"999\"").send().await.unwrap();
    assert_eq!(res.status(), 200);

    expect_error(app.request(Method::GET, &format!("{PRODUCTS}/{}", uuid::Uuid::new_v4())), 404, "NOT_FOUND")
        .await;
    expect_error(app.request(Method::GET, &format!("{PRODUCTS}/nope")), 400, "VALIDATION_ERROR").await;
}

#[sqlx::test]
async fn patch_bumps_the_version_and_honours_if_match(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").name("Mug").description("d").price_cents(100).stock(1).create().await;
    app.product().sku("CUP").name("Cup").price_cents(100).stock(1).create().await;
    let path = format!("{PRODUCTS}/{}", mug.id);
    let patch = |body: Value| app.authed(Method::PATCH, &path, &admin.token).json(&body);

    let (status, headers, body) = send(patch(json!({"priceCents": 150})).header("if-match", "\"1\"")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["priceCents"], 150);
    assert_eq!(body["data"]["version"], 2);
    assert_eq!(headers["etag"], "\"2\"");

    // A stale tag: 412, nothing written.
    expect_error(patch(json!({"priceCents": 1})).header("if-match", "\"1\""), 412, "PRECONDITION_FAILED")
        .await;
    expect_error(patch(json!({"priceCents": 1})).header("if-match", "garbage"), 412, "PRECONDITION_FAILED")
        .await;
    let (_, _, now) = send(app.request(Method::GET, &path)).await;
    assert_eq!(now["data"]["priceCents"], 150);
    assert_eq!(now["data"]["version"], 2);

    // Without If-Match, every change still bumps the version; null clears the description.
    let (_, _, body) = send(patch(json!({"description": null, "stock": 0}))).await;
    assert_eq!(body["data"]["description"], Value::Null);
    assert_eq!(body["data"]["stock"], 0);
    assert_eq!(body["data"]["version"], 3);

    expect_error(patch(json!({"sku": "CUP"})), 409, "CONFLICT").await;
    expect_error(patch(json!({"stock": -5})), 400, "VALIDATION_ERROR").await;
    expect_error(patch(json!({"id": uuid::Uuid::new_v4()})), 400, "VALIDATION_ERROR").await;
    let user = app.user().signed_in().await;
    expect_error(app.authed(Method::PATCH, &path, &user.token).json(&json!({"stock": 5})), 403, "FORBIDDEN")
        .await;
    let missing = format!("{PRODUCTS}/{}", uuid::Uuid::new_v4());
    expect_error(
        app.authed(Method::PATCH, &missing, &admin.token).json(&json!({"stock": 5})),
        404,
        "NOT_FOUND",
    )
    .await;
}

#[sqlx::test]
async fn delete_archives_the_product_out_of_the_catalogue(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").name("Mug").price_cents(100).stock(3).create().await;
    app.product().sku("CUP").name("Cup").price_cents(100).stock(3).create().await;
    let path = format!("{PRODUCTS}/{}", mug.id);

    let (status, _, _) = send(app.authed(Method::DELETE, &path, &admin.token)).await;
    assert_eq!(status, 204);
    expect_error(app.request(Method::GET, &path), 404, "NOT_FOUND").await;
    expect_error(app.authed(Method::DELETE, &path, &admin.token), 404, "NOT_FOUND").await;
    expect_error(app.authed(Method::PATCH, &path, &admin.token).json(&json!({"stock": 1})), 404, "NOT_FOUND")
        .await;
    let (_, _, list) = send(app.request(Method::GET, PRODUCTS)).await;
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["sku"], "CUP");
    // The row is kept for the orders that bought it.
    let kept: i64 = sqlx::query_scalar("select count(*) from products where sku = 'MUG'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(kept, 1);
}

#[sqlx::test]
async fn the_list_filters_sorts_and_paginates_with_exact_totals(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let seed = [
        ("A", "Blue mug", 500, 5),
        ("B", "Red mug", 1500, 0),
        ("C", "Teapot", 3000, 2),
        ("D", "Plate", 800, 9),
    ];
    for (sku, name, price, stock) in seed {
        app.product().sku(sku).name(name).price_cents(price).stock(stock).create().await;
    }

    let (skus, page) = list(&app, "").await;
    assert_eq!(skus, ["D", "C", "B", "A"], "newest first by default");
    assert_eq!(page, json!({"page": 1, "limit": 20, "total": 4, "pages": 1}));
    assert_eq!(list(&app, "sort=price").await.0, ["A", "D", "B", "C"]);
    assert_eq!(list(&app, "sort=-price").await.0, ["C", "B", "D", "A"]);
    assert_eq!(list(&app, "sort=name").await.0, ["A", "D", "B", "C"]);
    assert_eq!(list(&app, "sort=-name").await.0, ["C", "B", "D", "A"]);
    assert_eq!(list(&app, "sort=createdAt").await.0, ["A", "B", "C", "D"]);
    assert_eq!(list(&app, "q=MUG").await.0, ["B", "A"]);
    assert_eq!(list(&app, "minPrice=800&maxPrice=1500").await.0, ["D", "B"], "bounds are inclusive");
    let (skus, page) = list(&app, "inStock=true").await;
    assert_eq!(skus, ["D", "C", "A"]);
    assert_eq!(page["total"], 3);
    assert_eq!(list(&app, "inStock=false").await.0, ["B"]);
    let (skus, page) = list(&app, "sort=price&limit=3&page=2").await;
    assert_eq!(skus, ["C"]);
    assert_eq!(page, json!({"page": 2, "limit": 3, "total": 4, "pages": 2}));
    let (skus, page) = list(&app, "q=nothing-like-this").await;
    assert!(skus.is_empty());
    assert_eq!(page, json!({"page": 1, "limit": 20, "total": 0, "pages": 0}));
    let (skus, page) = list(&app, "page=50").await;
    assert!(skus.is_empty());
    assert_eq!(page["total"], 4);

    for bad in [
        "sort=price,name",
        "sort=stock",
        "minPrice=-1",
        "maxPrice=abc",
        "minPrice=900&maxPrice=100",
        "inStock=maybe",
        "limit=500",
        "q=",
        "q=mu",
    ] {
        expect_error(app.request(Method::GET, &format!("{PRODUCTS}?{bad}")), 400, "VALIDATION_ERROR").await;
    }
}

/// Search bounds: a search shorter than a trigram cannot use the search index, so it is a
/// 400; a search counts at most 1000 matches and says so; it stays case-insensitive
/// beyond ASCII and treats `%` and `_` literally.
#[sqlx::test]
async fn searches_need_three_characters_and_count_up_to_a_cap(pool: PgPool) {
    sqlx::query(
        "insert into products (sku, name, price_cents, stock)
         select 'BULK-' || g, 'Bulk teapot ' || g, 100 + g, g % 3 from generate_series(1, 1005) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let app = TestApp::spawn(pool).await;
    app.product().sku("ECL").name("ÉCLAIR tray").create().await;
    app.product().sku("PCT").name("100% cotton_bag").create().await;
    app.product().sku("PCX").name("1000 cotton bags").create().await;

    let err =
        expect_error(app.request(Method::GET, &format!("{PRODUCTS}?q=ab")), 400, "VALIDATION_ERROR").await;
    assert_eq!(err["error"]["fields"]["q"][0], "must be 3 to 100 characters", "{err}");

    let (skus, page) = list(&app, "q=TEAPOT&sort=price&limit=100").await;
    assert_eq!(page, json!({"page": 1, "limit": 100, "total": 1000, "pages": 10, "totalCapped": true}));
    assert_eq!(skus.first().map(String::as_str), Some("BULK-1"), "sorted over every match");
    let (skus, _) = list(&app, "q=TEAPOT&sort=price&limit=100&page=10").await;
    assert_eq!(
        (skus.len(), skus.last().map(String::as_str)),
        (100, Some("BULK-1000")),
        "pages end at the cap"
    );
    let (skus, page) = list(&app, "q=TEAPOT&page=11&limit=100").await;
    assert!(skus.is_empty());
    assert_eq!(page["totalCapped"], true);

    let (skus, page) = list(&app, "q=teapot%2099&sort=name").await;
    assert_eq!(
        skus,
        [
            "BULK-99", "BULK-990", "BULK-991", "BULK-992", "BULK-993", "BULK-994", "BULK-995", "BULK-996",
            "BULK-997", "BULK-998", "BULK-999"
        ]
    );
    assert_eq!(page, json!({"page": 1, "limit": 20, "total": 11, "pages": 1}), "an exact count has no flag");
    assert_eq!(list(&app, "q=%C3%A9clair").await.0, ["ECL"], "lowercase é finds É");
    assert_eq!(list(&app, "q=0%25%20c").await.0, ["PCT"], "% is literal");
    assert_eq!(list(&app, "q=n_b").await.0, ["PCT"], "_ is literal");
}

#[sqlx::test]
async fn catalogue_totals_stay_exact_through_stock_changes_and_archives(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let a = app.product().sku("A").name("a").price_cents(1).stock(1).create().await;
    let b = app.product().sku("B").name("b").price_cents(1).stock(0).create().await;
    assert_eq!(
        (total(&app, "").await, total(&app, "inStock=true").await, total(&app, "inStock=false").await),
        (2, 1, 1)
    );
    let path_b = format!("{PRODUCTS}/{}", b.id);
    send(app.authed(Method::PATCH, &path_b, &admin.token).json(&json!({"stock": 4}))).await;
    assert_eq!(
        (total(&app, "").await, total(&app, "inStock=true").await, total(&app, "inStock=false").await),
        (2, 2, 0)
    );
    send(app.authed(Method::DELETE, &format!("{PRODUCTS}/{}", a.id), &admin.token)).await;
    assert_eq!(
        (total(&app, "").await, total(&app, "inStock=true").await, total(&app, "inStock=false").await),
        (1, 1, 0)
    );
}

#[sqlx::test]
async fn the_seed_command_fills_the_catalogue_quickly(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_DOTENV", "1")
        .env("APP_ENV", "test")
        .env("DATABASE_URL", url_of(&pool))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["seed", "--products", "500", "--users", "7"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (skus, page) = list(&app, "limit=100&sort=price").await;
    assert_eq!(page["total"], 500);
    assert_eq!(skus.len(), 100);
    assert_eq!(total(&app, "inStock=true").await + total(&app, "inStock=false").await, 500);
    app.login(&format!("seed-{}-1@example.com", skus[0].split('-').nth(1).unwrap()), "password123").await;
}

#[sqlx::test]
async fn patch_refuses_null_for_required_fields_and_compares_if_match_strongly(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let mug = app.product().sku("MUG").name("Mug").price_cents(100).stock(1).create().await;
    let path = format!("{PRODUCTS}/{}", mug.id);
    let patch = |body: Value| app.authed(Method::PATCH, &path, &admin.token).json(&body);

    for field in ["sku", "name", "priceCents", "stock"] {
        let err = expect_error(patch(json!({ field: null })), 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"][field].is_array(), "{field}: {err}");
    }
    send(patch(json!({"stock": 2}))).await; // now at version 2
    let (status, _, _) = send(patch(json!({"stock": 3})).header("if-match", "\"1\", \"2\"")).await;
    assert_eq!(status, 200, "any listed tag may match");
    expect_error(patch(json!({"stock": 4})).header("if-match", "W/\"3\""), 412, "PRECONDITION_FAILED").await;
    let (status, _, _) = send(patch(json!({"stock": 4})).header("if-match", "*")).await;
    assert_eq!(status, 200);
}

/// SKUs of the live products in `order`, `limit` from `offset`, as Postgres orders them.
async fn skus_in_order(pool: &PgPool, order: &str, offset: i64) -> Vec<String> {
    let sql = format!(
        "select sku from products where archived_at is null order by {order} limit 20 offset {offset}"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap()
}

#[sqlx::test]
async fn deep_pages_match_the_walk_from_the_first_row_before_and_after_a_rename(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.user().admin().signed_in().await;
    // 2 600 products with many ties in every sort key (the id breaks them), a few archived.
    seed_tied_products(&pool).await;
    for (param, order) in PRODUCT_SORTS {
        for offset in [999, 1000, 1500, 2000, 2560] {
            // The server builds its own anchors after the first deep page.
            let page = offset / 20 + 1;
            let (skus, _) = list(&app, &format!("sort={param}&limit=20&page={page}")).await;
            assert_eq!(skus, skus_in_order(&pool, order, offset / 20 * 20).await, "{param} page {page}");
        }
    }
    // A rename moves a product: the server's anchors are stale, and its pages stay right.
    let id: uuid::Uuid =
        sqlx::query_scalar("select id from products where sku = 'A-5'").fetch_one(&pool).await.unwrap();
    let patch = app
        .authed(Method::PATCH, &format!("{PRODUCTS}/{id}"), &admin.token)
        .json(&json!({"name": "Aardvark"}));
    assert_eq!(send(patch).await.0, 200);
    for _ in 0..3 {
        let (skus, _) = list(&app, "sort=name&limit=20&page=61").await;
        assert_eq!(skus, skus_in_order(&pool, "name asc, id asc", 1200).await);
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    }
}

/// 2 600 products with many ties in every sort key, a few archived.
async fn seed_tied_products(pool: &PgPool) {
    sqlx::query(
        "insert into products (sku, name, price_cents, stock, created_at, archived_at)
         select 'A-' || i, 'Item ' || (i % 700), (i * 37) % 500, i % 3,
                timestamptz '2026-01-01' + make_interval(secs => i % 900),
                case when i % 97 = 0 then now() end
         from generate_series(1, 2600) i",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// `product_counts` against a count of the table, after updates of every kind: many rows
/// in one statement, stock crossing zero both ways, archive and restore, renames; and
/// `order_version` bumped exactly when the order of live products could change.
#[sqlx::test]
async fn product_counts_follow_every_kind_of_update(pool: PgPool) {
    sqlx::query(
        "insert into products (sku, name, price_cents, stock)
         select 'C-' || n, 'c ' || n, n, n % 3 from generate_series(1, 30) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    async fn state(pool: &PgPool) -> (i64, i64, i64, i64, i64) {
        sqlx::query_as(
            "select c.live, c.in_stock, c.order_version,
                    (select count(*) from products where archived_at is null),
                    (select count(*) from products where archived_at is null and stock > 0)
             from product_counts c",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }
    // (statement, whether it can reorder the live products)
    let steps = [
        ("update products set stock = stock + 5 where stock > 0", false),
        ("update products set stock = 0 where sku in ('C-1', 'C-2', 'C-4')", false),
        ("update products set stock = 7 where stock = 0", false),
        ("update products set version = version + 1", false),
        ("update products set archived_at = now() where price_cents <= 10", true),
        ("update products set stock = 0 where archived_at is not null", false),
        ("update products set archived_at = null where price_cents <= 5", true),
        ("update products set name = name || '!' where sku = 'C-20'", true),
        ("update products set price_cents = price_cents + 1 where sku = 'C-21'", true),
        ("update products set name = name || '?' where archived_at is not null", false),
        ("update products set stock = stock - 1 where stock > 1", false),
    ];
    let (_, _, mut version, _, _) = state(&pool).await;
    for (sql, reorders) in steps {
        sqlx::query(sql).execute(&pool).await.unwrap();
        let (live, in_stock, now, real_live, real_in_stock) = state(&pool).await;
        assert_eq!((live, in_stock), (real_live, real_in_stock), "after `{sql}`");
        assert_eq!(now > version, reorders, "order_version after `{sql}`");
        version = now;
    }
}
