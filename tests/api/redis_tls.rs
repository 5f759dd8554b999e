//! Redis over TLS (`rediss://`) against a real TLS Redis: Debian's redis-server with a
//! CA and a server certificate made for the test by openssl.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::Router;
use reqwest::Method;
use sqlx::PgPool;

use crate::helpers::{TestApp, send};

/// A redis-server answering only TLS on a free loopback port; killed on drop.
struct TlsRedis {
    dir: PathBuf,
    port: u16,
    child: Child,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TlsRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("storefront-redis-tls-{}", ulid::Ulid::generate()));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.pem",
            ])
            .args(["--tls-auth-clients", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the TLS Redis did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { dir, port, child }
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").to_string_lossy().into_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[sqlx::test]
async fn rediss_connects_with_the_servers_certificate_checked(pool: PgPool) {
    let tls = TlsRedis::start();
    let url = format!("rediss://localhost:{}", tls.port);
    let (app_url, ca) = (url.clone(), tls.ca());
    let app = TestApp::spawn_with(
        pool.clone(),
        move |s| {
            s.redis_url = app_url.into();
            s.redis_ca_file = ca;
            s.rate_limit_default_per_minute = 2;
        },
        Router::new(),
    )
    .await;
    let (status, _, body) = send(app.request(Method::GET, "/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"], "ok");
    // The shared limits count in the TLS Redis.
    assert_eq!(send(app.request(Method::GET, "/api/v1/products")).await.0, 200);
    assert_eq!(send(app.request(Method::GET, "/api/v1/products")).await.0, 200);
    assert_eq!(send(app.request(Method::GET, "/api/v1/products")).await.0, 429);
    let mut conn = app.state.redis.conn();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(app.state.redis.key("rl:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty(), "the limit's counter is in the TLS Redis");

    // Without the CA the certificate is not trusted: no connection, readiness says so.
    let untrusted = TestApp::spawn_with(pool, move |s| s.redis_url = url.into(), Router::new()).await;
    let (status, _, body) = send(untrusted.request(Method::GET, "/health/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["redis"], "unavailable");
}
