//! The ceiling `scripts/bench` compares `GET /health` with: a bare axum 0.8 server on the
//! same runtime settings, answering the same JSON body from one handler, without any
//! middleware, state or database.
//!
//! ```sh
//! cargo run --release --example bench_baseline -- 127.0.0.1:3998
//! ```

use axum::{Json, Router, routing::get};
use serde::Serialize;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3998".to_owned());
    let app = Router::new().route(
        "/health",
        get(|| async { Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") }) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
