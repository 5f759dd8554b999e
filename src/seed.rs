//! `storefront seed`: fills a database with realistic demo data quickly, for development
//! and benchmarks. Rows are generated inside Postgres (`generate_series`), so 100 000
//! products take seconds, not minutes.

use std::time::Instant;

use anyhow::Context;
use sqlx::{PgConnection, PgPool};

use crate::shared::password::PasswordHasher;

/// Password of every seeded user.
pub const SEED_PASSWORD: &str = "password123";

/// Inserts `products` products and `users` users; every call uses fresh SKUs and e-mails.
pub async fn run(pool: &PgPool, products: u32, users: u32) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    // Bulk inserts legitimately outlast the request-sized statement timeout.
    sqlx::query("set statement_timeout = 0").execute(&mut *conn).await?;
    let result = fill(&mut conn, products, users).await;
    // The setting must not leak back into the pool.
    conn.detach();
    result
}

async fn fill(conn: &mut PgConnection, products: u32, users: u32) -> anyhow::Result<()> {
    let batch = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started = Instant::now();
    if products > 0 {
        let inserted = sqlx::query!(
            r#"insert into products (sku, name, description, price_cents, stock, created_at)
               select format('SEED-%s-%s', $1::text, g),
                      initcap(w.adjective || ' ' || w.material || ' ' || w.noun),
                      format('A %s %s %s, batch %s no. %s. Dishwasher safe; ships in 2 days.',
                             w.adjective, w.material, w.noun, $1::text, g),
                      (50 + floor(random() * 20000) * 5)::bigint,
                      case when random() < 0.08 then 0 else floor(random() * 500)::int end,
                      now() - random() * interval '730 days'
               from generate_series(1, $2::int) as g,
                    lateral (select (array['red','blue','green','matte','glossy','tiny','large','vintage','modern','rustic'])[1 + g % 10] as adjective,
                                    (array['ceramic','glass','steel','oak','bamboo','linen','stone'])[1 + (g / 10) % 7] as material,
                                    (array['mug','plate','bowl','teapot','vase','lamp','tray','jar','cup','board','kettle'])[1 + (g / 70) % 11] as noun) as w"#,
            batch,
            i32::try_from(products).context("--products is too large")?,
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
        println!("inserted {inserted} products in {:.1?}", started.elapsed());
    }
    if users > 0 {
        let started = Instant::now();
        // One hash for all: argon2 per row would take minutes for no benefit here.
        let hash = PasswordHasher::new().hash(SEED_PASSWORD).await?;
        let inserted = sqlx::query!(
            "insert into users (email, password_hash, first_name, last_name, email_verified_at)
             select format('seed-%s-%s@example.com', $1::text, g), $3,
                    (array['Ann','Bob','Carla','Dmitri','Eve','Farid','Grace','Hiro'])[1 + g % 8],
                    (array['Lee','Novak','Okafor','Silva','Schmidt','Tanaka'])[1 + g % 6], now()
             from generate_series(1, $2::int) as g",
            batch,
            i32::try_from(users).context("--users is too large")?,
            hash,
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
        println!("inserted {inserted} users (password {SEED_PASSWORD:?}) in {:.1?}", started.elapsed());
    }
    // Fresh statistics and visibility map: the planner picks the indexes, and the list's
    // index-only scans do not have to visit the heap.
    sqlx::query("vacuum (analyze) products, users").execute(&mut *conn).await?;
    println!("vacuumed and analysed in {:.1?} total", started.elapsed());
    Ok(())
}
