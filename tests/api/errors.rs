//! Every status a client can provoke answers in the SPEC envelope (SPEC §2).

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
                Json(json!({"page": p.page, "limit": p.limit}))
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
        assert_eq!(h["vary"], vary, "{path}");
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
    assert_eq!(plain.headers()["vary"], vary);
}

#[sqlx::test]
async fn cors_wildcard_allows_any_origin_with_a_star(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.cors_origin = vec!["*".into()], Router::new()).await;
    let res =
        app.request(Method::GET, "/health").header("origin", "https://any.example").send().await.unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}
