//! Memory with clients that never read: starts the gateway binary, connects
//! 1,000 Socket.IO clients subscribed to 10 jobs, lets them stop reading,
//! then posts job events (log lines of `bytes`) for 80 seconds, past the
//! slow-client grace period (20 s here) and the heartbeat's timeout, and
//! prints the gateway's resident memory every few seconds, with the
//! messages it dropped, the clients it evicted, the Socket.IO sockets it
//! still counts and the files (connections) it has open. Memory must stay
//! flat: every per-socket queue is bounded.
//!
//! ```sh
//! cargo build --release -p leadgate
//! cargo run --release -p leadgate-tests --example never_reading_clients [clients=1000] [bytes=256]
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leadgate_tests::SioClient;
use serde_json::json;

const SECRET: &str = "never-reading-clients-secret";
const API_KEY: &str = "never-reading-clients-key";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients: usize = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let bytes: usize = std::env::args().nth(2).map_or(Ok(256), |a| a.parse())?;
    let binary = std::env::var("LEADGATE_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/leadgate").to_owned()
    });
    let dir = std::env::temp_dir().join(format!("leadgate-nrc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut gateway = Command::new(&binary)
        .arg("serve")
        .env("LEADGATE_LISTEN", addr.to_string())
        .env(
            "LEADGATE_DATABASE_URL",
            format!("sqlite://{}/db.sqlite?mode=rwc", dir.display()),
        )
        .env("LEADGATE_JWT_SECRET", SECRET)
        .env("LEADGATE_API_KEYS", API_KEY)
        // 1,000 clients connect from one address at once.
        .env("LEADGATE_CONNECT_RATE", "100000")
        // All of them as one user.
        .env("LEADGATE_MAX_CONNECTIONS_PER_USER", clients.to_string())
        .env("LEADGATE_SLOW_CLIENT_GRACE", "20")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {binary} ({e}); build it with cargo build --release -p leadgate"
            )
        })?;
    let pid = gateway.id();
    let ready = format!("http://{addr}/readyz");
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let idle = rss_kib(pid);

    let mut jobs = Vec::new();
    for _ in 0..10 {
        let r: serde_json::Value = http
            .post(format!("{base}/api/v1/jobs"))
            .bearer_auth(API_KEY)
            .body(json!({ "user_id": "alice" }).to_string())
            .send()
            .await?
            .json()
            .await?;
        jobs.push(r["jobId"].as_str().unwrap().to_owned());
    }
    let token = leadgate::auth::mint(SECRET, "alice", false, 3600)?;
    let mut sockets = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut socket = SioClient::connect(addr, &token).await;
        socket
            .emit_ack("subscribe-job", json!(jobs[i % jobs.len()]))
            .await;
        sockets.push(socket);
    }
    // From here on nobody reads: the sockets are only kept open.
    let connected = rss_kib(pid);
    println!(
        "gateway RSS idle: {} MiB; with {clients} subscribed clients: {} MiB ({:.1} KiB per client)",
        idle / 1024,
        connected / 1024,
        (connected.saturating_sub(idle)) as f64 / clients as f64
    );
    println!();
    println!(
        "{:>5} {:>9} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "s", "RSS MiB", "events sent", "msgs dropped", "evicted", "sockets", "files"
    );

    let line = "z".repeat(bytes);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next_report = Duration::ZERO;
    let mut peak = connected;
    while started.elapsed() < Duration::from_secs(80) {
        for job in &jobs {
            let event = json!({ "type": "log", "log": { "level": "info", "message": line } });
            http.post(format!("{base}/api/v1/jobs/{job}/events"))
                .bearer_auth(API_KEY)
                .body(event.to_string())
                .send()
                .await?;
            sent += 1;
        }
        peak = peak.max(rss_kib(pid));
        if started.elapsed() >= next_report {
            let metrics = http
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            println!(
                "{:>5} {:>9} {:>12} {:>12} {:>9} {:>9} {:>9}",
                started.elapsed().as_secs(),
                rss_kib(pid) / 1024,
                sent,
                metric(&metrics, "leadgate_messages_dropped_total"),
                metric(&metrics, "leadgate_slow_clients_disconnected_total"),
                metric(&metrics, "leadgate_connections{namespace=\"/\""),
                open_files(pid),
            );
            next_report += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!();
    println!(
        "peak RSS {} MiB, {} MiB above the connected baseline, after {sent} events ({} per client's job)",
        peak / 1024,
        peak.saturating_sub(connected) / 1024,
        sent / jobs.len() as u64
    );
    drop(sockets);
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
