//! Storefront: a REST API for orders, users, products and auth (see `README.md` and `docs/`).
//!
//! `main.rs` is a thin CLI over this library so integration tests can start the real
//! application in-process.

pub mod app;
pub mod cli;
pub mod features;
pub mod platform;
pub mod seed;
pub mod shared;
pub mod state;
