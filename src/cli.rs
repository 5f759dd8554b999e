//! The command line: `serve` (default) and `migrate`.

use clap::{Parser, Subcommand};

use crate::{
    app,
    shared::{config::Settings, db, telemetry},
};

/// Storefront API server.
#[derive(Debug, Parser)]
#[command(name = "storefront", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

/// Loads `.env` and the configuration, then runs the chosen command.
/// Returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    // A missing .env is normal; a broken one should not be silently half-read.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: could not read .env: {e}");
        return 2;
    }
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    telemetry::init(&settings);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal error");
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let state = app::connect(settings).await?;
    app::serve(state).await
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let pool = db::connect_lazy(&settings)?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    pool.close().await;
    Ok(())
}
