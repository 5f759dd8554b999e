//! PostgreSQL pool and migrations: pool size, acquire and idle timeouts, a server-side
//! statement timeout and slow-statement logging all come from config.
//!
//! [`DbHealth`], the database gate, is owned here: while Postgres is known to be down,
//! requests answer 503 at once instead of each waiting `DB_ACQUIRE_TIMEOUT` for a
//! connection (`tests/api/health.rs`: with a 2 s acquire timeout and the database
//! unreachable, every gated request answers its 503 in under 200 ms; without the gate
//! each waited the 2 s). sqlx has no circuit breaker of its own. Exit plan: if sqlx's pool learns to fail fast while its connect
//! attempts fail, remove the gate and keep the fault tests as the contract.

pub mod pipeline;
pub mod read_pool;

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::{
    ConnectOptions, Connection,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions},
};
use tracing::log::LevelFilter;

use crate::platform::config::Settings;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Connection options: statement timeout and slow-statement logging from config.
pub fn connect_options(settings: &Settings) -> anyhow::Result<PgConnectOptions> {
    let timeout_ms = settings.db_statement_timeout.as_millis().to_string();
    Ok(PgConnectOptions::from_str(settings.database_url.expose_secret())
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("storefront")
        .options([("statement_timeout", timeout_ms.as_str())])
        // Every statement at debug level is noise; slow ones are worth a warning.
        .log_statements(LevelFilter::Trace)
        .log_slow_statements(LevelFilter::Warn, settings.db_slow_query_threshold))
}

/// Pool options from config.
///
/// No ping before handing out a connection (sqlx's default): it doubled the round trips
/// of every request. A connection that died while idle (Postgres restarted) fails its
/// next statement instead, which answers 503 and starts the [`DbHealth`] probe; the pool
/// drops that connection and opens another.
pub fn pool_options(settings: &Settings) -> PgPoolOptions {
    PgPoolOptions::new()
        .min_connections(settings.db_pool_min)
        .max_connections(settings.db_pool_max)
        .acquire_timeout(settings.db_acquire_timeout)
        .idle_timeout(Some(settings.db_idle_timeout))
        .test_before_acquire(false)
}

/// A pool that connects on first use, so the process can start (and report not-ready)
/// while the database is still coming up.
pub fn connect_lazy(settings: &Settings) -> anyhow::Result<PgPool> {
    Ok(pool_options(settings).connect_lazy_with(connect_options(settings)?))
}

/// Applies pending migrations. sqlx serialises concurrent runs with an advisory lock,
/// so several instances starting at once are safe.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running database migrations")?;
    Ok(())
}

/// Whether the database is known to be unreachable, so requests can answer 503 at once
/// instead of each waiting the whole `DB_ACQUIRE_TIMEOUT`. A request that failed on the
/// database's side calls [`DbHealth::suspect`]; a probe then connects directly (not
/// through the pool, which may just be busy) every half second until it succeeds, and
/// the flag is down only while the attempts fail with an error (refused, reset, "the
/// database system is starting up", ...). An attempt that is merely slow (no answer
/// within a second) proves nothing: on a loaded machine a new connection can take that
/// long while the pool's connections work, and 503 for everything would turn an overload
/// into an outage. Requests then keep their own deadlines (`DB_ACQUIRE_TIMEOUT`, the
/// statement timeout). Cheap to clone.
#[derive(Clone)]
pub struct DbHealth(Arc<HealthInner>);

struct HealthInner {
    down: AtomicBool,
    probing: AtomicBool,
    options: PgConnectOptions,
}

/// Longest the probe waits for one connection attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_millis(500);

impl DbHealth {
    /// Probes the database `pool` connects to.
    pub fn new(pool: &PgPool) -> Self {
        Self::for_options((*pool.connect_options()).clone())
    }

    fn for_options(options: PgConnectOptions) -> Self {
        Self(Arc::new(HealthInner { down: AtomicBool::new(false), probing: AtomicBool::new(false), options }))
    }

    pub fn is_down(&self) -> bool {
        self.0.down.load(Relaxed)
    }

    /// A request failed because of the database: probe it (once at a time) and keep the
    /// flag down while it cannot be reached.
    pub fn suspect(&self) {
        if self.0.probing.swap(true, Relaxed) {
            return;
        }
        let inner = self.0.clone();
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect_with(&inner.options)).await {
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        if inner.down.swap(false, Relaxed) {
                            tracing::info!("the database answers again");
                        }
                        break;
                    }
                    Ok(Err(_)) => {
                        if !inner.down.swap(true, Relaxed) {
                            tracing::warn!(
                                "the database is unreachable: answering 503 at once until it is back"
                            );
                        }
                        tokio::time::sleep(PROBE_EVERY).await;
                    }
                    // Slow, not refused: the flag stays as it was; try again.
                    Err(_elapsed) => tokio::time::sleep(PROBE_EVERY).await,
                }
            }
            inner.probing.store(false, Relaxed);
        });
    }
}

/// A cheap round trip used by the readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(r#"select 1 as "one!""#).fetch_one(pool).await.map(|_| ())
}

/// `%q%` for ILIKE with the pattern characters in `q` escaped.
pub fn contains_pattern(q: &str) -> String {
    let mut escaped = String::with_capacity(q.len() + 2);
    escaped.push('%');
    for c in q.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// Rows one cleanup statement deletes at most.
pub const DELETE_BATCH: i64 = 5_000;

/// Runs a `limit $n` delete until it deletes fewer than [`DELETE_BATCH`] rows; the total.
/// Each batch is one statement under the normal statement timeout, so a large backlog
/// never holds one transaction open for minutes. The deletes should name their rows as
/// `= any(array(select … limit n))`, which the planner serves with the primary key (an
/// `in (select …)` becomes a hash join over the whole table).
pub async fn delete_in_batches<'q, F>(pool: &PgPool, query: F) -> sqlx::Result<u64>
where
    F: Fn(i64) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
{
    let mut total = 0;
    loop {
        let n = query(DELETE_BATCH).execute(pool).await?.rows_affected();
        total += n;
        if n < DELETE_BATCH as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DbHealth, PROBE_TIMEOUT, contains_pattern};

    fn health_for(port: u16) -> DbHealth {
        DbHealth::for_options(
            sqlx::postgres::PgConnectOptions::new().host("127.0.0.1").port(port).username("nobody"),
        )
    }

    #[tokio::test]
    async fn a_refused_connection_marks_the_database_down() {
        // A port with nothing listening: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let health = health_for(port);
        health.suspect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(health.is_down());
    }

    #[tokio::test]
    async fn a_connection_that_is_only_slow_does_not_mark_the_database_down() {
        // Accepts TCP (the backlog) but never answers the startup message.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let health = health_for(listener.local_addr().unwrap().port());
        health.suspect();
        tokio::time::sleep(PROBE_TIMEOUT * 2).await;
        assert!(!health.is_down());
        drop(listener);
    }

    #[test]
    fn search_patterns_escape_like_metacharacters() {
        assert_eq!(contains_pattern("ann"), "%ann%");
        assert_eq!(contains_pattern("100%_\\"), "%100\\%\\_\\\\%");
    }
}
