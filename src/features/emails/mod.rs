//! E-mail jobs (SPEC §7): what the `emails` queue's worker does with each job the outbox
//! relay queued: `welcome`, `order-confirmation` and `reset-password`. The recipient and
//! every detail are read when the job runs (payloads hold ids only), the message is
//! rendered from `templates/email/` and sent through the configured transport, and a
//! ledger keyed by outbox id makes a job delivered twice send once.

pub mod repository;
pub mod service;

pub use service::EmailJobs;
