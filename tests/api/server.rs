//! The HTTP server's own limits, over raw TCP: a header-read (and idle) timeout and a
//! connection cap.

use std::time::{Duration, Instant};

use axum::Router;
use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::TestApp;

/// Reads until the server closes the connection; how long that took (panics after 10 s).
async fn time_to_close(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for 10 s"),
        }
    }
}

#[sqlx::test]
async fn a_client_that_trickles_its_headers_is_cut_off(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool, |s| s.http_header_read_timeout = Duration::from_secs(1), Router::new())
            .await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    // Slowloris: a header line now and then, never the blank line that ends them.
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(1500), trickle).await.ok();
    let closed_after = time_to_close(&mut stream).await;
    assert!(closed_after < Duration::from_secs(2), "closed {closed_after:?} after the timeout had passed");
}

#[sqlx::test]
async fn an_idle_kept_alive_connection_is_closed(pool: PgPool) {
    let app =
        TestApp::spawn_with(pool, |s| s.http_header_read_timeout = Duration::from_secs(1), Router::new())
            .await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let closed_after = time_to_close(&mut stream).await;
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(3)).contains(&closed_after),
        "idle connection closed after {closed_after:?}"
    );
}

#[sqlx::test]
async fn past_the_connection_cap_new_connections_wait_for_a_free_place(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.http_max_connections = 2, Router::new()).await;
    let first = TcpStream::connect(app.address).await.unwrap();
    let _second = TcpStream::connect(app.address).await.unwrap();
    // Both places are taken by connections that send nothing: a third waits.
    let client = reqwest::Client::builder().timeout(Duration::from_millis(700)).build().unwrap();
    let url = format!("http://{}/health", app.address);
    assert!(client.get(&url).send().await.unwrap_err().is_timeout());
    drop(first);
    let res = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
}
