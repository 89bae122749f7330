//! The processes of a benchmark run: gateways under test and client
//! processes, and what `/proc` says about them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Command, Plan, Report, Stats};

/// Which gateway a server process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Leadgate,
    /// The bare socketioxide server (`src/bin/bare-socketioxide.rs`): what
    /// leadgate is built on, without leadgate.
    Socketioxide,
    /// The Node.js Socket.IO peer (`node-peer/server.mjs`).
    Node,
}

impl Kind {
    /// Every gateway, in the order the table shows them.
    pub const ALL: [Kind; 3] = [Kind::Leadgate, Kind::Socketioxide, Kind::Node];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Leadgate => "leadgate",
            Kind::Socketioxide => "socketioxide",
            Kind::Node => "node",
        }
    }
}

/// Where the programs and services of a run are.
#[derive(Debug, Clone)]
pub struct Environment {
    pub leadgate_bin: PathBuf,
    pub socketioxide_bin: PathBuf,
    pub peer_dir: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub jwt_secret: String,
    pub log_dir: PathBuf,
}

/// A gateway under test.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    pid: u32,
}

impl Server {
    /// Starts a gateway on `port` (leadgate and the bare socketioxide
    /// server with `threads` worker threads) and waits until it completes an
    /// Engine.IO handshake.
    pub async fn start(
        kind: Kind,
        port: u16,
        threads: usize,
        env: &Environment,
    ) -> anyhow::Result<Server> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let log_path = env.log_dir.join(format!("{}-{port}.log", kind.name()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = match kind {
            Kind::Leadgate => {
                let mut command = tokio::process::Command::new(&env.leadgate_bin);
                command
                    .env("LEADGATE_LISTEN", addr.to_string())
                    .env("LEADGATE_DATABASE_URL", &env.database_url)
                    .env("LEADGATE_REDIS_URL", &env.redis_url)
                    .env("LEADGATE_REDIS_PREFIX", &env.redis_prefix)
                    .env("LEADGATE_JWT_SECRET", &env.jwt_secret)
                    .env("LEADGATE_WORKER_THREADS", threads.to_string())
                    // Every client of a run comes from a few loopback
                    // addresses, which the per-address limit is not for; the
                    // peer has no such limit.
                    .env("LEADGATE_CONNECT_RATE", "1000000");
                command
            }
            Kind::Socketioxide => {
                let mut command = tokio::process::Command::new(&env.socketioxide_bin);
                command
                    .env("LISTEN", addr.to_string())
                    .env("DATABASE_URL", &env.database_url)
                    .env("REDIS_URL", &env.redis_url)
                    .env("REDIS_PREFIX", &env.redis_prefix)
                    .env("JWT_SECRET", &env.jwt_secret)
                    .env("WORKER_THREADS", threads.to_string());
                command
            }
            Kind::Node => {
                let mut command = tokio::process::Command::new("node");
                command
                    .arg(env.peer_dir.join("server.mjs"))
                    .current_dir(&env.peer_dir)
                    .env("NODE_ENV", "production")
                    .env("HOST", addr.ip().to_string())
                    .env("PORT", port.to_string())
                    .env("DATABASE_URL", &env.database_url)
                    .env("REDIS_URL", &env.redis_url)
                    .env("REDIS_PREFIX", &env.redis_prefix)
                    .env("JWT_SECRET", &env.jwt_secret);
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut server = Server {
            kind,
            addr,
            child,
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; see {}",
                    kind.name(),
                    log_path.display()
                );
            }
            if engine_io_answers(addr).await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within 30 s; see {}",
                    kind.name(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid)
    }

    /// Asks the server to stop (SIGTERM) and kills it if it has not within
    /// ten seconds.
    pub async fn stop(mut self) {
        let asked = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .is_ok_and(|status| status.success());
        if asked
            && tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        let _ = self.child.kill().await;
    }
}

async fn engine_io_answers(addr: SocketAddr) -> bool {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    else {
        return false;
    };
    let open = matches!(
        tokio::time::timeout(Duration::from_secs(2), ws.next()).await,
        Ok(Some(Ok(Message::Text(text)))) if text.as_str().starts_with('0')
    );
    let _ = ws.close(None).await;
    open
}

/// A process's resident memory and CPU time so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    /// User and system time together.
    pub cpu_ticks: u64,
    /// System time: the kernel's work on the process's behalf, on loopback
    /// including the receiving side of every TCP segment it sends.
    pub system_ticks: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Usage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        // Fields 14 and 15 of /proc/<pid>/stat, counted after the command
        // name, which is in parentheses and may hold spaces.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after_name = &stat[stat.rfind(')').context("malformed /proc/<pid>/stat")? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        Ok(Usage {
            rss_kib,
            cpu_ticks: utime + stime,
            system_ticks: stime,
        })
    }
}

/// Clock ticks a second, the unit of CPU times in `/proc`.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A client process (see [`crate::clients`]).
pub struct ClientProc {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    reports: mpsc::UnboundedReceiver<Report>,
    /// The running total of updates received, kept current by a reader task.
    pub delivered: Arc<AtomicU64>,
}

impl ClientProc {
    /// Starts a client process with `plan` and waits until it is armed.
    pub async fn spawn(plan: &Plan) -> anyhow::Result<ClientProc> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("clients")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a client process")?;
        let pid = child.id().context("the client process exited at once")?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let delivered = Arc::new(AtomicU64::new(0));
        let (tx, reports) = mpsc::unbounded_channel();
        {
            let delivered = delivered.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Report>(&line) {
                        Ok(Report::Delivered { total }) => {
                            delivered.store(total, Ordering::Relaxed)
                        }
                        Ok(report) => {
                            if tx.send(report).is_err() {
                                break;
                            }
                        }
                        Err(e) => eprintln!("unreadable line from a client process: {e}: {line}"),
                    }
                }
            });
        }
        let mut line = serde_json::to_vec(plan)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        let mut proc = ClientProc {
            child,
            pid,
            stdin,
            reports,
            delivered,
        };
        match proc.next_report(Duration::from_secs(60)).await? {
            Report::Armed => Ok(proc),
            other => bail!("expected the client process to arm, got {other:?}"),
        }
    }

    pub async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub async fn next_report(&mut self, within: Duration) -> anyhow::Result<Report> {
        match tokio::time::timeout(within, self.reports.recv()).await {
            Ok(Some(report)) => Ok(report),
            Ok(None) => bail!("a client process exited unexpectedly"),
            Err(_) => bail!("a client process did not answer within {within:?}"),
        }
    }

    pub async fn stats(&mut self) -> anyhow::Result<Stats> {
        self.send(&Command::Report).await?;
        match self.next_report(Duration::from_secs(30)).await? {
            Report::Stats(stats) => Ok(stats),
            other => bail!("expected stats, got {other:?}"),
        }
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid)
    }

    pub async fn quit(mut self) {
        let _ = self.send(&Command::Quit).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
