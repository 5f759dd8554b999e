use serde::Serialize;
use utoipa::ToSchema;

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(example = "ok")]
    pub status: &'static str,
    /// The running build's version.
    pub version: &'static str,
}

/// Readiness answer: `status` is `ok` or `unavailable`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    #[schema(example = "ok")]
    pub status: &'static str,
    pub checks: ReadyChecks,
}

/// Per-dependency result: `ok` or `unavailable` (why is in the log, never here).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecks {
    #[schema(example = "ok")]
    pub database: String,
    #[schema(example = "ok")]
    pub redis: String,
}
