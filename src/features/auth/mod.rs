//! Authentication: register, login, refresh-token rotation with reuse
//! detection, logout. Tokens and permissions themselves live in `shared::auth`.

mod domain;
mod handlers;
mod repository;
mod reset;
mod routes;
mod service;
mod types;
mod verification;

pub use repository::{AuthStore, delete_spent_reset_tokens, delete_spent_verification_tokens};
pub use reset::{
    PasswordResetService, TOKEN_TTL_MINUTES as RESET_TOKEN_TTL_MINUTES, mint_token as mint_reset_token,
};
pub use routes::router;
pub use service::AuthService;
pub use verification::{
    EmailVerificationService, TOKEN_TTL_HOURS as VERIFICATION_TOKEN_TTL_HOURS,
    mint_token as mint_verification_token,
};
