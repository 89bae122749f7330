//! Prometheus metrics, served at `GET /metrics`.
//!
//! Counters and histograms are updated where things happen; gauges that
//! describe the current state (connections, subscriptions) are read when the
//! metrics are scraped, so they cannot drift from the truth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use uuid::Uuid;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub namespace: &'static str,
    pub transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerEventLabels {
    /// `http` or `redis`.
    pub source: &'static str,
    /// `delivered`, `invalid` or `dropped`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub query: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one gateway instance.
pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnectionLabels, Gauge>,
    pub subscriptions: Gauge,
    pub worker_events: Family<WorkerEventLabels, Counter>,
    pub messages_sent: Family<EventLabels, Counter>,
    pub messages_dropped: Family<EventLabels, Counter>,
    pub redis_up: Gauge,
    pub slow_clients: Counter,
    pub leads_changes: Counter,
    pub leads_changes_pushed: Counter,
    pub db_query_seconds: HistogramFamily<QueryLabels>,
    pub delivery_seconds: Histogram,
    /// When this instance published events it applied, by job and seq, until
    /// their delivery here: the start of `delivery_seconds`.
    published: Mutex<HashMap<(Uuid, i64), Instant>>,
    /// One scrape at a time: gauges are set from a count made during it.
    pub scrape: Mutex<()>,
}

/// Events awaiting their delivery's measurement; past this the oldest
/// measurements are given up (their events were not delivered back here).
const PUBLISHED_LIMIT: usize = 10_000;

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Metrics {
    /// The metrics of an instance; `redis` adds the Redis subscription's.
    pub fn new(redis: bool) -> Self {
        let mut registry = Registry::with_prefix("leadgate");
        let connections = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open client connections, by namespace and current transport",
            connections.clone(),
        );
        let subscriptions = Gauge::default();
        registry.register(
            "subscriptions",
            "Job subscriptions of this instance's sockets",
            subscriptions.clone(),
        );
        let worker_events = Family::<WorkerEventLabels, Counter>::default();
        registry.register(
            "worker_events",
            "Job events received from workers, by source (http, redis) and outcome (delivered, invalid, dropped)",
            worker_events.clone(),
        );
        let messages_sent = Family::<EventLabels, Counter>::default();
        registry.register(
            "messages_sent",
            "Messages handed to client connections, by event",
            messages_sent.clone(),
        );
        let messages_dropped = Family::<EventLabels, Counter>::default();
        registry.register(
            "messages_dropped",
            "Messages dropped because a client's queue was full, by event",
            messages_dropped.clone(),
        );
        let slow_clients = Counter::default();
        registry.register(
            "slow_clients_disconnected",
            "Clients disconnected for not taking their messages for longer than the slow-client grace period",
            slow_clients.clone(),
        );
        let leads_changes = Counter::default();
        registry.register(
            "leads_changes",
            "Changes to the leads this instance noticed (announcements, the table poll, each Redis subscription made); each one brings the leads index up to date before the next page is read",
            leads_changes.clone(),
        );
        let leads_changes_pushed = Counter::default();
        registry.register(
            "leads_changes_pushed",
            "Of those changes, the ones pushed: fresh pages handed to every client concerned (but for pages that could not be read, which are logged)",
            leads_changes_pushed.clone(),
        );
        let redis_up = Gauge::default();
        if redis {
            registry.register(
                "redis_up",
                "1 while the Redis subscription is up, 0 while it is down",
                redis_up.clone(),
            );
        }
        let db_query_seconds: HistogramFamily<QueryLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "db_query_seconds",
            "Database latency, by operation",
            db_query_seconds.clone(),
        );
        let delivery_seconds = latency_histogram();
        registry.register(
            "publish_to_delivery_seconds",
            "From publishing an event this instance applied to handing it to this instance's sockets",
            delivery_seconds.clone(),
        );
        Metrics {
            registry,
            connections,
            subscriptions,
            worker_events,
            messages_sent,
            messages_dropped,
            redis_up,
            slow_clients,
            leads_changes,
            leads_changes_pushed,
            db_query_seconds,
            delivery_seconds,
            published: Mutex::default(),
            scrape: Mutex::default(),
        }
    }

    pub fn worker_event(&self, source: &'static str, outcome: &'static str) {
        self.worker_events
            .get_or_create(&WorkerEventLabels { source, outcome })
            .inc();
    }

    /// Counts a message handed to (or dropped for) one connection.
    pub fn message(&self, event: &'static str, sent: bool) {
        let family = if sent {
            &self.messages_sent
        } else {
            &self.messages_dropped
        };
        family.get_or_create(&EventLabels { event }).inc();
    }

    /// Counts one broadcast: `sent` sockets took the message, `dropped`
    /// could not.
    pub fn broadcast(&self, event: &'static str, sent: u64, dropped: u64) {
        let labels = EventLabels { event };
        if sent > 0 {
            self.messages_sent.get_or_create(&labels).inc_by(sent);
        }
        if dropped > 0 {
            self.messages_dropped.get_or_create(&labels).inc_by(dropped);
        }
    }

    pub fn query(&self, query: &'static str, took: Duration) {
        self.db_query_seconds
            .get_or_create(&QueryLabels { query })
            .observe(took.as_secs_f64());
    }

    /// Notes that an event is about to be published.
    pub fn publishing(&self, job: Uuid, seq: i64) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.len() >= PUBLISHED_LIMIT {
            published.clear();
        }
        published.insert((job, seq), Instant::now());
    }

    /// Notes that an event was handed to this instance's sockets; `true` if
    /// this instance had published it.
    pub fn delivered(&self, job: Uuid, seq: i64) -> bool {
        let started = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(job, seq));
        if let Some(started) = started {
            self.delivery_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        started.is_some()
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
