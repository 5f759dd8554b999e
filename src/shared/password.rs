//! Password hashing with argon2id: OWASP parameters (m = 19456 KiB, t = 2,
//! p = 1), PHC strings.
//!
//! A hash is CPU-bound for tens of milliseconds and needs 19 MiB of working memory. It runs
//! on a fixed set of hashing threads, one per CPU and below the executor's priority, each
//! reusing its argon2 memory blocks until it has been idle for 2 s: a login storm queues
//! here instead of starving the async executor, at most one hash per CPU runs at once, and
//! the memory is bounded by CPUs × 19 MiB while hashing and zero when idle (the
//! blocking pool allocated it afresh on whichever of its many threads ran the hash, and
//! glibc's per-thread arenas kept it: 411 MB after a login flood).
//!
//! **Why it is owned here, and when it goes.** The argon2 crate does the hashing; this
//! module only schedules it. `tokio::task::spawn_blocking` left 411 MB resident after a
//! login flood (above), and a semaphore around it still let the blocking pool's many
//! threads each keep 19 MiB. Exit plan: if tokio's blocking pool gains per-pool thread
//! limits and priorities, or `rayon` with a bounded pool is measured to keep RSS under
//! 64 MB through `scripts/bench`'s login flood, move to it.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use tokio::sync::{OnceCell, oneshot};

use crate::platform::http::error::Overloaded;

/// The cost every new hash gets.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const OUTPUT_LEN: usize = 32;

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// How long an idle hashing thread keeps its 19 MiB of argon2 memory.
const KEEP_BLOCKS_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Cheap to clone; clones share the hashing threads and the dummy hash. The threads end
/// when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: flume::Sender<Job>,
    threads: usize,
    /// Hashes queued or running now, and how many may be.
    admitted: Arc<AtomicUsize>,
    queue_max: usize,
    dummy_hash: Arc<OnceCell<String>>,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Puts the calling thread below the async executor's threads (nice 10): in a login storm
/// the hashes get the CPU the executor leaves over instead of an equal share, so every
/// other request keeps its latency while logins still use every idle cycle.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments (on Linux,
    // PRIO_PROCESS with a thread id sets that thread's nice value). Raising one's own nice
    // value needs no privilege.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) } != 0;
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a hashing thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

fn params() -> Params {
    Params::new(M_COST_KIB, T_COST, 1, Some(OUTPUT_LEN)).expect("valid argon2 parameters")
}

impl PasswordHasher {
    /// One hashing thread per CPU: more concurrent hashes would only thrash. Four hashes
    /// per thread may wait or run at once (see [`Self::with_queue_max`]).
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (jobs, queue) = flume::unbounded::<Job>();
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    // Allocated by the first hash, then reused by every hash this thread
                    // runs until it has been idle for `KEEP_BLOCKS_IDLE`: a login storm
                    // pays for the allocation once, and a quiet process holds none.
                    let mut blocks = Vec::new();
                    loop {
                        match queue.recv_timeout(KEEP_BLOCKS_IDLE) {
                            Ok(job) => job(&mut blocks),
                            Err(flume::RecvTimeoutError::Timeout) => blocks = Vec::new(),
                            Err(flume::RecvTimeoutError::Disconnected) => return, // every clone is gone
                        }
                    }
                })
                .expect("spawning a password hashing thread");
        }
        Self {
            jobs,
            threads,
            admitted: Arc::default(),
            queue_max: 4 * threads,
            dummy_hash: Arc::new(OnceCell::new()),
        }
    }

    /// Admission control: at most `max` hashes queued or running at once (`0`: four per
    /// hashing thread); past it a hash fails at once with [`Overloaded`] (a 503), instead
    /// of waiting behind the others until the request times out.
    pub fn with_queue_max(mut self, max: usize) -> Self {
        if max > 0 {
            self.queue_max = max;
        }
        self
    }

    /// How many hashes can run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Hashes `password` into a PHC string.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = password.to_owned();
        self.run(move |blocks| hash_with(blocks, password.as_bytes())).await
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: &str, hash: &str) -> anyhow::Result<bool> {
        let (password, hash) = (password.to_owned(), hash.to_owned());
        self.run(move |blocks| Ok(verify_with(blocks, password.as_bytes(), &hash))).await
    }

    /// Spends the same work as a real verification, for an account that does not exist,
    /// so "unknown e-mail" and "wrong password" take about the same time.
    pub async fn verify_dummy(&self, password: &str) -> anyhow::Result<()> {
        let dummy =
            self.dummy_hash.get_or_try_init(|| self.hash("dummy password that never matches")).await?.clone();
        self.verify(password, &dummy).await.map(|_| ())
    }

    /// Queues `work` for a hashing thread. A caller that gives up (a dropped request)
    /// before its turn costs nothing: the thread skips work nobody waits for. Work that
    /// has started finishes, and the CPU bound holds either way.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded("too many password checks are waiting; try again shortly").into());
        }
        let admission = Admission(self.admitted.clone());
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |blocks| {
            let _admission = admission;
            if !done.is_closed() {
                let _ = done.send(work(blocks));
            }
        });
        self.jobs.send(job).ok().context("password hashing threads stopped")?;
        result.await.context("password hashing thread failed")?
    }
}

/// One admitted hash; its place is given back when the job has run (or was skipped).
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn grow(blocks: &mut Vec<Block>, count: usize) {
    if blocks.len() < count {
        blocks.resize(count, Block::new());
    }
}

/// A new argon2id PHC string, computed in `blocks`.
fn hash_with(blocks: &mut Vec<Block>, password: &[u8]) -> anyhow::Result<String> {
    let params = params();
    grow(blocks, params.block_count());
    let salt = argon2::password_hash::generate_salt();
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, &mut blocks[..])
        .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("argon2 salt: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (any argon2 variant and cost it
/// names), computed in `blocks` (grown if the stored hash asks for more memory than ours).
/// The outputs are compared in constant time.
fn verify_with(blocks: &mut Vec<Block>, password: &[u8], phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else { return false };
    let Ok(version) = hash.version.map_or(Ok(Version::V0x13), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&hash) else { return false };
    grow(blocks, params.block_count());
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else { return false };
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        &mut *out,
        &mut blocks[..],
    );
    hashed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nice values of this process's threads named `argon2-*` (from /proc).
    #[cfg(target_os = "linux")]
    fn hashing_thread_nice_values() -> Vec<i64> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("argon2-") {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
                // Fields after the parenthesised name: state is field 3, nice field 19.
                let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                nice.push(after_name.split(' ').nth(16).unwrap().parse().unwrap());
            }
        }
        nice
    }

    #[cfg(target_os = "linux")]
    fn resident_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        kib / 1024.0
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_idle_hashing_thread_gives_its_memory_back() {
        let hasher = PasswordHasher::new();
        let before = resident_mib();
        hasher.hash("a password to hash").await.unwrap();
        let busy = resident_mib();
        assert!(busy - before > 15.0, "the 19 MiB blocks are in use: {before:.1} -> {busy:.1} MiB");
        tokio::time::sleep(KEEP_BLOCKS_IDLE + std::time::Duration::from_millis(700)).await;
        let idle = resident_mib();
        assert!(busy - idle > 15.0, "given back after {KEEP_BLOCKS_IDLE:?} idle: {busy:.1} -> {idle:.1} MiB");
        // And a later hash allocates them again.
        hasher.hash("another one").await.unwrap();
        assert!(resident_mib() - idle > 15.0);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_below_the_executor() {
        let before = hashing_thread_nice_values().len();
        let hasher = PasswordHasher::new();
        hasher.hash("a password to hash").await.unwrap();
        let nice = hashing_thread_nice_values();
        assert!(nice.len() >= before + hasher.threads(), "{nice:?}");
        assert!(nice.iter().filter(|n| **n == 10).count() >= hasher.threads(), "{nice:?}");
    }

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
    async fn at_most_one_hash_per_thread_runs_and_abandoned_work_is_skipped() {
        let hasher = PasswordHasher::new();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let work = |running: Arc<std::sync::atomic::AtomicUsize>,
                    peak: Arc<std::sync::atomic::AtomicUsize>,
                    ran: Arc<std::sync::atomic::AtomicUsize>| {
            move |_: &mut Vec<Block>| {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                ran.fetch_add(1, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(100));
                running.fetch_sub(1, SeqCst);
                Ok(())
            }
        };
        // Twice as much work as threads: it queues.
        let tasks: Vec<_> = (0..hasher.threads() * 2)
            .map(|_| {
                let (h, w) = (hasher.clone(), work(running.clone(), peak.clone(), ran.clone()));
                tokio::spawn(async move { h.run(w).await })
            })
            .collect();
        // One more, abandoned while it waits behind the others.
        let (h, w) = (hasher.clone(), work(running.clone(), peak.clone(), ran.clone()));
        let abandoned = tokio::spawn(async move { h.run(w).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        abandoned.abort();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        use std::sync::atomic::Ordering::SeqCst;
        assert_eq!(peak.load(SeqCst), hasher.threads(), "never more hashes at once than threads");
        assert_eq!(ran.load(SeqCst), hasher.threads() * 2, "the abandoned job never ran");
    }

    #[tokio::test]
    async fn hashes_from_the_argon2_crate_and_other_costs_still_verify() {
        use argon2::PasswordHasher as _;
        let hasher = PasswordHasher::new();
        // What the previous implementation stored, and a costlier hash than ours.
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19_456, 2, 1, None).unwrap())
            .hash_password(b"old password")
            .unwrap()
            .to_string();
        assert!(hasher.verify("old password", &old).await.unwrap());
        assert!(!hasher.verify("old passwore", &old).await.unwrap());
        let bigger =
            Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(32_768, 1, 1, None).unwrap())
                .hash_password(b"big")
                .unwrap()
                .to_string();
        assert!(hasher.verify("big", &bigger).await.unwrap());
        // And ours verify with the crate's own verifier.
        use argon2::PasswordVerifier as _;
        let ours = hasher.hash("ours").await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"ours", &parsed).is_ok());
    }

    #[tokio::test]
    async fn the_same_password_gets_a_new_salt_each_time() {
        let hasher = PasswordHasher::new();
        let (a, b) = (hasher.hash("password1").await.unwrap(), hasher.hash("password1").await.unwrap());
        assert_ne!(a, b);
    }
}
