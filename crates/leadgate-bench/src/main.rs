//! `leadgate-bench`: runs the same Socket.IO load against leadgate, a bare
//! socketioxide server (what leadgate is built on, without leadgate's own
//! code) and the Node.js Socket.IO server leadgate replaces, in one run, and
//! prints the three side by side with leadgate's ratios to the other two.
//! `crates/leadgate-bench/run.sh` builds what it needs and starts it;
//! BENCHMARKS.md has the figures.

mod clients;
mod leads;
mod probe;
mod procs;
mod report;
mod scenarios;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::procs::{Environment, Kind};
use crate::report::Run;
use crate::scenarios::{Bench, Results, Settings};

#[derive(Parser)]
#[command(
    version,
    about = "Benchmarks leadgate against bare socketioxide and the Node.js Socket.IO peer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,

    /// A short run of every scenario, to check that the benchmark works
    /// (the figures mean little).
    #[arg(long)]
    quick: bool,

    /// Which gateways to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = ["leadgate", "socketioxide", "node"]
    )]
    gateways: Vec<Gateway>,

    /// Which scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = ["idle", "idle-upgrade", "connect", "fanout"]
    )]
    scenarios: Vec<Scenario>,

    /// Connection counts of the idle scenario, instead of the defaults.
    #[arg(long, value_delimiter = ',')]
    idle_sizes: Vec<usize>,

    /// Deliveries in flight per client at which fan-out is measured,
    /// instead of the defaults (4 and 16).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    fanout_in_flight: Vec<u64>,

    /// Worker threads of each leadgate and bare socketioxide instance,
    /// instead of its share of the cores (the cores divided by the
    /// instances running at once).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    leadgate_threads: Option<u16>,

    /// The leadgate binary; by default the one beside this program.
    #[arg(long)]
    leadgate_bin: Option<PathBuf>,

    /// The bare socketioxide server; by default `bare-socketioxide` beside
    /// this program.
    #[arg(long)]
    socketioxide_bin: Option<PathBuf>,

    /// The Node.js peer's folder (with its node_modules installed).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/node-peer"))]
    peer_dir: PathBuf,

    /// PostgreSQL database of the run; created if missing, its jobs
    /// replaced.
    #[arg(
        long,
        env = "LEADGATE_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/leadgate_bench"
    )]
    database_url: String,

    /// Redis of the run; its channels are prefixed `leadgate-bench:`.
    #[arg(
        long,
        env = "LEADGATE_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,

    /// Where the results go as JSON, and the servers' logs beside them.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

#[derive(Subcommand)]
enum Internal {
    /// A client process, started by the benchmark itself.
    #[command(hide = true)]
    Clients,
    /// The leads view at scale: page queries at each size, and open lead
    /// views refreshed after a crawl.
    Leads(leads::Args),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Gateway {
    Leadgate,
    /// The bare socketioxide server.
    Socketioxide,
    /// The Node.js Socket.IO peer.
    Node,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Idle connections opened as WebSockets.
    Idle,
    /// Idle connections upgraded from long-polling (socket.io-client's
    /// default).
    IdleUpgrade,
    Connect,
    /// Fan-out, then latency, on the same clients.
    Fanout,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each connection is a file; the hard limit is what the machine allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {e}");
    }
    let result = match cli.command {
        Some(Internal::Clients) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, clients::run()).map(|()| true)
            }),
        Some(Internal::Leads(args)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(leads::run(args)).map(|()| true)),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(compare(cli))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("leadgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A program in the folder of this one (cargo builds a workspace's binaries
/// into one folder).
fn beside_this_program(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .with_context(|| format!("locating the {name} binary"))?
        .join(name))
}

/// Runs every chosen scenario on every chosen gateway; `Ok(false)` when
/// leadgate lost, duplicated or refused anything.
async fn compare(cli: Cli) -> anyhow::Result<bool> {
    let mut settings = if cli.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if !cli.idle_sizes.is_empty() {
        settings.idle_sizes = cli.idle_sizes.clone();
    }
    if !cli.fanout_in_flight.is_empty() {
        settings.fanout_in_flight = cli.fanout_in_flight.clone();
    }
    settings.leadgate_threads = cli.leadgate_threads.map(usize::from);
    let leadgate_bin = match cli.leadgate_bin {
        Some(path) => path,
        None => beside_this_program("leadgate")?,
    };
    if cli.gateways.contains(&Gateway::Leadgate) && !leadgate_bin.exists() {
        anyhow::bail!(
            "no leadgate binary at {}; build it with `cargo build --release -p leadgate`",
            leadgate_bin.display()
        );
    }
    let socketioxide_bin = match cli.socketioxide_bin {
        Some(path) => path,
        None => beside_this_program("bare-socketioxide")?,
    };
    if cli.gateways.contains(&Gateway::Socketioxide) && !socketioxide_bin.exists() {
        anyhow::bail!(
            "no bare socketioxide server at {}; build it with `cargo build --release -p leadgate-bench`",
            socketioxide_bin.display()
        );
    }
    if cli.gateways.contains(&Gateway::Node) && !cli.peer_dir.join("node_modules").exists() {
        anyhow::bail!(
            "the Node.js peer's packages are not installed; run `npm ci` in {}",
            cli.peer_dir.display()
        );
    }
    // A server holds every idle connection as an open file.
    let largest = settings.idle_sizes.iter().copied().max().unwrap_or(0);
    let (open_files, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if open_files < largest as u64 + 200 {
        anyhow::bail!(
            "{largest} connections need more open files than the limit of {open_files} (ulimit -n)"
        );
    }
    let log_dir = cli
        .json
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&log_dir)?;
    scenarios::check_redis(&cli.redis_url).await?;
    let jobs = scenarios::seed_jobs(&cli.database_url, settings.jobs).await?;
    let env = Environment {
        leadgate_bin,
        socketioxide_bin,
        peer_dir: cli.peer_dir,
        database_url: cli.database_url,
        redis_url: cli.redis_url,
        redis_prefix: "leadgate-bench:".into(),
        jwt_secret: format!("benchmark-secret-{}", uuid::Uuid::new_v4()),
        log_dir,
    };
    let mut bench = Bench::new(env, settings, jobs);
    let kinds: Vec<Kind> = cli
        .gateways
        .iter()
        .map(|gateway| match gateway {
            Gateway::Leadgate => Kind::Leadgate,
            Gateway::Socketioxide => Kind::Socketioxide,
            Gateway::Node => Kind::Node,
        })
        .collect();
    let mut run = Run::new(cli.quick, bench.settings.clone());

    // Scenario by scenario, each gateway in turn, so that a slow drift of
    // the machine touches all alike.
    for (scenario, upgrade) in [(Scenario::Idle, false), (Scenario::IdleUpgrade, true)] {
        if !cli.scenarios.contains(&scenario) {
            continue;
        }
        let how = if upgrade {
            ", upgraded from long-polling"
        } else {
            ""
        };
        for n in bench.settings.idle_sizes.clone() {
            for &kind in &kinds {
                eprintln!("idle: {} with {n} connections{how}", kind.name());
                let results = run.results_mut(kind);
                let idle = bench.idle(kind, n, upgrade, &mut results.faults).await?;
                if upgrade {
                    results.idle_upgrade.push(idle);
                } else {
                    results.idle.push(idle);
                }
            }
        }
    }
    if cli.scenarios.contains(&Scenario::Connect) {
        for &kind in &kinds {
            eprintln!("connect: {}", kind.name());
            let results = run.results_mut(kind);
            results.connect = Some(bench.connect(kind, &mut results.faults).await?);
        }
    }
    if cli.scenarios.contains(&Scenario::Fanout) {
        for &kind in &kinds {
            eprintln!("fan-out and latency: {}", kind.name());
            let results = run.results_mut(kind);
            let (fanout, latency) = bench.fanout_and_latency(kind, &mut results.faults).await?;
            results.fanout = fanout;
            results.latency = Some(latency);
        }
    }

    print!("{}", run.table());
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&run)?)?;
    eprintln!("results written to {}", cli.json.display());
    // The other gateways' faults are reported with their figures;
    // leadgate's fail the run. A scenario that cannot run at all (a gateway
    // that does not start, fan-out clients that cannot all connect) has
    // stopped it already.
    let clean = run
        .gateways
        .get(Kind::Leadgate.name())
        .is_none_or(|results: &Results| results.faults.is_clean());
    if !clean {
        eprintln!("leadgate lost, duplicated or refused something: see its faults above");
    }
    Ok(clean)
}
