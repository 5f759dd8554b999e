//! Reports (SPEC §7): admins request a sales or inventory CSV; the `reports` queue's
//! worker generates it by streaming rows into chunks stored in Postgres (so every API
//! instance can serve the download), marks it completed and queues the `report-ready`
//! e-mail, all in one transaction.

pub mod domain;
pub mod generate;
mod handlers;
pub mod repository;
mod routes;
pub mod service;
pub mod types;

pub use generate::ReportJobs;
pub use routes::router;
pub use service::ReportService;
