//! [`Role`]: what a signed-in user is (the permission table in `shared::auth` decides
//! what each role may do). Its own module so that the session store below the auth
//! extractors can name it without importing them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A signed-in user's role. Guests (no token) have no role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "user_role", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }
}
