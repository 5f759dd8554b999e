//! Benchmarks of the job system (SPEC §7) against the local services, each with a
//! baseline measured in the same run:
//!
//! ```sh
//! eval "$(scripts/services env)"
//! cargo run --release --example jobs_bench -- [relay|latency|placement|rss|all]
//! ```
//!
//! - `relay`: outbox rows moved to Redis per second (20 000 rows, batches of 200), next
//!   to the same SQL without Redis and the same Redis pushes without Postgres.
//! - `latency`: orders placed over HTTP at 50 a second for 20 s with the relay and the
//!   workers running and the `file` transport: commit (the 201) to `.eml` written
//!   (the file's modification time), p50/p90/p99/max.
//! - `placement`: `POST /orders` throughput (2 lines over 500 products) from 16 concurrent
//!   clients, 10 s rounds alternating without and with the relay and workers in the
//!   process.
//! - `rss`: the process's resident memory while its worker sends 10 000 e-mails.
//!
//! It works in a scratch database `storefront_jobs_bench` (dropped and re-created) and a
//! unique Redis prefix (deleted at the end).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use apalis::prelude::{TaskBuilder, TaskSink};
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use storefront::{
    app,
    shared::{
        config::{AppEnv, EmailTransport, Settings},
        jobs::{QueuedJob, relay},
    },
    state::AppState,
};

const DB: &str = "storefront_jobs_bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    let base = std::env::var("DATABASE_URL").context("DATABASE_URL (eval \"$(scripts/services env)\")")?;
    let server = base.rsplit_once('/').context("DATABASE_URL has a database")?.0.to_owned();
    let run = |name: &str| what == "all" || what == name;
    if run("relay") {
        relay_bench(&server).await?;
    }
    if run("latency") {
        latency_bench(&server).await?;
    }
    if run("placement") {
        placement_bench(&server).await?;
    }
    if run("rss") {
        rss_bench(&server).await?;
    }
    Ok(())
}

/// Settings for a bench process on a fresh scratch database, e-mail written to `mail_dir`.
async fn fresh(server: &str, mail_dir: &Path, background: bool) -> anyhow::Result<AppState> {
    fresh_with(server, mail_dir, background, EmailTransport::File).await
}

async fn fresh_with(
    server: &str,
    mail_dir: &Path,
    background: bool,
    transport: EmailTransport,
) -> anyhow::Result<AppState> {
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {DB} with (force)")))
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {DB}"))).execute(&mut admin).await?;
    let mut s = Settings::load_for(AppEnv::Test)?;
    s.database_url = format!("{server}/{DB}").into();
    s.redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()).into();
    s.redis_prefix = format!("bench:{}", uuid::Uuid::new_v4().simple());
    s.run_migrations = true;
    s.db_pool_min = 4;
    s.db_pool_max = 20;
    s.rate_limit_enabled = false;
    s.email_transport = transport;
    s.mail_dir = mail_dir.to_string_lossy().into_owned();
    s.relay_enabled = background;
    s.jobs_enabled = background;
    s.scheduler_enabled = false;
    s.log_level = "warn".into();
    app::connect(s).await
}

async fn forget_redis(state: &AppState) -> anyhow::Result<()> {
    let mut conn = state.redis.conn();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", state.redis.prefix())).query_async(&mut conn).await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("storefront-bench-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn insert_outbox(db: &PgPool, n: i64) -> anyhow::Result<()> {
    sqlx::query(
        "insert into outbox (queue, kind, payload)
         select 'emails', 'welcome', jsonb_build_object('userId', gen_random_uuid()) from generate_series(1, $1)",
    )
    .bind(n)
    .execute(db)
    .await?;
    Ok(())
}

async fn relay_bench(server: &str) -> anyhow::Result<()> {
    const N: i64 = 20_000;
    let dir = scratch_dir("relay");
    let state = fresh(server, &dir, false).await?;
    let db = &state.db;

    // Baseline 1: the relay's SQL alone (claim a batch, mark it sent), no Redis.
    insert_outbox(db, N).await?;
    let started = Instant::now();
    loop {
        let mut tx = db.begin().await?;
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "select id from outbox where sent_at is null and queue = any($2) order by created_at, id limit $1
             for update skip locked",
        )
        .bind(relay::BATCH)
        .bind(&["emails".to_owned(), "reports".to_owned()][..])
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            break;
        }
        sqlx::query("update outbox set sent_at = now() where id = any($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let sql_only = N as f64 / started.elapsed().as_secs_f64();

    // Baseline 2: the same pushes to Redis alone, no Postgres.
    let mut storage = state.queues.emails.clone();
    let started = Instant::now();
    for batch in 0..(N / relay::BATCH) {
        let tasks = (0..relay::BATCH).map(|i| {
            let job = QueuedJob {
                outbox_id: uuid::Uuid::new_v4(),
                kind: "welcome".into(),
                payload: json!({"i": i}),
            };
            let key = format!("baseline-{batch}-{i}");
            TaskBuilder::new(job).idempotency_key(key).build()
        });
        storage.push_all(&mut futures::stream::iter(tasks)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let redis_only = N as f64 / started.elapsed().as_secs_f64();
    forget_redis(&state).await?;

    // The relay: both, batch after batch.
    sqlx::query("truncate outbox").execute(db).await?;
    insert_outbox(db, N).await?;
    let started = Instant::now();
    let mut moved = 0;
    loop {
        match relay::move_batch(db, &state.queues).await? {
            0 => break,
            n => moved += n,
        }
    }
    let took = started.elapsed();
    anyhow::ensure!(moved as i64 == N, "moved {moved} of {N}");
    println!(
        "relay: {N} rows in {took:.2?} = {:.0} rows/s (baselines: the SQL alone {sql_only:.0} rows/s, \
         the Redis pushes alone {redis_only:.0} rows/s)",
        N as f64 / took.as_secs_f64()
    );
    forget_redis(&state).await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// An in-process server on a free port; returns its base URL.
async fn serve(state: &AppState) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = app::build_router(state.clone());
    tokio::spawn(app::run(listener, router, std::future::pending(), Duration::from_secs(1)));
    Ok(url)
}

/// A signed-in user, and 500 products with plenty of stock.
async fn customer(
    client: &reqwest::Client,
    url: &str,
    state: &AppState,
) -> anyhow::Result<(String, Vec<uuid::Uuid>)> {
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
    let res: Value = client
        .post(format!("{url}/api/v1/auth/register"))
        .json(&json!({"email": email, "password": "password123"}))
        .send()
        .await?
        .json()
        .await?;
    let token = res["data"]["token"].as_str().context("a token")?.to_owned();
    let products: Vec<uuid::Uuid> = sqlx::query_scalar(
        "insert into products (sku, name, price_cents, stock)
         select 'BENCH-' || i, 'Bench mug ' || i, 1250, 1000000 from generate_series(1, 500) i returning id",
    )
    .fetch_all(&state.db)
    .await?;
    Ok((token, products))
}

/// Order `n`: two lines over the 500 products, spread so concurrent orders rarely wait
/// on the same product row (as the README's `POST /orders` figures).
fn order_body(products: &[uuid::Uuid], n: usize) -> Value {
    let a = (n * 7) % products.len();
    let b = (a + 1 + n % 13) % products.len();
    json!({"items": [{"productId": products[a], "quantity": 1}, {"productId": products[b], "quantity": 2}]})
}

fn order_number(id: &str) -> String {
    id.replace('-', "")[..8].to_ascii_uppercase()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency_bench(server: &str) -> anyhow::Result<()> {
    const RATE: u32 = 50;
    const SECONDS: u32 = 20;
    let dir = scratch_dir("latency");
    let state = fresh(server, &dir, true).await?;
    let background = app::start_background(&state).await?;
    let url = serve(&state).await?;
    let client = reqwest::Client::new();
    let (token, products) = customer(&client, &url, &state).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Place orders at RATE a second; note when each commit was acknowledged.
    let committed: Arc<std::sync::Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
    let mut pending = Vec::new();
    for n in 0..(RATE * SECONDS) as usize {
        tick.tick().await;
        let body = order_body(&products, n);
        let (client, url, token, committed) = (client.clone(), url.clone(), token.clone(), committed.clone());
        pending.push(tokio::spawn(async move {
            let res =
                client.post(format!("{url}/api/v1/orders")).bearer_auth(&token).json(&body).send().await?;
            let at = SystemTime::now();
            anyhow::ensure!(res.status() == 201, "order answered {}", res.status());
            let order: Value = res.json().await?;
            let id = order["data"]["id"].as_str().context("an order id")?.to_owned();
            committed.lock().unwrap().insert(order_number(&id), at);
            Ok(())
        }));
    }
    for p in pending {
        p.await??;
    }
    let expected = (RATE * SECONDS) as usize + 1; // + the welcome
    let started = Instant::now();
    while std::fs::read_dir(&dir)?.count() < expected {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "e-mails missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let committed = committed.lock().unwrap().clone();
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let Some(number) = text.lines().find_map(|l| l.strip_prefix("Subject: Your order ")) else {
            continue;
        };
        let number = number.split_whitespace().next().unwrap_or_default();
        let written = std::fs::metadata(&path)?.modified()?;
        let at = committed.get(number).context("an e-mail for an order not placed")?;
        latencies.push(written.duration_since(*at).unwrap_or_default());
    }
    latencies.sort();
    println!(
        "latency, 201 to .eml written, {} orders at {RATE}/s: p50 {:.1?}, p90 {:.1?}, p99 {:.1?}, max {:.1?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    app::stop_background(background).await;
    forget_redis(&state).await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Orders placed by 16 concurrent clients in 10 s.
async fn orders_per_second(state: &AppState) -> anyhow::Result<f64> {
    let url = serve(state).await?;
    let client = reqwest::Client::new();
    let (token, products) = customer(&client, &url, state).await?;
    let products = Arc::new(products);
    let deadline = Instant::now() + Duration::from_secs(10);
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..16 {
        let (client, url, token, products) = (client.clone(), url.clone(), token.clone(), products.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let body = order_body(&products, c * 100_003 + n as usize);
                let res = client
                    .post(format!("{url}/api/v1/orders"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(res.status() == 201, "order answered {}", res.status());
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut placed = 0;
    for c in clients {
        placed += c.await??;
    }
    Ok(placed as f64 / started.elapsed().as_secs_f64())
}

/// What runs next to the API in a placement round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Roles {
    None,
    RelayOnly,
    RelayAndWorkers,
}

/// Orders/s of a fresh process running `roles` (e-mail to the `log` transport: the cost
/// of an SMTP server lives elsewhere), and the e-mails handled meanwhile.
async fn placement_round(server: &str, dir: &Path, roles: Roles) -> anyhow::Result<(f64, i64)> {
    let mut state = fresh_with(server, dir, roles != Roles::None, EmailTransport::Log).await?;
    if roles == Roles::RelayOnly {
        let mut config = (*state.config).clone();
        config.jobs_enabled = false;
        state.config = Arc::new(config);
    }
    let background = match roles {
        Roles::None => None,
        _ => Some(app::start_background(&state).await?),
    };
    let rate = orders_per_second(&state).await?;
    let sent: i64 = sqlx::query_scalar("select count(*) from sent_emails").fetch_one(&state.db).await?;
    if let Some(background) = background {
        app::stop_background(background).await;
    }
    forget_redis(&state).await?;
    state.db.close().await;
    Ok((rate, sent))
}

async fn placement_bench(server: &str) -> anyhow::Result<()> {
    let dir = scratch_dir("placement");
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(4);
    // Alternating rounds, so drift on a shared machine hits every side alike.
    let mut results: Vec<(Roles, Vec<(f64, i64)>)> = [Roles::None, Roles::RelayOnly, Roles::RelayAndWorkers]
        .into_iter()
        .map(|r| (r, Vec::new()))
        .collect();
    for _ in 0..rounds {
        for (roles, runs) in &mut results {
            runs.push(placement_round(server, &dir, *roles).await?);
        }
    }
    let median = |runs: &[(f64, i64)]| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.0).collect();
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    let base = median(&results[0].1);
    for (roles, runs) in &results {
        let m = median(runs);
        println!(
            "placement, 16 clients, {rounds} rounds of 10 s, {roles:?}: median {m:.0} orders/s ({:+.1} % of None); \
             rounds {:?}; e-mails handled {:?}",
            (m / base - 1.0) * 100.0,
            runs.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
            runs.iter().map(|r| r.1).collect::<Vec<_>>(),
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
        })
        .unwrap_or(0)
}

async fn rss_bench(server: &str) -> anyhow::Result<()> {
    const N: i64 = 10_000;
    let dir = scratch_dir("rss");
    let state = fresh(server, &dir, true).await?;
    // N accounts and their welcome jobs, written straight to the tables.
    sqlx::query(
        "with u as (
             insert into users (email, password_hash)
             select 'rss-' || i || '@example.com', 'x' from generate_series(1, $1) i returning id)
         insert into outbox (queue, kind, payload) select 'emails', 'welcome', jsonb_build_object('userId', id) from u",
    )
    .bind(N)
    .execute(&state.db)
    .await?;
    let before = rss_kib();
    let background = app::start_background(&state).await?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = 1_000;
    loop {
        let sent: i64 = sqlx::query_scalar("select count(*) from sent_emails").fetch_one(&state.db).await?;
        if sent >= next {
            samples.push((sent, rss_kib()));
            next += 1_000;
        }
        if sent >= N {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {sent} of {N} sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let first = samples.first().map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "rss, {N} e-mails in {took:.1?} ({:.0}/s): {before} KiB before the worker started; after 1 000 {first} KiB, \
         max {max} KiB, after {N} {last} KiB ({:+.1} % from 1 000 to {N})",
        N as f64 / took.as_secs_f64(),
        (last as f64 / first as f64 - 1.0) * 100.0
    );
    println!(
        "  samples (sent, KiB): {}",
        samples.iter().map(|(n, k)| format!("{n}:{k}")).collect::<Vec<_>>().join(" ")
    );
    app::stop_background(background).await;
    forget_redis(&state).await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
