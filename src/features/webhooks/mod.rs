//! Outbound webhooks: other systems follow every order, signed to the Standard Webhooks
//! specification. Work in progress on this branch: see WEBHOOKS-PLAN.md.

mod address;
mod delivery;
mod handlers;
mod repository;
mod routes;
mod secrets;
mod service;
mod signature;
mod types;

pub use routes::router;
pub use secrets::SecretBox;
pub use service::WebhookService;
pub use types::UrlRules;
