//! The binary's start-up contract: bad configuration fails fast listing every problem;
//! a good one serves `/health` and shuts down cleanly on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn storefront() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_storefront"));
    // Start from a clean slate: only what each test sets (plus PATH) reaches the process.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // A developer's .env must not leak into these tests.
        .env("NO_DOTENV", "1")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    cmd
}

/// Waits (up to 10 s) for `child` to exit after SIGTERM and checks it exited with 0.
#[track_caller]
fn assert_clean_exit(child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "clean exit after SIGTERM, got {exit:?}");
}

#[test]
fn a_bad_configuration_exits_non_zero_listing_every_problem() {
    let out = storefront()
        .env("JWT_SECRET", "short")
        .env("DATABASE_URL", "nonsense")
        .env("DB_POOL_MIN", "20")
        .env("DB_POOL_MAX", "5")
        .env("PORT", "http")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["JWT_SECRET", "DATABASE_URL", "DB_POOL_MIN (20) must not exceed DB_POOL_MAX (5)", "PORT"] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
}

#[test]
fn production_refuses_the_development_secret() {
    let out = storefront().env("APP_ENV", "production").arg("migrate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused in production"));
}

#[test]
fn an_unknown_app_env_is_refused() {
    let out = storefront().env("APP_ENV", "staging").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("APP_ENV"));
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET url` until it answers (up to 20 s).
async fn get_when_up(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.get(url).send().await {
            Ok(res) => return res,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{url} never answered: {e}"),
        }
    }
}

#[tokio::test]
async fn the_server_answers_health_and_stops_cleanly_on_sigterm() {
    // Arrange: free ports, no migrations (liveness needs no database).
    let port = free_port();
    let metrics_port = free_port();
    let mut child = storefront()
        .env("APP_ENV", "test")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("METRICS_PORT", metrics_port.to_string())
        .env("RUN_MIGRATIONS", "false")
        // The scheduler starts and stops with the server.
        .env("SCHEDULER_ENABLED", "true")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Act
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match client.get(format!("http://127.0.0.1:{port}/health")).send().await {
            Ok(res) => break res.status(),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("server never answered: {e}"),
        }
    };
    // The metrics listener: the API's series there, and no /metrics on the API port.
    let metrics = get_when_up(&client, &format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    let metrics_status = metrics.status();
    let text = metrics.text().await.unwrap();
    let api_metrics = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().status();
    // The container health check: the binary probes itself, no curl needed.
    let probe = |port: u16| {
        storefront().env("APP_ENV", "test").env("PORT", port.to_string()).arg("healthcheck").output().unwrap()
    };
    let (healthy, nobody) = (probe(port), probe(free_port()));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    // Assert
    assert_eq!(status, 200);
    assert_eq!(metrics_status, 200);
    assert!(text.contains(r#"http_requests_total{method="GET",route="/health",status="200"} 1"#), "{text}");
    assert_eq!(api_metrics, 404);
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).starts_with("unhealthy: http://127.0.0.1:"));
    assert!(killed.success());
    assert_clean_exit(&mut child);
}

#[tokio::test]
async fn the_worker_serves_health_and_metrics_and_stops_cleanly_on_sigterm() {
    let metrics_port = free_port();
    let mut child = storefront()
        .env("APP_ENV", "test")
        .env("RUN_MIGRATIONS", "false")
        .env("SCHEDULER_ENABLED", "true")
        .env("METRICS_PORT", metrics_port.to_string())
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let health = get_when_up(&client, &format!("http://127.0.0.1:{metrics_port}/health")).await.status();
    let metrics = client.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    let metrics_status = metrics.status();
    let text = metrics.text().await.unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the worker keeps running");
    assert_eq!(health, 200);
    assert_eq!(metrics_status, 200);
    assert!(text.contains("# TYPE db_pool_max_connections gauge"), "{text}");
    let probe = storefront()
        .env("APP_ENV", "test")
        .env("METRICS_PORT", metrics_port.to_string())
        .args(["healthcheck", "--metrics"])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert_clean_exit(&mut child);
}

#[test]
fn seed_refuses_production_unless_forced() {
    let out = storefront()
        .env("APP_ENV", "production")
        .env("JWT_SECRET", "ab".repeat(32))
        .env("ALLOW_INSECURE_BACKENDS", "true")
        .env("RUN_MIGRATIONS", "false")
        .args(["seed", "--products", "1", "--users", "1"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to seed") && stderr.contains("--force"), "{stderr}");
}
