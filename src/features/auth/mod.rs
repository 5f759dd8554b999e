//! Authentication (SPEC §3): register, login, refresh-token rotation with reuse
//! detection, logout. Tokens and permissions themselves live in `shared::auth`.

pub mod domain;
mod handlers;
pub mod repository;
pub mod reset;
mod routes;
pub mod service;
pub mod types;

pub use routes::router;
pub use service::AuthService;
