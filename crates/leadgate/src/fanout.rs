//! How a job event reaches the sockets of every instance.
//!
//! Without Redis (one instance) an applied event is delivered straight to
//! this instance's hub. With Redis, it is published on the job's channel and
//! every instance, this one included, delivers it from its subscription: one
//! path for events from the HTTP API and from workers that publish
//! themselves. When Redis is unreachable, an event applied here is delivered
//! here and its job remembered; once Redis is back, a resync message asks
//! every instance to re-read those jobs (retried until it goes through). Each
//! instance also refreshes all of
//! its subscribed jobs after its own subscription comes back, since events
//! published meanwhile were lost to it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use leadgate_bus::{BusEvent, BusHandler, Publisher, emitter};
use leadgate_protocol::leads::{CrawlRequested, LeadsChanged, LeadsChangedKind};
use leadgate_protocol::{JobEvent, JobUpdate, WorkerEvent};
use leadgate_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::hub::{Hub, Live};
use crate::leads::Leads;
use crate::metrics::Metrics;

/// Snapshots read at once while refreshing.
const REFRESH_CONCURRENCY: usize = 16;

/// How long an evicted client may fail to take the message that tells it
/// why before its connection is cut.
const CUT_AFTER: Duration = Duration::from_secs(5);

pub enum Fanout {
    Local,
    Redis(RedisFanout),
}

pub struct RedisFanout {
    publisher: Publisher,
    /// Whether this instance's subscription is up.
    subscribed: AtomicBool,
    /// Jobs with events that could not be published, waiting for a resync
    /// message to go out (`run_resync_sender`).
    unpublished: Mutex<HashSet<Uuid>>,
    unpublished_added: Notify,
}

impl RedisFanout {
    pub fn new(publisher: Publisher) -> Self {
        RedisFanout {
            publisher,
            subscribed: AtomicBool::new(false),
            unpublished: Mutex::default(),
            unpublished_added: Notify::new(),
        }
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub async fn ping(&self) -> bool {
        self.publisher.ping().await.is_ok()
    }

    fn unpublished(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.unpublished.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Fanout {
    /// Tells crawlers of a new crawl request (through Redis; without Redis
    /// they find it in the `crawl_requests` table).
    pub async fn announce_crawl(&self, request_id: i64, provider: Option<&str>) {
        if let Fanout::Redis(redis) = self {
            let message = CrawlRequested {
                kind: "crawl_requested".into(),
                request_id,
                provider: provider.map(str::to_owned),
            };
            let channel = redis.publisher.channels().crawl();
            if let Err(e) = redis.publisher.publish_json(channel, &message).await {
                warn!(request_id, error = %e, "Could not announce a crawl request; crawlers find it in the database.");
            }
        }
    }

    /// Announces that leads changed, to every instance.
    pub async fn leads_changed(&self, leads: &Leads, provider: Option<String>) {
        match self {
            Fanout::Local => leads.changed(provider),
            Fanout::Redis(redis) => {
                let message = LeadsChanged {
                    kind: LeadsChangedKind::LeadsUpdated,
                    provider: provider.clone(),
                };
                let channel = redis.publisher.channels().leads();
                if let Err(e) = redis.publisher.publish_json(channel, &message).await {
                    warn!(error = %e, "Could not publish leads_updated; updating this instance's clients only.");
                    leads.changed(provider);
                }
            }
        }
    }

    /// Sends an applied event on its way to every subscribed socket.
    pub async fn publish(&self, hub: &Hub, metrics: &Metrics, update: &JobUpdate) {
        metrics.publishing(update.job_id, update.seq);
        match self {
            Fanout::Local => {
                let sent = hub.deliver(update);
                metrics.delivered(update.job_id, update.seq);
                debug!(job = %update.job_id, seq = update.seq, sent, "Delivered a job event.");
            }
            Fanout::Redis(redis) => {
                if let Err(e) = redis.publisher.publish_update(update).await {
                    warn!(job = %update.job_id, seq = update.seq, error = %e, "Could not publish a job event to Redis; delivering it on this instance only.");
                    redis.unpublished().insert(update.job_id);
                    redis.unpublished_added.notify_one();
                    hub.deliver(update);
                    metrics.delivered(update.job_id, update.seq);
                }
            }
        }
    }
}

/// Feeds what the Redis subscription sees into the hub.
pub struct RedisHandler {
    pub hub: Arc<Hub>,
    pub fanout: Arc<Fanout>,
    pub leads: Arc<Leads>,
    pub metrics: Arc<Metrics>,
}

impl BusHandler for RedisHandler {
    fn on_event(&self, event: BusEvent<'_>) {
        let Fanout::Redis(redis) = &*self.fanout else {
            return;
        };
        match event {
            BusEvent::Subscribed { reconnect } => {
                redis.subscribed.store(true, Ordering::Relaxed);
                self.metrics.redis_up.set(1);
                // Whatever was published while we were not subscribed is
                // lost to us: read every followed job and page again. Also
                // the first time: the leads index may have been read before
                // a crawler's announcement that came too early for us.
                self.hub.refresh_all();
                self.leads.changed(None);
                // Redis answers again: a pending resync can go out now.
                redis.unpublished_added.notify_one();
                if reconnect {
                    info!("Redis is back; refreshing every subscribed job.");
                }
            }
            BusEvent::Lost { reason } => {
                redis.subscribed.store(false, Ordering::Relaxed);
                self.metrics.redis_up.set(0);
                error!(%reason, "Redis unreachable: events from other instances and workers are not delivered until it is back.");
            }
            BusEvent::Job { job, payload } => self.on_job_message(job, payload),
            BusEvent::Leads { payload } => match serde_json::from_slice::<LeadsChanged>(payload) {
                Ok(message) => self.leads.changed(message.provider),
                Err(e) => warn!(source = "redis", error = %e, "Ignored an invalid leads message."),
            },
            BusEvent::Emitted { channel, payload } => self.on_emitted(channel, payload),
            BusEvent::EmitterRequest { channel, payload } => {
                warn!(
                    source = "emitter",
                    channel,
                    request = emitter::request_name(payload),
                    "Refused a request of @socket.io/redis-emitter: leadgate serves only its broadcasts (emit, to, except, of)."
                );
                self.metrics.worker_event("emitter", "refused");
            }
            BusEvent::Resync { payload } => match serde_json::from_slice::<Vec<Uuid>>(payload) {
                Ok(jobs) => jobs
                    .into_iter()
                    .for_each(|job| self.hub.request_refresh(job)),
                Err(e) => warn!(error = %e, "Ignored an invalid resync message."),
            },
        }
    }
}

impl RedisHandler {
    fn on_job_message(&self, channel_job: &str, payload: &[u8]) {
        let invalid = || self.metrics.worker_event("redis", "invalid");
        let Ok(job) = Uuid::try_parse(channel_job) else {
            warn!(
                source = "redis",
                channel_job, "Ignored a job event on a channel whose job id is not a UUID."
            );
            return invalid();
        };
        let event = match WorkerEvent::from_slice(payload) {
            Ok(event) => event,
            Err(e) => {
                warn!(source = "redis", job = %job, reason = %e, "Ignored an invalid job event.");
                return invalid();
            }
        };
        if event.job_id.is_some_and(|id| id != job) {
            warn!(source = "redis", job = %job, "Ignored a job event whose jobId differs from its channel's.");
            return invalid();
        }
        self.deliver_worker_event(job, event, "redis");
    }

    /// Delivers a worker's valid event for `job` to this instance's
    /// subscribers: in seq order when it has a seq, live when not.
    fn deliver_worker_event(&self, job: Uuid, event: WorkerEvent, source: &'static str) {
        match event.seq {
            Some(seq) => {
                let sent = self.hub.deliver(&JobUpdate {
                    job_id: job,
                    seq,
                    event: event.event,
                });
                // An event this instance applied (HTTP API) coming back is
                // counted once, as `http`; the rest are workers' own.
                if !self.metrics.delivered(job, seq) {
                    self.metrics.worker_event(source, "delivered");
                }
                debug!(source, job = %job, seq, sent, "Delivered a job event.");
            }
            None => {
                // A worker with only a Redis client: the event has no place
                // in the job's seq order, and the database may not have it.
                // It goes out live, as it came, in the order it arrives.
                let live = Arc::new(Live {
                    event: "job-update".into(),
                    data: live_update(job, &event.event),
                    label: "job-update",
                });
                let sent = self.hub.deliver_live(job, &live, &HashSet::new());
                self.metrics.worker_event(source, "live");
                debug!(source, job = %job, sent, "Delivered a job event without seq.");
            }
        }
    }

    /// A broadcast of `@socket.io/redis-emitter`: what leadgate has of
    /// Socket.IO's rooms and namespaces is served, the rest refused with a
    /// log line (the README lists both).
    fn on_emitted(&self, channel: &str, payload: &[u8]) {
        let emitted = match emitter::parse_broadcast(payload) {
            Ok(emitted) => emitted,
            Err(e) => {
                warn!(source = "emitter", channel, error = %e, "Ignored a message of @socket.io/redis-emitter.");
                return self.metrics.worker_event("emitter", "invalid");
            }
        };
        let refuse = |why: &str| {
            warn!(
                source = "emitter",
                channel,
                nsp = emitted.nsp,
                event = emitted.event,
                "Refused a message of @socket.io/redis-emitter: {why}."
            );
            self.metrics.worker_event("emitter", "refused");
        };
        let data = match emitted.args.as_slice() {
            [] => None,
            [data] => Some(data),
            _ => return refuse("leadgate sends events with one argument"),
        };
        match emitted.nsp.as_str() {
            "/" => {}
            "/leads" => {
                if emitted.event != "leads_updated" {
                    return refuse(
                        "on /leads only leads_updated is served (each client is sent its own page)",
                    );
                }
                if !emitted.rooms.is_empty() || !emitted.except.is_empty() {
                    return refuse("/leads has no rooms");
                }
                let provider = data
                    .and_then(|d| d.get("provider"))
                    .and_then(|p| p.as_str())
                    .map(str::to_owned);
                self.metrics.worker_event("emitter", "delivered");
                return self.leads.changed(provider);
            }
            _ => return refuse("not a namespace of leadgate's (/ and /leads)"),
        }
        let Some(data) = data else {
            return refuse("leadgate sends events with one argument");
        };
        let jobs_of = |rooms: &[String]| -> (Vec<Uuid>, Vec<String>) {
            let mut jobs = Vec::new();
            let mut others = Vec::new();
            for room in rooms {
                match room
                    .strip_prefix("job:")
                    .and_then(|id| Uuid::try_parse(id).ok())
                {
                    Some(job) => jobs.push(job),
                    None => others.push(room.clone()),
                }
            }
            (jobs, others)
        };
        let (except, unknown_except) = jobs_of(&emitted.except);
        let (mut jobs, unknown) = jobs_of(&emitted.rooms);
        if !unknown.is_empty() || !unknown_except.is_empty() {
            warn!(source = "emitter", channel, rooms = ?unknown.iter().chain(&unknown_except).collect::<Vec<_>>(), "A message of @socket.io/redis-emitter names rooms leadgate does not have (only job:<jobId>); no socket is in them.");
        }
        let mut skip = self.hub.subscribers(&except);
        if emitted.event == "job-update" {
            // A job's event goes to that job's subscribers only, even when
            // sent to the whole namespace: it names its job.
            let event = match WorkerEvent::from_value(data.clone()) {
                Ok(event) => event,
                Err(e) => return refuse(&format!("an invalid job-update: {e}")),
            };
            if emitted.rooms.is_empty() {
                match event.job_id {
                    Some(job) => jobs.push(job),
                    None => {
                        return refuse("a job-update to the whole namespace must carry its jobId");
                    }
                }
            }
            if event.seq.is_some() && !skip.is_empty() {
                return refuse(
                    "a job-update with seq cannot skip sockets (except): every subscriber must have every seq",
                );
            }
            for job in jobs {
                if event.job_id.is_some_and(|id| id != job) {
                    refuse(&format!(
                        "the job-update's jobId is not that of its room job:{job}"
                    ));
                    continue;
                }
                if event.seq.is_none() && !skip.is_empty() {
                    let live = Arc::new(Live {
                        event: "job-update".into(),
                        data: live_update(job, &event.event),
                        label: "job-update",
                    });
                    self.hub.deliver_live(job, &live, &skip);
                    self.metrics.worker_event("emitter", "live");
                } else {
                    self.deliver_worker_event(job, event.clone(), "emitter");
                }
            }
            return;
        }
        let live = Arc::new(Live {
            event: emitted.event.clone(),
            data: data.clone(),
            label: "other",
        });
        if emitted.rooms.is_empty() {
            self.hub.emit_all(&live, &skip);
        } else {
            // A socket in several of the rooms gets it once, as in Socket.IO.
            for job in jobs {
                self.hub.deliver_live(job, &live, &skip);
                skip.extend(self.hub.subscribers(&[job]));
            }
        }
        self.metrics.worker_event("emitter", "live");
    }
}

/// A `job-update` without `seq`: the event and its `jobId`.
pub fn live_update(job: Uuid, event: &JobEvent) -> serde_json::Value {
    let mut data = serde_json::to_value(event).expect("a JobEvent always serializes");
    if let serde_json::Value::Object(map) = &mut data {
        map.insert("jobId".into(), serde_json::Value::String(job.to_string()));
    }
    data
}

/// Publishes resync messages for the jobs whose events could not be
/// published, retrying with backoff until Redis takes them, until `cancel`.
pub async fn run_resync_sender(fanout: Arc<Fanout>, cancel: CancellationToken) {
    let Fanout::Redis(redis) = &*fanout else {
        return;
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let jobs: Vec<Uuid> = redis.unpublished().iter().copied().collect();
        if jobs.is_empty() {
            backoff = Duration::from_millis(200);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = redis.unpublished_added.notified() => continue,
            }
        }
        match redis.publisher.publish_resync(&jobs).await {
            Ok(()) => {
                info!(
                    jobs = jobs.len(),
                    "Asked every instance to refresh jobs whose events could not be published."
                );
                let mut unpublished = redis.unpublished();
                for job in &jobs {
                    unpublished.remove(job);
                }
            }
            Err(e) => {
                debug!(error = %e, jobs = jobs.len(), "Resync not published yet; retrying.");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Once a second, looks after sockets that could not take their messages
/// (see `Hub::sweep`): those lagging for longer than `grace` are told why and
/// disconnected, until `cancel`.
pub async fn run_sweeper(app: crate::App, grace: Duration, cancel: CancellationToken) {
    let (hub, metrics) = (app.hub.clone(), app.metrics.clone());
    // Sockets being evicted, whether they were told why (the message and
    // the disconnect go out as soon as they fit in the socket's queue), and
    // since when.
    let mut evicting: Vec<(socketioxide::extract::SocketRef, bool, Instant)> = Vec::new();
    let why = leadgate_protocol::ClientError {
        message: "disconnected: too slow to keep up with updates".into(),
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        app.upgrades.prune();
        for socket in hub.sweep(grace) {
            if evicting.iter().any(|(s, _, _)| s.id == socket.id) {
                continue;
            }
            warn!(sid = %socket.id, grace_secs = grace.as_secs(), "Disconnecting a client that has not taken its messages.");
            metrics.slow_clients.inc();
            // Its subscriptions are gone with the sweep; its session goes
            // now, whenever socketioxide lets the socket go.
            crate::sio::forget(&app, &socket);
            evicting.push((socket, false, Instant::now()));
        }
        // A socket that went away meanwhile is forgotten. The others are
        // told why and disconnected as soon as both fit in their queue. A
        // client that takes nothing at all would keep its connection, and
        // socketioxide its socket, as long as a write to it is pending: its
        // connection is cut once telling it has failed for `CUT_AFTER`.
        evicting.retain_mut(|(socket, told, since)| {
            if !socket.connected() {
                return false;
            }
            *told = *told || socket.emit("error", &why).is_ok();
            if *told && socket.clone().disconnect().is_ok() {
                return false;
            }
            if since.elapsed() >= CUT_AFTER {
                crate::sio::cut(&app, socket);
                return false;
            }
            true
        });
    }
}

/// Reads the snapshots of jobs queued for a refresh and hands them to the
/// hub, until `cancel`.
pub async fn run_refresher(
    hub: Arc<Hub>,
    store: Store,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    loop {
        let jobs = tokio::select! {
            () = cancel.cancelled() => return,
            jobs = hub.next_refreshes() => jobs,
        };
        futures_util::stream::iter(jobs)
            .for_each_concurrent(REFRESH_CONCURRENCY, |job| {
                let (hub, store, metrics) = (hub.clone(), store.clone(), metrics.clone());
                async move {
                    let started = std::time::Instant::now();
                    let found = store.job_status(job).await;
                    metrics.query("job_status", started.elapsed());
                    match found {
                        Ok(Some(found)) => hub.refresh(job, &found.status),
                        Ok(None) => {}
                        Err(e) => {
                            warn!(job = %job, error = %e, "Could not read a job to refresh its subscribers; retrying.");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            hub.request_refresh(job);
                        }
                    }
                }
            })
            .await;
    }
}
