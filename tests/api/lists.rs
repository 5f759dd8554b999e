//! Lists in cursor mode and their counts: following `nextCursor` (and the `Link` header)
//! reads every item once in order, also while new items arrive; a tampered cursor or one
//! used with other filters is a 400; page mode is bounded in depth and its `total` stays
//! exact through every kind of change.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{PRODUCT_SORTS, Session, TestApp, expect_error, send};

const ORDERS: &str = "/api/v1/orders";

async fn place(app: &TestApp, who: &Session, product: Uuid) -> Value {
    let body = json!({"items": [{"productId": product, "quantity": 1}]});
    let (status, _, res) = send(app.authed(Method::POST, ORDERS, &who.token).json(&body)).await;
    assert_eq!(status, 201, "{res}");
    res["data"].clone()
}

/// `GET path` as `who`: the body and the `Link` header.
async fn get(app: &TestApp, who: &Session, path: &str) -> (Value, Option<String>) {
    let (status, headers, body) = send(app.authed(Method::GET, path, &who.token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    (body, headers.get("link").map(|l| l.to_str().unwrap().to_owned()))
}

/// The URL inside `<…>; rel="next"`.
fn next_link(link: &str) -> String {
    let start = link.find('<').unwrap() + 1;
    let end = link.find('>').unwrap();
    assert!(link.ends_with(r#"rel="next""#), "{link}");
    link[start..end].to_owned()
}

fn ids(body: &Value) -> Vec<String> {
    body["data"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
}

#[sqlx::test]
async fn following_next_cursors_reads_every_order_once_newest_first_while_orders_arrive(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(1000).create().await.id;
    for _ in 0..23 {
        place(&app, &ann, mug).await;
    }
    // Three orders share one creation time: the id breaks the tie.
    sqlx::query(
        "update orders set created_at = '2026-01-01T00:00:00Z'
         where id in (select id from orders order by id limit 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let want: Vec<String> =
        sqlx::query_scalar("select id::text from orders order by created_at desc, id desc")
            .fetch_all(&pool)
            .await
            .unwrap();

    let (first, link) = get(&app, &ann, &format!("{ORDERS}?limit=5")).await;
    assert_eq!(first["pagination"]["total"], 23);
    let mut seen = ids(&first);
    let mut next = link.map(|l| next_link(&l));
    let mut pages = 1;
    while let Some(url) = next {
        // New orders arriving meanwhile are newer than every cursor: they never show up
        // in later pages, and nothing is skipped or repeated.
        place(&app, &ann, mug).await;
        let (page, link) = get(&app, &ann, &url).await;
        assert!(
            page["pagination"].get("total").is_none() && page["pagination"].get("page").is_none(),
            "{page}"
        );
        assert_eq!(page["pagination"]["limit"], 5);
        seen.extend(ids(&page));
        assert_eq!(page["pagination"]["nextCursor"].is_null(), link.is_none());
        next = link.map(|l| next_link(&l));
        pages += 1;
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, want);
}

#[sqlx::test]
async fn a_cursor_is_refused_when_tampered_with_or_used_with_other_filters(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let mug = app.product().stock(100).create().await.id;
    for _ in 0..3 {
        place(&app, &ann, mug).await;
    }
    let (body, _) = get(&app, &admin, &format!("{ORDERS}?status=pending&limit=1")).await;
    let cursor = body["pagination"]["nextCursor"].as_str().unwrap().to_owned();
    // The same filters, another limit: fine.
    let (page, _) = get(&app, &admin, &format!("{ORDERS}?status=pending&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page).len(), 2);
    // Another filter, or the filter left out: a 400 on `cursor`.
    for path in [format!("{ORDERS}?status=paid&cursor={cursor}"), format!("{ORDERS}?cursor={cursor}")] {
        let err = expect_error(app.authed(Method::GET, &path, &admin.token), 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"]["cursor"].is_array(), "{err}");
    }
    // Another user's list (the filters include whose orders they are).
    let err = expect_error(
        app.authed(Method::GET, &format!("{ORDERS}?status=pending&cursor={cursor}"), &ann.token),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["cursor"].is_array(), "{err}");
    // One character changed, cut short, garbage, too long: a 400 on `cursor`.
    let mut tampered = cursor.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered, cursor[..cursor.len() - 2].to_owned(), "nonsense".to_owned(), "x".repeat(2049)] {
        let path = format!("{ORDERS}?status=pending&cursor={bad}");
        let err = expect_error(app.authed(Method::GET, &path, &admin.token), 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"]["cursor"].is_array(), "{err}");
    }
    // Page and cursor together.
    let path = format!("{ORDERS}?status=pending&page=2&cursor={cursor}");
    expect_error(app.authed(Method::GET, &path, &admin.token), 400, "VALIDATION_ERROR").await;
}

#[sqlx::test]
async fn page_mode_is_bounded_in_depth_and_names_the_way_deeper(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let (ok, _) = get(&app, &ann, &format!("{ORDERS}?page=500&limit=20")).await;
    assert_eq!(ok["pagination"]["total"], 0);
    let err = expect_error(
        app.authed(Method::GET, &format!("{ORDERS}?page=501&limit=20"), &ann.token),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["page"][0].as_str().unwrap().contains("nextCursor"), "{err}");
}

/// The page-mode totals of every filter combination, against a count of the table.
async fn assert_totals_exact(app: &TestApp, admin: &Session, users: &[&Session]) {
    let db = &app.state.db;
    for status in [None, Some("pending"), Some("paid"), Some("cancelled")] {
        let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
        let (all, _) = get(app, admin, &format!("{ORDERS}?limit=1{filter}")).await;
        let want: i64 =
            sqlx::query_scalar("select count(*) from orders where $1::text is null or status::text = $1")
                .bind(status)
                .fetch_one(db)
                .await
                .unwrap();
        assert_eq!(all["pagination"]["total"], want, "all users, {status:?}");
        for user in users {
            let (mine, _) = get(app, user, &format!("{ORDERS}?limit=1{filter}")).await;
            let want: i64 = sqlx::query_scalar(
                "select count(*) from orders where user_id = $1 and ($2::text is null or status::text = $2)",
            )
            .bind(user.id)
            .bind(status)
            .fetch_one(db)
            .await
            .unwrap();
            assert_eq!(mine["pagination"]["total"], want, "{} {status:?}", user.email);
        }
    }
}

#[sqlx::test]
async fn totals_stay_exact_through_orders_status_changes_and_folding_under_concurrency(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let bob = app.user().signed_in().await;
    let mug = app.product().stock(10_000).create().await.id;
    // 40 orders at once from two customers.
    let placing = (0..40).map(|i| {
        let (app, who) = (&app, if i % 2 == 0 { &ann } else { &bob });
        async move { place(app, who, mug).await }
    });
    let orders: Vec<Value> = futures::future::join_all(placing).await;
    assert_totals_exact(&app, &admin, &[&ann, &bob]).await;
    // Cancels by the owner, payments by staff.
    for (i, order) in orders.iter().enumerate().take(12) {
        let id = order["id"].as_str().unwrap();
        let who = if i % 2 == 0 { &ann } else { &bob };
        let req = if i < 6 {
            app.authed(Method::POST, &format!("{ORDERS}/{id}/cancel"), &who.token)
        } else {
            app.authed(Method::PATCH, &format!("{ORDERS}/{id}/status"), &admin.token)
                .json(&json!({"status": "paid"}))
        };
        assert_eq!(send(req).await.0, 200);
    }
    assert_totals_exact(&app, &admin, &[&ann, &bob]).await;
    // Folding the deltas (as the relay's processes do every second) changes no total,
    // also while orders keep coming.
    let folding = async {
        let mut folded = 0;
        for _ in 0..20 {
            folded += storefront::features::orders::fold_count_deltas(&app.state.db).await.unwrap();
        }
        folded
    };
    let more = futures::future::join_all((0..10).map(|_| place(&app, &ann, mug)));
    let (folded, _) = tokio::join!(folding, more);
    assert!(folded > 0);
    storefront::features::orders::fold_count_deltas(&app.state.db).await.unwrap();
    let left: i64 =
        sqlx::query_scalar("select count(*) from order_count_deltas").fetch_one(&app.state.db).await.unwrap();
    assert_eq!(left, 0, "every delta folded");
    assert_totals_exact(&app, &admin, &[&ann, &bob]).await;
}

/// Follows `Link` from `first` to the end; every page's ids.
async fn walk(app: &TestApp, who: &Session, first: &str) -> Vec<String> {
    let (page, link) = get(app, who, first).await;
    let mut seen = ids(&page);
    let mut next = link.map(|l| next_link(&l));
    while let Some(url) = next {
        let (page, link) = get(app, who, &url).await;
        assert!(page["pagination"].get("total").is_none(), "{page}");
        seen.extend(ids(&page));
        next = link.map(|l| next_link(&l));
    }
    seen
}

#[sqlx::test]
async fn users_and_reports_page_by_cursor_too(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.user().admin().signed_in().await;
    for _ in 0..6 {
        app.user().signed_in().await;
    }
    let want: Vec<String> = sqlx::query_scalar(
        "select id::text from users where deleted_at is null and role = 'user' order by created_at desc, id desc",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(walk(&app, &admin, "/api/v1/users?role=user&limit=4").await, want);
    // Accounts registered while a client follows the cursors are newer than every
    // cursor: none shows up, none is skipped or repeated.
    let (page, link) = get(&app, &admin, "/api/v1/users?role=user&limit=2").await;
    let mut seen = ids(&page);
    let mut next = link.map(|l| next_link(&l));
    while let Some(url) = next {
        app.user().signed_in().await;
        let (page, link) = get(&app, &admin, &url).await;
        seen.extend(ids(&page));
        next = link.map(|l| next_link(&l));
    }
    assert_eq!(seen, want);
    // A users cursor is refused by the reports list, and with another role.
    let (page, _) = get(&app, &admin, "/api/v1/users?role=user&limit=1").await;
    let cursor = page["pagination"]["nextCursor"].as_str().unwrap().to_owned();
    for path in
        [format!("/api/v1/users?role=admin&cursor={cursor}"), format!("/api/v1/reports?cursor={cursor}")]
    {
        expect_error(app.authed(Method::GET, &path, &admin.token), 400, "VALIDATION_ERROR").await;
    }

    for _ in 0..5 {
        let (status, _, body) =
            send(app.authed(Method::POST, "/api/v1/reports", &admin.token).json(&json!({"type": "sales"})))
                .await;
        assert_eq!(status, 202, "{body}");
    }
    let want: Vec<String> =
        sqlx::query_scalar("select id::text from reports order by created_at desc, id desc")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(walk(&app, &admin, "/api/v1/reports?limit=2").await, want);
    assert_eq!(walk(&app, &admin, "/api/v1/reports?type=sales&limit=3").await, want);
}

/// Every product id of the catalogue in the order of `order_by`, under `filter` (SQL).
async fn products_in_order(pool: &PgPool, filter: &str, order_by: &str) -> Vec<String> {
    let sql =
        format!("select id::text from products where archived_at is null and ({filter}) order by {order_by}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap()
}

#[sqlx::test]
async fn the_catalogue_pages_by_cursor_in_every_sort_and_filter_while_products_arrive(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.user().admin().signed_in().await;
    // 40 products with ties in every sort key: 7 names, 5 prices, 3 creation times; every
    // third sold out; "kettle" in a third of the descriptions.
    sqlx::query(
        "insert into products (sku, name, description, price_cents, stock, created_at)
         select 'S-' || i, 'Item ' || (i % 7), case when i % 3 = 0 then 'a kettle' else 'a mug' end,
                100 * (i % 5), case when i % 3 = 1 then 0 else 5 end,
                '2026-01-01T00:00:00Z'::timestamptz + (i % 3) * interval '1 hour'
         from generate_series(1, 40) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let filters = [
        ("", "true"),
        ("&inStock=true", "stock > 0"),
        ("&inStock=false", "stock = 0"),
        ("&minPrice=100&maxPrice=300", "price_cents between 100 and 300"),
        ("&q=kettle", "description like '%kettle%'"),
    ];
    for (sort, order_by) in PRODUCT_SORTS {
        for (query, filter) in filters {
            let want = products_in_order(&pool, filter, order_by).await;
            let seen = walk(&app, &admin, &format!("/api/v1/products?sort={sort}{query}&limit=3")).await;
            assert_eq!(seen, want, "sort={sort}{query}");
        }
    }

    // Products added and archived while a client follows the cursors: every product that
    // was there throughout is read exactly once, in order.
    let before = products_in_order(&pool, "true", "name asc, id asc").await;
    let (page, link) = get(&app, &admin, "/api/v1/products?sort=name&limit=5").await;
    let mut seen = ids(&page);
    let mut next = link.map(|l| next_link(&l));
    let mut added = Vec::new();
    let mut n = 0;
    while let Some(url) = next {
        n += 1;
        let name = format!("Item {}", n % 7);
        let id: String = sqlx::query_scalar(
            "insert into products (sku, name, price_cents, stock) values ($1, $2, 1, 1) returning id::text",
        )
        .bind(format!("NEW-{n}"))
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
        added.push(id);
        let (page, link) = get(&app, &admin, &url).await;
        assert_eq!(page["pagination"]["limit"], 5);
        assert!(page["pagination"].get("total").is_none(), "{page}");
        seen.extend(ids(&page));
        next = link.map(|l| next_link(&l));
    }
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no product twice");
    let old: Vec<String> = seen.iter().filter(|id| !added.contains(id)).cloned().collect();
    assert_eq!(old, before, "every product that was there throughout, once, in order");

    // A cursor of one sort or filter set is refused with another, or with a filter left
    // out; a tampered one too.
    let (page, _) = get(&app, &admin, "/api/v1/products?sort=price&inStock=true&limit=2").await;
    let cursor = page["pagination"]["nextCursor"].as_str().unwrap().to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for path in [
        format!("/api/v1/products?sort=-price&inStock=true&cursor={cursor}"),
        format!("/api/v1/products?sort=price&cursor={cursor}"),
        format!("/api/v1/products?sort=price&inStock=false&cursor={cursor}"),
        format!("/api/v1/products?sort=price&inStock=true&cursor={tampered}"),
    ] {
        let err = expect_error(app.request(Method::GET, &path), 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"]["cursor"].is_array(), "{path}: {err}");
    }
    let (page, _) =
        get(&app, &admin, &format!("/api/v1/products?sort=price&inStock=true&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page).len(), 2);
}

#[sqlx::test]
async fn filtered_catalogue_pages_are_bounded_in_depth_and_unfiltered_ones_are_not(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for filter in ["inStock=true", "q=kettle", "minPrice=1", "maxPrice=5"] {
        let path = format!("/api/v1/products?{filter}&page=501&limit=20");
        let err = expect_error(app.request(Method::GET, &path), 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"]["page"][0].as_str().unwrap().contains("nextCursor"), "{err}");
        let (status, _, _) =
            send(app.request(Method::GET, &format!("/api/v1/products?{filter}&page=500&limit=20"))).await;
        assert_eq!(status, 200, "{filter}");
    }
    let (status, _, body) = send(app.request(Method::GET, "/api/v1/products?page=5000&limit=100")).await;
    assert_eq!(status, 200, "{body}");
}

#[sqlx::test]
async fn the_users_total_stays_exact_through_registrations_role_changes_and_deletions(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let admin = app.user().admin().signed_in().await;
    let mut people = Vec::new();
    for _ in 0..6 {
        people.push(app.user().signed_in().await);
    }
    let promote = format!("/api/v1/users/{}", people[0].id);
    let (status, _, body) =
        send(app.authed(Method::PATCH, &promote, &admin.token).json(&json!({"role": "admin"}))).await;
    assert_eq!(status, 200, "{body}");
    for who in &people[1..3] {
        let (status, _, _) =
            send(app.authed(Method::DELETE, &format!("/api/v1/users/{}", who.id), &admin.token)).await;
        assert_eq!(status, 204);
    }
    // Bulk statements (an import, a purge) count every row they write.
    sqlx::query(
        "insert into users (email, password_hash, role)
         select 'bulk-' || g || '@example.com', 'x', (case when g % 10 = 0 then 'admin' else 'user' end)::user_role
         from generate_series(1, 40) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("update users set deleted_at = now() where email like 'bulk-1%' or email like 'bulk-2%'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("delete from users where email like 'bulk-3%'").execute(&pool).await.unwrap();
    for (filter, sql) in [
        ("", "select count(*) from users where deleted_at is null"),
        ("?role=user", "select count(*) from users where deleted_at is null and role = 'user'"),
        ("?role=admin", "select count(*) from users where deleted_at is null and role = 'admin'"),
    ] {
        let want: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        let (page, _) = get(&app, &admin, &format!("/api/v1/users{filter}")).await;
        assert_eq!(page["pagination"]["total"], want, "{filter}");
    }
    // A search counts its matches.
    let (page, _) = get(&app, &admin, &format!("/api/v1/users?q={}", people[4].email)).await;
    assert_eq!(page["pagination"]["total"], 1, "{page}");
    assert!(page["pagination"].get("totalCapped").is_none(), "{page}");
}

#[sqlx::test]
async fn a_cursor_after_a_long_name_in_four_byte_characters_still_opens(pool: PgPool) {
    // Arrange: names of 200 characters of four bytes each, which the cursor carries.
    let app = TestApp::spawn(pool).await;
    for c in ['\u{1F600}', '\u{1F601}'] {
        app.product().name(&c.to_string().repeat(200)).create().await;
    }
    let (_, _, first) = send(app.request(Method::GET, "/api/v1/products?sort=name&limit=1")).await;
    let cursor = first["pagination"]["nextCursor"].as_str().unwrap().to_owned();

    // Act
    let next = format!("/api/v1/products?sort=name&limit=1&cursor={cursor}");
    let (status, _, second) = send(app.request(Method::GET, &next)).await;

    // Assert
    assert_eq!(status, 200, "{second}");
    assert_eq!(ids(&second).len(), 1);
    assert_ne!(ids(&second), ids(&first));
}
