//! Feature modules, each owning its routes, handlers, services and SQL.
//!
//! The list at the bottom is the one registry of features: one line declares a module and
//! says where its router is mounted (`api`: under `/api/v1`; `ops`: outside the versioned
//! API; `none`: no routes of its own). `scripts/new-feature` adds a feature's line.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Declares the feature modules and builds [`api_router`] and [`ops_router`] from where
/// each one is mounted.
macro_rules! features {
    (@route $router:ident, $name:ident, api, api) => { $router.merge($name::router()) };
    (@route $router:ident, $name:ident, ops, ops) => { $router.merge($name::router()) };
    (@route $router:ident, $name:ident, $mount:ident, $wanted:ident) => { $router };
    ($($name:ident: $mount:ident),* $(,)?) => {
        $(pub mod $name;)*

        /// Routes under `/api/v1`.
        pub fn api_router() -> OpenApiRouter<AppState> {
            let router = OpenApiRouter::new();
            $(let router = features!(@route router, $name, $mount, api);)*
            router
        }

        /// Routes outside the versioned API (operations).
        pub fn ops_router() -> OpenApiRouter<AppState> {
            let router = OpenApiRouter::new();
            $(let router = features!(@route router, $name, $mount, ops);)*
            router
        }
    };
}

features!(
    analytics: api,
    auth: api,
    emails: none,
    health: ops,
    jobs: api,
    maintenance: none,
    orders: api,
    payments: api,
    products: api,
    reports: api,
    users: api,
    webhooks: api,
);
