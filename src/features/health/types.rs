use serde::Serialize;
use utoipa::ToSchema;

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(value_type = Live, example = "ok")]
    pub status: &'static str,
    /// The running build's version.
    #[schema(schema_with = version_schema)]
    pub version: &'static str,
}

/// What `/health` answers while the process serves.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum Live {
    Ok,
}

/// A dependency's or the whole readiness's state.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum Readiness {
    Ok,
    Unavailable,
}

/// The version string: this build's, so exactly as long as it.
fn version_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .description(Some("The running build's version."))
        .max_length(Some(env!("CARGO_PKG_VERSION").len()))
        .pattern(Some(r"^[0-9]+\.[0-9]+\.[0-9]+"))
        .build()
}

/// Readiness answer: `status` is `ok` or `unavailable`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    #[schema(value_type = Readiness, example = "ok")]
    pub status: &'static str,
    pub checks: ReadyChecks,
}

/// Per-dependency result: `ok` or `unavailable` (why is in the log, never here).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecks {
    #[schema(value_type = Readiness, example = "ok")]
    pub database: String,
    #[schema(value_type = Readiness, example = "ok")]
    pub redis: String,
}
