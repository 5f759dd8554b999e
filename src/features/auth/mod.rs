//! Authentication (SPEC §3): register, login, refresh-token rotation with reuse
//! detection, logout. Tokens and permissions themselves live in `shared::auth`.

mod domain;
mod handlers;
mod repository;
mod reset;
mod routes;
mod service;
mod types;

pub use repository::{AuthStore, delete_spent_reset_tokens};
pub use reset::{
    PasswordResetService, TOKEN_TTL_MINUTES as RESET_TOKEN_TTL_MINUTES, mint_token as mint_reset_token,
};
pub use routes::router;
pub use service::AuthService;
