//! A webhook receiver in Rust, as docs/webhooks.md shows it: verifies each delivery with
//! the Standard Webhooks library, handles each event once, answers quickly.
//!
//! ```sh
//! WEBHOOK_SECRET=whsec_... PORT=4003 cargo run --example webhook_receiver
//! ```
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use standardwebhooks::Webhook;

#[derive(Clone)]
struct Receiver {
    webhook: Arc<Webhook>,
    // Ids of the events handled. Keep them in your database instead, written in the
    // transaction that acts on the event.
    seen: Arc<Mutex<HashSet<String>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // 1. Verify the raw bytes before parsing them: signature, and a timestamp within
    //    five minutes of now.
    if r.webhook.verify(&body, &headers).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    // 2. Deliveries are at least once: an event handled already is acknowledged again.
    let id = headers["webhook-id"].to_str().unwrap_or_default().to_owned();
    if !r.seen.lock().unwrap().insert(id) {
        return StatusCode::NO_CONTENT;
    }
    // 3. Act on it (here: print it), then answer 2xx within the sender's timeout.
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    println!("{} {} {}", field(&event["type"]), field(&event["data"]["id"]), field(&event["data"]["status"]));
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secret = std::env::var("WEBHOOK_SECRET")?;
    let receiver = Receiver { webhook: Arc::new(Webhook::new(&secret)?), seen: Arc::default() };
    let app = Router::new().route("/webhooks", post(receive)).with_state(receiver);
    let port = std::env::var("PORT").unwrap_or_else(|_| "4003".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
