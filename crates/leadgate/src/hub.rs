//! The subscription hub: which sockets of this instance follow which job, and
//! the one place where `job-status` and `job-update` are sent to them.
//!
//! Invariant, per socket and job: updates arrive in `seq` order, none with a
//! `seq` at or below that of the last `job-status` the socket was sent, none
//! twice, none missing. It holds because:
//!
//! - a subscription is registered, *pending*, before its snapshot is read;
//!   updates that arrive meanwhile are buffered, and when the snapshot is
//!   sent (under the same lock that deliveries take) only buffered updates
//!   newer than it follow;
//! - an active subscription is sent an update only if its `seq` is exactly
//!   the next one. A later `seq` means updates were lost or overtaken on the
//!   way (a publish that failed, two publishers racing): the subscription
//!   goes back to pending and the job is queued for a refresh, which sends a
//!   fresh `job-status` read from the database (unless the socket already
//!   has that state), then the buffered updates that follow it without a
//!   gap. Buffered updates beyond a gap are dropped: the database, read
//!   after they were published, is the better account of the job, and a
//!   worker's bogus seq cannot make refreshes loop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leadgate_protocol::{JobStatus, JobUpdate};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::engine::{EncodedEvent, SendError, Sid, Socket};
use crate::metrics::Metrics;

/// Updates buffered for a pending subscription. Past this the buffer is
/// dropped and the snapshot read again.
const PENDING_BUFFER: usize = 256;

const SHARDS: usize = 64;

type Subscribers = HashMap<Uuid, Vec<Subscriber>>;

/// Subscriptions of this instance, sharded by job so that deliveries of
/// different jobs rarely contend.
pub struct Hub {
    shards: Box<[Mutex<Subscribers>]>,
    next_token: AtomicU64,
    refresh: RefreshQueue,
    metrics: Arc<Metrics>,
}

struct Subscriber {
    socket: Socket,
    /// Tells one subscription of a socket to a job from a later one.
    token: u64,
    state: State,
}

enum State {
    Pending {
        /// Whether the owner check passed; only then may a refresh send the
        /// job's state to this socket.
        authorized: bool,
        buffer: Vec<JobUpdate>,
        overflowed: bool,
        /// The seq the socket already has, when it was active before.
        last_sent: Option<i64>,
    },
    Active {
        last_seq: i64,
    },
    /// The socket's queue was full and a message was dropped: nothing more
    /// is sent until a fresh `job-status` fits (see [`Hub::sweep`]).
    Lagging {
        since: Instant,
        /// The seq of the last message the socket did get (-1: none).
        last_sent: i64,
    },
}

impl State {
    fn pending(authorized: bool) -> State {
        State::Pending {
            authorized,
            buffer: Vec::new(),
            overflowed: false,
            last_sent: None,
        }
    }
}

/// The outcome of [`Hub::activate`].
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    /// The snapshot was sent, and any newer buffered updates.
    Sent,
    /// Too many updates arrived while loading: read the snapshot again.
    Reload,
    /// The subscription ended meanwhile.
    Gone,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_token: AtomicU64::new(1),
            refresh: RefreshQueue::default(),
            metrics,
        }
    }

    /// Subscriptions, over every job.
    pub fn subscription_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    fn shard(&self, job: &Uuid) -> MutexGuard<'_, Subscribers> {
        let index = (job.as_u128() % SHARDS as u128) as usize;
        // Every change under this lock is a single push, retain or field
        // write, so a panic cannot leave it half-made: a poisoned shard is
        // still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `socket` for `job`, pending and not yet authorized,
    /// replacing an earlier subscription of the same socket. Returns the
    /// token for [`Hub::activate`].
    pub fn begin(&self, job: Uuid, socket: &Socket) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&job);
        let subscribers = shard.entry(job).or_default();
        let sid = socket.id();
        subscribers.retain(|s| s.socket.id() != sid);
        subscribers.push(Subscriber {
            socket: socket.clone(),
            token,
            state: State::pending(false),
        });
        token
    }

    /// Authorizes a pending subscription and sends it the snapshot, then the
    /// buffered updates newer than it.
    pub fn activate(&self, job: Uuid, sid: Sid, token: u64, status: &JobStatus) -> Activation {
        let mut shard = self.shard(&job);
        let Some(sub) = shard.get_mut(&job).and_then(|subs| {
            subs.iter_mut()
                .find(|s| s.socket.id() == sid && s.token == token)
        }) else {
            return Activation::Gone;
        };
        match &mut sub.state {
            State::Active { .. } | State::Lagging { .. } => Activation::Sent,
            State::Pending {
                overflowed: true, ..
            } => {
                sub.state = State::pending(false);
                Activation::Reload
            }
            State::Pending { .. } => {
                send_snapshot(&self.metrics, sub, status);
                Activation::Sent
            }
        }
    }

    /// Brings every authorized subscription of `job` up to `status`, read
    /// from the database after the job was queued for a refresh.
    pub fn refresh(&self, job: Uuid, status: &JobStatus) {
        let mut shard = self.shard(&job);
        let Some(subs) = shard.get_mut(&job) else {
            return;
        };
        let mut again = false;
        for sub in subs.iter_mut() {
            match &mut sub.state {
                State::Pending {
                    authorized: false, ..
                } => {}
                State::Pending {
                    overflowed: true,
                    last_sent,
                    ..
                } => {
                    // Updates were lost from the buffer while the snapshot
                    // loaded, possibly after it was read: read again.
                    sub.state = State::Pending {
                        authorized: true,
                        buffer: Vec::new(),
                        overflowed: false,
                        last_sent: *last_sent,
                    };
                    again = true;
                }
                State::Pending { .. } => send_snapshot(&self.metrics, sub, status),
                State::Active { last_seq } if status.seq > *last_seq => {
                    let before = *last_seq;
                    *last_seq = status.seq;
                    if !send(&self.metrics, &sub.socket, "job-status", status, job) {
                        sub.state = lagging(before);
                    }
                }
                State::Active { .. } => {}
                // The missed updates coalesce into this one snapshot.
                State::Lagging { last_sent, .. } if status.seq > *last_sent => {
                    if send(&self.metrics, &sub.socket, "job-status", status, job) {
                        sub.state = State::Active {
                            last_seq: status.seq,
                        };
                    }
                }
                // A snapshot read before the dropped message was committed:
                // stay lagging, the next sweep reads the job again.
                State::Lagging { .. } => {}
            }
        }
        if again {
            self.refresh.push(job);
        }
    }

    /// Ends a socket's subscription to `job`. With a token, only that
    /// subscription ends (a later re-subscribe stays).
    pub fn end(&self, job: Uuid, sid: Sid, token: Option<u64>) {
        let mut shard = self.shard(&job);
        if let Some(subs) = shard.get_mut(&job) {
            subs.retain(|s| !(s.socket.id() == sid && token.is_none_or(|t| t == s.token)));
            if subs.is_empty() {
                shard.remove(&job);
            }
        }
    }

    /// Sends `update` to every socket of this instance subscribed to its job
    /// for which it is the next one; returns how many were sent it.
    pub fn deliver(&self, update: &JobUpdate) -> usize {
        let mut shard = self.shard(&update.job_id);
        let Some(subs) = shard.get_mut(&update.job_id) else {
            return 0;
        };
        let mut sent = 0;
        let mut gap = false;
        // Encoded once, when the first socket takes it, for every socket.
        let mut encoded: Option<EncodedEvent> = None;
        for sub in subs.iter_mut() {
            match &mut sub.state {
                State::Pending {
                    buffer, overflowed, ..
                } => {
                    if buffer.len() < PENDING_BUFFER {
                        buffer.push(update.clone());
                    } else {
                        *overflowed = true;
                    }
                }
                State::Active { last_seq } if update.seq == *last_seq + 1 => {
                    let payload = match &encoded {
                        Some(payload) => payload,
                        None => match EncodedEvent::encode("job-update", update) {
                            Ok(payload) => encoded.insert(payload),
                            Err(e) => {
                                tracing::error!(job = %update.job_id, error = %e, "Could not encode a job update.");
                                break;
                            }
                        },
                    };
                    let before = *last_seq;
                    *last_seq = update.seq;
                    if send_encoded(&self.metrics, &sub.socket, payload, update.job_id) {
                        sent += 1;
                    } else {
                        sub.state = lagging(before);
                    }
                }
                State::Active { last_seq } if update.seq > *last_seq + 1 => {
                    tracing::debug!(job = %update.job_id, sid = %sub.socket.id(), last_seq = *last_seq, seq = update.seq, "Gap in a job's events; refreshing.");
                    sub.state = State::Pending {
                        authorized: true,
                        buffer: vec![update.clone()],
                        overflowed: false,
                        last_sent: Some(*last_seq),
                    };
                    gap = true;
                }
                State::Active { .. } | State::Lagging { .. } => {}
            }
        }
        if gap {
            self.refresh.push(update.job_id);
        }
        sent
    }

    /// Queues every job that has subscribers here for a refresh: after
    /// events may have been missed (Redis was unreachable).
    pub fn refresh_all(&self) {
        let jobs: Vec<Uuid> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        for job in jobs {
            self.refresh.push(job);
        }
    }

    /// Queues one job for a refresh, if any socket here follows it.
    pub fn request_refresh(&self, job: Uuid) {
        if self.shard(&job).contains_key(&job) {
            self.refresh.push(job);
        }
    }

    /// Looks after sockets that could not take a message: their jobs are
    /// queued for a refresh, which sends a fresh `job-status` once it fits;
    /// a socket lagging for longer than `grace` loses its subscriptions and
    /// is returned, to be disconnected.
    pub fn sweep(&self, grace: Duration) -> Vec<Socket> {
        // First the sockets past the grace, then all of their subscriptions
        // go, whichever job they lag on.
        let mut evicted: Vec<Socket> = Vec::new();
        let mut jobs = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (job, subs) in shard.iter() {
                for sub in subs {
                    match sub.state {
                        State::Lagging { since, .. }
                            if since.elapsed() > grace
                                && !evicted.iter().any(|s| s.id() == sub.socket.id()) =>
                        {
                            evicted.push(sub.socket.clone());
                        }
                        State::Lagging { since, .. } if since.elapsed() > grace => {}
                        State::Lagging { .. } => jobs.push(*job),
                        _ => {}
                    }
                }
            }
        }
        if !evicted.is_empty() {
            for shard in self.shards.iter() {
                let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                for subs in shard.values_mut() {
                    subs.retain(|sub| !evicted.iter().any(|s| s.id() == sub.socket.id()));
                }
                shard.retain(|_, subs| !subs.is_empty());
            }
        }
        for job in jobs {
            self.refresh.push(job);
        }
        evicted
    }

    /// Waits until jobs are queued for a refresh and takes them.
    pub async fn next_refreshes(&self) -> Vec<Uuid> {
        self.refresh.take().await
    }
}

/// Sends a pending subscription the snapshot (unless it already has that
/// state) and the buffered updates that follow it without a gap, and makes
/// it active. Buffered updates beyond a gap are dropped (see the module
/// docs).
fn send_snapshot(metrics: &Metrics, sub: &mut Subscriber, status: &JobStatus) {
    let State::Pending {
        buffer, last_sent, ..
    } = &mut sub.state
    else {
        return;
    };
    let mut buffered = std::mem::take(buffer);
    buffered.sort_by_key(|u| u.seq);
    let mut last_seq = match *last_sent {
        Some(sent) if sent >= status.seq => sent,
        previous => {
            if !send(metrics, &sub.socket, "job-status", status, status.job_id) {
                sub.state = lagging(previous.unwrap_or(-1));
                return;
            }
            status.seq
        }
    };
    for update in buffered {
        if update.seq == last_seq + 1 {
            if !send(metrics, &sub.socket, "job-update", &update, update.job_id) {
                sub.state = lagging(last_seq);
                return;
            }
            last_seq = update.seq;
        } else if update.seq > last_seq + 1 {
            tracing::debug!(job = %update.job_id, sid = %sub.socket.id(), last_seq, seq = update.seq, "Dropped buffered updates beyond a gap.");
            break;
        }
    }
    sub.state = State::Active { last_seq };
}

fn lagging(last_sent: i64) -> State {
    State::Lagging {
        since: Instant::now(),
        last_sent,
    }
}

/// Jobs waiting for a refresh. A set, so it is bounded by the number of jobs
/// with subscribers, and a job queued twice is read once.
#[derive(Default)]
struct RefreshQueue {
    jobs: Mutex<HashSet<Uuid>>,
    ready: Notify,
}

impl RefreshQueue {
    fn push(&self, job: Uuid) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job);
        self.ready.notify_one();
    }

    async fn take(&self) -> Vec<Uuid> {
        loop {
            let jobs: Vec<Uuid> = self
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            if !jobs.is_empty() {
                return jobs;
            }
            self.ready.notified().await;
        }
    }
}

fn send<T: serde::Serialize>(
    metrics: &Metrics,
    socket: &Socket,
    event: &'static str,
    data: &T,
    job: Uuid,
) -> bool {
    sent(metrics, socket, event, socket.emit(event, data), job)
}

fn send_encoded(metrics: &Metrics, socket: &Socket, event: &EncodedEvent, job: Uuid) -> bool {
    let result = socket.emit_encoded(event);
    sent(metrics, socket, event.name(), result, job)
}

fn sent(
    metrics: &Metrics,
    socket: &Socket,
    event: &'static str,
    result: Result<(), SendError>,
    job: Uuid,
) -> bool {
    metrics.message(event, result.is_ok());
    match result {
        Ok(()) => true,
        Err(e) => {
            // The socket's queue is full or it is closing; the packet is
            // lost for this socket only. A full socket is marked lagging by
            // the caller and gets a fresh job-status once it can take one.
            tracing::warn!(sid = %socket.id(), job = %job, event, error = %e, "Dropped a message for a socket.");
            false
        }
    }
}
