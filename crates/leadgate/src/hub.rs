//! The subscription hub: which sockets of this instance follow which job, and
//! the one place where `job-status` and `job-update` are sent to them.
//!
//! Invariant, per socket and job: updates arrive in `seq` order, none with a
//! `seq` at or below that of the `job-status` the socket was sent, none twice.
//! It holds because a subscription is registered *before* its snapshot is
//! read: updates that arrive while the snapshot is loading are buffered, and
//! when the snapshot is sent, under the same lock that deliveries take, only
//! buffered updates newer than it are flushed. From then on every delivery
//! compares the update's `seq` with the last one the socket was sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use leadgate_protocol::{JobStatus, JobUpdate};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use uuid::Uuid;

/// Updates buffered for a subscription whose snapshot is still loading. Past
/// this, the buffer is dropped and the snapshot read again.
const PENDING_BUFFER: usize = 256;

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Uuid, Vec<Subscriber>>>;

/// Subscriptions of this instance, sharded by job so that deliveries of
/// different jobs rarely contend.
pub struct Hub {
    shards: Box<[Shard]>,
    next_token: AtomicU64,
}

struct Subscriber {
    socket: SocketRef,
    /// Tells one subscription of a socket to a job from a later one.
    token: u64,
    state: State,
}

enum State {
    Pending {
        buffer: Vec<JobUpdate>,
        overflowed: bool,
    },
    Active {
        last_seq: i64,
    },
}

/// The outcome of [`Hub::activate`].
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    /// The snapshot and any newer buffered updates were sent.
    Sent,
    /// Too many updates arrived while loading: load the snapshot again.
    Reload,
    /// The subscription ended meanwhile (the socket left).
    Gone,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_token: AtomicU64::new(1),
        }
    }
}

impl Hub {
    fn shard(&self, job: &Uuid) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Subscriber>>> {
        let index = (job.as_u128() % SHARDS as u128) as usize;
        // A panic while holding the lock cannot leave a half-made change
        // behind (every change is one push, retain or field write), so a
        // poisoned shard is still consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `socket` for `job` in the pending state, replacing an
    /// earlier subscription of the same socket. Returns the subscription's
    /// token for [`Hub::activate`].
    pub fn begin(&self, job: Uuid, socket: &SocketRef) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&job);
        let subscribers = shard.entry(job).or_default();
        subscribers.retain(|s| s.socket.id != socket.id);
        subscribers.push(Subscriber {
            socket: socket.clone(),
            token,
            state: State::Pending {
                buffer: Vec::new(),
                overflowed: false,
            },
        });
        token
    }

    /// Sends the snapshot to a pending subscription, then the buffered
    /// updates newer than it, and makes the subscription active.
    pub fn activate(&self, job: Uuid, sid: Sid, token: u64, status: &JobStatus) -> Activation {
        let mut shard = self.shard(&job);
        let Some(sub) = shard.get_mut(&job).and_then(|subs| {
            subs.iter_mut()
                .find(|s| s.socket.id == sid && s.token == token)
        }) else {
            return Activation::Gone;
        };
        let State::Pending { buffer, overflowed } = &mut sub.state else {
            return Activation::Sent;
        };
        if *overflowed {
            buffer.clear();
            *overflowed = false;
            return Activation::Reload;
        }
        let buffered = std::mem::take(buffer);
        send(&sub.socket, "job-status", status, job);
        let mut last_seq = status.seq;
        for update in buffered.iter().filter(|u| u.seq > status.seq) {
            if update.seq > last_seq {
                send(&sub.socket, "job-update", update, job);
                last_seq = update.seq;
            }
        }
        sub.state = State::Active { last_seq };
        Activation::Sent
    }

    /// Ends a socket's subscription to `job`. With a token, only that
    /// subscription ends (a later re-subscribe stays).
    pub fn end(&self, job: Uuid, sid: Sid, token: Option<u64>) {
        let mut shard = self.shard(&job);
        if let Some(subs) = shard.get_mut(&job) {
            subs.retain(|s| !(s.socket.id == sid && token.is_none_or(|t| t == s.token)));
            if subs.is_empty() {
                shard.remove(&job);
            }
        }
    }

    /// Sends `update` to every socket of this instance subscribed to its job
    /// and returns how many were sent it.
    pub fn deliver(&self, update: &JobUpdate) -> usize {
        let mut shard = self.shard(&update.job_id);
        let Some(subs) = shard.get_mut(&update.job_id) else {
            return 0;
        };
        let mut sent = 0;
        for sub in subs.iter_mut() {
            match &mut sub.state {
                State::Pending { buffer, overflowed } => {
                    if buffer.len() < PENDING_BUFFER {
                        buffer.push(update.clone());
                    } else {
                        *overflowed = true;
                    }
                }
                State::Active { last_seq } if update.seq > *last_seq => {
                    *last_seq = update.seq;
                    if send(&sub.socket, "job-update", update, update.job_id) {
                        sent += 1;
                    }
                }
                State::Active { .. } => {}
            }
        }
        sent
    }
}

fn send<T: serde::Serialize>(socket: &SocketRef, event: &'static str, data: &T, job: Uuid) -> bool {
    match socket.emit(event, data) {
        Ok(()) => true,
        Err(e) => {
            // The socket's queue is full or it is closing; the packet is
            // lost for this socket only. It reads the current state again
            // when it re-subscribes.
            tracing::warn!(sid = %socket.id, job = %job, event, error = %e, "Dropped a message for a socket.");
            false
        }
    }
}
