//! Logging: JSON lines in production, readable text elsewhere, filtered by
//! `LOG_LEVEL`. Request lines come from the trace layer in `middleware`.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::platform::config::Settings;

/// Installs the global subscriber; call once at start-up.
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if settings.json_logs() {
        registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false))
            .init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        registry.with(fmt::layer().with_target(false).with_ansi(ansi)).init();
    }
}
