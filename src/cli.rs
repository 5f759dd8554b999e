//! The command line: `serve` (default), `worker`, `migrate`, `create-admin`, `seed`, `check`,
//! `run-task`.

use clap::{Parser, Subcommand};

use crate::{
    app,
    features::{analytics, maintenance, users::AdminProvisioned},
    platform::{
        config::{AppEnv, Settings},
        db, telemetry,
    },
    shared::{email::Email, password::PasswordHasher},
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
    /// Serve the HTTP API, plus the background roles enabled by config (the default).
    Serve,
    /// Run the background roles enabled by config (job workers, outbox relay, scheduled
    /// tasks), no API.
    Worker,
    /// Probe this machine's running process: GET /health on 127.0.0.1 at PORT (with
    /// `--metrics`, at METRICS_PORT: a worker's). Exits 0 on a 200, 1 otherwise. For
    /// container health checks, without curl in the image.
    Healthcheck {
        /// Probe the metrics listener instead of the API.
        #[arg(long)]
        metrics: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an admin. The password comes from ADMIN_PASSWORD or the first line of
    /// standard input, never argv.
    CreateAdmin {
        /// E-mail of the admin.
        #[arg(long)]
        email: String,
        /// Make an existing account admin: it gets the supplied password and every one of
        /// its sessions is revoked. Without it, an existing account is an error.
        #[arg(long)]
        promote: bool,
    },
    /// Fill the database with demo data (development and benchmarks).
    Seed {
        /// How many products to add.
        #[arg(long, default_value_t = 1000)]
        products: u32,
        /// How many users to add (password "password123").
        #[arg(long, default_value_t = 100)]
        users: u32,
        /// Run even with APP_ENV=production (the accounts have a published password).
        #[arg(long)]
        force: bool,
    },
    /// Check the data invariants (stock conserved, order totals, no order without items,
    /// the outbox drained, each scheduled slot run once, one order per Idempotency-Key).
    /// Read-only; exits 1 when any is broken.
    Check,
    /// Run one scheduled task now and exit, printing what it did and how long it took
    /// (after an outage, or to time it on real data). It is claimed like a scheduled run,
    /// so an instance whose scheduler fires in the same second does not run it twice.
    RunTask {
        /// `cleanup` (the nightly cleanup), `analytics` (the roll-up of the last 24
        /// complete hours) or `order-expiry` (cancel the unpaid orders whose time ran
        /// out; needs ORDER_PAYMENT_TIMEOUT).
        #[arg(value_enum)]
        task: ScheduledTask,
    },
}

/// A task of the scheduler.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScheduledTask {
    Cleanup,
    Analytics,
    OrderExpiry,
}

/// Loads `.env` and the configuration, then runs the chosen command.
/// Returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    // A missing .env is normal; a broken one should not be silently half-read.
    // `NO_DOTENV=1` skips it (tests that set the environment themselves).
    let skip_dotenv = std::env::var_os("NO_DOTENV").is_some_and(|v| v == "1");
    if !skip_dotenv
        && let Err(e) = dotenvy::dotenv()
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
    if let Some(Command::Healthcheck { metrics }) = cli.command {
        let port = if metrics { settings.metrics_port } else { settings.port };
        return healthcheck(port).await;
    }
    telemetry::init(&settings);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Worker => worker(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::CreateAdmin { email, promote } => create_admin(settings, &email, promote).await,
        Command::Seed { products, users, force } => seed(settings, products, users, force).await,
        Command::Check => check(settings).await,
        Command::RunTask { task } => run_task(settings, task).await,
        Command::Healthcheck { .. } => unreachable!("answered before telemetry starts"),
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

/// `GET http://127.0.0.1:{port}/health` within 5 s: 0 on a 200, else 1 (said on stderr).
async fn healthcheck(port: u16) -> i32 {
    let url = format!("http://127.0.0.1:{port}/health");
    let answer = match crate::platform::outbound::client(std::time::Duration::from_secs(5)) {
        Ok(client) => client.get(&url).send().await.map(|r| r.status()).map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match answer {
        Ok(status) if status == reqwest::StatusCode::OK => 0,
        Ok(status) => {
            eprintln!("unhealthy: {url} answered {status}");
            1
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            1
        }
    }
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    let state = app::connect(settings).await?;
    state.webhooks.check_key().await?;
    app::work(state).await
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let state = app::connect(settings).await?;
    state.webhooks.check_key().await?;
    app::serve(state).await
}

async fn check(settings: Settings) -> anyhow::Result<()> {
    let pool = db::connect_lazy(&settings)?;
    let findings = maintenance::check_invariants(&pool).await?;
    let broken = findings.iter().filter(|f| f.count > 0).count();
    for f in &findings {
        let i = f.invariant;
        match f.count {
            0 => println!("ok    {}: {}", i.name, i.promise),
            n => {
                println!("FAIL  {}: {}: {n} violation(s)", i.name, i.promise);
                f.sample.iter().for_each(|v| println!("        {v}"));
            }
        }
    }
    match broken {
        0 => {
            println!("all {} invariants hold", findings.len());
            Ok(())
        }
        n => anyhow::bail!("{n} of {} invariants broken", findings.len()),
    }
}

async fn run_task(settings: Settings, task: ScheduledTask) -> anyhow::Result<()> {
    use chrono::SubsecRound;
    let state = app::connect(settings).await?;
    let slot = chrono::Utc::now().trunc_subsecs(0);
    let started = std::time::Instant::now();
    let done = match task {
        ScheduledTask::Cleanup => maintenance::cleanup(&state.db, &state.queues, &state.config, slot)
            .await?
            .map(|report| format!("{report:?}")),
        ScheduledTask::Analytics => {
            analytics::rollup(&state.db, slot).await?.map(|hours| format!("{hours} hours rolled up"))
        }
        ScheduledTask::OrderExpiry => {
            let timeout = state.config.order_expiry().ok_or_else(|| {
                anyhow::anyhow!("order expiry is off (ORDER_PAYMENT_TIMEOUT is 0 or unset)")
            })?;
            let wakeup = crate::platform::jobs::outbox::Wakeup::new(state.db.clone());
            maintenance::expire_orders(&state.db, &wakeup, timeout, slot)
                .await?
                .map(|report| format!("{report:?}"))
        }
    };
    let ms = started.elapsed().as_millis();
    match done {
        Some(what) => println!("{task:?} done in {ms} ms: {what}"),
        None => anyhow::bail!("{task:?} is running elsewhere right now (or ran in this second)"),
    }
    state.db.close().await;
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let pool = db::connect_lazy(&settings)?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    pool.close().await;
    Ok(())
}

async fn create_admin(settings: Settings, email: &str, promote: bool) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|_| anyhow::anyhow!("--email is not a valid e-mail address"))?;
    let pool = db::connect_lazy(&settings)?;
    db::migrate(&pool).await?;
    let users = crate::features::users::UserService::new(pool.clone(), PasswordHasher::new());
    let outcome = users.create_admin(&email, promote, read_admin_password).await?;
    match outcome {
        AdminProvisioned::Created(id) => println!("created admin {email} ({id})"),
        AdminProvisioned::Promoted(id) => {
            println!("promoted {email} ({id}) to admin; password replaced, sessions revoked")
        }
        AdminProvisioned::AlreadyAdmin(id) => println!("{email} ({id}) is already an admin"),
    }
    pool.close().await;
    Ok(())
}

/// `ADMIN_PASSWORD`, else the first line of standard input.
fn read_admin_password() -> anyhow::Result<String> {
    let password = match std::env::var("ADMIN_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            use std::io::{BufRead, IsTerminal};
            if std::io::stdin().is_terminal() {
                eprint!("Password for the new admin: ");
            }
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let len = password.chars().count();
    anyhow::ensure!(
        (8..=128).contains(&len),
        "the password must be 8 to 128 characters (ADMIN_PASSWORD or stdin)"
    );
    Ok(password)
}

async fn seed(settings: Settings, products: u32, users: u32, force: bool) -> anyhow::Result<()> {
    if settings.app_env == AppEnv::Production && !force {
        anyhow::bail!(
            "refusing to seed with APP_ENV=production: the demo accounts share a published password (pass --force to do it anyway)"
        );
    }
    let pool = db::connect_lazy(&settings)?;
    db::migrate(&pool).await?;
    crate::seed::run(&pool, products, users).await?;
    pool.close().await;
    Ok(())
}
