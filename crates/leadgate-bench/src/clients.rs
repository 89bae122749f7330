//! A client process: holds many Socket.IO connections at once and reports
//! what they received.
//!
//! It speaks Engine.IO 4 / Socket.IO 5 over WebSocket itself, the way
//! socket.io-client does once it runs on WebSocket: wait for the open packet,
//! connect to `/` with `auth: { token }`, answer every ping. With
//! [`Plan::upgrade`] each connection starts the way a default
//! socket.io-client does: on long-polling, then upgraded to a WebSocket
//! (see [`upgrade`]). Everything runs
//! on one thread, so the counters need no locks; the coordinator starts one
//! such process per few thousand connections and per core.
//!
//! The coordinator talks to it over stdin and stdout, one JSON object a line
//! (see [`Command`] and [`Report`]).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What one client process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Gateways to connect to.
    pub targets: Vec<SocketAddr>,
    /// The local address to connect from.
    pub source: IpAddr,
    /// One entry per connection: its token and, to subscribe, its job.
    pub clients: Vec<ClientSpec>,
    /// Connections being set up at the same time.
    pub concurrency: usize,
    /// Start on long-polling and upgrade, as a default socket.io-client
    /// does, instead of opening a WebSocket straight away.
    #[serde(default)]
    pub upgrade: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSpec {
    pub token: String,
    pub job: Option<String>,
    /// Index into [`Plan::targets`].
    pub target: usize,
}

/// A line from the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open every connection now.
    Go,
    /// Forget the counters and latencies gathered so far.
    Reset,
    /// Send a [`Report::Stats`].
    Report,
    /// Close everything and exit.
    Quit,
}

/// A line to the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// The plan is read and the tokens are ready; waiting for `go`.
    Armed,
    /// Every connection is set up (or failed).
    Ready {
        connected: u64,
        failed: u64,
        elapsed_ms: f64,
        first_error: Option<String>,
    },
    /// The running total of `job-update`s received, sent every 20 ms while
    /// it changes, so a publisher can keep a bounded number in flight.
    Delivered {
        total: u64,
    },
    Stats(Stats),
}

/// Counters since the last reset.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// `job-update`s received.
    pub delivered: u64,
    /// Updates that skipped a `seq`: the missing ones, summed.
    pub missed: u64,
    /// Updates whose `seq` was not above the last one seen.
    pub duplicated: u64,
    /// `job-status` resyncs after the first.
    pub resyncs: u64,
    /// `error` events.
    pub errors: u64,
    /// Connections the server closed.
    pub closed: u64,
    /// Publish-to-receipt latencies in microseconds: (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
}

/// Counters, plus the histogram the latencies go into.
struct Tally {
    stats: Stats,
    latency: Histogram<u64>,
    /// Total delivered since start; never reset, for [`Report::Delivered`].
    total_delivered: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            stats: Stats::default(),
            latency: new_histogram(),
            total_delivered: 0,
        }
    }

    fn reset(&mut self) {
        self.stats = Stats::default();
        self.latency.reset();
    }

    fn snapshot(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.latency_us = self
            .latency
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        stats
    }
}

/// A histogram of microseconds up to 100 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

type Ws = WebSocketStream<TcpStream>;

/// Runs a client process: reads its [`Plan`] from the first stdin line,
/// then follows the commands.
pub async fn run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let plan: Plan = serde_json::from_str(
        &lines
            .next_line()
            .await?
            .context("stdin closed before the plan")?,
    )
    .context("reading the plan")?;
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Report>();
    // The single writer of stdout, so lines never interleave.
    tokio::task::spawn_local(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(report) = out_rx.recv().await {
            let mut line = serde_json::to_vec(&report).expect("reports serialize");
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let tally = Rc::new(RefCell::new(Tally::new()));
    let _ = out_tx.send(Report::Armed);

    // Sends the delivered total while it moves.
    {
        let tally = tally.clone();
        let out_tx = out_tx.clone();
        tokio::task::spawn_local(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                let total = tally.borrow().total_delivered;
                if total != last {
                    last = total;
                    if out_tx.send(Report::Delivered { total }).is_err() {
                        break;
                    }
                }
            }
        });
    }

    let mut plan = Some(plan);
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Command>(&line).context("reading a command")? {
            Command::Go => {
                let Some(plan) = plan.take() else {
                    bail!("go was sent twice");
                };
                let tally = tally.clone();
                let out_tx = out_tx.clone();
                tokio::task::spawn_local(async move {
                    let ready = open_all(plan, tally).await;
                    let _ = out_tx.send(ready);
                });
            }
            Command::Reset => tally.borrow_mut().reset(),
            Command::Report => {
                let _ = out_tx.send(Report::Stats(tally.borrow().snapshot()));
            }
            Command::Quit => break,
        }
    }
    Ok(())
}

/// Opens every connection of the plan, at most `concurrency` at a time, and
/// leaves each running in its own task.
async fn open_all(plan: Plan, tally: Rc<RefCell<Tally>>) -> Report {
    let started = Instant::now();
    let permits = Rc::new(Semaphore::new(plan.concurrency.max(1)));
    let outcome = Rc::new(RefCell::new((0u64, 0u64, None::<String>)));
    let mut setups = Vec::with_capacity(plan.clients.len());
    for spec in plan.clients {
        let target = plan.targets[spec.target];
        let permits = permits.clone();
        let outcome = outcome.clone();
        let tally = tally.clone();
        let (source, upgrade) = (plan.source, plan.upgrade);
        setups.push(tokio::task::spawn_local(async move {
            let permit = permits.acquire().await.expect("never closed");
            let opened = open(source, target, &spec, upgrade).await;
            drop(permit);
            match opened {
                Ok((ws, seq)) => {
                    outcome.borrow_mut().0 += 1;
                    if spec.job.is_some() {
                        tokio::task::spawn_local(listen(ws, seq, tally));
                    } else {
                        tokio::task::spawn_local(keep_alive(ws));
                    }
                }
                Err(e) => {
                    let mut outcome = outcome.borrow_mut();
                    outcome.1 += 1;
                    outcome.2.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }));
    }
    for setup in setups {
        let _ = setup.await;
    }
    let (connected, failed, first_error) = outcome.borrow_mut().clone();
    Report::Ready {
        connected,
        failed,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        first_error,
    }
}

/// One connection: WebSocket, Engine.IO open, Socket.IO connect with the
/// token and, if the spec names a job, `subscribe-job` answered by
/// `job-status`. Returns the socket and the snapshot's `seq`.
async fn open(
    source: IpAddr,
    target: SocketAddr,
    spec: &ClientSpec,
    upgrade: bool,
) -> anyhow::Result<(Ws, u64)> {
    const SETUP: Duration = Duration::from_secs(60);
    tokio::time::timeout(SETUP, async {
        let mut ws = if upgrade {
            self::upgrade(source, target, &spec.token).await?
        } else {
            let stream = tcp(source, target).await?;
            let mut ws = websocket(stream, target, "").await?;
            let open = next_text(&mut ws).await?;
            if !open.starts_with('0') {
                bail!("expected the Engine.IO open packet, got {open:?}");
            }
            let auth = serde_json::json!({ "token": spec.token });
            ws.send(Message::text(format!("40{auth}"))).await?;
            connected(&next_text(&mut ws).await?)?;
            ws
        };
        let Some(job) = &spec.job else {
            return Ok((ws, 0));
        };
        ws.send(Message::text(format!(r#"42["subscribe-job","{job}"]"#)))
            .await?;
        loop {
            let text = next_text(&mut ws).await?;
            match parse_event(&text) {
                Some(Event::Status { seq }) => return Ok((ws, seq)),
                Some(Event::Error) => bail!("subscribe refused: {text}"),
                _ => {}
            }
        }
    })
    .await
    .context("setting up took over a minute")?
}

async fn tcp(source: IpAddr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket to the Engine.IO endpoint; `sid` (`&sid=…`) to upgrade.
async fn websocket(stream: TcpStream, target: SocketAddr, sid: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{target}/socket.io/?EIO=4&transport=websocket{sid}");
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Checks the answer to a namespace connect.
fn connected(packet: &str) -> anyhow::Result<()> {
    if let Some(refusal) = packet.strip_prefix("44") {
        bail!("connect refused: {refusal}");
    }
    if !packet.starts_with("40") {
        bail!("expected the namespace connect, got {packet:?}");
    }
    Ok(())
}

/// Connects the way a default socket.io-client does: the Engine.IO
/// handshake and the namespace connect over long-polling (HTTP/1.1 on one
/// kept-alive connection), then a WebSocket with the session id, probed
/// (`2probe`, `3probe`) and taken over (`5`). The long-polling connection
/// is closed once the WebSocket carries the session, as a browser closes
/// an idle one.
async fn upgrade(source: IpAddr, target: SocketAddr, token: &str) -> anyhow::Result<Ws> {
    let mut polling = Polling {
        stream: BufReader::new(tcp(source, target).await?),
        target,
        sid: String::new(),
    };
    let open = polling.request("GET", "").await?;
    let handshake: serde_json::Value = serde_json::from_str(
        open.strip_prefix('0')
            .with_context(|| format!("expected the Engine.IO open packet, got {open:?}"))?,
    )?;
    let sid = handshake["sid"]
        .as_str()
        .context("an open packet without sid")?;
    polling.sid = format!("&sid={sid}");
    let auth = serde_json::json!({ "token": token });
    let ok = polling.request("POST", &format!("40{auth}")).await?;
    if ok != "ok" {
        bail!("the connect's POST was answered {ok:?}");
    }
    // The connect's answer, with any ping answered on the way, as
    // socket.io-client does (socketioxide pings a session at once).
    loop {
        let payload = polling.request("GET", "").await?;
        let packets: Vec<&str> = payload.split('\x1e').collect();
        if packets.contains(&"2") {
            let ok = polling.request("POST", "3").await?;
            if ok != "ok" {
                bail!("the pong's POST was answered {ok:?}");
            }
        }
        if let Some(packet) = packets.iter().find(|p| p.starts_with('4')) {
            connected(packet)?;
            break;
        }
    }
    let mut ws = websocket(tcp(source, target).await?, target, &polling.sid).await?;
    ws.send(Message::text("2probe")).await?;
    let probe = next_text(&mut ws).await?;
    if probe != "3probe" {
        bail!("expected 3probe, got {probe:?}");
    }
    ws.send(Message::text("5")).await?;
    Ok(ws)
}

/// A long-polling session over one HTTP/1.1 connection.
struct Polling {
    stream: BufReader<TcpStream>,
    target: SocketAddr,
    /// `&sid=…` once the handshake gave one.
    sid: String,
}

impl Polling {
    /// Sends a request and returns the response's body, which must come
    /// with status 200 and a Content-Length.
    async fn request(&mut self, method: &str, body: &str) -> anyhow::Result<String> {
        let request = format!(
            "{method} /socket.io/?EIO=4&transport=polling{sid} HTTP/1.1\r\n\
             Host: {host}\r\nContent-Type: text/plain;charset=UTF-8\r\n\
             Content-Length: {length}\r\n\r\n{body}",
            sid = self.sid,
            host = self.target,
            length = body.len(),
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line.split(' ').nth(1).unwrap_or("");
        if status != "200" {
            bail!("{method} answered {:?}", line.trim_end());
        }
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the connection closed in the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("a response without Content-Length")?];
        self.stream.read_exact(&mut body).await?;
        Ok(String::from_utf8(body)?)
    }
}

/// The next text message, answering pings on the way.
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await.context("closed by the server")?? {
            Message::Text(text) if text.as_str() == "2" => ws.send(Message::text("3")).await?,
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(frame) => bail!("closed by the server: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads a subscribed connection until it closes, counting what arrives.
async fn listen(mut ws: Ws, mut last_seq: u64, tally: Rc<RefCell<Tally>>) {
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        let text = text.as_str();
        if text == "2" {
            if ws.send(Message::text("3")).await.is_err() {
                break;
            }
            continue;
        }
        let mut tally = tally.borrow_mut();
        match parse_event(text) {
            Some(Event::Update { seq, sent_us }) => {
                tally.total_delivered += 1;
                tally.stats.delivered += 1;
                if seq <= last_seq {
                    tally.stats.duplicated += 1;
                } else {
                    tally.stats.missed += seq - last_seq - 1;
                    last_seq = seq;
                }
                if let Some(sent_us) = sent_us {
                    let latency = now_micros().saturating_sub(sent_us).max(1);
                    tally.latency.saturating_record(latency);
                }
            }
            Some(Event::Status { seq }) => {
                tally.stats.resyncs += 1;
                last_seq = seq;
            }
            Some(Event::Error) => tally.stats.errors += 1,
            None => {}
        }
    }
    tally.borrow_mut().stats.closed += 1;
}

/// Keeps an unsubscribed connection alive: answers pings, ignores the rest.
async fn keep_alive(mut ws: Ws) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message
            && text.as_str() == "2"
            && ws.send(Message::text("3")).await.is_err()
        {
            break;
        }
    }
}

enum Event {
    Update { seq: u64, sent_us: Option<u64> },
    Status { seq: u64 },
    Error,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(default)]
    seq: u64,
    #[serde(borrow, default)]
    log: Option<LogLine<'a>>,
}

#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    message: &'a str,
}

/// Reads a Socket.IO event packet (`42[...]`) far enough to count it.
fn parse_event(text: &str) -> Option<Event> {
    let body = text.strip_prefix("42")?;
    if body.starts_with(r#"["error""#) {
        return Some(Event::Error);
    }
    let (name, payload): (&str, Payload) = serde_json::from_str(body).ok()?;
    match name {
        "job-update" => Some(Event::Update {
            seq: payload.seq,
            sent_us: payload.log.and_then(|log| sent_at(log.message)),
        }),
        "job-status" => Some(Event::Status { seq: payload.seq }),
        _ => None,
    }
}

/// The publish time a benchmark log line carries: `t=<µs since the epoch> …`.
pub fn sent_at(message: &str) -> Option<u64> {
    message.strip_prefix("t=")?.split(' ').next()?.parse().ok()
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_updates_statuses_and_errors() {
        let update = r#"42["job-update",{"type":"log","jobId":"a","seq":7,"log":{"level":"info","message":"t=123 x","timestamp":"2026-11-22T10:00:00Z"}}]"#;
        assert!(matches!(
            parse_event(update),
            Some(Event::Update {
                seq: 7,
                sent_us: Some(123)
            })
        ));
        let progress = r#"42["job-update",{"type":"progress","seq":3,"progress":4}]"#;
        assert!(matches!(
            parse_event(progress),
            Some(Event::Update {
                seq: 3,
                sent_us: None
            })
        ));
        let status =
            r#"42["job-status",{"jobId":"a","status":"pending","seq":12,"recentLogs":[]}]"#;
        assert!(matches!(
            parse_event(status),
            Some(Event::Status { seq: 12 })
        ));
        assert!(matches!(
            parse_event(r#"42["error",{"message":"job not found"}]"#),
            Some(Event::Error)
        ));
        assert!(parse_event("40").is_none());
        assert!(parse_event(r#"42["job-update",nonsense]"#).is_none());
    }
}
