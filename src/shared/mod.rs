//! Cross-cutting infrastructure shared by every feature.

pub mod auth;
pub mod config;
pub mod db;
pub mod email;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod mail;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod outbox;
pub mod password;
pub mod pipeline;
pub mod read_pool;
pub mod redis;
pub mod response;
pub mod role;
pub mod schedule;
pub mod sessions;
pub mod telemetry;
