//! Lead views refreshed after a crawl: many browser tabs on the leads view,
//! half on Socket.IO `/leads` and half on the plain WebSocket `/ws/leads/`,
//! spread over two leadgate instances that share one database and one
//! Redis, each looking at its own page and filter. A crawler writes new
//! leads and announces them; every view must be pushed its own fresh page.
//!
//! Measured: the time from the announcement to the last view refreshed,
//! how many page queries each instance made for it (against how many
//! distinct pages its views look at), and the instances' CPU time. Every
//! pushed page is checked against the database (total, length and first
//! lead of one SQL statement for that page).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::EncodingKey;
use leadgate_protocol::leads::{LeadFilter, LeadInput, LeadsQuery};
use leadgate_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::task::AbortOnDropHandle;

use crate::procs::{Environment, Kind, Server, Usage, clock_ticks_per_second};
use crate::scenarios::{free_port, token};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connections opened at once while the views connect.
const CONNECTING: usize = 256;
/// How long the views may take to be refreshed before the run fails.
const REFRESH_WITHIN: Duration = Duration::from_secs(60);

/// A view: which instance, which transport, which page.
#[derive(Debug, Clone)]
struct View {
    instance: usize,
    socket_io: bool,
    query: LeadsQuery,
}

/// What a view was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    total: u64,
    len: usize,
    first: Option<String>,
}

#[derive(Deserialize)]
struct PageMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    projects: Vec<ProjectId>,
    #[serde(default)]
    pagination: Option<PaginationTotal>,
}

#[derive(Deserialize)]
struct ProjectId {
    project_id: String,
}

#[derive(Deserialize)]
struct PaginationTotal {
    total: u64,
}

impl PageMessage {
    fn seen(&self) -> Seen {
        Seen {
            total: self.pagination.as_ref().map_or(0, |p| p.total),
            len: self.projects.len(),
            first: self.projects.first().map(|p| p.project_id.clone()),
        }
    }
}

/// The figures of one run.
pub struct Refresh {
    pub views: usize,
    pub distinct_pages: [usize; 2],
    pub page_queries: [u64; 2],
    pub index_refreshes: [u64; 2],
    pub last_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_ms: [f64; 2],
    pub connect_s: f64,
    pub rss_mib: [u64; 2],
}

/// The views of a run: a mix of what people look at. Most look at the
/// first page as it opens; others at a provider, remote leads, a skill, a
/// search, a later page or a combination, with the page sizes a UI offers.
fn views(count: usize, providers: &[&str], skills: &[&str]) -> Vec<View> {
    let words = [
        "senior",
        "rust",
        "entwickler",
        "kubernetes",
        "archit",
        "berater",
        "lead",
        "data",
    ];
    let filter = |value: Value| -> LeadFilter {
        serde_json::from_value::<LeadFilter>(value)
            .expect("a valid filter")
            .normalized()
            .expect("a valid filter")
    };
    (0..count)
        .map(|i| {
            // Spread the kinds of view evenly over the run.
            let n = i / 4;
            let (page, page_size, filter) = match n % 20 {
                0..=7 => (1, 100, LeadFilter::default()),
                8..=10 => (
                    1,
                    100,
                    filter(json!({ "provider": providers[n % providers.len()] })),
                ),
                11 | 12 => (1, 50, filter(json!({ "remote": n % 3 != 0 }))),
                13 | 14 => (
                    1,
                    50,
                    filter(json!({ "skills": [skills[n % skills.len()]] })),
                ),
                15 | 16 => (1, 50, filter(json!({ "q": words[n % words.len()] }))),
                17 | 18 => (2 + (n % 9) as u32, 50, LeadFilter::default()),
                _ => (
                    1,
                    20,
                    filter(json!({
                        "provider": providers[n % providers.len()],
                        "remote": n % 2 == 0,
                        "skills": [skills[(n / 7) % skills.len()]],
                    })),
                ),
            };
            View {
                instance: i % 2,
                socket_io: (i / 2) % 2 == 0,
                query: LeadsQuery {
                    page,
                    page_size,
                    filter,
                },
            }
        })
        .collect()
}

/// The `get_leads` a view sends.
fn get_leads(query: &LeadsQuery) -> Value {
    json!({ "page": query.page, "page_size": query.page_size, "filter": query.filter })
}

/// Opens a view and waits for its own page; returns the connection.
async fn open(addr: SocketAddr, view: &View, token: &str) -> anyhow::Result<Ws> {
    if view.socket_io {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        expect_prefix(&mut ws, "0").await?;
        let auth = json!({ "token": token });
        ws.send(Message::text(format!("40/leads,{auth}"))).await?;
        expect_prefix(&mut ws, "40/leads").await?;
        next_page(&mut ws, true, "leads_init").await?;
        let request = json!(["get_leads", get_leads(&view.query)]);
        ws.send(Message::text(format!("42/leads,{request}")))
            .await?;
        next_page(&mut ws, true, "leads_init").await?;
        Ok(ws)
    } else {
        let url = format!("ws://{addr}/ws/leads/?token={token}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        next_page(&mut ws, false, "leads_init").await?;
        let mut request = get_leads(&view.query);
        request["type"] = json!("get_leads");
        ws.send(Message::text(request.to_string())).await?;
        next_page(&mut ws, false, "leads_init").await?;
        Ok(ws)
    }
}

/// Reads until a packet that starts with `prefix`, answering pings.
async fn expect_prefix(ws: &mut Ws, prefix: &str) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str().starts_with(prefix) => return Ok(()),
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await?;
            }
            other => bail!("expected {prefix}…, got {other:?}"),
        }
    }
}

/// Reads until a page message of `kind`, answering Engine.IO pings.
async fn next_page(ws: &mut Ws, socket_io: bool, kind: &str) -> anyhow::Result<()> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("the connection ended waiting for {kind}: {other:?}"),
        };
        let text = text.as_str();
        if socket_io && text == "2" {
            ws.send(Message::text("3")).await?;
            continue;
        }
        if socket_io && !text.starts_with("42/leads,") {
            continue;
        }
        let message = page_of(text, socket_io)?;
        if message.kind == kind {
            return Ok(());
        }
        if message.kind == "error" {
            bail!("the gateway answered an error: {text}");
        }
    }
}

/// Reads until `leads_updated`, answering Engine.IO pings; the frame is
/// told by its start and kept as it came.
async fn next_update(ws: &mut Ws, socket_io: bool) -> anyhow::Result<(Utf8Bytes, Instant)> {
    let start = if socket_io {
        "42/leads,[\"leads_updated\","
    } else {
        "{\"type\":\"leads_updated\","
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if text.as_str().starts_with(start) {
                    return Ok((text, Instant::now()));
                }
                if socket_io && text.as_str() == "2" {
                    ws.send(Message::text("3")).await?;
                } else if text.as_str().contains("\"error\"") {
                    bail!("the gateway sent an error: {}", text.as_str());
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("the connection ended waiting for leads_updated: {other:?}"),
        }
    }
}

/// The page message of a frame.
fn page_of(text: &str, socket_io: bool) -> anyhow::Result<PageMessage> {
    if socket_io {
        let args = text
            .strip_prefix("42/leads,")
            .context("not a /leads event")?;
        let (event, message): (String, PageMessage) = serde_json::from_str(args)?;
        anyhow::ensure!(
            event == message.kind,
            "event {event} carries a {}",
            message.kind
        );
        Ok(message)
    } else {
        Ok(serde_json::from_str(text)?)
    }
}

/// One counter of an instance's `/metrics`: the sum over the series whose
/// line starts with `series`.
async fn metric(addr: SocketAddr, series: &str) -> anyhow::Result<u64> {
    let text = http_get(addr, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .with_context(|| format!("GET {path} of {addr} took over 10 s"))??;
    if !answer.starts_with("HTTP/1.1 200") {
        let status = answer.lines().next().unwrap_or("no answer");
        bail!("GET {path} of {addr}: {status}");
    }
    Ok(answer)
}

/// Starts two instances on `database_url`, opens `count` views, writes a
/// crawl and announces it, and measures the refresh.
pub async fn run(
    leadgate_bin: &std::path::Path,
    database_url: &str,
    redis_url: &str,
    count: usize,
    providers: &[&str],
    skills: &[&str],
    crawl: Vec<(String, Vec<LeadInput>)>,
) -> anyhow::Result<Refresh> {
    let log_dir = std::env::temp_dir().join(format!("leadgate-bench-views-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let env = Environment {
        leadgate_bin: leadgate_bin.to_owned(),
        socketioxide_bin: Default::default(),
        peer_dir: Default::default(),
        database_url: database_url.to_owned(),
        redis_url: redis_url.to_owned(),
        redis_prefix: format!("leadgate-bench-views-{}:", std::process::id()),
        jwt_secret: format!("views-secret-{}", uuid::Uuid::new_v4()),
        log_dir: log_dir.clone(),
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = (cores / 2).max(1);
    let mut servers = Vec::new();
    let mut port = 3810;
    for _ in 0..2 {
        port = free_port(port);
        servers.push(Server::start(Kind::Leadgate, port, threads, &env).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let result = measure(&env, &addrs, &servers, count, providers, skills, crawl).await;
    for server in servers {
        server.stop().await;
    }
    eprintln!("the instances' logs are in {}", log_dir.display());
    result
}

async fn measure(
    env: &Environment,
    addrs: &[SocketAddr],
    servers: &[Server],
    count: usize,
    providers: &[&str],
    skills: &[&str],
    crawl: Vec<(String, Vec<LeadInput>)>,
) -> anyhow::Result<Refresh> {
    // Each instance reads its index at start-up; pages come from SQL until
    // then, which is not what is measured here.
    let started = Instant::now();
    for &addr in addrs {
        while metric(
            addr,
            "leadgate_db_query_seconds_count{query=\"leads_index\"}",
        )
        .await?
            == 0
        {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("an instance did not read its leads index within 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let views = views(count, providers, skills);
    let key = EncodingKey::from_secret(env.jwt_secret.as_bytes());
    let connected = Instant::now();
    let opened = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    // Aborted when dropped: a measurement that fails early closes its views
    // before the instances are stopped.
    let mut tasks = Vec::with_capacity(views.len());
    for (i, view) in views.iter().cloned().enumerate() {
        let token = token(&key, &format!("viewer-{i}"), Duration::from_secs(3600))?;
        let addr = addrs[view.instance];
        let opened = opened.clone();
        let gate = gate.clone();
        tasks.push(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ws = {
                let _permit = gate.acquire().await?;
                tokio::time::timeout(Duration::from_secs(60), open(addr, &view, &token))
                    .await
                    .context("opening a view took over a minute")??
            };
            opened.fetch_add(1, Ordering::SeqCst);
            // The time a whole page arrived; it is read (and the connection
            // closed) once every view has its page, so that this process
            // takes little of the machine while the gateways push.
            let (text, at) = next_update(&mut ws, view.socket_io).await?;
            anyhow::Ok((text, at, ws))
        })));
    }
    while opened.load(Ordering::SeqCst) < views.len() {
        if let Some(failed) = tasks.iter().position(|t| t.is_finished()) {
            let task = tasks.swap_remove(failed);
            match task.await? {
                Err(e) => return Err(e.context("a view failed while connecting")),
                Ok(_) => bail!("a view was pushed leads_updated before the crawl"),
            }
        }
        if connected.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {} views opened within 5 minutes",
                opened.load(Ordering::SeqCst),
                views.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = connected.elapsed().as_secs_f64();

    // The crawl, written as a crawler writes it, then announced once for
    // every provider it crawled.
    let store = Store::connect(&env.database_url).await?;
    for (provider, leads) in crawl {
        store.upsert_leads(&provider, leads).await?;
    }
    let queries_before = per_instance(
        addrs,
        "leadgate_db_query_seconds_count{query=\"leads_page\"}",
    )
    .await?;
    let index_before = per_instance(
        addrs,
        "leadgate_db_query_seconds_count{query=\"leads_index\"}",
    )
    .await?;
    let cpu_before: Vec<Usage> = servers
        .iter()
        .map(Server::usage)
        .collect::<Result<_, _>>()?;
    let redis = redis::Client::open(env.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let t0 = Instant::now();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{}leads", env.redis_prefix))
        .arg(json!({ "type": "leads_updated" }).to_string())
        .query_async(&mut conn)
        .await?;

    let mut arrivals = Vec::with_capacity(tasks.len());
    let mut connections = Vec::with_capacity(tasks.len());
    let deadline = tokio::time::Instant::now() + REFRESH_WITHIN;
    for task in tasks {
        let (text, at, ws) = tokio::time::timeout_at(deadline, task)
            .await
            .context("views were not refreshed within a minute")???;
        arrivals.push((text, at));
        connections.push(ws);
    }
    let cpu_after: Vec<Usage> = servers
        .iter()
        .map(Server::usage)
        .collect::<Result<_, _>>()?;
    drop(connections);
    let arrivals: Vec<(Seen, Instant)> = arrivals
        .into_iter()
        .zip(&views)
        .map(|((text, at), view)| Ok((page_of(text.as_str(), view.socket_io)?.seen(), at)))
        .collect::<anyhow::Result<_>>()?;
    let last = arrivals.iter().map(|(_, at)| *at).max().unwrap_or(t0);
    // Let the instances finish what they count before reading the counts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queries_after = per_instance(
        addrs,
        "leadgate_db_query_seconds_count{query=\"leads_page\"}",
    )
    .await?;
    let index_after = per_instance(
        addrs,
        "leadgate_db_query_seconds_count{query=\"leads_index\"}",
    )
    .await?;

    // Every pushed page against one SQL statement for that page.
    let mut expected: HashMap<&LeadsQuery, Seen> = HashMap::new();
    for view in &views {
        if !expected.contains_key(&view.query) {
            let (page, total) = store.leads_page(&view.query).await?;
            let seen = Seen {
                total,
                len: page.len(),
                first: page.first().map(|l| l.project_id.clone()),
            };
            expected.insert(&view.query, seen);
        }
    }
    store.close().await?;
    for (view, (seen, _)) in views.iter().zip(&arrivals) {
        let want = &expected[&view.query];
        if seen != want {
            bail!(
                "a view of {:?} was pushed {seen:?}, the database says {want:?}",
                view.query
            );
        }
    }

    let mut latencies: Vec<f64> = arrivals
        .iter()
        .map(|(_, at)| at.duration_since(t0).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let ticks = clock_ticks_per_second() as f64;
    let distinct = |instance: usize| {
        views
            .iter()
            .filter(|v| v.instance == instance)
            .map(|v| &v.query)
            .collect::<HashSet<_>>()
            .len()
    };
    Ok(Refresh {
        views: views.len(),
        distinct_pages: [distinct(0), distinct(1)],
        page_queries: [
            queries_after[0] - queries_before[0],
            queries_after[1] - queries_before[1],
        ],
        index_refreshes: [
            index_after[0] - index_before[0],
            index_after[1] - index_before[1],
        ],
        last_ms: last.duration_since(t0).as_secs_f64() * 1000.0,
        p50_ms: latencies[latencies.len() / 2],
        p99_ms: latencies[latencies.len() * 99 / 100],
        cpu_ms: [0, 1]
            .map(|i| (cpu_after[i].cpu_ticks - cpu_before[i].cpu_ticks) as f64 / ticks * 1000.0),
        connect_s,
        rss_mib: [cpu_after[0].rss_kib / 1024, cpu_after[1].rss_kib / 1024],
    })
}

async fn per_instance(addrs: &[SocketAddr], series: &str) -> anyhow::Result<[u64; 2]> {
    Ok([
        metric(addrs[0], series).await?,
        metric(addrs[1], series).await?,
    ])
}
