//! Fan-out through Redis pub/sub.
//!
//! Workers and gateway instances publish job events on
//! `<prefix>job:<jobId>`; every gateway instance subscribes to all of them
//! and delivers each to its own sockets. `<prefix>resync` carries job ids
//! whose subscribers should re-read the job's state (sent after a publish
//! could not be made). This crate knows the channel names and keeps the
//! subscription alive across Redis restarts; what a message means is the
//! gateway's business.

pub mod emitter;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use leadgate_protocol::JobUpdate;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// How often an idle subscription checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
// A lost subscription is made again within these bounds of Redis taking
// connections again: events published meanwhile are lost to this instance.
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no connection (Redis is down; connecting again in the background)")]
    Down,
    #[error("redis: no answer in time")]
    Timeout,
}

/// The channel names under one prefix, and those of Socket.IO's Redis
/// emitter under its key.
#[derive(Debug, Clone)]
pub struct Channels {
    prefix: String,
    emitter_key: Option<String>,
}

impl Channels {
    pub fn new(prefix: impl Into<String>) -> Self {
        Channels {
            prefix: prefix.into(),
            emitter_key: None,
        }
    }

    /// Also listens to `@socket.io/redis-emitter` publishing under `key`
    /// (its default is `socket.io`); see [`emitter`].
    pub fn with_emitter_key(mut self, key: Option<String>) -> Self {
        self.emitter_key = key.filter(|k| !k.is_empty());
        self
    }

    /// The patterns of the emitter's broadcast and request channels.
    fn emitter_patterns(&self) -> Vec<String> {
        self.emitter_key
            .iter()
            .flat_map(|key| {
                let key = glob_escape(key);
                [format!("{key}#*"), format!("{key}-request#*")]
            })
            .collect()
    }

    /// Whether `channel` is one of the emitter's, and which: `Some(true)`
    /// for a broadcast, `Some(false)` for a request.
    fn emitter_channel(&self, channel: &str) -> Option<bool> {
        let rest = channel.strip_prefix(self.emitter_key.as_deref()?)?;
        if rest.starts_with('#') {
            Some(true)
        } else if rest.starts_with("-request#") {
            Some(false)
        } else {
            None
        }
    }

    /// `<prefix>job:<jobId>`: one job's events.
    pub fn job(&self, job: Uuid) -> String {
        format!("{}job:{job}", self.prefix)
    }

    /// The pattern matching every job channel.
    pub fn job_pattern(&self) -> String {
        format!("{}job:*", glob_escape(&self.prefix))
    }

    /// `<prefix>resync`: job ids whose state subscribers should re-read.
    pub fn resync(&self) -> String {
        format!("{}resync", self.prefix)
    }

    /// `<prefix>leads`: crawlers announce new data here.
    pub fn leads(&self) -> String {
        format!("{}leads", self.prefix)
    }

    /// `<prefix>crawl`: the gateways announce crawl requests here.
    pub fn crawl(&self) -> String {
        format!("{}crawl", self.prefix)
    }

    /// The job id of a job channel.
    pub fn job_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("job:")
    }
}

fn glob_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// How long a publish may wait for Redis's answer. A local Redis answers
/// in well under a millisecond; past this the connection is taken for dead.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a publish may spend on one new connection after Redis dropped
/// the old one (a restart): Redis is likely back, and if it is not, a
/// refused connection answers at once.
const RECONNECT_INLINE_TIMEOUT: Duration = Duration::from_millis(250);
/// Between connection attempts while Redis is down.
const RECONNECT_EVERY: Duration = Duration::from_millis(50);

/// Publishes events without ever making its caller wait on a dead
/// connection.
///
/// It holds one multiplexed connection. A publish that fails or is not
/// answered within [`PUBLISH_TIMEOUT`] marks the connection dead; from then
/// on publishes fail at once, without touching the network, while a
/// background task connects again every [`RECONNECT_EVERY`]. When Redis
/// dropped the connection (it restarted), the publish that found out tries
/// once more on a new connection, bounded by [`RECONNECT_INLINE_TIMEOUT`].
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    channels: Channels,
}

struct Shared {
    client: redis::Client,
    /// The live connection and its generation; `None` while Redis is down.
    conn: std::sync::Mutex<(u64, Option<MultiplexedConnection>)>,
    /// Wakes the reconnecting task.
    lost: tokio::sync::Notify,
}

impl Shared {
    fn current(&self) -> (u64, Option<MultiplexedConnection>) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        (conn.0, conn.1.clone())
    }

    /// Takes generation `generation` for dead, unless a newer one replaced it.
    fn lose(&self, generation: u64) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.0 == generation && conn.1.is_some() {
            conn.1 = None;
            drop(conn);
            self.lost.notify_one();
        }
    }

    /// Installs a new connection; returns its generation.
    fn install(&self, new: MultiplexedConnection) -> u64 {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.0 += 1;
        conn.1 = Some(new);
        conn.0
    }

    async fn connect(&self, within: Duration) -> Result<MultiplexedConnection, BusError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(within))
            .set_response_timeout(Some(PUBLISH_TIMEOUT));
        match tokio::time::timeout(
            within,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(result) => Ok(result?),
            Err(_) => Err(BusError::Timeout),
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channels", &self.channels)
            .finish()
    }
}

impl Publisher {
    /// Connects to `url`. Fails if Redis cannot be reached now.
    pub async fn connect(url: &str, channels: Channels) -> Result<Self, BusError> {
        let client = redis::Client::open(url)?;
        let shared = Arc::new(Shared {
            client,
            conn: std::sync::Mutex::new((0, None)),
            lost: tokio::sync::Notify::new(),
        });
        let conn = shared.connect(CONNECT_TIMEOUT).await?;
        shared.install(conn);
        tokio::spawn(reconnect(Arc::downgrade(&shared)));
        Ok(Publisher { shared, channels })
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Whether the last publish (or connection attempt) found Redis up.
    pub fn is_connected(&self) -> bool {
        self.shared.current().1.is_some()
    }

    /// Publishes `payload` on `channel`; fails at once while Redis is known
    /// to be down.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), BusError> {
        let (generation, conn) = self.shared.current();
        let Some(mut conn) = conn else {
            return Err(BusError::Down);
        };
        let error = match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            conn.publish::<_, _, i64>(channel, payload),
        )
        .await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => BusError::Redis(e),
            Err(_) => BusError::Timeout,
        };
        let dropped =
            matches!(&error, BusError::Redis(e) if e.is_connection_dropped() || e.is_io_error());
        self.shared.lose(generation);
        if !dropped {
            return Err(error);
        }
        // Redis closed the connection: most likely it restarted and takes
        // connections again. One attempt on a new connection, so that the
        // first event after a restart is not the one that is lost.
        let mut conn = self.shared.connect(RECONNECT_INLINE_TIMEOUT).await?;
        let generation = self.shared.install(conn.clone());
        match tokio::time::timeout(PUBLISH_TIMEOUT, conn.publish::<_, _, i64>(channel, payload))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.shared.lose(generation);
                Err(e.into())
            }
            Err(_) => {
                self.shared.lose(generation);
                Err(BusError::Timeout)
            }
        }
    }

    /// Publishes a `job-update` on its job's channel.
    pub async fn publish_update(&self, update: &JobUpdate) -> Result<(), BusError> {
        let payload = serde_json::to_vec(update).expect("a JobUpdate always serializes");
        self.publish(&self.channels.job(update.job_id), &payload)
            .await
    }

    /// Asks every instance to re-read these jobs and refresh their sockets.
    pub async fn publish_resync(&self, jobs: &[Uuid]) -> Result<(), BusError> {
        let payload = serde_json::to_vec(jobs).expect("ids always serialize");
        self.publish(&self.channels.resync(), &payload).await
    }

    /// Publishes a JSON message on `channel`.
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        channel: String,
        message: &T,
    ) -> Result<(), BusError> {
        let payload = serde_json::to_vec(message).expect("messages always serialize");
        self.publish(&channel, &payload).await
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), BusError> {
        let (generation, conn) = self.shared.current();
        let Some(mut conn) = conn else {
            return Err(BusError::Down);
        };
        match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.shared.lose(generation);
                Err(e.into())
            }
            Err(_) => {
                self.shared.lose(generation);
                Err(BusError::Timeout)
            }
        }
    }
}

/// Connects again whenever the connection is lost, every [`RECONNECT_EVERY`]
/// until Redis takes it; ends with the last [`Publisher`].
async fn reconnect(shared: std::sync::Weak<Shared>) {
    loop {
        let lost = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.current().1.is_some() {
                // Wait for a loss, but look again now and then: the last
                // publisher may be gone.
                let _ = tokio::time::timeout(Duration::from_secs(5), shared.lost.notified()).await;
                continue;
            }
            match shared.connect(CONNECT_TIMEOUT).await {
                Ok(conn) => {
                    shared.install(conn);
                    info!("Publishing to Redis again.");
                    false
                }
                Err(_) => true,
            }
        };
        if lost {
            tokio::time::sleep(RECONNECT_EVERY).await;
        }
    }
}

/// What the subscription reports to its handler.
#[derive(Debug)]
pub enum BusEvent<'a> {
    /// Subscribed (again): messages flow. After a reconnect, messages sent
    /// while disconnected are lost, so the handler should re-read state.
    Subscribed { reconnect: bool },
    /// The connection is gone; reconnecting with backoff.
    Lost { reason: String },
    /// A message on a job channel. `job` is the raw id from the channel name.
    Job { job: &'a str, payload: &'a [u8] },
    /// A message on the resync channel.
    Resync { payload: &'a [u8] },
    /// A message on the leads channel.
    Leads { payload: &'a [u8] },
    /// A broadcast of `@socket.io/redis-emitter` (see [`emitter`]).
    Emitted { channel: &'a str, payload: &'a [u8] },
    /// A request of `@socket.io/redis-emitter` (`socketsJoin` and the like).
    EmitterRequest { channel: &'a str, payload: &'a [u8] },
}

/// Receives what the subscription sees. Called from the subscription task;
/// it must not block.
pub trait BusHandler: Send + Sync + 'static {
    fn on_event(&self, event: BusEvent<'_>);
}

/// Runs the subscription until `cancel`: connects, subscribes to every job
/// channel and the resync channel, hands messages to `handler`, and when the
/// connection fails, reconnects with exponential backoff (25 ms to 0.1 s) and
/// subscribes again.
pub async fn run_subscription(
    url: String,
    channels: Channels,
    handler: Arc<dyn BusHandler>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut subscribed_before = false;
    let mut down = false;
    while !cancel.is_cancelled() {
        let failure =
            match subscribe_once(&url, &channels, &*handler, subscribed_before, &cancel).await {
                Ok(()) => return,
                Err(failure) => failure,
            };
        if failure.subscribed {
            // The connection worked for a while: start backing off afresh.
            subscribed_before = true;
            backoff = BACKOFF_MIN;
            down = false;
        }
        if !down {
            warn!(reason = %failure.reason, "Redis subscription lost; reconnecting.");
            handler.on_event(BusEvent::Lost {
                reason: failure.reason,
            });
            down = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Failure {
    /// Whether the subscription was made before the failure.
    subscribed: bool,
    reason: String,
}

impl Failure {
    fn before(reason: impl ToString) -> Self {
        Failure {
            subscribed: false,
            reason: reason.to_string(),
        }
    }

    fn after(reason: impl ToString) -> Self {
        Failure {
            subscribed: true,
            reason: reason.to_string(),
        }
    }
}

/// One connection's life; returns `Ok` only when cancelled.
async fn subscribe_once(
    url: &str,
    channels: &Channels,
    handler: &dyn BusHandler,
    reconnect: bool,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let client = redis::Client::open(url).map_err(Failure::before)?;
    let pubsub = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        result = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub()) => result
            .map_err(|_| Failure::before("connect timed out"))?
            .map_err(Failure::before)?,
    };
    let (mut sink, mut stream) = pubsub.split();
    // A server that accepts connections but does not answer must not hold
    // the subscription (or shutdown) forever.
    let subscribe = async {
        sink.psubscribe(channels.job_pattern()).await?;
        for pattern in channels.emitter_patterns() {
            sink.psubscribe(pattern).await?;
        }
        sink.subscribe(&[channels.resync(), channels.leads()]).await
    };
    tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        result = tokio::time::timeout(PING_TIMEOUT, subscribe) => match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure::before(e)),
            Err(_) => return Err(Failure::before("subscribe timed out")),
        },
    }
    info!(reconnect, "Subscribed to Redis job channels.");
    handler.on_event(BusEvent::Subscribed { reconnect });
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            message = stream.next() => {
                let Some(message) = message else {
                    return Err(Failure::after("connection closed"));
                };
                let channel = message.get_channel_name();
                let payload = message.get_payload_bytes();
                if let Some(job) = channels.job_of(channel) {
                    handler.on_event(BusEvent::Job { job, payload });
                } else if channel == channels.resync() {
                    handler.on_event(BusEvent::Resync { payload });
                } else if channel == channels.leads() {
                    handler.on_event(BusEvent::Leads { payload });
                } else if let Some(broadcast) = channels.emitter_channel(channel) {
                    handler.on_event(if broadcast {
                        BusEvent::Emitted { channel, payload }
                    } else {
                        BusEvent::EmitterRequest { channel, payload }
                    });
                }
            }
            _ = ping.tick() => {
                // A subscribed RESP2 connection answers PING with an array
                // (["pong", ""]); any answer will do.
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(Failure::after(format!("ping failed: {e}"))),
                    Err(_) => return Err(Failure::after("ping timed out")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        let c = Channels::new("lg:");
        let id = Uuid::nil();
        assert_eq!(c.job(id), format!("lg:job:{id}"));
        assert_eq!(c.job_of(&c.job(id)), Some(id.to_string().as_str()));
        assert_eq!(c.job_of("other:job:x"), None);
        assert_eq!(c.job_pattern(), "lg:job:*");
        assert_eq!(Channels::new("a*b:").job_pattern(), "a\\*b:job:*");
        assert_eq!(c.resync(), "lg:resync");
        assert!(c.emitter_patterns().is_empty());
        assert_eq!(c.emitter_channel("socket.io#/#"), None);
        let c = c.with_emitter_key(Some("socket.io".into()));
        assert_eq!(
            c.emitter_patterns(),
            ["socket.io#*".to_owned(), "socket.io-request#*".to_owned()]
        );
        assert_eq!(c.emitter_channel("socket.io#/#job:1#"), Some(true));
        assert_eq!(c.emitter_channel("socket.io-request#/#"), Some(false));
        assert_eq!(c.emitter_channel("socket.io-response#/#"), None);
        assert_eq!(c.emitter_channel("lg:leads"), None);
        assert_eq!(
            (c.leads(), c.crawl()),
            ("lg:leads".into(), "lg:crawl".into())
        );
    }
}
