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
    Ok(())
}
