use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::helpers::TestApp;

/// A pool that can never connect: nothing listens on port 1.
fn unreachable_pool() -> PgPool {
    PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://nobody:nothing@127.0.0.1:1/none")
        .expect("lazy pool")
}

#[sqlx::test]
async fn liveness_answers_ok_with_the_version(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    // Act
    let res = app.get("/health").await;
    // Assert
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[sqlx::test]
async fn readiness_is_ok_when_postgres_and_redis_answer(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app.get("/health/ready").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok", "checks": {"database": "ok", "redis": "ok"}}));
}

#[sqlx::test]
async fn a_stopped_redis_makes_readiness_503_while_liveness_stays_200(pool: PgPool) {
    // Arrange: Redis "stopped" = nothing listening where the app looks for it.
    let app = TestApp::spawn_with(
        pool,
        |s| s.redis_url = "redis://127.0.0.1:1".to_owned().into(),
        Default::default(),
    )
    .await;
    // Act
    let ready = app.get("/health/ready").await;
    let live = app.get("/health").await;
    // Assert
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["redis"], "unavailable", "a generic word; the error is logged");
    assert_eq!(live.status(), 200);
}

#[sqlx::test]
async fn a_stopped_postgres_makes_readiness_503_naming_the_database(pool: PgPool) {
    drop(pool);
    let app = TestApp::spawn(unreachable_pool()).await;
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"], "unavailable", "a generic word; the error is logged");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(app.get("/health").await.status(), 200);
}

#[sqlx::test]
async fn openapi_document_and_swagger_ui_are_served_offline(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let doc: Value = app.get("/api-docs/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/health"]["get"].is_object());
    assert!(doc["paths"]["/health/ready"]["get"].is_object());
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let ui = app.get("/api-docs/").await;
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("swagger-ui"));
    // The vendored bundle itself, not a CDN link.
    let bundle = app.get("/api-docs/swagger-ui-bundle.js").await;
    assert_eq!(bundle.status(), 200);
    assert!(bundle.text().await.unwrap().len() > 100_000);
}

#[sqlx::test]
async fn openapi_documents_every_endpoint_with_errors_and_security(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let doc: Value = app.get("/api-docs/openapi.json").await.json().await.unwrap();
    // The endpoints anyone may call; every other API operation needs a bearer token.
    let public = [
        ("post", "/api/v1/auth/register"),
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/refresh"),
        ("post", "/api/v1/auth/logout"),
        ("post", "/api/v1/auth/password/forgot"),
        ("post", "/api/v1/auth/password/reset"),
        ("post", "/api/v1/auth/verify-email"),
        ("get", "/api/v1/products"),
        ("get", "/api/v1/products/{id}"),
    ];
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(
                op["description"].is_string() || op["summary"].is_string(),
                "{method} {path} undescribed"
            );
            if !path.starts_with("/api/v1/") {
                continue; // the ops endpoints answer in the ops conventions, not the envelope
            }
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    response["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description (required by OpenAPI)"
                );
            }
            let errors: Vec<_> = responses.iter().filter(|(status, _)| status.starts_with('4')).collect();
            assert!(!errors.is_empty(), "{method} {path} documents no error response");
            for (status, response) in errors {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorEnvelope",
                    "{method} {path} {status} is not documented as the error envelope"
                );
            }
            // What the middleware answers, documented on the operation.
            for status in ["429", "503"] {
                assert!(responses.contains_key(status), "{method} {path} documents no {status}");
            }
            if op["requestBody"].is_object() {
                for status in ["400", "413", "415"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} takes a body but documents no {status}"
                    );
                }
            }
            let secured = !public.contains(&(method.as_str(), path.as_str()));
            // Public operations say so with `security: []`.
            let schemes = op["security"].as_array().unwrap_or_else(|| panic!("{method} {path} security"));
            assert_eq!(!schemes.is_empty(), secured, "{method} {path} security");
            assert!(responses.contains_key("500"), "{method} {path} documents no 500");
            if op["security"][0].get("bearer").is_some() {
                assert!(responses.contains_key("401"), "{method} {path} documents no 401");
            } else if secured {
                // The payment provider's webhook: its signature is the authentication.
                assert_eq!(
                    op["security"][0].as_object().unwrap().keys().collect::<Vec<_>>(),
                    ["stripeSignature"]
                );
                assert!(
                    responses.contains_key("400"),
                    "{method} {path} documents no 400 for a bad signature"
                );
            }
        }
    }
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().expect("every operation has an operationId"))
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operationIds are unique: {ids:?}");
    let created = &doc["paths"]["/api/v1/products"]["post"]["responses"]["201"]["links"];
    assert_eq!(created["get_product"]["operationId"], "get_product");
    assert_eq!(created["get_product"]["parameters"]["id"], "$response.body#/data/id");
    // The walk covers everything (26 API and 3 ops operations when this was written).
    assert!(operations >= 29, "only {operations} operations documented");
}

#[sqlx::test]
async fn metrics_count_requests_by_route_template_and_status(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = uuid::Uuid::new_v4();
    assert_eq!(app.get("/api/v1/products").await.status(), 200);
    assert_eq!(app.get(&format!("/api/v1/products/{id}")).await.status(), 404);
    assert_eq!(app.get("/no/such/path").await.status(), 404);

    let res = app.get_metrics_listener("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = res.text().await.unwrap();
    for line in [
        r#"http_requests_total{method="GET",route="/api/v1/products",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="/api/v1/products/{id}",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="<unmatched>",status="404"} 1"#,
        r#"http_request_duration_seconds_count{method="GET",route="/api/v1/products",status="200"} 1"#,
        "# TYPE http_request_duration_seconds histogram",
        "db_pool_max_connections 5",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    assert!(!text.contains(&id.to_string()), "ids never become labels");
}

#[sqlx::test]
async fn metrics_are_served_on_their_own_listener_and_never_on_the_api_port(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_ne!(app.metrics_address.port(), app.address.port());
    crate::helpers::assert_error(app.get("/metrics").await, 404, "NOT_FOUND").await;
    let health = app.get_metrics_listener("/health").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    // The listener serves nothing of the API.
    assert_eq!(app.get_metrics_listener("/api/v1/products").await.status(), 404);
}

#[sqlx::test]
async fn metrics_can_be_switched_off(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.metrics_enabled = false, Default::default()).await;
    assert_eq!(app.get_metrics_listener("/metrics").await.status(), 404);
    assert_eq!(app.get_metrics_listener("/health").await.status(), 200, "probes still answer");
}

#[sqlx::test]
async fn with_postgres_down_api_calls_answer_503_in_the_envelope(pool: PgPool) {
    drop(pool);
    let app = TestApp::spawn(unreachable_pool()).await;
    let res = app.get("/api/v1/products").await;
    crate::helpers::assert_error(res, 503, "SERVICE_UNAVAILABLE").await;
    let res = app
        .post_json("/api/v1/auth/login", &serde_json::json!({"email": "a@b.co", "password": "password123"}))
        .await;
    crate::helpers::assert_error(res, 503, "SERVICE_UNAVAILABLE").await;
}

#[sqlx::test]
async fn while_postgres_is_unreachable_requests_answer_503_at_once_and_recover_by_themselves(pool: PgPool) {
    // Arrange: the app reaches this test's database through a port where nothing listens
    // yet (a database that is down); a forwarder opens it later (the database is back).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let real = crate::helpers::url_of(&pool);
    let (before, after) = real.split_once("@").unwrap();
    let (host_port, database) = after.split_once('/').unwrap();
    let proxied = format!("{before}@127.0.0.1:{port}/{database}");
    let down_pool = PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy(&proxied)
        .expect("lazy pool");
    let app = TestApp::spawn(down_pool).await;
    let products = || async {
        let started = std::time::Instant::now();
        let status = app.get("/api/v1/products").await.status().as_u16();
        (status, started.elapsed())
    };
    // Act: the first request waits its acquire timeout and starts the probe.
    assert_eq!(products().await.0, 503);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Assert: now each answers 503 at once.
    for _ in 0..5 {
        let (status, took) = products().await;
        assert_eq!(status, 503);
        assert!(took < std::time::Duration::from_millis(200), "took {took:?}");
    }
    assert_eq!(app.get("/health").await.status(), 200, "liveness is not gated");
    // The database comes back: requests succeed again without a restart.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let target = host_port.to_owned();
    let forwarder = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let started = std::time::Instant::now();
    loop {
        if products().await.0 == 200 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "not recovered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let recovered = started.elapsed();
    assert!(recovered < std::time::Duration::from_secs(3), "recovered after {recovered:?}");
    app.state.db.close().await;
    forwarder.abort();
}

/// `openapi.json` at the repository's root is the contract clients generate from: it must
/// be what the server serves. After changing the API, refresh it with
/// `UPDATE_OPENAPI_JSON=1 cargo nextest run openapi_json` (or `scripts/openapi-export`).
#[sqlx::test]
async fn the_checked_in_openapi_json_is_what_the_server_serves(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let served: serde_json::Value = app.get("/api-docs/openapi.json").await.json().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI_JSON").is_some() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == pretty,
        "openapi.json differs from the served document: run `scripts/openapi-export` and commit it"
    );
}
