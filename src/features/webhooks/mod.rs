//! Outbound webhooks: other systems follow every order, signed to the Standard Webhooks
//! specification. Work in progress on this branch: see WEBHOOKS-PLAN.md.

mod address;
mod secrets;
mod repository;
mod service;
mod signature;
mod types;
