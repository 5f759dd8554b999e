//! Integration tests: the real router over real HTTP against real Postgres (a fresh
//! database per test, via `#[sqlx::test]`) and real Redis (a key prefix per test).

mod auth;
mod backup;
mod config;
mod emails;
mod errors;
mod health;
mod helpers;
mod jobs;
mod mail;
mod maintenance;
mod orders;
mod products;
mod rate_limit;
mod reports;
mod users;
