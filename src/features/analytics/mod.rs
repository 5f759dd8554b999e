//! Analytics: the hourly roll-up of orders (cancelled excluded), items,
//! revenue and new users into `analytics_hourly`, run by the scheduler, and
//! `GET /admin/analytics` serving it to admins.

mod handlers;
mod repository;
mod routes;
mod service;
mod types;

pub use routes::router;
pub use service::{MAX_RANGE_HOURS, rollup};
