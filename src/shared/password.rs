//! Password hashing with argon2id (SPEC §3): OWASP parameters (m = 19456 KiB, t = 2,
//! p = 1), PHC strings. Hashing is CPU-bound for ~tens of milliseconds, so it runs on the
//! blocking pool behind a semaphore sized to the CPU count: a login storm queues here
//! instead of starving the async executor and every other request.

use std::sync::Arc;

use anyhow::Context;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::{OnceCell, Semaphore};

/// Cheap to clone; clones share the semaphore and the dummy hash.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<OnceCell<String>>,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHasher {
    /// One permit per CPU: more concurrent hashes would only thrash.
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self { permits: Arc::new(Semaphore::new(cpus)), dummy_hash: Arc::new(OnceCell::new()) }
    }

    /// Hashes `password` into a PHC string.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = password.to_owned();
        self.run(move || {
            argon2()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
        })
        .await
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: &str, hash: &str) -> anyhow::Result<bool> {
        let (password, hash) = (password.to_owned(), hash.to_owned());
        self.run(move || Ok(argon2().verify_password(password.as_bytes(), hash.as_str()).is_ok())).await
    }

    /// Spends the same work as a real verification, for an account that does not exist,
    /// so "unknown e-mail" and "wrong password" take about the same time.
    pub async fn verify_dummy(&self, password: &str) -> anyhow::Result<()> {
        let dummy =
            self.dummy_hash.get_or_try_init(|| self.hash("dummy password that never matches")).await?.clone();
        self.verify(password, &dummy).await.map(|_| ())
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        // The permit moves into the blocking task: a caller that gives up (a dropped
        // request) does not free it while the hash still runs, so the CPU bound holds.
        let permit = self.permits.clone().acquire_owned().await.context("password hasher closed")?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .context("password hashing task failed")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let hasher = PasswordHasher::new();
        let hash = hasher.hash("correct horse battery staple").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify("correct horse battery staple", &hash).await.unwrap());
        assert!(!hasher.verify("Correct horse battery staple", &hash).await.unwrap());
        assert!(!hasher.verify("anything", "not a phc string").await.unwrap());
        hasher.verify_dummy("whatever").await.unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_hash_keeps_its_permit_until_the_work_is_done() {
        let hasher = PasswordHasher::new();
        let cpus = hasher.permits.available_permits();
        // Start a hash and drop its caller at once (a client that went away).
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let h = hasher.clone();
        let abandoned = tokio::spawn(async move {
            h.run(move || {
                started_tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok(())
            })
            .await
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap()).await.unwrap();
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(hasher.permits.available_permits(), cpus - 1, "the running hash still holds its permit");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(hasher.permits.available_permits(), cpus, "released when the work ended");
    }

    #[tokio::test]
    async fn the_same_password_gets_a_new_salt_each_time() {
        let hasher = PasswordHasher::new();
        let (a, b) = (hasher.hash("password1").await.unwrap(), hasher.hash("password1").await.unwrap());
        assert_ne!(a, b);
    }
}
