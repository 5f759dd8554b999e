//! Connections for the hottest reads (a product by id, a product page, the products an
//! order is priced from), handed back without a round trip.
//!
//! sqlx 0.9's pool pings every connection it gets back (`Drop for PoolConnection` spawns
//! a task that sends a Sync and waits for Postgres's answer), and no option turns that
//! off. The ping is there for a connection abandoned mid-statement; here a connection
//! only goes back to the idle list after its statements finished without error, and one
//! dropped any other way (a cancelled request, an error) is closed instead. So a pooled
//! read costs one round trip, as it does for pgbench, instead of two and a spawned task.
//!
//! Writes and transactions keep using the sqlx pool, and the read pool closes with it.
//!
//! **Why it is owned here, and when it goes.** Measured in one A/B run (32 connections):
//! product by id through the sqlx pool 12.1–14.6 k req/s, through this pool 14.8–18.3 k.
//! Exit plan: when sqlx can return a connection without the ping (the release path of
//! `PoolConnection`, launchbadge/sqlx `pool/connection.rs` `return_to_pool`), or when
//! the same A/B shows the sqlx pool within 10 %, route these reads through the sqlx pool
//! and delete this module.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sqlx::{
    Connection,
    postgres::{PgConnectOptions, PgConnection, PgPool},
};
use tokio::sync::Semaphore;

/// Bounds of a [`ReadPool`].
#[derive(Clone, Debug)]
pub struct ReadPoolOptions {
    /// Connections open at most.
    pub max_connections: u32,
    /// Longest a caller waits for a connection (a permit and, if none is idle, the
    /// connect) before [`sqlx::Error::PoolTimedOut`].
    pub acquire_timeout: Duration,
    /// An idle connection unused for this long is closed instead of reused.
    pub idle_timeout: Duration,
    /// A connection older than this is closed when it comes back.
    pub max_lifetime: Duration,
    /// Statement timeout of these connections (instead of the main pool's).
    pub statement_timeout: Duration,
}

/// A bounded set of connections for reads; cheap to clone.
#[derive(Clone)]
pub struct ReadPool(Arc<Inner>);

struct Inner {
    options: PgConnectOptions,
    bounds: ReadPoolOptions,
    permits: Semaphore,
    /// The pool this one closes with.
    main: PgPool,
    /// Last in, first out: the most recently used connection is the warmest.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: PgConnection,
    opened: Instant,
    since: Instant,
}

/// What one read is given: a connection for the statements of one call.
pub type ReadFn<'f, T> =
    dyn for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, sqlx::Result<T>> + Send + Sync + 'f;

impl ReadPool {
    /// A pool that connects on first use, to the database `main` connects to and with its
    /// connection options (statement timeout and slow-statement logging included). When
    /// `main` is closed (at shutdown), this pool closes its connections and refuses reads
    /// with [`sqlx::Error::PoolClosed`].
    pub fn new(main: &PgPool, bounds: ReadPoolOptions) -> Self {
        let permits = Semaphore::new(bounds.max_connections.max(1) as usize);
        let pool = Self(Arc::new(Inner {
            // The main pool's options, its statement timeout overridden (given last, wins).
            options: (*main.connect_options())
                .clone()
                .options([("statement_timeout", bounds.statement_timeout.as_millis().to_string())]),
            bounds,
            permits,
            main: main.clone(),
            idle: Mutex::new(Vec::new()),
        }));
        close_with(main, &pool.0, |inner| ReadPool(inner).close_idle());
        pool
    }

    /// Runs `read` on a connection of the pool. A connection that was idle and turns out
    /// to be dead (Postgres restarted, a network cut) fails with an I/O error; the read
    /// is then run once more on a new connection, and every idle connection, likely dead
    /// too, is closed. Only for statements that change nothing: they may run twice.
    pub async fn read<T>(&self, read: &ReadFn<'_, T>) -> sqlx::Result<T> {
        let inner = &*self.0;
        if inner.main.is_closed() {
            self.close_idle();
            return Err(sqlx::Error::PoolClosed);
        }
        let deadline = tokio::time::Instant::now() + inner.bounds.acquire_timeout;
        let _permit = tokio::time::timeout_at(deadline, inner.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let (mut conn, opened, reused) = match self.take_idle() {
            Some(idle) => (idle.conn, idle.opened, true),
            None => (self.connect(deadline).await?, Instant::now(), false),
        };
        match read(&mut conn).await {
            Ok(value) => {
                self.give_back(conn, opened);
                Ok(value)
            }
            Err(e) if reused && is_connection_lost(&e) => {
                drop(conn);
                self.close_idle();
                let mut conn = self.connect(deadline).await?;
                let value = read(&mut conn).await?;
                self.give_back(conn, Instant::now());
                Ok(value)
            }
            // Whether Postgres still has the connection in a known state after an error
            // is sqlx's business; closing it is always safe.
            Err(e) => Err(e),
        }
    }

    /// Connections idle right now (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.0.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    async fn connect(&self, deadline: tokio::time::Instant) -> sqlx::Result<PgConnection> {
        tokio::time::timeout_at(deadline, PgConnection::connect_with(&self.0.options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.0.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout = self.0.bounds.idle_timeout;
        // The oldest idle connections are at the front: close those past the timeout.
        let stale = idle.iter().take_while(|c| c.since.elapsed() >= timeout).count();
        let closed: Vec<Idle> = idle.drain(..stale).collect();
        let fresh = idle.pop();
        drop(idle);
        closed.into_iter().for_each(|c| close_politely(c.conn));
        fresh
    }

    fn give_back(&self, conn: PgConnection, opened: Instant) {
        if self.0.main.is_closed() || opened.elapsed() >= self.0.bounds.max_lifetime {
            return close_politely(conn);
        }
        let now = Instant::now();
        self.0.idle.lock().unwrap_or_else(PoisonError::into_inner).push(Idle { conn, opened, since: now });
    }

    fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.0.idle.lock().unwrap_or_else(PoisonError::into_inner));
        idle.into_iter().for_each(|c| close_politely(c.conn));
    }
}

/// Runs `close` on `target` when `main` closes (at shutdown), unless `target` is gone by
/// then. Outside a runtime (nothing to close yet) it does nothing.
pub(crate) fn close_with<T: Send + Sync + 'static>(main: &PgPool, target: &Arc<T>, close: fn(Arc<T>)) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let closing = main.close_event();
        let weak: Weak<T> = Arc::downgrade(target);
        runtime.spawn(async move {
            closing.await;
            if let Some(target) = weak.upgrade() {
                close(target);
            }
        });
    }
}

/// Ends a healthy connection with a Terminate message, so Postgres does not log an
/// unexpected EOF.
fn close_politely(conn: PgConnection) {
    tokio::spawn(async move {
        let _ = conn.close().await;
    });
}

/// The connection itself is gone, not the statement wrong.
fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // 57P01 admin_shutdown: the server is going down and ended this session.
        sqlx::Error::Database(d) => d.code().as_deref() == Some("57P01"),
        _ => false,
    }
}
