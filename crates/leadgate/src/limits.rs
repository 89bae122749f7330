//! Rate and count limits against clients that flood: token buckets for
//! connection attempts per client address and requests per connection, and
//! a count of open connections per user.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::http::HeaderMap;

/// Entries kept before idle (full) buckets are forgotten.
const PRUNE_AT: usize = 10_000;

/// `rate` tokens a second, up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: Rate) -> Self {
        Bucket {
            tokens: rate.burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * rate.per_second;
        self.tokens = (self.tokens + refill).min(rate.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: Rate) -> bool {
        self.tokens + self.last.elapsed().as_secs_f64() * rate.per_second >= rate.burst
    }
}

/// One bucket per key.
pub struct Buckets<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash> Buckets<K> {
    pub fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            buckets: Mutex::default(),
        }
    }

    pub fn take(&self, key: K) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            // Full buckets hold no information: forget them.
            let rate = self.rate;
            buckets.retain(|_, b| !b.is_full(rate));
        }
        buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(self.rate))
            .take(self.rate)
    }
}

/// Open connections per user, with a maximum.
pub struct PerUser {
    max: usize,
    counts: Mutex<HashMap<String, usize>>,
}

impl PerUser {
    pub fn new(max: usize) -> Self {
        PerUser {
            max,
            counts: Mutex::default(),
        }
    }

    /// Counts one more connection of `user`; `false` (and not counted) at
    /// the maximum.
    pub fn open(&self, user: &str) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(user.to_owned()).or_default();
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    pub fn close(&self, user: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(user);
            }
        }
    }
}

/// The peer address of a request (a Socket.IO handshake's).
pub fn peer(parts: &axum::http::request::Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<crate::conn::Peer>>()
        .map(|info| info.0.addr)
}

/// The client's address: the peer's, or, when the peer is a trusted proxy,
/// the last address in `X-Forwarded-For` that is not one. A forwarded
/// header from anyone else is ignored (it is the client's to forge).
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let buckets = Buckets::new(Rate {
            per_second: 1.0,
            burst: 3.0,
        });
        assert!((0..3).all(|_| buckets.take("a")));
        assert!(!buckets.take("a"));
        assert!(buckets.take("b"), "keys are independent");
    }

    #[test]
    fn per_user_counts() {
        let users = PerUser::new(2);
        assert!(users.open("a") && users.open("a") && !users.open("a"));
        users.close("a");
        assert!(users.open("a"));
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let trusted: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(
            client_ip(Some(proxy), &headers, &trusted),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(stranger), &headers, &trusted),
            Some(stranger.ip())
        );
        assert_eq!(
            client_ip(Some(proxy), &HeaderMap::new(), &trusted),
            Some(proxy.ip())
        );
    }
}
