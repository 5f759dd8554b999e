//! Redis: one multiplexed, auto-reconnecting connection shared by the whole process,
//! and the key prefix that keeps deployments (and parallel tests) apart.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

use crate::platform::config::Settings;

/// Cheap to clone; every clone shares the same connection.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl Redis {
    /// Creates the handle without connecting; the first command connects, and a lost
    /// connection is re-established on the next command.
    ///
    /// `rediss://` connects over TLS (rustls, the server's certificate checked against the
    /// system's trust store, or against `REDIS_CA_FILE` when set).
    pub fn connect_lazy(settings: &Settings) -> anyhow::Result<Self> {
        let url = settings.redis_url.expose_secret();
        let client = if url.starts_with("rediss://") {
            // The process's TLS uses ring; redis's rustls takes the process default.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let root_cert = match Some(settings.redis_ca_file.as_str()).filter(|f| !f.is_empty()) {
                Some(path) => {
                    Some(std::fs::read(path).with_context(|| format!("reading REDIS_CA_FILE {path}"))?)
                }
                None => None,
            };
            redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert })
                .context("REDIS_URL is invalid")?
        } else {
            redis::Client::open(url).context("REDIS_URL is invalid")?
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("creating the Redis connection")?;
        Ok(Self { conn, prefix: Arc::from(settings.redis_prefix.as_str()) })
    }

    /// A connection handle for commands (multiplexed: cloning is cheap).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `{prefix}:{suffix}`, the only way keys are built.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PING`, used by the readiness probe.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ())
    }
}
