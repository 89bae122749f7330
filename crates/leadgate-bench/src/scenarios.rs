//! The scenarios, each run the same way against every gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use jsonwebtoken::{EncodingKey, Header};
use redis::AsyncCommands;
use serde::Serialize;

use crate::clients::{ClientSpec, Command, Plan, Report, Stats, new_histogram, now_micros};
use crate::probe::WakeupProbe;
use crate::procs::{ClientProc, Environment, Kind, Server, Usage, clock_ticks_per_second};

/// Sizes and durations of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub idle_sizes: Vec<usize>,
    pub connect_count: usize,
    pub fanout_clients: usize,
    /// Fan-out is measured once for each: deliveries the publisher keeps in
    /// flight per client.
    pub fanout_in_flight: Vec<u64>,
    pub jobs: usize,
    pub measure: Duration,
    pub settle: Duration,
    /// Deliveries a second in the latency scenario.
    pub latency_rate: u64,
    /// Connections one client process holds at most.
    pub per_process: usize,
    /// Worker threads of each leadgate and bare socketioxide instance;
    /// `None` gives each its share of the cores.
    pub leadgate_threads: Option<usize>,
}

impl Settings {
    pub fn full() -> Settings {
        Settings {
            idle_sizes: vec![1_000, 10_000, 19_000],
            connect_count: 10_000,
            fanout_clients: 10_000,
            fanout_in_flight: vec![4, 16],
            jobs: 1_000,
            measure: Duration::from_secs(10),
            settle: Duration::from_secs(3),
            latency_rate: 20_000,
            per_process: 7_000,
            leadgate_threads: None,
        }
    }

    /// Small enough to run on every CI run, large enough to exercise every
    /// path: several client processes, two instances, Redis.
    pub fn quick() -> Settings {
        Settings {
            idle_sizes: vec![300],
            connect_count: 300,
            fanout_clients: 400,
            fanout_in_flight: vec![4, 16],
            jobs: 40,
            measure: Duration::from_secs(2),
            settle: Duration::from_millis(500),
            latency_rate: 2_000,
            per_process: 250,
            leadgate_threads: None,
        }
    }
}

/// The jobs of a run: `(job id, owner)`.
pub type Jobs = Vec<(String, String)>;

pub struct Bench {
    pub env: Environment,
    pub settings: Settings,
    pub jobs: Jobs,
    next_port: u16,
    next_source: u8,
    ticks_per_second: u64,
    encoding_key: EncodingKey,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub requested: usize,
    /// Connections made.
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
    pub setup_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    pub connections: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// The server's CPU time over the connects, in microseconds each.
    pub server_cpu_us_per_connect: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub clients: usize,
    /// Deliveries the publisher kept in flight per client: published, not
    /// yet received.
    pub in_flight_per_client: u64,
    pub jobs: usize,
    pub seconds: f64,
    pub published: u64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    /// Both instances' CPU time over the deliveries, in microseconds each.
    pub server_cpu_us_per_delivery: f64,
    /// The part of it spent in the kernel, sending.
    pub server_system_us_per_delivery: f64,
    /// Cores the two instances kept busy, on average.
    pub server_cores: f64,
    /// Cores the client processes and the publisher kept busy.
    pub generator_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub target_per_second: u64,
    /// Events published, and deliveries they called for.
    pub published: u64,
    pub expected: u64,
    pub delivered_per_second: f64,
    pub delivered: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// How much later than asked a thread that sleeps 1 ms woke, over the
    /// same seconds: the machine's own share of any delay (see `probe`).
    pub wakeup_delay_p99_ms: f64,
    pub wakeup_delay_max_ms: f64,
}

/// What went wrong in a run without stopping it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Faults {
    pub failed_connections: u64,
    /// Deliveries that never came: published events times their
    /// subscribers, less what the clients received.
    pub undelivered: u64,
    pub missed: u64,
    pub duplicated: u64,
    pub resyncs: u64,
    pub errors: u64,
    pub closed: u64,
    pub first_error: Option<String>,
}

impl Faults {
    pub fn is_clean(&self) -> bool {
        self.failed_connections == 0
            && self.undelivered == 0
            && self.missed == 0
            && self.duplicated == 0
            && self.resyncs == 0
            && self.errors == 0
            && self.closed == 0
    }

    fn add_stats(&mut self, stats: &Stats) {
        self.missed += stats.missed;
        self.duplicated += stats.duplicated;
        self.resyncs += stats.resyncs;
        self.errors += stats.errors;
        self.closed += stats.closed;
    }

    fn add_ready(&mut self, ready: &Ready) {
        self.failed_connections += ready.failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&ready.first_error);
        }
    }
}

/// Every result of one gateway.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Results {
    pub idle: Vec<IdleResult>,
    /// The idle scenario with clients that upgrade from long-polling.
    pub idle_upgrade: Vec<IdleResult>,
    pub connect: Option<ConnectResult>,
    /// One for each of [`Settings::fanout_in_flight`].
    pub fanout: Vec<FanoutResult>,
    pub latency: Option<LatencyResult>,
    pub faults: Faults,
}

struct Ready {
    connected: u64,
    failed: u64,
    seconds: f64,
    first_error: Option<String>,
}

/// The client processes of one scenario.
struct Fleet {
    procs: Vec<ClientProc>,
}

impl Fleet {
    async fn spawn(plans: Vec<Plan>) -> anyhow::Result<Fleet> {
        let mut procs = Vec::with_capacity(plans.len());
        for plan in &plans {
            procs.push(ClientProc::spawn(plan).await?);
        }
        Ok(Fleet { procs })
    }

    /// Tells every process to connect and waits until all are done.
    async fn go(&mut self) -> anyhow::Result<Ready> {
        let started = Instant::now();
        for proc in &mut self.procs {
            proc.send(&Command::Go).await?;
        }
        let mut ready = Ready {
            connected: 0,
            failed: 0,
            seconds: 0.0,
            first_error: None,
        };
        for proc in &mut self.procs {
            match proc.next_report(Duration::from_secs(300)).await? {
                Report::Ready {
                    connected,
                    failed,
                    first_error,
                    ..
                } => {
                    ready.connected += connected;
                    ready.failed += failed;
                    if ready.first_error.is_none() {
                        ready.first_error = first_error;
                    }
                }
                other => bail!("expected a client process to be ready, got {other:?}"),
            }
        }
        ready.seconds = started.elapsed().as_secs_f64();
        Ok(ready)
    }

    /// Resets every process's counters, and waits until each has: a
    /// process answers commands in order.
    async fn reset(&mut self) -> anyhow::Result<()> {
        for proc in &mut self.procs {
            proc.send(&Command::Reset).await?;
            proc.stats().await?;
        }
        Ok(())
    }

    /// Every process's counters, summed, and their latencies merged.
    async fn stats(&mut self) -> anyhow::Result<(Stats, Histogram<u64>)> {
        let mut total = Stats::default();
        let mut latency = new_histogram();
        for proc in &mut self.procs {
            let stats = proc.stats().await?;
            total.delivered += stats.delivered;
            total.missed += stats.missed;
            total.duplicated += stats.duplicated;
            total.resyncs += stats.resyncs;
            total.errors += stats.errors;
            total.closed += stats.closed;
            for &(value, count) in &stats.latency_us {
                latency.saturating_record_n(value, count);
            }
        }
        Ok((total, latency))
    }

    fn delivered(&self) -> u64 {
        self.procs
            .iter()
            .map(|proc| proc.delivered.load(Ordering::Relaxed))
            .sum()
    }

    fn cpu_ticks(&self) -> u64 {
        self.procs
            .iter()
            .filter_map(|proc| proc.usage().ok())
            .map(|usage| usage.cpu_ticks)
            .sum()
    }

    async fn quit(self) {
        for proc in self.procs {
            proc.quit().await;
        }
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// A token for user `sub`, valid for `ttl`.
pub fn token(key: &EncodingKey, sub: &str, ttl: Duration) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &Claims { sub, exp },
        key,
    )?)
}

/// The first port after `after` that nothing listens on, so that a server
/// left over from an interrupted run is never taken for the one just
/// started.
pub fn free_port(after: u16) -> u16 {
    let mut port = after;
    loop {
        port += 1;
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

impl Bench {
    pub fn new(env: Environment, settings: Settings, jobs: Jobs) -> Bench {
        let encoding_key = EncodingKey::from_secret(env.jwt_secret.as_bytes());
        Bench {
            env,
            settings,
            jobs,
            next_port: 31_000,
            next_source: 10,
            ticks_per_second: clock_ticks_per_second(),
            encoding_key,
        }
    }

    /// The next port nothing listens on ([`free_port`]).
    fn port(&mut self) -> u16 {
        self.next_port = free_port(self.next_port);
        self.next_port
    }

    /// A fresh loopback source address for each client process, so that
    /// no scenario runs short of local ports or meets the TIME_WAIT sockets
    /// of the one before.
    fn source(&mut self) -> IpAddr {
        self.next_source = if self.next_source >= 250 {
            10
        } else {
            self.next_source + 1
        };
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.next_source))
    }

    fn token(&self, sub: &str) -> anyhow::Result<String> {
        token(&self.encoding_key, sub, Duration::from_secs(6 * 3600))
    }

    /// `count` clients, client `i` on job `i % jobs` with its owner's token,
    /// split over processes of at most `per_process` clients. With several
    /// targets, a job's subscribers are spread over all of them.
    fn plans(
        &mut self,
        count: usize,
        targets: &[SocketAddr],
        subscribe: bool,
        min_processes: usize,
    ) -> anyhow::Result<Vec<Plan>> {
        let per_process = self.settings.per_process;
        let processes = count.div_ceil(per_process).max(min_processes);
        let jobs = self.jobs.len();
        let mut plans: Vec<Plan> = (0..processes)
            .map(|_| Plan {
                targets: targets.to_vec(),
                source: self.source(),
                clients: Vec::with_capacity(count / processes + 1),
                concurrency: 128,
                upgrade: false,
            })
            .collect();
        for i in 0..count {
            let (job, owner) = &self.jobs[i % jobs];
            plans[i % processes].clients.push(ClientSpec {
                token: self.token(owner)?,
                job: subscribe.then(|| job.clone()),
                target: (i / jobs) % targets.len(),
            });
        }
        Ok(plans)
    }

    /// Starts one of `instances` gateways that share this machine. Unless
    /// the settings say otherwise, each leadgate or bare socketioxide
    /// instance gets its share of the cores as threads, as an operator
    /// would configure them; a peer instance is one Node.js process, one
    /// thread, whatever it is given.
    async fn start(&mut self, kind: Kind, instances: usize) -> anyhow::Result<Server> {
        let port = self.port();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self
            .settings
            .leadgate_threads
            .unwrap_or((cores / instances).max(1));
        Server::start(kind, port, threads, &self.env).await
    }

    /// Connects, subscribes and disconnects a few clients, so that what a
    /// gateway sets up once (pools, caches, code paths) is not counted as
    /// the cost of the measured connections.
    async fn warm_up(&mut self, server: &Server) -> anyhow::Result<()> {
        let plans = self.plans(100.min(self.jobs.len()), &[server.addr], true, 1)?;
        let mut fleet = Fleet::spawn(plans).await?;
        let ready = fleet.go().await?;
        if ready.failed > 0 {
            bail!(
                "warming up {} failed: {}",
                server.kind.name(),
                ready.first_error.unwrap_or_default()
            );
        }
        fleet.quit().await;
        tokio::time::sleep(self.settings.settle).await;
        Ok(())
    }

    /// Idle: `n` connections, each subscribed to one job; the server's RSS
    /// growth divided by `n`. With `upgrade`, every client starts on
    /// long-polling and upgrades to a WebSocket, as a default
    /// socket.io-client does.
    pub async fn idle(
        &mut self,
        kind: Kind,
        n: usize,
        upgrade: bool,
        faults: &mut Faults,
    ) -> anyhow::Result<IdleResult> {
        let server = self.start(kind, 1).await?;
        self.warm_up(&server).await?;
        let before = server.usage()?;
        let mut plans = self.plans(n, &[server.addr], true, 1)?;
        for plan in &mut plans {
            plan.upgrade = upgrade;
        }
        let mut fleet = Fleet::spawn(plans).await?;
        let ready = fleet.go().await?;
        faults.add_ready(&ready);
        let after = settled_usage(&server, self.settings.settle).await?;
        let (stats, _) = fleet.stats().await?;
        faults.add_stats(&stats);
        fleet.quit().await;
        server.stop().await;
        Ok(IdleResult {
            requested: n,
            connections: ready.connected as usize,
            rss_before_kib: before.rss_kib,
            rss_after_kib: after.rss_kib,
            kib_per_connection: (after.rss_kib as f64 - before.rss_kib as f64)
                / ready.connected.max(1) as f64,
            setup_seconds: ready.seconds,
        })
    }

    /// Connect: authenticated Socket.IO connects a second to one instance,
    /// two client processes setting up 128 connections at a time each.
    pub async fn connect(
        &mut self,
        kind: Kind,
        faults: &mut Faults,
    ) -> anyhow::Result<ConnectResult> {
        let server = self.start(kind, 1).await?;
        self.warm_up(&server).await?;
        let plans = self.plans(self.settings.connect_count, &[server.addr], false, 2)?;
        let mut fleet = Fleet::spawn(plans).await?;
        let before = server.usage()?;
        let ready = fleet.go().await?;
        let after = server.usage()?;
        faults.add_ready(&ready);
        fleet.quit().await;
        server.stop().await;
        let cpu_us =
            (after.cpu_ticks - before.cpu_ticks) as f64 / self.ticks_per_second as f64 * 1e6;
        Ok(ConnectResult {
            connections: ready.connected,
            seconds: ready.seconds,
            per_second: ready.connected as f64 / ready.seconds,
            server_cpu_us_per_connect: cpu_us / ready.connected.max(1) as f64,
        })
    }

    /// Publishes with `per_client` deliveries per client in flight: a
    /// warm-up, then the measurement, then a wait until everything arrived.
    /// Returns the figures and the deliveries missing since the start.
    async fn measure_fanout(
        &self,
        servers: &[Server],
        fleet: &Fleet,
        publisher: &mut Publisher,
        per_client: u64,
    ) -> anyhow::Result<(FanoutResult, u64)> {
        let clients = self.settings.fanout_clients;
        let window = per_client * clients as u64;
        publisher
            .closed_loop(fleet, window, self.settings.measure / 4)
            .await?;
        let server_before = usage_sum(servers)?;
        let generator_before = fleet.cpu_ticks() + Usage::of(std::process::id())?.cpu_ticks;
        let delivered_before = fleet.delivered();
        let published_before = publisher.published;
        let started = Instant::now();
        publisher
            .closed_loop(fleet, window, self.settings.measure)
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let delivered = fleet.delivered() - delivered_before;
        let server_after = usage_sum(servers)?;
        let server_ticks = server_after.cpu_ticks - server_before.cpu_ticks;
        let server_system_ticks = server_after.system_ticks - server_before.system_ticks;
        let generator_ticks =
            fleet.cpu_ticks() + Usage::of(std::process::id())?.cpu_ticks - generator_before;
        let missing = publisher.drain(fleet).await;
        let ticks = self.ticks_per_second as f64;
        let fanout = FanoutResult {
            clients,
            in_flight_per_client: per_client,
            jobs: self.jobs.len(),
            seconds,
            published: publisher.published - published_before,
            delivered,
            delivered_per_second: delivered as f64 / seconds,
            server_cpu_us_per_delivery: server_ticks as f64 / ticks * 1e6 / delivered.max(1) as f64,
            server_system_us_per_delivery: server_system_ticks as f64 / ticks * 1e6
                / delivered.max(1) as f64,
            server_cores: server_ticks as f64 / ticks / seconds,
            generator_cores: generator_ticks as f64 / ticks / seconds,
        };
        Ok((fanout, missing))
    }

    /// Fan-out and latency, on two instances behind Redis with the same
    /// clients: first as fast as the servers absorb events, then at a fixed
    /// rate.
    pub async fn fanout_and_latency(
        &mut self,
        kind: Kind,
        faults: &mut Faults,
    ) -> anyhow::Result<(Vec<FanoutResult>, LatencyResult)> {
        let servers = [self.start(kind, 2).await?, self.start(kind, 2).await?];
        for server in &servers {
            self.warm_up(server).await?;
        }
        let clients = self.settings.fanout_clients;
        let targets: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
        let plans = self.plans(clients, &targets, true, 2)?;
        let mut fleet = Fleet::spawn(plans).await?;
        let ready = fleet.go().await?;
        faults.add_ready(&ready);
        if ready.connected as usize != clients {
            bail!(
                "only {} of {clients} clients connected to {}: {}",
                ready.connected,
                kind.name(),
                ready.first_error.unwrap_or_default()
            );
        }
        let mut publisher = Publisher::connect(&self.env, &self.jobs, clients).await?;

        // As fast as they absorb: the publisher keeps a bounded number of
        // deliveries in flight, so no queue anywhere overflows. How many is
        // part of the load: a gateway that writes a client's queued packets
        // with one send does less per delivery the more are queued, one
        // that sends each on its own does not. Measured at each setting, on
        // the same clients.
        let mut fanouts = Vec::new();
        // Deliveries missing so far, counted in the faults (each drain
        // reports all that are missing since the start).
        let mut missing_counted = 0;
        for &per_client in &self.settings.fanout_in_flight {
            let (fanout, missing) = self
                .measure_fanout(&servers, &fleet, &mut publisher, per_client)
                .await?;
            faults.undelivered += missing.saturating_sub(missing_counted);
            missing_counted = missing_counted.max(missing);
            fanouts.push(fanout);
        }
        let (stats, _) = fleet.stats().await?;
        faults.add_stats(&stats);

        fleet.reset().await?;
        let rate = self.settings.latency_rate;
        let started = Instant::now();
        let delivered_before = fleet.delivered();
        let expected_before = publisher.expected;
        let probe = WakeupProbe::start().context("starting the wake-up probe")?;
        let published = publisher.fixed_rate(rate, self.settings.measure).await;
        // Stopped before any error returns, so the probe's thread never
        // outlives the scenario.
        let wakeups = probe.finish();
        let published = published?;
        let missing = publisher.drain(&fleet).await;
        let seconds = started.elapsed().as_secs_f64();
        let delivered = fleet.delivered() - delivered_before;
        let (stats, latency) = fleet.stats().await?;
        faults.add_stats(&stats);
        // What the fan-out left undelivered is counted already.
        faults.undelivered += missing.saturating_sub(missing_counted);
        let ms = |micros: &Histogram<u64>, quantile: f64| {
            micros.value_at_quantile(quantile) as f64 / 1000.0
        };
        let latency = LatencyResult {
            target_per_second: rate,
            published,
            expected: publisher.expected - expected_before,
            delivered_per_second: delivered as f64 / seconds,
            delivered,
            p50_ms: ms(&latency, 0.50),
            p90_ms: ms(&latency, 0.90),
            p99_ms: ms(&latency, 0.99),
            max_ms: latency.max() as f64 / 1000.0,
            wakeup_delay_p99_ms: ms(&wakeups, 0.99),
            wakeup_delay_max_ms: wakeups.max() as f64 / 1000.0,
        };
        fleet.quit().await;
        for server in servers {
            server.stop().await;
        }
        Ok((fanouts, latency))
    }
}

/// The server's usage once its RSS has settled: read every half second
/// after `settle` until it moves by less than 0.5%, at most for 10 s more.
async fn settled_usage(server: &Server, settle: Duration) -> anyhow::Result<Usage> {
    tokio::time::sleep(settle).await;
    let mut last = server.usage()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server.usage()?;
        let moved = (now.rss_kib as f64 - last.rss_kib as f64).abs();
        last = now;
        if moved < 0.005 * now.rss_kib as f64 {
            break;
        }
    }
    Ok(last)
}

fn usage_sum(servers: &[Server]) -> anyhow::Result<Usage> {
    let mut sum = Usage::default();
    for server in servers {
        let usage = server.usage()?;
        sum.rss_kib += usage.rss_kib;
        sum.cpu_ticks += usage.cpu_ticks;
        sum.system_ticks += usage.system_ticks;
    }
    Ok(sum)
}

/// How long the publisher waits for Redis to answer a pipeline.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes job events the way a worker does: `PUBLISH <prefix>job:<id>`
/// with a `job-update` payload carrying the next `seq` of its job. Each log
/// line carries its publish time, which the clients subtract from their
/// receipt time.
struct Publisher {
    redis: redis::aio::MultiplexedConnection,
    channels: Vec<String>,
    job_ids: Vec<String>,
    seqs: Vec<u64>,
    next_job: usize,
    /// Subscribers of each job.
    fan: u64,
    published: u64,
    /// Deliveries expected in all: `published * fan`.
    expected: u64,
}

impl Publisher {
    async fn connect(env: &Environment, jobs: &Jobs, clients: usize) -> anyhow::Result<Publisher> {
        let client = redis::Client::open(env.redis_url.as_str())?;
        // The client's default gives up on an answer after 500 ms; on a
        // machine busy with a benchmark, Redis can take that long, and a
        // stall belongs in the figures rather than ending the run.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(PUBLISH_TIMEOUT));
        let redis = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting the publisher to Redis")?;
        if !clients.is_multiple_of(jobs.len()) {
            bail!("clients must be a multiple of jobs, so every job has as many subscribers");
        }
        Ok(Publisher {
            redis,
            channels: jobs
                .iter()
                .map(|(id, _)| format!("{}job:{id}", env.redis_prefix))
                .collect(),
            job_ids: jobs.iter().map(|(id, _)| id.clone()).collect(),
            seqs: vec![0; jobs.len()],
            next_job: 0,
            fan: (clients / jobs.len()) as u64,
            published: 0,
            expected: 0,
        })
    }

    /// Publishes `count` events, one job after the other, in one pipeline,
    /// stamped with the time they are sent.
    async fn publish(&mut self, count: usize) -> anyhow::Result<()> {
        self.publish_stamped(count, now_micros(), 0.0).await
    }

    /// Publishes `count` events stamped `first_us`, `first_us + step_us`, …
    async fn publish_stamped(
        &mut self,
        count: usize,
        first_us: u64,
        step_us: f64,
    ) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for i in 0..count {
            let sent = first_us + (i as f64 * step_us) as u64;
            let job = self.next_job;
            self.next_job = (self.next_job + 1) % self.channels.len();
            self.seqs[job] += 1;
            let payload = format!(
                r#"{{"type":"log","jobId":"{}","seq":{},"log":{{"level":"info","message":"t={sent} enriched lead {} of the benchmark","timestamp":"2026-11-22T10:00:00.000Z"}}}}"#,
                self.job_ids[job], self.seqs[job], self.seqs[job]
            );
            pipe.publish(&self.channels[job], payload).ignore();
        }
        pipe.query_async::<()>(&mut self.redis)
            .await
            .context("publishing to Redis")?;
        self.published += count as u64;
        self.expected += count as u64 * self.fan;
        Ok(())
    }

    /// Publishes for `length`, keeping at most `window` deliveries in
    /// flight.
    async fn closed_loop(
        &mut self,
        fleet: &Fleet,
        window: u64,
        length: Duration,
    ) -> anyhow::Result<()> {
        let batch = (window / self.fan / 8).clamp(1, 500) as usize;
        let deadline = Instant::now() + length;
        while Instant::now() < deadline {
            let in_flight = self.expected_backlog(fleet);
            if in_flight + batch as u64 * self.fan <= window {
                self.publish(batch).await?;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    /// Deliveries published but not yet received.
    fn expected_backlog(&self, fleet: &Fleet) -> u64 {
        self.expected.saturating_sub(fleet.delivered())
    }

    /// Publishes `per_second / fan` events a second for `length`, a batch
    /// every millisecond, and returns how many.
    ///
    /// Each event is stamped with the time it was due, not the time it went
    /// out: when the publisher is held up (by a busy machine), the wait
    /// counts as latency instead of vanishing from it.
    async fn fixed_rate(&mut self, per_second: u64, length: Duration) -> anyhow::Result<u64> {
        let events_per_second = (per_second / self.fan).max(1);
        let total = (length.as_secs_f64() * events_per_second as f64) as u64;
        let step_us = 1e6 / events_per_second as f64;
        let started = Instant::now();
        let started_us = now_micros();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0u64;
        while sent < total {
            tick.tick().await;
            let due =
                ((started.elapsed().as_secs_f64() * events_per_second as f64) as u64).min(total);
            if due > sent {
                // Event k (from 0) is due at (k + 1) steps.
                let first_us = started_us + ((sent + 1) as f64 * step_us) as u64;
                self.publish_stamped((due - sent) as usize, first_us, step_us)
                    .await?;
                sent = due;
            }
        }
        Ok(sent)
    }

    /// Waits until every published event has reached every subscriber, or
    /// 15 s have passed; returns the deliveries still missing.
    async fn drain(&self, fleet: &Fleet) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while fleet.delivered() < self.expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.expected.saturating_sub(fleet.delivered())
    }
}

/// Empties the benchmark database's jobs and creates `count`, each owned by
/// its own user.
pub async fn seed_jobs(database_url: &str, count: usize) -> anyhow::Result<Jobs> {
    create_database(database_url).await?;
    let store = leadgate_store::Store::connect(database_url)
        .await
        .with_context(|| format!("connecting to {database_url}"))?;
    store.migrate().await?;
    {
        use sea_orm::ConnectionTrait;
        let db = sea_orm::Database::connect(database_url).await?;
        db.execute_unprepared("TRUNCATE jobs, job_logs").await?;
        db.close().await?;
    }
    let mut jobs = Vec::with_capacity(count);
    for i in 0..count {
        let owner = format!("bench-user-{i}");
        let id = store.create_job(&owner, 100).await?;
        jobs.push((id.to_string(), owner));
    }
    store.close().await?;
    Ok(jobs)
}

/// Creates the database named in a PostgreSQL URL if it does not exist.
async fn create_database(database_url: &str) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    let (server, name) = database_url
        .rsplit_once('/')
        .context("the database URL names no database")?;
    let name = name.split('?').next().unwrap_or(name);
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("the benchmark database name {name:?} must be letters, digits and _");
    }
    let admin = sea_orm::Database::connect(format!("{server}/postgres"))
        .await
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {server}; is it running? (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
            )
        })?;
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        ))
        .await?
        .is_some();
    if !exists {
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
    }
    admin.close().await?;
    Ok(())
}

/// Checks that Redis answers, with a hint when it does not.
pub async fn check_redis(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await.with_context(|| {
        format!("connecting to Redis at {url}; is it running? (redis-server --daemonize yes --port 6379 --save '' --appendonly no)")
    })?;
    let _: String = conn.ping().await?;
    Ok(())
}
