//! Per-connection state of namespace `/`, and the turnstile that makes one
//! socket's requests run in the order they were sent.
//!
//! socketioxide runs every incoming event in its own task, so without help a
//! quick `subscribe-job` / `unsubscribe-job` pair could take effect in the
//! wrong order. Extractors, however, run synchronously in arrival order: the
//! [`Turn`] extractor draws a ticket there, and each handler waits for its
//! ticket before it acts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use socketioxide::adapter::Adapter;
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::Socket;
use tokio::sync::watch;
use uuid::Uuid;

use crate::UserSlot;
use crate::auth::Principal;
use crate::limits::{Bucket, Rate};

/// What the gateway knows about one authenticated connection to `/`.
pub struct Session {
    pub principal: Principal,
    jobs: Mutex<HashSet<Uuid>>,
    /// Set by the disconnect handler before it ends the subscriptions.
    closed: AtomicBool,
    requests: Mutex<Bucket>,
    /// The user's connection slot, given back with the session.
    _slot: Arc<UserSlot>,
}

impl Session {
    pub fn new(principal: Principal, slot: Arc<UserSlot>, rate: Rate) -> Arc<Self> {
        Arc::new(Session {
            principal,
            jobs: Mutex::default(),
            closed: AtomicBool::new(false),
            requests: Mutex::new(Bucket::new(rate)),
            _slot: slot,
        })
    }

    /// Whether one more request fits in the connection's rate.
    pub fn allow_request(&self, rate: Rate) -> bool {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(rate)
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a subscription; `false` if that would exceed `limit`.
    pub fn add_job(&self, job: Uuid, limit: usize) -> bool {
        let mut jobs = self.jobs();
        if jobs.contains(&job) {
            return true;
        }
        if jobs.len() >= limit {
            return false;
        }
        jobs.insert(job)
    }

    pub fn remove_job(&self, job: &Uuid) {
        self.jobs().remove(job);
    }

    /// Marks the session closed, then removes and returns every
    /// subscription, for disconnect.
    pub fn close(&self) -> Vec<Uuid> {
        self.closed.store(true, Ordering::SeqCst);
        self.jobs().drain().collect()
    }

    /// Whether the disconnect handler ran. (Not the socket's own
    /// `connected()`, which is still false for a moment after the client was
    /// told it is connected.)
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Hands out turns to one socket's requests, in the order they are drawn.
pub struct Turnstile {
    next_ticket: AtomicU64,
    serving: watch::Sender<u64>,
}

impl Turnstile {
    pub fn new() -> Arc<Self> {
        Arc::new(Turnstile {
            next_ticket: AtomicU64::new(0),
            serving: watch::Sender::new(0),
        })
    }

    /// Draws the next turn.
    pub fn ticket(self: &Arc<Self>) -> Turn {
        Turn {
            turnstile: self.clone(),
            ticket: self.next_ticket.fetch_add(1, Ordering::SeqCst),
            reached: false,
        }
    }
}

/// A place in the socket's queue of requests; see the module docs.
pub struct Turn {
    turnstile: Arc<Turnstile>,
    ticket: u64,
    reached: bool,
}

/// The socket has no turnstile: its connect middleware did not run. Handlers
/// are registered only after it succeeded, so this does not happen.
#[derive(Debug, thiserror::Error)]
#[error("socket has no turnstile")]
pub struct NoTurnstile;

impl<A: Adapter> FromMessageParts<A> for Turn {
    type Error = NoTurnstile;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        _: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        let turnstile = s.extensions.get::<Arc<Turnstile>>().ok_or(NoTurnstile)?;
        Ok(turnstile.ticket())
    }
}

impl Turn {
    /// Waits until every earlier request of this socket has finished.
    pub async fn wait(&mut self) {
        let ticket = self.ticket;
        let mut serving = self.turnstile.serving.subscribe();
        // The sender lives in the turnstile we hold, so this cannot fail.
        let _ = serving.wait_for(|now| *now == ticket).await;
        self.reached = true;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.reached {
            self.turnstile.serving.send_modify(|now| *now += 1);
        } else {
            // Dropped before its turn (the handler was cancelled): pass the
            // turn on when it comes, so later requests are not stuck.
            let turnstile = self.turnstile.clone();
            let ticket = self.ticket;
            tokio::spawn(async move {
                let mut serving = turnstile.serving.subscribe();
                let _ = serving.wait_for(|now| *now == ticket).await;
                turnstile.serving.send_modify(|now| *now += 1);
            });
        }
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("ticket", &self.ticket)
            .finish()
    }
}

/// When a connection's token runs out, in its socket's extensions; the
/// gateway disconnects sockets past it (`run_expiry`), and a refreshed token
/// moves it.
#[derive(Clone)]
pub struct TokenExpiry(Arc<AtomicI64>);

impl TokenExpiry {
    pub fn new(expires_at: i64) -> Self {
        TokenExpiry(Arc::new(AtomicI64::new(expires_at)))
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, expires_at: i64) {
        self.0.store(expires_at, Ordering::Relaxed);
    }
}

/// Takes a fresh token for a connected Socket.IO socket (`{ token }` or the
/// token itself): valid, and for the same user. Moves the socket's expiry
/// and returns it.
pub(crate) fn refresh_token(
    app: &crate::App,
    expiry: Option<&TokenExpiry>,
    user: &Principal,
    data: serde_json::Value,
) -> Result<i64, crate::auth::AuthError> {
    let token = match &data {
        serde_json::Value::String(token) => token.as_str(),
        serde_json::Value::Object(map) => map
            .get("token")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(""),
        _ => "",
    };
    let expires_at = app.verifier.refresh_for(user, token)?;
    if let Some(expiry) = expiry {
        expiry.set(expires_at);
    }
    Ok(expires_at)
}
