//! Every status a client can provoke answers in the error envelope.

use std::time::Duration;

use axum::{
    Json, Router,
    routing::{get, post},
};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use storefront::{
    platform::http::{
        extract::{PathParam, QueryParams, ValidJson},
        response::PageParams,
    },
    state::AppState,
};
use validator::Validate;

use crate::helpers::{TestApp, assert_error, expect_error};

#[derive(Debug, Deserialize, Validate)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Echo {
    #[validate(length(min = 1, max = 10))]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdPath {
    id: uuid::Uuid,
}

/// Routes that exercise the shared extractors and layers under the real stack.
fn probe_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/__probe/echo",
            post(|ValidJson(body): ValidJson<Echo>| async move { Json(json!({"name": body.name})) }),
        )
        .route(
            "/__probe/page",
            get(|QueryParams(p): QueryParams<PageParams>| async move {
                Json(json!({"page": p.number(), "limit": p.limit}))
            }),
        )
        .route(
            "/__probe/items/{id}",
            get(|PathParam(p): PathParam<IdPath>| async move { Json(json!({"id": p.id})) }),
        )
        .route(
            "/__probe/panic",
            get(|| async {
                if true {
                    panic!("secret internals: password=hunter2");
                }
                "unreachable"
            }),
        )
        .route(
            "/__probe/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
}

async fn probe_app(pool: PgPool) -> TestApp {
    TestApp::spawn_with(
        pool,
        |s| {
            s.request_timeout = Duration::from_millis(300);
            s.body_limit_bytes = 4096;
        },
        probe_routes(),
    )
    .await
}

#[sqlx::test]
async fn an_unknown_route_is_a_404_in_the_envelope(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app.get("/api/v1/does-not-exist").await;
    assert_error(res, 404, "NOT_FOUND").await;
}

#[sqlx::test]
async fn a_wrong_method_is_a_405_in_the_envelope_with_allow(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app.request(Method::DELETE, "/health").send().await.unwrap();
    let allow = res.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
    assert_error(res, 405, "METHOD_NOT_ALLOWED").await;
    assert!(allow.unwrap().contains("GET"));
}

#[sqlx::test]
async fn a_body_over_the_limit_is_a_413(pool: PgPool) {
    let app = probe_app(pool).await;
    let big = json!({"name": "a", "note": "x".repeat(10_000)});
    let res = app.post_json("/__probe/echo", &big).await;
    assert_error(res, 413, "PAYLOAD_TOO_LARGE").await;
}

#[sqlx::test]
async fn a_body_that_is_not_json_is_a_415(pool: PgPool) {
    let app = probe_app(pool).await;
    expect_error(
        app.request(Method::POST, "/__probe/echo")
            .header("content-type", "text/plain")
            .body(r#"{"name":"a"}"#),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    expect_error(app.request(Method::POST, "/__probe/echo").body("{}"), 415, "UNSUPPORTED_MEDIA_TYPE").await;
}

#[sqlx::test]
async fn malformed_json_is_a_400(pool: PgPool) {
    let app = probe_app(pool).await;
    expect_error(
        app.request(Method::POST, "/__probe/echo")
            .header("content-type", "application/json")
            .body(r#"{"name": "#),
        400,
        "VALIDATION_ERROR",
    )
    .await;
}

#[sqlx::test]
async fn wrong_types_unknown_fields_and_rule_violations_name_the_field(pool: PgPool) {
    let app = probe_app(pool).await;

    let body =
        assert_error(app.post_json("/__probe/echo", &json!({"name": 5})).await, 400, "VALIDATION_ERROR")
            .await;
    assert!(body["error"]["fields"]["name"].is_array(), "{body}");

    let body = assert_error(
        app.post_json("/__probe/echo", &json!({"name": "a", "role": "admin"})).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(body["error"]["fields"]["role"], json!(["unknown field"]));

    let body = assert_error(app.post_json("/__probe/echo", &json!({})).await, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["error"]["fields"]["name"], json!(["is required"]));

    let body = assert_error(
        app.post_json("/__probe/echo", &json!({"name": "much too long a name"})).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(body["error"]["fields"]["name"], json!(["length must be between 1 and 10"]));

    let ok = app.post_json("/__probe/echo", &json!({"name": "ok"})).await;
    assert_eq!(ok.status(), 200);
}

/// Found by schemathesis: serde reads a struct from an array of its fields, so `["ok"]`
/// passed as `{"name": "ok"}`; every body is documented as an object.
#[sqlx::test]
async fn a_body_that_is_not_an_object_is_a_400(pool: PgPool) {
    let app = probe_app(pool).await;
    for body in [json!(["ok"]), json!("ok"), json!(5), json!(null)] {
        let res = assert_error(app.post_json("/__probe/echo", &body).await, 400, "VALIDATION_ERROR").await;
        assert_eq!(res["error"]["message"], "the body must be a JSON object", "{body}");
    }
}

#[sqlx::test]
async fn bad_query_parameters_are_a_400_naming_the_parameter(pool: PgPool) {
    let app = probe_app(pool).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=2147483648", "page"),
    ] {
        let res = app.get(&format!("/__probe/page?{query}")).await;
        let body = assert_error(res, 400, "VALIDATION_ERROR").await;
        assert!(body["error"]["fields"][field].is_array(), "{query}: {body}");
    }
    let ok: Value = app.get("/__probe/page").await.json().await.unwrap();
    assert_eq!(ok, json!({"page": 1, "limit": 20}));
}

#[sqlx::test]
async fn a_bad_path_parameter_is_a_400(pool: PgPool) {
    let app = probe_app(pool).await;
    let body = assert_error(app.get("/__probe/items/not-a-uuid").await, 400, "VALIDATION_ERROR").await;
    assert!(body["error"]["fields"]["id"].is_array(), "{body}");
    let id = uuid::Uuid::new_v4();
    assert_eq!(app.get(&format!("/__probe/items/{id}")).await.status(), 200);
}

#[sqlx::test]
async fn a_panic_is_a_500_without_internals(pool: PgPool) {
    let app = probe_app(pool).await;
    let body = assert_error(app.get("/__probe/panic").await, 500, "INTERNAL_SERVER_ERROR").await;
    assert!(!body.to_string().contains("hunter2"));
    assert!(!body.to_string().contains("secret internals"));
    // The server survives the panic.
    assert_eq!(app.get("/health").await.status(), 200);
}

#[sqlx::test]
async fn a_request_over_the_timeout_is_a_503_in_the_envelope(pool: PgPool) {
    let app = probe_app(pool).await;
    let started = std::time::Instant::now();
    assert_error(app.get("/__probe/slow").await, 503, "SERVICE_UNAVAILABLE").await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[sqlx::test]
async fn a_sane_client_request_id_is_echoed_and_an_insane_one_replaced(pool: PgPool) {
    let app = TestApp::spawn(pool).await;

    let res =
        app.request(Method::GET, "/nope").header("x-request-id", "client-abc-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-abc-123");
    let body = assert_error(res, 404, "NOT_FOUND").await;
    assert_eq!(body["error"]["requestId"], "client-abc-123");

    let too_long = "a".repeat(129);
    let res = app.request(Method::GET, "/health").header("x-request-id", &too_long).send().await.unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "replaced by a UUID: {id}");

    let res = app.get("/health").await;
    assert!(uuid::Uuid::parse_str(res.headers()["x-request-id"].to_str().unwrap()).is_ok());
}

#[sqlx::test]
async fn security_headers_are_on_every_response(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for path in ["/health", "/nope"] {
        let res = app.get(path).await;
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(!h.contains_key("strict-transport-security"), "HSTS off by default");
    }
}

#[sqlx::test]
async fn answers_to_requests_with_credentials_are_never_stored_and_public_ones_may_be(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let mug = app.product().create().await;
    // Successes and failures alike, whatever the token's fate.
    for (path, token) in [
        ("/api/v1/users/profile", ann.token.as_str()),
        ("/api/v1/orders", ann.token.as_str()),
        ("/api/v1/users", ann.token.as_str()),
        ("/api/v1/users/profile", "not-a-token"),
    ] {
        let res = app.authed(Method::GET, path, token).send().await.unwrap();
        assert_eq!(res.headers()["cache-control"], "no-store", "{path} ({})", res.status());
    }
    // A product read without credentials stays cacheable (its ETag serves revalidation).
    let res = app.get(&format!("/api/v1/products/{}", mug.id)).await;
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("cache-control"), "{:?}", res.headers());
}

#[sqlx::test]
async fn cors_preflight_allows_only_configured_origins(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool, |s| s.cors_origin = vec!["https://shop.example".into()], Router::new())
            .await;
    let allowed = app
        .request(Method::OPTIONS, "/health")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    let denied = app
        .request(Method::OPTIONS, "/health")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));
}

#[sqlx::test]
async fn cors_headers_reach_every_response_and_preflights_skip_the_rate_limit(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.cors_origin = vec!["https://shop.example".into()];
            s.rate_limit_default_per_minute = 1;
        },
        Router::new(),
    )
    .await;
    let vary = "origin, access-control-request-method, access-control-request-headers";
    // An ordinary request from an allowed origin, and an error answer.
    for path in ["/health", "/api/v1/nope"] {
        let res =
            app.request(Method::GET, path).header("origin", "https://shop.example").send().await.unwrap();
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], "https://shop.example", "{path}");
        assert!(h["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"), "{path}");
        assert_eq!(vary_of(h), vary, "{path}");
        assert!(!h.contains_key("access-control-allow-credentials"), "{path}: no credentials");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    // The per-IP quota (1 a minute) is spent; a 429 still carries the CORS headers, so a
    // browser can read it.
    let limited = app
        .request(Method::GET, "/api/v1/nope")
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["access-control-allow-origin"], "https://shop.example");
    // Preflights are answered before the limit: 200, empty, with what the API allows.
    let pre = app
        .request(Method::OPTIONS, "/api/v1/orders")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "idempotency-key, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 200);
    let h = pre.headers().clone();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert_eq!(h["access-control-allow-methods"], "GET,POST,PATCH,PUT,DELETE");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("idempotency-key")
            && allowed.contains("content-type")
            && allowed.contains("if-match")
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h.contains_key("x-request-id"));
    assert!(pre.text().await.unwrap().is_empty());
    // No origin header: no allow-origin, but the Vary that caches need.
    let plain = app.request(Method::GET, "/health").send().await.unwrap();
    assert!(!plain.headers().contains_key("access-control-allow-origin"));
    assert_eq!(vary_of(plain.headers()), vary);
}

/// Every `Vary` value of a response, as one list (one header line or several).
fn vary_of(headers: &reqwest::header::HeaderMap) -> String {
    headers.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(", ")
}

#[sqlx::test]
async fn cors_preflights_from_other_origins_get_no_allowance_and_none_allows_credentials(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool, |s| s.cors_origin = vec!["https://shop.example".into()], Router::new())
            .await;
    let preflight = |origin: &'static str| {
        app.request(Method::OPTIONS, "/api/v1/orders")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
    };
    let denied = preflight("https://evil.example").send().await.unwrap();
    let h = denied.headers();
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
    assert!(!h.contains_key("access-control-allow-credentials"), "{h:?}");
    assert_eq!(vary_of(h), "origin, access-control-request-method, access-control-request-headers");
    let allowed = preflight("https://shop.example").send().await.unwrap();
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert!(!h.contains_key("access-control-allow-credentials"), "credentials are never allowed");
    // An origin that only starts like an allowed one is another origin.
    let lookalike = preflight("https://shop.example.evil.example").send().await.unwrap();
    assert!(!lookalike.headers().contains_key("access-control-allow-origin"));
}

#[sqlx::test]
async fn request_ids_over_128_characters_or_not_visible_ascii_are_replaced(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let sent = |id: &str| app.request(Method::GET, "/api/v1/nope").header("x-request-id", id.to_owned());
    let kept = "a".repeat(128);
    let res = sent(&kept).send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], kept.as_str());
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["requestId"], kept.as_str(), "the error body carries the kept id");
    for bad in ["a".repeat(129), "has space".to_owned(), String::new()] {
        let res = sent(&bad).send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a new UUID instead of {bad:?}: {id}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["requestId"], id.as_str());
    }
}

#[sqlx::test]
async fn cors_wildcard_allows_any_origin_with_a_star(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.cors_origin = vec!["*".into()], Router::new()).await;
    let res =
        app.request(Method::GET, "/health").header("origin", "https://any.example").send().await.unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}

/// Log lines written while a test runs, in JSON.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

#[sqlx::test]
async fn a_failed_request_is_logged_once_with_its_cause_and_request_id(pool: PgPool) {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // `set_default` covers this thread; the server's tasks run on it too (current-thread
    // runtime of #[sqlx::test]).
    let app = probe_app(pool).await;
    let res = app
        .request(Method::GET, "/__probe/panic")
        .header("x-request-id", "panic-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    let mentioning = |needle: &str| -> Vec<Value> {
        logs.lines().into_iter().filter(|l| l.to_string().contains(needle)).collect()
    };
    let panic_lines = mentioning("hunter2");
    assert_eq!(panic_lines.len(), 1, "the cause is logged once: {panic_lines:#?}");
    let line = &panic_lines[0];
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["status"], 500, "{line}");
    assert_eq!(line["span"]["request_id"], "panic-probe-1", "{line}");
    assert_eq!(
        mentioning("panic-probe-1").len(),
        1,
        "one line for the request: {:#?}",
        mentioning("panic-probe-1")
    );

    // The database gone: a 503 whose cause is logged once, at warn.
    app.state.db.close().await;
    let res = app
        .request(Method::GET, "/api/v1/products")
        .header("x-request-id", "db-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let db_lines = mentioning("db-probe-1");
    assert_eq!(db_lines.len(), 1, "{db_lines:#?}");
    assert_eq!(db_lines[0]["level"], "WARN", "{}", db_lines[0]);
    assert!(
        db_lines[0]["fields"]["error"].as_str().is_some_and(|e| e.contains("database")),
        "{}",
        db_lines[0]
    );
}
