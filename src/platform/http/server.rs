//! The HTTP server: the router on hyper connections, with the limits a server facing
//! clients needs and `axum::serve` does not expose:
//!
//! - **a header-read timeout** (`HTTP_HEADER_READ_TIMEOUT`): a client that has not sent a
//!   whole request head within it is disconnected. The clock also runs while a kept-alive
//!   connection waits for its next request, so it is the idle timeout as well: a
//!   connection that trickles a header byte at a time (slowloris) or sits idle cannot
//!   hold its place for ever. A proxy in front must close idle upstream connections
//!   sooner than this (nginx's `keepalive_timeout` in the upstream block);
//! - **a connection cap** (`HTTP_MAX_CONNECTIONS`): past it new connections wait in the
//!   kernel's accept queue until one closes, instead of each costing a task and buffers;
//! - graceful shutdown: on the signal the listener closes, connections finish their
//!   in-flight requests (kept-alive ones are closed after them), within the drain time.
//!
//! No kept crate does this: `axum::serve` builds hyper's connection builder itself (no
//! timer, so no header-read timeout) and accepts without bound, and tower-http's layers act
//! per request, after the headers are read. So this is no replacement kept for speed (it
//! serves requests exactly as `axum::serve` does: the same hyper-util builder, one router
//! clone per request).
//!
//! The connection handling is hyper-util's (the auto builder, HTTP/1 and HTTP/2, and its
//! graceful-shutdown watcher); this module only loops over `accept`. Exit plan: when
//! `axum::serve` lets a caller configure hyper's builder and cap connections, it replaces
//! this loop.

use std::{pin::pin, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt;

/// What the server allows a client.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Runs `router` on `listener` until `signal` resolves, then allows `drain` for in-flight
/// requests before giving up on them.
pub async fn run(
    listener: TcpListener,
    router: Router,
    signal: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    limits: ServerLimits,
) -> anyhow::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut signal = pin!(signal);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.context("connection semaphore closed")?,
            () = &mut signal => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = builder(limits);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::trace!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutdown requested: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(seconds = drain.as_secs(), "drain deadline passed; dropping remaining connections");
        }
    }
    Ok(())
}

fn builder(limits: ServerLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// A failed `accept`: a connection the client already gave up on is skipped; anything
/// else (out of file descriptors, say) is logged and retried after a pause, as hyper's
/// own server did.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Settings to limits.
impl From<&crate::platform::config::Settings> for ServerLimits {
    fn from(s: &crate::platform::config::Settings) -> Self {
        Self { header_read_timeout: s.http_header_read_timeout, max_connections: s.http_max_connections }
    }
}
