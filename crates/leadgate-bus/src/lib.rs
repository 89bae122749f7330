//! Fan-out through Redis pub/sub.
//!
//! Workers and gateway instances publish job events on
//! `<prefix>job:<jobId>`; every gateway instance subscribes to all of them
//! and delivers each to its own sockets. `<prefix>resync` carries job ids
//! whose subscribers should re-read the job's state (sent after a publish
//! could not be made). This crate knows the channel names and keeps the
//! subscription alive across Redis restarts; what a message means is the
//! gateway's business.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use leadgate_protocol::JobUpdate;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// How often an idle subscription checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Channels {
    prefix: String,
}

impl Channels {
    pub fn new(prefix: impl Into<String>) -> Self {
        Channels {
            prefix: prefix.into(),
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

/// Publishes events; reconnects by itself when Redis comes back.
#[derive(Clone)]
pub struct Publisher {
    conn: ConnectionManager,
    channels: Channels,
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
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Publisher { conn, channels })
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Publishes a `job-update` on its job's channel.
    pub async fn publish_update(&self, update: &JobUpdate) -> Result<(), BusError> {
        let payload = serde_json::to_string(update).expect("a JobUpdate always serializes");
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .publish(self.channels.job(update.job_id), payload)
            .await?;
        Ok(())
    }

    /// Asks every instance to re-read these jobs and refresh their sockets.
    pub async fn publish_resync(&self, jobs: &[Uuid]) -> Result<(), BusError> {
        let payload = serde_json::to_string(jobs).expect("ids always serialize");
        let mut conn = self.conn.clone();
        let _: i64 = conn.publish(self.channels.resync(), payload).await?;
        Ok(())
    }

    /// Publishes a JSON message on `channel`.
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        channel: String,
        message: &T,
    ) -> Result<(), BusError> {
        let payload = serde_json::to_string(message).expect("messages always serialize");
        let mut conn = self.conn.clone();
        let _: i64 = conn.publish(channel, payload).await?;
        Ok(())
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
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
}

/// Receives what the subscription sees. Called from the subscription task;
/// it must not block.
pub trait BusHandler: Send + Sync + 'static {
    fn on_event(&self, event: BusEvent<'_>);
}

/// Runs the subscription until `cancel`: connects, subscribes to every job
/// channel and the resync channel, hands messages to `handler`, and when the
/// connection fails, reconnects with exponential backoff (0.1 s to 1 s) and
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
        assert_eq!(
            (c.leads(), c.crawl()),
            ("lg:leads".into(), "lg:crawl".into())
        );
    }
}
