//! Integration tests: the real router over real HTTP against real Postgres (a fresh
//! database per test, via `#[sqlx::test]`) and real Redis (a key prefix per test).

mod auth;
mod backup;
mod config;
mod emails;
mod errors;
mod health;
mod helpers;
mod invariants;
mod jobs;
mod lists;
mod mail;
mod maintenance;
mod order_history;
mod orders;
mod payments;
mod pipeline;
mod products;
mod rate_limit;
mod read_pool;
mod redis_tls;
mod reports;
mod server;
mod users;
mod verification;
mod webhooks;
