//! HTTP plumbing shared by every route: the error type and its envelope, the success
//! envelope, extractors that answer in the envelope, the middleware stack and the
//! OpenAPI document's common parts, and the server loop that runs the router.

pub mod conditional;
pub mod cursor;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod response;
pub mod server;
