//! Per-connection state of namespace `/`: the user, the subscriptions,
//! the request rate, and when the token runs out. (A socket's requests run
//! one at a time, in the order they came: see [`crate::requests`].)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::UserSlot;
use crate::auth::Principal;
use crate::limits::{Bucket, Rate};

/// What the gateway knows about one authenticated connection to `/`.
pub struct Session {
    pub principal: Principal,
    jobs: Mutex<HashSet<Uuid>>,
    /// Set when the socket ends, before its subscriptions are ended.
    closed: AtomicBool,
    requests: Mutex<Bucket>,
    /// The user's connection slot, given back when the session closes.
    slot: Mutex<Option<Arc<UserSlot>>>,
}

impl Session {
    pub fn new(principal: Principal, slot: Arc<UserSlot>, rate: Rate) -> Self {
        Session {
            principal,
            jobs: Mutex::default(),
            closed: AtomicBool::new(false),
            requests: Mutex::new(Bucket::new(rate)),
            slot: Mutex::new(Some(slot)),
        }
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
        // The connection may outlive this (a client that does not read keeps
        // its socket until its write ends); its slot goes now.
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.jobs().drain().collect()
    }

    /// Whether the socket ended: a request still running when it did must
    /// not leave a subscription behind.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// When a connection's token runs out; the gateway disconnects sockets
/// past it (`run_expiry`), and a refreshed token moves it.
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
