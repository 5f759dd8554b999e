//! Infrastructure: what a crate could replace and no feature owns.
//!
//! Nothing here knows the business. Features and the kernel ([`crate::shared`]) build on
//! this floor; it imports neither of them (`scripts/check-imports` holds the rule).

pub mod config;
pub mod db;
pub mod http;
pub mod jobs;
pub mod jwt_crypto;
pub mod mail;
pub mod metrics;
pub mod outbound;
pub mod redis;
pub mod schedule;
pub mod telemetry;
