//! The `leadgate` command: parse the configuration, set up logging, bind,
//! and hand over to [`leadgate::run`].

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use leadgate::Config;
use leadgate::config::LogFormat;
use leadgate::dev::{Credentials, JwtKey};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a gateway allocates and frees a
/// few small buffers for every message it delivers, and the switch took a
/// fifth off the CPU of a delivery (see BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Socket.IO-compatible realtime gateway for job progress and leads.
#[derive(Debug, Parser)]
#[command(name = "leadgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check the configuration (options, key files, credentials) without
    /// starting; prints what would be used.
    CheckConfig,
    /// Print a token signed with the configured (or development) HS256 secret.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Add the `admin` role: the token may read every job.
        #[arg(long)]
        admin: bool,
        /// Lifetime, e.g. `30m`, `1h`, `7d`, `3600s`.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: i64,
    },
    /// Report a job's life as a worker does (database and Redis).
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// Crawler tools: import leads, take crawl requests.
    Leads {
        #[command(subcommand)]
        action: LeadsAction,
    },
}

#[derive(Debug, Subcommand)]
enum LeadsAction {
    /// Upsert the leads of a JSON file (an array of leads with the leads
    /// table's field names) for one provider, then announce them to every
    /// gateway.
    Import {
        /// The JSON file, or `-` for standard input.
        file: std::path::PathBuf,
        /// The provider the leads come from, e.g. `freelance.de`.
        #[arg(long)]
        provider: String,
        /// The crawl request this import answers: marked `done`.
        #[arg(long)]
        request: Option<i64>,
    },
    /// Take the oldest queued crawl request and mark it running. Prints
    /// `{"request_id":…,"provider":…}`, or nothing when none is queued.
    Claim {
        /// Who takes it (recorded in `claimed_by`).
        #[arg(long)]
        worker: String,
        /// Take only requests for this provider (or for every provider).
        #[arg(long)]
        provider: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum JobAction {
    /// Create a pending job for a user and print its id.
    Create {
        /// The owner's user id (the `sub` of their tokens).
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 0)]
        total_leads: u32,
    },
    /// Apply one event to a job and publish it to every gateway; prints the
    /// resulting job-update with its seq. Needs LEADGATE_REDIS_URL.
    Event {
        /// The job's id.
        job: uuid::Uuid,
        /// The event: a job-update JSON without seq, e.g.
        /// '{"type":"progress","progress":50,"processedLeads":5,"totalLeads":10}'.
        event: String,
    },
}

fn parse_ttl(s: &str) -> Result<i64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 1h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(n * scale)
}

fn main() -> ExitCode {
    let mut cli: Cli = match leadgate::config::parse_with_file(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line that names the option, not clap's usage block.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("leadgate: invalid configuration: {first}");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    // `LEADGATE_ALLOWED_ORIGINS=` (what compose passes for an unset
    // `${LEADGATE_ALLOWED_ORIGINS:-}`) means none, as leaving it out does.
    cli.config.allowed_origins.retain(|o| !o.is_empty());
    if let Err(message) = cli.config.validate() {
        eprintln!("leadgate: invalid configuration: {message}");
        return ExitCode::from(2);
    }
    init_tracing(cli.config.log_format);
    let runtime = match runtime(cli.config.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leadgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(cli.config).await,
            Command::Migrate => migrate(cli.config).await,
            Command::CheckConfig => check_config(&cli.config),
            Command::Token { sub, admin, ttl } => token(&cli.config, &sub, admin, ttl),
            Command::Job { action } => job(&cli.config, action).await,
            Command::Leads { action } => leads(&cli.config, action).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leadgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime: `threads` worker threads, or one per CPU core for 0.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sea_orm_migration=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    leadgate::run(config, listener, shutdown_signal()).await
}

/// Binds the listening socket with a deep accept queue. The standard
/// backlog of 128 overflows when a few hundred clients connect at once, as
/// they do when an instance goes away and its clients reconnect to another:
/// the kernel drops their SYNs and each waits a full second to try again.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    const BACKLOG: u32 = 4096; // the kernel caps it at net.core.somaxconn
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = leadgate_store::Store::connect(&config.database_url)
        .await
        .with_context(|| format!("cannot open {}", leadgate::redact_url(&config.database_url)))?;
    store.migrate().await?;
    info!(backend = store.backend(), "Migrations applied.");
    store.close().await?;
    Ok(())
}

fn check_config(config: &Config) -> anyhow::Result<()> {
    let credentials = Credentials::resolve(config)?;
    let verifier = leadgate::auth::Verifier::with_rules(&credentials.jwt, &config.token_rules())?;
    println!("Configuration OK.");
    println!("  listen:        {}", config.listen);
    println!(
        "  database:      {}",
        leadgate::redact_url(&config.database_url)
    );
    match config.redis_url() {
        Some(url) => println!(
            "  redis:         {} (prefix {})",
            leadgate::redact_url(url),
            config.redis_prefix
        ),
        None => println!("  redis:         none (one instance)"),
    }
    let tokens = match (&credentials.jwt, &credentials.dev_file) {
        (_, Some(file)) => format!("development secret in {}", file.display()),
        (JwtKey::Secret(_), None) => "LEADGATE_JWT_SECRET".to_owned(),
        (JwtKey::PublicKeyPem { path, .. }, None) => format!("public key {}", path.display()),
    };
    println!("  tokens:        {:?}, {tokens}", verifier.algorithm());
    println!("  worker keys:   {}", credentials.api_keys.len());
    if let Some(file) = &config.config {
        println!("  config file:   {}", file.display());
    }
    Ok(())
}

fn token(config: &Config, sub: &str, admin: bool, ttl: i64) -> anyhow::Result<()> {
    let credentials = Credentials::resolve(config)?;
    let JwtKey::Secret(secret) = &credentials.jwt else {
        anyhow::bail!(
            "leadgate token signs with an HS256 secret, but LEADGATE_JWT_PUBLIC_KEY is set: get tokens from your identity provider"
        );
    };
    let rules = config.token_rules();
    let token = leadgate::auth::mint_with(secret.expose(), &rules, sub, admin, ttl)?;
    // What the gateway will check: a token it would refuse is no use.
    leadgate::auth::Verifier::with_rules(&credentials.jwt, &rules)?
        .verify(&token)
        .map_err(|e| anyhow::anyhow!("the minted token would be refused: {e}"))?;
    println!("{token}");
    Ok(())
}

async fn job(config: &Config, action: JobAction) -> anyhow::Result<()> {
    match action {
        JobAction::Create { user, total_leads } => {
            let store = leadgate_store::Store::connect(&config.database_url).await?;
            println!("{}", store.create_job(&user, total_leads).await?);
            store.close().await?;
        }
        JobAction::Event { job, event } => {
            let Some(redis_url) = config.redis_url() else {
                anyhow::bail!(
                    "leadgate job event publishes through Redis: set LEADGATE_REDIS_URL (without Redis, POST the event to /api/v1/jobs/{job}/events)"
                );
            };
            let event = leadgate_protocol::WorkerEvent::from_slice(event.as_bytes())?;
            if event.seq.is_some() {
                anyhow::bail!("leave seq out: leadgate job event assigns the job's next seq");
            }
            if event.job_id.is_some_and(|id| id != job) {
                anyhow::bail!("the event's jobId differs from {job}");
            }
            let worker = leadgate_worker::Worker::connect(
                &config.database_url,
                redis_url,
                &config.redis_prefix,
            )
            .await?;
            let update = worker.report(job, event.event).await?;
            println!("{}", serde_json::to_string(&update)?);
        }
    }
    Ok(())
}

async fn leads(config: &Config, action: LeadsAction) -> anyhow::Result<()> {
    let store = leadgate_store::Store::connect(&config.database_url).await?;
    match action {
        LeadsAction::Import {
            file,
            provider,
            request,
        } => {
            let provider = provider.trim().to_owned();
            anyhow::ensure!(!provider.is_empty(), "--provider must not be empty");
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let items: Vec<serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON array of leads", file.display()))?;
            let leads = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| leadgate_protocol::leads::LeadInput::from_value(item, i))
                .collect::<Result<Vec<_>, _>>()?;
            let count = store.upsert_leads(&provider, leads).await?;
            if let Some(request) = request
                && !store.finish_crawl_request(request, "done").await?
            {
                eprintln!("leadgate: no crawl request {request}; the leads were imported anyway");
            }
            match config.redis_url() {
                Some(url) => {
                    let channels = leadgate_bus::Channels::new(config.redis_prefix.clone());
                    let publisher = leadgate_bus::Publisher::connect(url, channels).await?;
                    let message = leadgate_protocol::leads::LeadsChanged {
                        kind: leadgate_protocol::leads::LeadsChangedKind::LeadsUpdated,
                        provider: Some(provider.clone()),
                    };
                    let channel = publisher.channels().leads();
                    publisher.publish_json(channel, &message).await?;
                    println!("Imported {count} leads of {provider} and announced them.");
                }
                None => println!(
                    "Imported {count} leads of {provider}; without LEADGATE_REDIS_URL the gateway notices them within a second."
                ),
            }
        }
        LeadsAction::Claim { worker, provider } => {
            if let Some((request_id, provider)) = store
                .claim_crawl_request(&worker, provider.as_deref())
                .await?
            {
                println!(
                    "{}",
                    serde_json::json!({ "request_id": request_id, "provider": provider })
                );
            }
        }
    }
    store.close().await?;
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    info!("Shutdown signal received; draining (signal again to exit at once).");
    tokio::spawn(async {
        wait_for_signal().await;
        warn!("Second signal: exiting now.");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
