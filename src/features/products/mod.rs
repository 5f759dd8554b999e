//! The catalogue: public list and detail with ETags, admin create, update with
//! optimistic concurrency, archive.

mod domain;
mod handlers;
mod repository;
mod routes;
mod service;
mod types;

pub use repository::{NewProduct, ProductRow};
pub use routes::router;
pub use service::ProductService;
