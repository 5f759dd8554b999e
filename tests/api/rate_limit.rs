//! Rate limits over HTTP, counted in the test's own Redis namespace.

use axum::Router;
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, expect_error, send};

const PRODUCTS: &str = "/api/v1/products";
const LOGIN: &str = "/api/v1/auth/login";

#[sqlx::test]
async fn the_default_limit_counts_per_ip_and_answers_429_with_retry_after(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_default_per_minute = 3, Router::new()).await;
    for remaining in ["2", "1", "0"] {
        let (status, headers, _) = send(app.request(Method::GET, PRODUCTS)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-limit"], "3");
        assert_eq!(headers["ratelimit-remaining"], remaining);
        let reset: u64 = headers["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let res = app.request(Method::GET, PRODUCTS).send().await.unwrap();
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    crate::helpers::assert_error(res, 429, "RATE_LIMITED").await;
    // Probes stay reachable for the load balancer.
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get("/health/ready").await.status(), 200);
}

#[sqlx::test]
async fn login_and_register_have_a_strict_per_ip_limit(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_auth_per_minute = 3, Router::new()).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    for _ in 0..2 {
        let res =
            app.post_json(LOGIN, &json!({"email": "x@example.com", "password": "wrong-password"})).await;
        assert_eq!(res.status(), 401);
    }
    let res = app.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "password123"})).await;
    // The headers describe the quota that bound (3), not the generous default.
    assert_eq!(res.headers()["ratelimit-limit"], "3");
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    crate::helpers::assert_error(res, 429, "RATE_LIMITED").await;
    let req = app
        .request(Method::POST, "/api/v1/auth/register")
        .json(&json!({"email": "bob@example.com", "password": "password123"}));
    expect_error(req, 429, "RATE_LIMITED").await;
    // Refreshing is not a credential guess: only the default limit applies.
    let req =
        app.request(Method::POST, "/api/v1/auth/refresh").json(&json!({"refreshToken": ann.refresh_token}));
    assert_eq!(send(req).await.0, 200);
}

#[sqlx::test]
async fn login_attempts_are_limited_per_email_address(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_login_per_email = 2, Router::new()).await;
    app.user().email("ann@example.com").signed_in().await;
    app.user().email("bob@example.com").signed_in().await;
    for _ in 0..2 {
        let res = app.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "guess-guess"})).await;
        assert_eq!(res.status(), 401);
    }
    // Even the right password waits now, in any spelling of the address.
    let res = app.post_json(LOGIN, &json!({"email": " ANN@example.com", "password": "password123"})).await;
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 60, "a 15-minute window: {retry_after}");
    crate::helpers::assert_error(res, 429, "RATE_LIMITED").await;
    app.login("bob@example.com", "password123").await;
}

#[sqlx::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_counted(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.rate_limit_default_per_minute = 1;
            s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        },
        Router::new(),
    )
    .await;
    let from =
        |ip: &str| app.request(Method::GET, PRODUCTS).header("x-forwarded-for", format!("10.1.1.1, {ip}"));
    assert_eq!(send(from("203.0.113.1")).await.0, 200);
    assert_eq!(send(from("203.0.113.2")).await.0, 200);
    expect_error(from("203.0.113.1"), 429, "RATE_LIMITED").await;
}

#[sqlx::test]
async fn a_forged_forwarded_address_from_an_untrusted_peer_is_ignored(pool: PgPool) {
    // The proxies are elsewhere: this loopback client is not one of them.
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.rate_limit_default_per_minute = 1;
            s.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        },
        Router::new(),
    )
    .await;
    let forged = |ip: &str| app.request(Method::GET, PRODUCTS).header("x-forwarded-for", ip.to_owned());
    assert_eq!(send(forged("203.0.113.1")).await.0, 200);
    // Another forged address is still the same client: the socket peer.
    expect_error(forged("203.0.113.2"), 429, "RATE_LIMITED").await;
}

#[sqlx::test]
async fn parallel_wrong_logins_get_no_more_guesses_than_the_per_email_limit(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.rate_limit_login_per_email = 3;
            s.rate_limit_auth_per_minute = 1000;
        },
        Router::new(),
    )
    .await;
    app.user().email("ann@example.com").signed_in().await;
    let attempts = (0..50).map(|i| {
        let req = app
            .request(Method::POST, LOGIN)
            .json(&json!({"email": "ann@example.com", "password": format!("guess-{i:04}")}));
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(wrong <= 3, "{wrong} passwords were checked: {statuses:?}");
    assert_eq!(wrong + limited, 50, "{statuses:?}");
}

#[sqlx::test]
async fn only_wrong_passwords_use_the_per_email_limit_up(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_login_per_email = 2, Router::new()).await;
    app.user().email("ann@example.com").signed_in().await;
    let wrong = json!({"email": "ann@example.com", "password": "guess-guess"});
    assert_eq!(app.post_json(LOGIN, &wrong).await.status(), 401);
    // Each success gives its reserved place back.
    for _ in 0..4 {
        app.login("ann@example.com", "password123").await;
    }
    assert_eq!(app.post_json(LOGIN, &wrong).await.status(), 401);
    crate::helpers::assert_error(app.post_json(LOGIN, &wrong).await, 429, "RATE_LIMITED").await;
}

#[sqlx::test]
async fn wrong_current_passwords_are_limited_per_account(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.rate_limit_password_change_failures = 5;
            s.rate_limit_auth_per_minute = 1000;
        },
        Router::new(),
    )
    .await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let bob = app.user().email("bob@example.com").signed_in().await;
    const CHANGE: &str = "/api/v1/users/profile/password";
    let mut statuses = Vec::new();
    for i in 0..100 {
        let body = json!({"currentPassword": format!("guess-{i:04}"), "newPassword": "new-password-1"});
        statuses.push(send(app.authed(Method::POST, CHANGE, &ann.token).json(&body)).await.0);
    }
    assert!(statuses[..5].iter().all(|s| *s == 400), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right password waits now; another account does not.
    let right = json!({"currentPassword": "password123", "newPassword": "new-password-1"});
    expect_error(app.authed(Method::POST, CHANGE, &ann.token).json(&right), 429, "RATE_LIMITED").await;
    assert_eq!(send(app.authed(Method::POST, CHANGE, &bob.token).json(&right)).await.0, 204);
}

#[sqlx::test]
async fn the_password_change_is_under_the_strict_per_ip_limit(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_auth_per_minute = 2, Router::new()).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    const CHANGE: &str = "/api/v1/users/profile/password";
    let body = json!({"currentPassword": "guess-guess", "newPassword": "new-password-1"});
    // The sign-in above was one of the two.
    assert_eq!(send(app.authed(Method::POST, CHANGE, &ann.token).json(&body)).await.0, 400);
    expect_error(app.authed(Method::POST, CHANGE, &ann.token).json(&body), 429, "RATE_LIMITED").await;
}

#[sqlx::test]
async fn past_the_hashing_queue_a_login_answers_503_at_once(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.password_hash_queue_max = 1;
            s.rate_limit_auth_per_minute = 1000;
            s.rate_limit_login_per_email = 1000;
        },
        Router::new(),
    )
    .await;
    app.user().email("ann@example.com").signed_in().await;
    let attempts = (0..12).map(|_| {
        let req = app
            .request(Method::POST, LOGIN)
            .json(&json!({"email": "ann@example.com", "password": "password123"}));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["error"]["code"].as_str().unwrap_or("").to_owned())
        }
    });
    let answers = futures::future::join_all(attempts).await;
    assert!(
        answers.iter().all(|(s, c)| *s == 200 || (*s == 503 && c == "SERVICE_UNAVAILABLE")),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(s, _)| *s == 200), "{answers:?}");
    assert!(answers.iter().any(|(s, _)| *s == 503), "{answers:?}");
}

#[sqlx::test]
async fn sessions_record_the_client_address_the_limits_count(pool: PgPool) {
    let behind_proxy = TestApp::spawn_with(
        pool.clone(),
        |s| s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()],
        Router::new(),
    )
    .await;
    behind_proxy.user().email("ann@example.com").signed_in().await;
    let res = behind_proxy
        .request(Method::POST, LOGIN)
        .header("x-forwarded-for", "10.1.1.1, 203.0.113.7")
        .json(&json!({"email": "ann@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ips: Vec<Option<String>> =
        sqlx::query_scalar("select ip from sessions order by created_at").fetch_all(&pool).await.unwrap();
    assert_eq!(ips.last().unwrap().as_deref(), Some("203.0.113.7"), "{ips:?}");
    // Without a trusted proxy the header is the client's word: the socket peer counts.
    let direct = TestApp::spawn(pool.clone()).await;
    let res = direct
        .request(Method::POST, LOGIN)
        .header("x-forwarded-for", "203.0.113.8")
        .json(&json!({"email": "ann@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ips: Vec<Option<String>> =
        sqlx::query_scalar("select ip from sessions order by created_at").fetch_all(&pool).await.unwrap();
    assert_eq!(ips.last().unwrap().as_deref(), Some("127.0.0.1"), "{ips:?}");
}

/// Three requests against a limit of one all pass, without rate-limit headers.
async fn assert_never_limited(app: &TestApp) {
    for _ in 0..3 {
        let (status, headers, _) = send(app.request(Method::GET, PRODUCTS)).await;
        assert_eq!(status, 200);
        assert!(!headers.contains_key("ratelimit-limit"));
    }
}

#[sqlx::test]
async fn without_redis_the_limits_hold_in_process(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.rate_limit_default_per_minute = 1;
            s.redis_url = "redis://127.0.0.1:1".to_owned().into(); // refused
        },
        Router::new(),
    )
    .await;
    assert_eq!(send(app.request(Method::GET, PRODUCTS)).await.0, 200);
    expect_error(app.request(Method::GET, PRODUCTS), 429, "RATE_LIMITED").await;
}

/// A TCP server that accepts connections and never says a word (a hung Redis).
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    (port, held)
}

#[sqlx::test]
async fn a_hung_redis_neither_slows_the_api_nor_lifts_the_login_limit(pool: PgPool) {
    // Arrange: a baseline with a working Redis, then the same with a hung one.
    let (port, held) = silent_server().await;
    let normal = TestApp::spawn(pool.clone()).await;
    normal.user().email("ann@example.com").signed_in().await;
    let hung = TestApp::spawn_with(
        pool,
        |s| {
            s.redis_url = format!("redis://127.0.0.1:{port}").into();
            s.rate_limit_login_per_email = 2;
        },
        Router::new(),
    )
    .await;
    let timed = async |app: &TestApp| {
        let started = std::time::Instant::now();
        assert_eq!(send(app.request(Method::GET, PRODUCTS)).await.0, 200);
        started.elapsed()
    };
    let mut baseline = std::time::Duration::MAX;
    for _ in 0..5 {
        baseline = baseline.min(timed(&normal).await);
    }
    // The hung app's read pool opens its connection first, as the baseline's did: only
    // Redis is measured.
    hung.state
        .reads
        .read(&|c: &mut sqlx::PgConnection| Box::pin(async move { sqlx::query("select 1").execute(c).await }))
        .await
        .unwrap();
    // Act + assert: every request stays fast (the breaker opens after 3 slow calls, each
    // bounded at 50 ms), and the slowest is far from the old 6.5 s.
    let mut slowest = std::time::Duration::ZERO;
    let mut after_trip = std::time::Duration::MAX;
    for i in 0..20 {
        let took = timed(&hung).await;
        slowest = slowest.max(took);
        if i >= 5 {
            after_trip = after_trip.min(took);
        }
    }
    assert!(slowest < std::time::Duration::from_millis(500), "slowest {slowest:?} (baseline {baseline:?})");
    assert!(after_trip < baseline + std::time::Duration::from_millis(20), "{after_trip:?} vs {baseline:?}");
    // The per-e-mail login limit holds, counted in process.
    for _ in 0..2 {
        let res =
            hung.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "guess-guess"})).await;
        assert_eq!(res.status(), 401);
    }
    let res = hung.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "password123"})).await;
    crate::helpers::assert_error(res, 429, "RATE_LIMITED").await;
    held.abort();
}

#[sqlx::test]
async fn limits_can_be_switched_off(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        |s| {
            s.rate_limit_enabled = false;
            s.rate_limit_default_per_minute = 1;
        },
        Router::new(),
    )
    .await;
    assert_never_limited(&app).await;
}

#[sqlx::test]
async fn successful_logins_do_not_use_up_the_per_email_limit(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_login_per_email = 2, Router::new()).await;
    app.user().email("ann@example.com").signed_in().await;
    for _ in 0..5 {
        app.login("ann@example.com", "password123").await;
    }
    // Failures still count: two, then even the right password waits.
    for _ in 0..2 {
        let res = app.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "guess-guess"})).await;
        assert_eq!(res.status(), 401);
    }
    let res = app.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "password123"})).await;
    crate::helpers::assert_error(res, 429, "RATE_LIMITED").await;
}

#[sqlx::test]
async fn forgot_requests_are_limited_per_address_without_locking_out_login(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.rate_limit_login_per_email = 2, Router::new()).await;
    app.user().email("ann@example.com").signed_in().await;
    let forgot = || {
        app.request(Method::POST, "/api/v1/auth/password/forgot").json(&json!({"email": "ann@example.com"}))
    };
    assert_eq!(send(forgot()).await.0, 202);
    assert_eq!(send(forgot()).await.0, 202);
    expect_error(forgot(), 429, "RATE_LIMITED").await;
    app.login("ann@example.com", "password123").await;
}

#[sqlx::test]
async fn invented_methods_do_not_become_metric_labels(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for method in ["QWE1", "QWE2"] {
        let res = app.request(Method::from_bytes(method.as_bytes()).unwrap(), PRODUCTS).send().await.unwrap();
        assert_eq!(res.status(), 405);
    }
    let text = app.get_metrics_listener("/metrics").await.text().await.unwrap();
    assert!(!text.contains("QWE"), "{text}");
    assert!(text.contains(r#"method="OTHER",route="/api/v1/products",status="405"} 2"#), "{text}");
}

/// Leases: the default per-IP limit is taken from Redis in leases (5 hits at a time for
/// a limit of 100). Two instances sharing one Redis together never admit more than the
/// limit, and refuse early by at most one unspent lease.
#[sqlx::test]
async fn leased_default_limits_hold_across_instances(pool: PgPool) {
    let prefix = format!("test:{}", uuid::Uuid::new_v4());
    let shared = |s: &mut storefront::platform::config::Settings| {
        s.rate_limit_default_per_minute = 100;
        s.redis_prefix = prefix.clone();
    };
    let a = TestApp::spawn_with(pool.clone(), shared, Router::new()).await;
    let b = TestApp::spawn_with(pool, shared, Router::new()).await;
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..150 {
        let app = if i % 3 == 0 { &b } else { &a };
        let (status, headers, _) = send(app.request(Method::GET, PRODUCTS)).await;
        match status.as_u16() {
            200 => {
                admitted += 1;
                let remaining: u32 = headers["ratelimit-remaining"].to_str().unwrap().parse().unwrap();
                assert!(remaining < 100, "{remaining}");
            }
            429 => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert!(admitted <= 100, "never more than the limit across instances: {admitted}");
    assert!(admitted >= 96, "at most one unspent lease (4 hits) refused early: {admitted}");
    assert_eq!(admitted + refused, 150);
    // Redis was asked per lease, not per request: its counter moved in steps of 5 and
    // stopped once the window was used up (counted hit by hit it would be 150).
    let mut conn = a.state.redis.conn();
    let key = a.state.redis.key("rl:ip:127.0.0.1");
    let counted: u64 = redis::AsyncCommands::get(&mut conn, &key).await.unwrap();
    assert_eq!(counted % 5, 0, "{counted}");
    assert!((100..=110).contains(&counted), "{counted}");
}
