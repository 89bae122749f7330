//! The subscription hub: which sockets of this instance follow which job, and
//! the one place where `job-status` and `job-update` are sent to them.
//!
//! A socket that follows a job and is up to date with it is a member of the
//! job's socketioxide room (`job:<uuid>`), and an update reaches the room's
//! members through one broadcast, encoded once. The hub keeps, per job, the
//! `seq` every member of the room has reached (`room_seq`); a socket joins
//! the room only when it stands exactly there. Sockets that are not (yet)
//! there are served one by one, outside the room, until they are.
//!
//! Invariant, per socket and job: updates arrive in `seq` order, none with a
//! `seq` at or below that of the last `job-status` the socket was sent, none
//! twice, none missing. It holds because:
//!
//! - a subscription is registered, *pending*, before its snapshot is read;
//!   updates that arrive meanwhile are buffered, and when the snapshot is
//!   sent (under the same lock that deliveries take) only buffered updates
//!   newer than it follow. The socket then stands at a known seq, outside
//!   the room, and joins it once the room reaches that seq (at once, when
//!   the room is empty or already there);
//! - the room is sent an update only if its `seq` is exactly the next one
//!   (so is a socket outside it). A later `seq` means updates were lost or
//!   overtaken on the way (a publish that failed, two publishers racing):
//!   every member leaves the room and goes back to pending, and the job is
//!   queued for a refresh, which sends a fresh `job-status` read from the
//!   database (unless the socket already has that state), then the buffered
//!   updates that follow it without a gap. Buffered updates beyond a gap are
//!   dropped: the database, read after they were published, is the better
//!   account of the job, and a worker's bogus seq cannot make refreshes
//!   loop;
//! - a socket whose queue is full is never sent anything more of the job
//!   until a fresh `job-status` fits: it is *lagging*, outside the room.
//!   socketioxide's broadcast says how many sockets could not take a
//!   message, not which, so when any member of a room could not, every
//!   member leaves the room, pending as after a gap: each is sent a fresh
//!   `job-status` (read at once) and the updates after it, and the one that
//!   could not take it goes lagging. A socket that left the room that way,
//!   or lagged, is then served one by one for its next [`PROBATION`]
//!   updates before it may join again, so that a client that stays slow is
//!   found by its own sends and does not take its room out again.
//!
//! Every send, join and leave of a job happens under the job's shard lock,
//! so the room's membership and `room_seq` always agree.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use leadgate_protocol::{JobStatus, JobUpdate};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SocketError, SocketIo};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Updates buffered for a pending subscription. Past this the buffer is
/// dropped and the snapshot read again.
const PENDING_BUFFER: usize = 256;

const SHARDS: usize = 64;

/// Updates a socket takes one by one, after it lagged or its room could not
/// be sent a message, before it may join the room again.
const PROBATION: u32 = 64;

type Jobs = HashMap<Uuid, Job>;

/// Subscriptions of this instance, sharded by job so that deliveries of
/// different jobs rarely contend.
pub struct Hub {
    shards: Box<[Mutex<Jobs>]>,
    next_token: AtomicU64,
    refresh: RefreshQueue,
    metrics: Arc<Metrics>,
    /// The Socket.IO server whose rooms the hub broadcasts to; set once it
    /// is built.
    io: OnceLock<SocketIo>,
}

/// The subscribers of one job on this instance.
#[derive(Default)]
struct Job {
    /// The seq every member of the room stands at: the last update (or
    /// snapshot) broadcast to the room, or the seq of the first socket that
    /// joined it. `None` while the room is empty.
    room_seq: Option<i64>,
    /// Members of the room (subscribers in [`State::Joined`]).
    joined: usize,
    subs: Vec<Subscriber>,
}

struct Subscriber {
    socket: SocketRef,
    /// Tells one subscription of a socket to a job from a later one.
    token: u64,
    state: State,
    /// Updates still to take one by one before joining the room.
    probation: u32,
}

enum State {
    Pending {
        /// Whether the owner check passed; only then may a refresh send the
        /// job's state to this socket.
        authorized: bool,
        buffer: Vec<Buffered>,
        overflowed: bool,
        /// The seq the socket already has, when it was active before.
        last_sent: Option<i64>,
    },
    /// Up to date at `last_seq`, outside the room: sent updates one by one
    /// until the room stands at the same seq (and its probation is over),
    /// then it joins.
    Active { last_seq: i64 },
    /// In the job's room, at the room's seq.
    Joined,
    /// The socket could not take a message: nothing more is sent until a
    /// fresh `job-status` fits (see [`Hub::sweep`]).
    Lagging {
        since: Instant,
        /// The seq of the last message the socket surely got (-1: none).
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

/// A message for a job's subscribers that has no place in the job's `seq`
/// order: a worker's event published without `seq`, or an event a Node.js
/// worker sent to the job's room through `@socket.io/redis-emitter`. It is
/// delivered to every subscriber of this instance in the order it arrives,
/// and is not part of any snapshot: a subscriber whose queue could not take
/// it does not get it later.
#[derive(Debug)]
pub struct Live {
    /// The event name the sockets receive.
    pub event: String,
    pub data: serde_json::Value,
    /// The name it is counted under in the metrics.
    pub label: &'static str,
}

/// What a pending subscription holds while its snapshot loads.
enum Buffered {
    Update(JobUpdate),
    /// A live message, with the highest `seq` buffered before it, so that
    /// ordering the buffer by `seq` keeps it where it arrived.
    Live(Arc<Live>, i64),
}

impl Buffered {
    fn order(&self) -> i64 {
        match self {
            Buffered::Update(update) => update.seq,
            Buffered::Live(_, after) => *after,
        }
    }
}

fn buffer_live(buffer: &mut Vec<Buffered>, overflowed: &mut bool, live: &Arc<Live>) {
    if buffer.len() < PENDING_BUFFER {
        let after = buffer
            .iter()
            .filter_map(|b| match b {
                Buffered::Update(u) => Some(u.seq),
                Buffered::Live(..) => None,
            })
            .max()
            .unwrap_or(i64::MIN);
        buffer.push(Buffered::Live(live.clone(), after));
    } else {
        *overflowed = true;
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

fn room(job: Uuid) -> String {
    format!("job:{job}")
}

impl Job {
    fn join(&mut self, job: Uuid, sub_index: usize) {
        let sub = &mut self.subs[sub_index];
        sub.socket.join(room(job));
        sub.state = State::Joined;
        self.joined += 1;
    }

    /// Takes a member out of the room, into `state`.
    fn leave(&mut self, job: Uuid, sub_index: usize, state: State) {
        let sub = &mut self.subs[sub_index];
        debug_assert!(matches!(sub.state, State::Joined));
        sub.socket.leave(room(job));
        sub.state = state;
        self.joined -= 1;
        if self.joined == 0 {
            self.room_seq = None;
        }
    }

    /// Removes the subscribers `remove` picks, leaving the room first.
    fn remove(&mut self, job: Uuid, mut remove: impl FnMut(&Subscriber) -> bool) {
        let mut i = 0;
        while i < self.subs.len() {
            if remove(&self.subs[i]) {
                if matches!(self.subs[i].state, State::Joined) {
                    self.leave(job, i, State::pending(false));
                }
                self.subs.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Every member leaves the room, into the state `state` makes from the
    /// room's seq.
    fn empty_room(&mut self, job: Uuid, state: impl Fn(i64) -> State) {
        let Some(room_seq) = self.room_seq else {
            return;
        };
        for i in 0..self.subs.len() {
            if matches!(self.subs[i].state, State::Joined) {
                self.leave(job, i, state(room_seq));
                self.subs[i].probation = PROBATION;
            }
        }
    }

    /// Lets every socket that stands where the room stands join it; the
    /// first one to come fixes the seq of an empty room.
    fn settle(&mut self, job: Uuid) {
        for i in 0..self.subs.len() {
            if let State::Active { last_seq } = self.subs[i].state
                && self.subs[i].probation == 0
            {
                match self.room_seq {
                    None => {
                        self.room_seq = Some(last_seq);
                        self.join(job, i);
                    }
                    Some(room_seq) if room_seq == last_seq => self.join(job, i),
                    Some(_) => {}
                }
            }
        }
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_token: AtomicU64::new(1),
            refresh: RefreshQueue::default(),
            metrics,
            io: OnceLock::new(),
        }
    }

    /// Gives the hub the Socket.IO server whose rooms it sends to.
    pub fn set_io(&self, io: SocketIo) {
        let _ = self.io.set(io);
    }

    /// Subscriptions, over every job.
    pub fn subscription_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(|job| job.subs.len())
                    .sum::<usize>()
            })
            .sum()
    }

    fn shard(&self, job: &Uuid) -> MutexGuard<'_, Jobs> {
        let index = (job.as_u128() % SHARDS as u128) as usize;
        // Every change under this lock leaves it consistent before anything
        // that could panic, so a poisoned shard is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `socket` for `job`, pending and not yet authorized,
    /// replacing an earlier subscription of the same socket. Returns the
    /// token for [`Hub::activate`].
    pub fn begin(&self, job: Uuid, socket: &SocketRef) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&job);
        let entry = shard.entry(job).or_default();
        let sid = socket.id;
        entry.remove(job, |s| s.socket.id == sid);
        entry.subs.push(Subscriber {
            socket: socket.clone(),
            token,
            state: State::pending(false),
            probation: 0,
        });
        token
    }

    /// Authorizes a pending subscription and sends it the snapshot, then the
    /// buffered updates newer than it.
    pub fn activate(&self, job: Uuid, sid: Sid, token: u64, status: &JobStatus) -> Activation {
        let mut shard = self.shard(&job);
        let Some(entry) = shard.get_mut(&job) else {
            return Activation::Gone;
        };
        let Some(sub) = entry
            .subs
            .iter_mut()
            .find(|s| s.socket.id == sid && s.token == token)
        else {
            return Activation::Gone;
        };
        match &mut sub.state {
            State::Active { .. } | State::Joined | State::Lagging { .. } => Activation::Sent,
            State::Pending {
                overflowed: true, ..
            } => {
                sub.state = State::pending(false);
                Activation::Reload
            }
            State::Pending { .. } => {
                send_snapshot(&self.metrics, sub, status);
                entry.settle(job);
                Activation::Sent
            }
        }
    }

    /// Brings every authorized subscription of `job` up to `status`, read
    /// from the database after the job was queued for a refresh.
    pub fn refresh(&self, job: Uuid, status: &JobStatus) {
        let mut shard = self.shard(&job);
        let Some(entry) = shard.get_mut(&job) else {
            return;
        };
        // The room first, with one broadcast, when it is behind.
        if let Some(room_seq) = entry.room_seq.filter(|seq| status.seq > *seq) {
            if self.broadcast(job, entry, ("job-status", "job-status"), status) {
                entry.room_seq = Some(status.seq);
            } else {
                // Each is sent the snapshot again, one by one, below.
                entry.empty_room(job, |_| resync(room_seq));
            }
        }
        let mut again = false;
        for sub in entry.subs.iter_mut() {
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
                        sub.probation = PROBATION;
                    }
                }
                State::Active { .. } | State::Joined => {}
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
        entry.settle(job);
        if again {
            self.refresh.push(job);
        }
    }

    /// Ends a socket's subscription to `job`. With a token, only that
    /// subscription ends (a later re-subscribe stays).
    pub fn end(&self, job: Uuid, sid: Sid, token: Option<u64>) {
        let mut shard = self.shard(&job);
        if let Some(entry) = shard.get_mut(&job) {
            entry.remove(job, |s| {
                s.socket.id == sid && token.is_none_or(|t| t == s.token)
            });
            if entry.subs.is_empty() {
                shard.remove(&job);
            }
        }
    }

    /// Sends `update` to every socket of this instance subscribed to its job
    /// for which it is the next one: the room's members with one broadcast,
    /// the others one by one. Returns how many sockets were sent it.
    pub fn deliver(&self, update: &JobUpdate) -> usize {
        let job = update.job_id;
        let mut shard = self.shard(&job);
        let Some(entry) = shard.get_mut(&job) else {
            return 0;
        };
        let mut sent = 0;
        let mut gap = false;
        // Those outside the room first: the members that may leave it below
        // are then not served twice.
        for sub in entry.subs.iter_mut() {
            match &mut sub.state {
                State::Pending {
                    buffer, overflowed, ..
                } => {
                    if buffer.len() < PENDING_BUFFER {
                        buffer.push(Buffered::Update(update.clone()));
                    } else {
                        *overflowed = true;
                    }
                }
                State::Active { last_seq } if update.seq == *last_seq + 1 => {
                    let before = *last_seq;
                    *last_seq = update.seq;
                    if send(&self.metrics, &sub.socket, "job-update", update, job) {
                        sent += 1;
                        sub.probation = sub.probation.saturating_sub(1);
                    } else {
                        sub.state = lagging(before);
                        sub.probation = PROBATION;
                    }
                }
                State::Active { last_seq } if update.seq > *last_seq + 1 => {
                    tracing::debug!(job = %job, sid = %sub.socket.id, last_seq = *last_seq, seq = update.seq, "Gap in a job's events; refreshing.");
                    sub.state = State::Pending {
                        authorized: true,
                        buffer: vec![Buffered::Update(update.clone())],
                        overflowed: false,
                        last_sent: Some(*last_seq),
                    };
                    gap = true;
                }
                State::Active { .. } | State::Joined | State::Lagging { .. } => {}
            }
        }
        if let Some(room_seq) = entry.room_seq {
            if update.seq == room_seq + 1 {
                let members = entry.joined;
                if self.broadcast(job, entry, ("job-update", "job-update"), update) {
                    entry.room_seq = Some(update.seq);
                    sent += members;
                } else {
                    entry.empty_room(job, |_| resync(room_seq));
                    gap = true;
                }
            } else if update.seq > room_seq + 1 {
                tracing::debug!(job = %job, room_seq, seq = update.seq, "Gap in a job's events; refreshing its room.");
                entry.empty_room(job, |last| State::Pending {
                    authorized: true,
                    buffer: vec![Buffered::Update(update.clone())],
                    overflowed: false,
                    last_sent: Some(last),
                });
                gap = true;
            }
        }
        entry.settle(job);
        if gap {
            self.refresh.push(job);
        }
        sent
    }

    /// Sends a live message (see [`Live`]) to every socket of this instance
    /// subscribed to `job`, except those in `skip`: the room's members with
    /// one broadcast (or one by one when one of them is skipped), the others
    /// one by one, pending ones after their snapshot. Returns how many
    /// sockets were sent it.
    pub fn deliver_live(&self, job: Uuid, live: &Arc<Live>, skip: &HashSet<Sid>) -> usize {
        let mut shard = self.shard(&job);
        let Some(entry) = shard.get_mut(&job) else {
            return 0;
        };
        let mut sent = 0;
        let mut resync_room = false;
        let room_skips = entry
            .subs
            .iter()
            .any(|s| matches!(s.state, State::Joined) && skip.contains(&s.socket.id));
        for sub in entry.subs.iter_mut() {
            if skip.contains(&sub.socket.id) {
                continue;
            }
            match &mut sub.state {
                State::Pending {
                    buffer, overflowed, ..
                } => buffer_live(buffer, overflowed, live),
                State::Active { last_seq } => {
                    if send_live(&self.metrics, &sub.socket, live, job) {
                        sent += 1;
                    } else {
                        sub.state = lagging(*last_seq);
                        sub.probation = PROBATION;
                    }
                }
                // One by one: the room is sent it at once, below, unless a
                // member is skipped.
                State::Joined if room_skips => {
                    if send_live(&self.metrics, &sub.socket, live, job) {
                        sent += 1;
                    } else {
                        resync_room = true;
                    }
                }
                State::Joined | State::Lagging { .. } => {}
            }
        }
        if entry.room_seq.is_some() && !room_skips {
            let members = entry.joined;
            if self.broadcast(job, entry, (&live.event, live.label), &live.data) {
                sent += members;
            } else {
                resync_room = true;
            }
        }
        if let Some(room_seq) = entry.room_seq.filter(|_| resync_room) {
            entry.empty_room(job, |_| resync(room_seq));
            self.refresh.push(job);
        }
        entry.settle(job);
        sent
    }

    /// Sends a live message to every socket of this instance on `/`, except
    /// those in `skip`; subscribed or not, as Socket.IO's emit to a whole
    /// namespace does. Returns how many sockets were sent it.
    pub fn emit_all(&self, live: &Live, skip: &HashSet<Sid>) -> usize {
        let Some(io) = self.io.get() else {
            return 0;
        };
        let sockets = io.local().sockets();
        let mut sent = 0;
        for socket in sockets.iter().filter(|s| !skip.contains(&s.id)) {
            // No job is behind it: a socket that cannot take it just misses it.
            if send_live(&self.metrics, socket, live, Uuid::nil()) {
                sent += 1;
            }
        }
        sent
    }

    /// The sockets of this instance subscribed to any of `jobs`.
    pub fn subscribers(&self, jobs: &[Uuid]) -> HashSet<Sid> {
        let mut sids = HashSet::new();
        for job in jobs {
            if let Some(entry) = self.shard(job).get(job) {
                sids.extend(entry.subs.iter().map(|s| s.socket.id));
            }
        }
        sids
    }

    /// Broadcasts one message to the job's room, encoded once. `false` when
    /// a member's queue was full: who is not known, so the caller takes
    /// every member out to be resynced (see the module docs). Sockets that closed
    /// meanwhile are not counted; their disconnect ends their subscription.
    fn broadcast<T: serde::Serialize>(
        &self,
        job: Uuid,
        entry: &Job,
        (event, label): (&str, &'static str),
        data: &T,
    ) -> bool {
        let Some(io) = self.io.get() else {
            return false;
        };
        let members = entry.joined as u64;
        // The local adapter broadcasts synchronously: the future is ready
        // at its first poll, while the shard lock is held.
        let result = io
            .local()
            .to(room(job))
            .emit(event, data)
            .now_or_never()
            .unwrap_or_else(|| {
                tracing::error!(job = %job, event, "A room broadcast did not complete at once.");
                Err(BroadcastError::Socket(vec![
                    SocketError::InternalChannelFull,
                ]))
            });
        match result {
            Ok(()) => {
                self.metrics.broadcast(label, members, 0);
                true
            }
            Err(BroadcastError::Socket(errors)) => {
                let full = errors
                    .iter()
                    .filter(|e| matches!(e, SocketError::InternalChannelFull))
                    .count() as u64;
                let closed = errors.len() as u64 - full;
                self.metrics
                    .broadcast(label, members.saturating_sub(full + closed), full + closed);
                if full > 0 {
                    tracing::warn!(job = %job, event, sockets = full, members, "Sockets of a job's room could not take a message; its members are sent a fresh job-status.");
                }
                full == 0
            }
            Err(e) => {
                tracing::error!(job = %job, event, error = %e, "Could not broadcast to a job's room.");
                self.metrics.broadcast(label, 0, members);
                false
            }
        }
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
    /// a socket lagging for longer than `grace` loses its subscriptions
    /// (and leaves their rooms) and is returned, to be disconnected.
    pub fn sweep(&self, grace: Duration) -> Vec<SocketRef> {
        // First the sockets past the grace, then all of their subscriptions
        // go, whichever job they lag on.
        let mut evicted: Vec<SocketRef> = Vec::new();
        let mut jobs = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (job, entry) in shard.iter() {
                for sub in &entry.subs {
                    match sub.state {
                        State::Lagging { since, .. }
                            if since.elapsed() > grace
                                && !evicted.iter().any(|s| s.id == sub.socket.id) =>
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
                for (job, entry) in shard.iter_mut() {
                    entry.remove(*job, |sub| evicted.iter().any(|s| s.id == sub.socket.id));
                }
                shard.retain(|_, entry| !entry.subs.is_empty());
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
/// it active, outside the room. Buffered updates beyond a gap are dropped
/// (see the module docs).
fn send_snapshot(metrics: &Metrics, sub: &mut Subscriber, status: &JobStatus) {
    let State::Pending {
        buffer, last_sent, ..
    } = &mut sub.state
    else {
        return;
    };
    let mut buffered = std::mem::take(buffer);
    buffered.sort_by_key(Buffered::order);
    let mut last_seq = match *last_sent {
        Some(sent) if sent >= status.seq => sent,
        previous => {
            if !send(metrics, &sub.socket, "job-status", status, status.job_id) {
                sub.state = lagging(previous.unwrap_or(-1));
                sub.probation = PROBATION;
                return;
            }
            status.seq
        }
    };
    for item in buffered {
        match item {
            Buffered::Live(live, _) => {
                if !send_live(metrics, &sub.socket, &live, status.job_id) {
                    sub.state = lagging(last_seq);
                    sub.probation = PROBATION;
                    return;
                }
            }
            Buffered::Update(update) if update.seq == last_seq + 1 => {
                if !send(metrics, &sub.socket, "job-update", &update, update.job_id) {
                    sub.state = lagging(last_seq);
                    sub.probation = PROBATION;
                    return;
                }
                last_seq = update.seq;
            }
            Buffered::Update(update) if update.seq > last_seq + 1 => {
                tracing::debug!(job = %update.job_id, sid = %sub.socket.id, last_seq, seq = update.seq, "Dropped buffered updates beyond a gap.");
                break;
            }
            Buffered::Update(_) => {}
        }
    }
    sub.state = State::Active { last_seq };
}

/// A member taken out of a room that could not be sent a message, to be
/// sent a fresh snapshot: pending, as after a gap.
fn resync(room_seq: i64) -> State {
    State::Pending {
        authorized: true,
        buffer: Vec::new(),
        overflowed: false,
        last_sent: Some(room_seq),
    }
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

/// Sends one message to one socket; `false` if it could not take it.
fn send<T: serde::Serialize>(
    metrics: &Metrics,
    socket: &SocketRef,
    event: &'static str,
    data: &T,
    job: Uuid,
) -> bool {
    let result = socket.emit(event, data);
    metrics.message(event, result.is_ok());
    match result {
        Ok(()) => true,
        Err(e) => {
            // The socket's queue is full or it is closing; the packet is
            // lost for this socket only. The caller marks it lagging, and it
            // gets a fresh job-status once it can take one.
            tracing::warn!(sid = %socket.id, job = %job, event, error = %e, "Dropped a message for a socket.");
            false
        }
    }
}

/// Sends one live message to one socket; `false` if it could not take it.
fn send_live(metrics: &Metrics, socket: &SocketRef, live: &Live, job: Uuid) -> bool {
    let result = socket.emit(live.event.as_str(), &live.data);
    metrics.message(live.label, result.is_ok());
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(sid = %socket.id, job = %job, event = live.event, error = %e, "Dropped a live message for a socket.");
            false
        }
    }
}
