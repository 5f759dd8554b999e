//! Users: the caller's profile and password, and user administration.

mod handlers;
mod repository;
mod routes;
mod service;
mod types;

pub use routes::router;
pub use service::{AdminProvisioned, UserService};

// The account functions and types the auth feature builds on (registration, login,
// password reset); everything else of this feature stays inside it.
pub use repository::{
    LoginRow, NewUser, UserRow, email_verified, find_active as find_active_user, find_login,
    insert as insert_user, mark_email_verified, set_password_hash,
};
pub use types::{UserResponse, is_valid_name};
