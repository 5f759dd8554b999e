//! The kernel: what several features share and is part of the business, not plumbing:
//! who the caller is (auth extractors, permissions, sessions, roles), e-mail addresses,
//! password hashing, and domain types more than one feature speaks (shipping address,
//! stock bound). Infrastructure lives one floor down, in [`crate::platform`].

pub mod auth;
pub mod domain;
pub mod email;
pub mod jobs;
pub mod password;
pub mod role;
pub mod sessions;
