//! Measures one argon2id hash and verification with the production parameters:
//! `cargo run --release --example password_cost`.

use std::time::Instant;

use storefront::shared::password::PasswordHasher;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hasher = PasswordHasher::new();
    let rounds = 20;
    let started = Instant::now();
    let mut hash = String::new();
    for _ in 0..rounds {
        hash = hasher.hash("correct horse battery staple").await?;
    }
    let per_hash = started.elapsed() / rounds;
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(hasher.verify("correct horse battery staple", &hash).await?);
    }
    let per_verify = started.elapsed() / rounds;
    println!("argon2id m=19456 t=2 p=1: hash {per_hash:?}, verify {per_verify:?} (mean of {rounds})");
    // The same verifies, as many at once as there are hashing threads (one per core): what
    // the cores can really do together, sharing caches and memory bandwidth.
    let threads = hasher.threads();
    let started = Instant::now();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..threads {
        let (hasher, hash) = (hasher.clone(), hash.clone());
        all.spawn(async move {
            for _ in 0..rounds {
                assert!(hasher.verify("correct horse battery staple", &hash).await?);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = all.join_next().await {
        done??;
    }
    let per_second = f64::from(rounds) * threads as f64 / started.elapsed().as_secs_f64();
    println!("parallel: {per_second:.1} verifies/s on {threads} hashing threads");
    Ok(())
}
