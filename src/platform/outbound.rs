//! The HTTP client for calls to other services (the payment provider, webhook
//! receivers): reqwest over rustls with its standard certificate verifier and the web PKI
//! roots, the ring crypto provider the rest of the process uses, no proxy taken from the
//! environment, and a deadline on every call.

use std::{sync::Arc, time::Duration};

/// A client whose every request ends within `timeout` (connecting included).
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(builder(timeout).build()?)
}

/// The builder of [`client`], for a caller that adds to it (pinned addresses).
pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("storefront/", env!("CARGO_PKG_VERSION")))
}
