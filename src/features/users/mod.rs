//! Users (SPEC §4): the caller's profile and password, and user administration.

mod handlers;
pub mod repository;
mod routes;
pub mod service;
pub mod types;

pub use routes::router;
pub use service::UserService;
