//! The OpenAPI document (SPEC §9): the base description, shared schemas and the bearer
//! scheme. Each feature adds its paths through `utoipa_axum` routers.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::error::{ErrorBody, ErrorEnvelope};
use super::response::Pagination;

/// Root of the generated document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Storefront API",
        description = "Orders, users, products and auth. Success bodies are `{success: true, data}`; \
                       errors are `{success: false, error: {code, message, fields?, details?, requestId}}`."
    ),
    components(schemas(ErrorEnvelope, ErrorBody, Pagination)),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Register, login, token refresh and logout"),
        (name = "users", description = "Profiles and user administration"),
        (name = "products", description = "The catalogue"),
        (name = "orders", description = "Orders and their status machine"),
        (name = "reports", description = "Sales and inventory CSV reports (admin)"),
        (name = "admin", description = "Operations for administrators"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme (JWT access tokens).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}
