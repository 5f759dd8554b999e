//! The job queues as admins see them: counts per queue and state, the
//! dead-letter list, and retrying a dead job. The queues themselves, the relay and the
//! workers are in [`crate::platform::jobs`].

mod handlers;
mod routes;
mod types;

pub use routes::router;
