//! Pipelined reads: a few connections that every request shares, for the single-statement
//! read that is hottest (a product by id).
//!
//! sqlx runs one statement per connection at a time, so each read pays a round trip of
//! its own: a write to Postgres, a wake-up of its backend, a flush and a wake-up of ours.
//! tokio-postgres sends a statement without waiting for the answers to those before it
//! on the same connection, so under load the reads of many requests travel together:
//! one write, one backend wake-up and one flush carry several of them. Postgres still
//! runs them one after another, each its own implicit transaction, so nothing about
//! their results changes.
//!
//! A connection is opened on first use with the options of the sqlx pool (host, user,
//! password, database, TLS mode and root certificate, statement timeout), so tests that
//! give the state a pool of their own database read that database. A connection that is
//! lost is replaced on the next read; a read that found its connection lost is run once
//! more on a new one (only statements that change nothing go through here). A statement
//! that gets no answer within the statement timeout plus the acquire timeout closes its
//! connection, so a half-open connection cannot hold reads forever.
//!
//! **Why it is owned here, and when it goes.** Measured in one A/B run (32 connections,
//! 6 s rounds): a product by id through the read pool 16.2–23.5 k req/s, pipelined on 2
//! connections 26.6–33.2 k; in `scripts/bench` the share of pgbench's read went from 38 %
//! to 56 %. sqlx has no pipelining (launchbadge/sqlx#408 asks for it). Exit plan: when
//! sqlx pipelines, or when the read pool alone comes within 10 % of this in the same
//! A/B, set `DB_PIPELINE_CONNECTIONS=0` by default and delete this module. TLS here is
//! rustls's own standard verifier, only for `sslmode=verify-full`; every mode that would
//! need a verifier of ours falls back to the read pool.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use sqlx::{ConnectOptions, postgres::PgPool, postgres::PgSslMode};
use tokio_postgres::{Client, NoTls, Row, Statement, error::SqlState, types::ToSql};

use crate::platform::{
    db::read_pool::close_with,
    http::error::{AppError, DB_SLOW_OR_UNAVAILABLE, DB_UNAVAILABLE, is_database_unavailable},
};

/// Bounds of a [`Pipeline`].
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Connections shared by every read (at least 1).
    pub connections: u32,
    /// Longest a connect (TCP, TLS, start-up) may take.
    pub connect_timeout: Duration,
    /// The server-side statement timeout the pool's connections also have.
    pub statement_timeout: Duration,
    /// Statements slower than this are logged at warn level, as sqlx logs its own.
    pub slow_threshold: Duration,
    /// A connection older than this is replaced before its next read (its cached
    /// statements with it).
    pub max_lifetime: Duration,
}

/// Why a pipelined read failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connecting to the database timed out")]
    ConnectTimedOut,
    #[error("the database did not answer in time; the connection was closed")]
    NoAnswer,
    #[error("the application is shutting down")]
    Closed,
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A column did not decode into its Rust type: a bug or a schema change, not an
    /// outage.
    #[error("decoding a row: {0}")]
    Decode(tokio_postgres::Error),
}

impl From<PipelineError> for AppError {
    fn from(e: PipelineError) -> Self {
        let unavailable = || Self::ServiceUnavailable(DB_UNAVAILABLE.to_owned());
        match e {
            PipelineError::Postgres(pg) => match pg.code().map(SqlState::code) {
                Some(c) if is_database_unavailable(c) => {
                    Self::ServiceUnavailable(DB_SLOW_OR_UNAVAILABLE.to_owned())
                        .because(format_args!("database unavailable or too slow: {pg}"))
                }
                Some(_) => Self::Internal(anyhow::Error::new(pg).context("database error")),
                None => unavailable().because(format_args!("database connection failed: {pg}")),
            },
            e @ (PipelineError::ConnectTimedOut | PipelineError::NoAnswer | PipelineError::Tls(_)) => {
                unavailable().because(format_args!("database connection failed: {e}"))
            }
            PipelineError::Closed => unavailable(),
            PipelineError::Decode(e) => Self::Internal(anyhow::Error::new(e).context("decoding a row")),
        }
    }
}

/// The shared connections; cheap to clone.
#[derive(Clone)]
pub struct Pipeline(Arc<Inner>);

struct Inner {
    config: tokio_postgres::Config,
    tls: TlsPolicy,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    bounds: PipelineOptions,
    /// The pool this one closes with.
    main: PgPool,
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Arc<Live>>>,
    /// One connect at a time per slot, so a burst after an outage opens one connection.
    connecting: tokio::sync::Mutex<()>,
}

struct Live {
    client: Client,
    /// The task that runs the connection's I/O: aborted when a statement gets no answer,
    /// since a dropped client's connection would otherwise wait for the answers it owes.
    io: tokio::task::AbortHandle,
    opened: Instant,
    /// Prepared once per connection, by their SQL.
    statements: Mutex<HashMap<&'static str, Statement>>,
}

#[derive(Clone, Debug)]
enum TlsPolicy {
    /// `sslmode=disable`.
    Off,
    /// `sslmode=verify-full`: the chain up to the web PKI roots or `sslrootcert`, and the
    /// host name, checked by rustls's own verifier.
    Verified { root_cert: Option<String> },
}

impl Pipeline {
    /// Connections to the database `main` connects to, with its options; opened on
    /// first use. When `main` is closed (at shutdown) they are closed too and reads answer
    /// [`PipelineError::Closed`].
    ///
    /// Only `sslmode=disable` and `sslmode=verify-full` (without a client certificate)
    /// are served here: the other modes accept certificates rustls's standard verifier
    /// refuses, and no certificate check of our own is written for them. For those,
    /// `None` (logged once): product reads go through the read pool, as sqlx connects.
    pub fn new(main: &PgPool, bounds: PipelineOptions) -> Option<Self> {
        let options = main.connect_options();
        let url = options.to_url_lossy();
        let mut config = tokio_postgres::Config::new();
        config.user(options.get_username()).application_name("storefront");
        match options.get_socket() {
            Some(dir) => config.host_path(dir),
            None => config.host(options.get_host()),
        };
        config.port(options.get_port()).connect_timeout(bounds.connect_timeout);
        // A peer that vanished (a NAT or load balancer dropping an idle connection) is
        // noticed within about a minute, not after the kernel's two hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(60));
        if let Some(password) = url.password() {
            let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
            config.password(decoded.as_bytes());
        }
        if let Some(db) = options.get_database() {
            config.dbname(db);
        }
        // The pool's options string carries its statement timeout and the URL's `options`;
        // the read timeout, given last, wins over the pool's.
        let read_timeout = format!("-c statement_timeout={}", bounds.statement_timeout.as_millis());
        match options.get_options() {
            Some(o) => config.options(format!("{o} {read_timeout}")),
            None => config.options(read_timeout),
        };
        let root_cert = url.query_pairs().find(|(k, _)| k == "sslrootcert").map(|(_, v)| {
            let v = v.into_owned();
            v.strip_prefix("file: ").map(str::to_owned).unwrap_or(v)
        });
        let client_cert = url.query_pairs().any(|(k, _)| k == "sslcert" || k == "sslkey");
        let tls = match options.get_ssl_mode() {
            PgSslMode::Disable if !client_cert => TlsPolicy::Off,
            PgSslMode::VerifyFull if !client_cert => TlsPolicy::Verified { root_cert },
            mode => {
                tracing::info!(
                    sslmode = ?mode,
                    client_certificate = client_cert,
                    "pipelined reads serve sslmode=disable and verify-full without a client certificate; \
                     product reads use the read pool"
                );
                return None;
            }
        };
        config.ssl_mode(match tls {
            TlsPolicy::Off => tokio_postgres::config::SslMode::Disable,
            TlsPolicy::Verified { .. } => tokio_postgres::config::SslMode::Require,
        });
        let slots = (0..bounds.connections.max(1)).map(|_| Slot::default()).collect();
        let pipeline = Self(Arc::new(Inner {
            config,
            tls,
            slots,
            next: AtomicUsize::new(0),
            bounds,
            main: main.clone(),
        }));
        close_with(main, &pipeline.0, |inner| Pipeline(inner).close());
        Some(pipeline)
    }

    /// Runs `sql` (a statement that changes nothing) with `params` and returns its row,
    /// if any.
    pub async fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PipelineError> {
        let inner = &*self.0;
        if inner.main.is_closed() {
            self.close();
            return Err(PipelineError::Closed);
        }
        let slot = &inner.slots[inner.next.fetch_add(1, Relaxed) % inner.slots.len()];
        let (live, reused) = self.live(slot).await?;
        match self.run(slot, &live, sql, params).await {
            Err(PipelineError::Postgres(e)) if reused && e.is_closed() => {
                // The connection died while idle or under us: once more on a new one.
                slot.forget(&live);
                let (live, _) = self.live(slot).await?;
                self.run(slot, &live, sql, params).await
            }
            other => other,
        }
    }

    /// Connections open right now (for tests).
    pub fn open(&self) -> usize {
        self.0.slots.iter().filter(|s| s.current().is_some_and(|l| !l.client.is_closed())).count()
    }

    async fn run(
        &self,
        slot: &Slot,
        live: &Arc<Live>,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PipelineError> {
        let bounds = &self.0.bounds;
        let started = Instant::now();
        let answer = tokio::time::timeout(bounds.statement_timeout + bounds.connect_timeout, async {
            let statement = live.statement(sql).await?;
            live.client.query_opt(&statement, params).await
        })
        .await;
        let elapsed = started.elapsed();
        if elapsed >= bounds.slow_threshold {
            tracing::warn!(elapsed_ms = elapsed.as_millis() as u64, statement = sql, "slow statement");
        }
        match answer {
            Ok(result) => Ok(result?),
            Err(_) => {
                slot.forget(live);
                // The socket closes now; Postgres ends the session when it next writes.
                live.io.abort();
                Err(PipelineError::NoAnswer)
            }
        }
    }

    /// The slot's connection, opened if there is none (`true` when it was already open).
    async fn live(&self, slot: &Slot) -> Result<(Arc<Live>, bool), PipelineError> {
        let max_lifetime = self.0.bounds.max_lifetime;
        let usable = |l: &Arc<Live>| !l.client.is_closed() && l.opened.elapsed() < max_lifetime;
        if let Some(live) = slot.current().filter(usable) {
            return Ok((live, true));
        }
        let _one = slot.connecting.lock().await;
        if let Some(live) = slot.current().filter(usable) {
            return Ok((live, true));
        }
        // An old connection in the slot ends (with a Terminate) once its last reads are
        // answered and dropped.
        let live = Arc::new(self.connect().await?);
        *slot.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(live.clone());
        // The pool may have closed while we connected: then nothing may stay open.
        if self.0.main.is_closed() {
            self.close();
            return Err(PipelineError::Closed);
        }
        Ok((live, false))
    }

    async fn connect(&self) -> Result<Live, PipelineError> {
        let inner = &*self.0;
        let connect = async {
            match &inner.tls {
                TlsPolicy::Off => {
                    let (client, connection) = inner.config.connect(NoTls).await?;
                    Ok::<_, PipelineError>((client, drive(connection)))
                }
                TlsPolicy::Verified { root_cert } => {
                    let tls =
                        tokio_postgres_rustls::MakeRustlsConnect::new(client_config(root_cert.as_deref())?);
                    let (client, connection) = inner.config.connect(tls).await?;
                    Ok((client, drive(connection)))
                }
            }
        };
        let (client, io) = tokio::time::timeout(inner.bounds.connect_timeout, connect)
            .await
            .map_err(|_| PipelineError::ConnectTimedOut)??;
        Ok(Live { client, io, opened: Instant::now(), statements: Mutex::default() })
    }

    fn close(&self) {
        for slot in &self.0.slots {
            // Dropping the client ends its connection with a Terminate message.
            slot.live.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }
}

/// Runs a connection's I/O until its client is dropped or the connection fails.
fn drive<C>(connection: C) -> tokio::task::AbortHandle
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "pipelined read connection ended");
        }
    })
    .abort_handle()
}

impl Slot {
    fn current(&self) -> Option<Arc<Live>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Drops `live` from the slot unless another connection replaced it already.
    fn forget(&self, live: &Arc<Live>) {
        let mut current = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, live)) {
            current.take();
        }
    }
}

impl Live {
    async fn statement(&self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.lock().unwrap_or_else(PoisonError::into_inner).get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(sql).await?;
        self.statements.lock().unwrap_or_else(PoisonError::into_inner).insert(sql, prepared.clone());
        Ok(prepared)
    }
}

/// rustls with its standard verifier (`WebPkiServerVerifier`): the web PKI roots plus
/// `sslrootcert`, host name checked.
fn client_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig, PipelineError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = root_cert {
        for cert in verify::certificates(pem)? {
            roots.add(cert).map_err(|e| PipelineError::Tls(format!("sslrootcert: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PipelineError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The root certificates of `sslrootcert`.
mod verify {
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    use super::PipelineError;

    /// The certificates of `sslrootcert`: inline PEM or the path of a PEM file.
    pub(super) fn certificates(input: &str) -> Result<Vec<CertificateDer<'static>>, PipelineError> {
        let bad = |e: rustls::pki_types::pem::Error| PipelineError::Tls(format!("sslrootcert: {e}"));
        if input.trim_start().starts_with("-----BEGIN") {
            CertificateDer::pem_slice_iter(input.as_bytes()).collect::<Result<_, _>>().map_err(bad)
        } else {
            CertificateDer::pem_file_iter(input).map_err(bad)?.collect::<Result<_, _>>().map_err(bad)
        }
    }
}
