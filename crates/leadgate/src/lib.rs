//! leadgate: a Socket.IO-compatible realtime gateway for job progress.
//!
//! [`run`] is the whole server: `main` and the integration tests both call
//! it with a bound listener and a shutdown future. See `ARCHITECTURE.md` for
//! how an event travels from a worker to a browser.

pub mod auth;
pub mod config;
mod conn;
pub mod dev;
mod fanout;
mod http;
mod hub;
mod jobs;
mod leads;
mod limits;
mod locks;
mod metrics;
mod requests;
mod session;
mod sio;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderValue, Method, header};
use leadgate_bus::{Channels, Publisher};
use leadgate_protocol::{JobEvent, JobUpdate};
use leadgate_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};
use uuid::Uuid;

pub use crate::config::Config;
use crate::config::Secret;
use crate::dev::{Credentials, JwtKey};
use crate::fanout::{Fanout, RedisFanout, RedisHandler};
use crate::hub::Hub;
use crate::leads::Leads;
use crate::locks::JobLocks;
use crate::metrics::Metrics;

/// Shared state of one gateway instance; cheap to clone.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    store: Store,
    metrics: Arc<Metrics>,
    /// The Socket.IO server (see [`sio`]), set once it is built.
    io: std::sync::OnceLock<socketioxide::SocketIo>,
    hub: Arc<Hub>,
    fanout: Arc<Fanout>,
    leads: Arc<Leads>,
    verifier: auth::Verifier,
    api_keys: Vec<Secret>,
    job_locks: JobLocks,
    limits: Limits,
    /// Socket.IO connects (namespace handshakes) per client address.
    connect_attempts: limits::Buckets<std::net::IpAddr>,
    /// Engine.IO handshakes (new sessions) per client address.
    handshake_attempts: limits::Buckets<std::net::IpAddr>,
    /// The connection that took over each upgraded Engine.IO session (by
    /// session id), so that the gateway can cut it (see [`conn`]); an
    /// entry goes with its connection.
    upgrades: sio::Upgrades,
    /// Open connections per user.
    user_connections: Arc<limits::PerUser>,
    /// Set on shutdown: `/readyz` answers 503 from then on.
    draining: AtomicBool,
    /// Cancelled on shutdown; `/ws/leads/` connections close on it.
    stopping: CancellationToken,
    /// The tasks of the `/ws/leads/` connections, which shutdown waits for.
    connections: TaskTracker,
}

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Browser origins allowed to connect (see `auth::origin_allowed`).
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Requests a second per connection.
    pub event_rate: limits::Rate,
    pub jwt_leeway: u64,
    pub max_subscriptions: usize,
    pub max_payload: usize,
    pub slow_client_grace: Duration,
}

impl Limits {
    /// The refusal of a request over `event_rate`.
    pub fn too_many_requests(&self) -> String {
        format!(
            "too many requests: at most {} a second",
            self.event_rate.per_second
        )
    }
}

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    /// Admits a connection attempt from the client behind `peer`, or says
    /// why not: a foreign origin, too many attempts from that address.
    pub(crate) fn admit(
        &self,
        peer: Option<SocketAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), auth::AuthError> {
        if !auth::origin_allowed(headers, &self.limits.allowed_origins) {
            return Err(auth::AuthError::OriginNotAllowed);
        }
        match limits::client_ip(peer, headers, &self.limits.trusted_proxies) {
            Some(ip) if !self.connect_attempts.take(ip) => {
                warn!(client = %ip, "Too many connection attempts from one address.");
                Err(auth::AuthError::TooManyAttempts)
            }
            _ => Ok(()),
        }
    }

    /// Takes one of the user's connection slots, given back when the
    /// returned slot is dropped.
    pub(crate) fn user_slot(&self, user: &str) -> Result<Arc<UserSlot>, auth::AuthError> {
        if self.user_connections.open(user) {
            Ok(Arc::new(UserSlot {
                users: self.user_connections.clone(),
                user: user.to_owned(),
            }))
        } else {
            warn!(user, "Too many connections for one user.");
            Err(auth::AuthError::TooManyConnections)
        }
    }

    /// The metrics text for `GET /metrics`, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let _one_at_a_time = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
        // Counted first, then set: every label is written, zero included.
        let mut counts: HashMap<(&'static str, &'static str), i64> = HashMap::new();
        for namespace in ["/", "/leads"] {
            for transport in ["websocket", "polling"] {
                counts.insert((namespace, transport), 0);
            }
        }
        counts.insert(
            ("/ws/leads/", "websocket"),
            self.leads.websocket_clients() as i64,
        );
        if let Some(io) = self.io.get() {
            for namespace in ["/", "/leads"] {
                let [websocket, polling] = sio::socket_counts(io, namespace);
                counts.insert((namespace, "websocket"), websocket as i64);
                counts.insert((namespace, "polling"), polling as i64);
            }
        }
        for ((namespace, transport), count) in counts {
            m.connections
                .get_or_create(&metrics::ConnectionLabels {
                    namespace,
                    transport,
                })
                .set(count);
        }
        m.subscriptions.set(self.hub.subscription_count() as i64);
        m.encode()
    }

    /// Applies a worker's event to the database and sends the resulting
    /// `job-update` to every subscribed socket, on every instance.
    pub async fn apply_event(
        &self,
        job: Uuid,
        event: JobEvent,
        expected_seq: Option<i64>,
    ) -> Result<JobUpdate, StoreError> {
        // A task of its own, so that a caller that goes away (a worker's
        // request timing out) cannot stop an applied event from being
        // published, nor leave the job's lock behind.
        let app = self.clone();
        let task = tokio::spawn(async move {
            // Held across apply and publish: two events of one job applied
            // concurrently on this instance go out in seq order.
            let _guard = app.job_locks.lock(job).await;
            let started = std::time::Instant::now();
            let applied = app.store.apply_event(job, event, expected_seq).await;
            app.metrics.query("apply_event", started.elapsed());
            let update = applied?;
            app.fanout.publish(&app.hub, &app.metrics, &update).await;
            Ok(update)
        });
        match task.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// One open connection of a user; dropped with the connection (kept by the
/// socket's session, or by the `/ws/leads/` task).
pub(crate) struct UserSlot {
    users: Arc<limits::PerUser>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.users.close(&self.user);
    }
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let credentials = Credentials::resolve(&config)?;
    let verifier = auth::Verifier::with_rules(&credentials.jwt, &config.token_rules())?;
    let addr = listener.local_addr()?;
    info!("Listening on http://{addr}");
    log_credentials(&credentials, &verifier);

    let store = Store::connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redact_url(&config.database_url)
            )
        })?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    info!(
        backend = store.backend(),
        "Database ready, migrations applied."
    );

    // Background tasks run until the server has stopped.
    let tasks = CancellationToken::new();
    let mut background = Vec::new();
    let metrics = Arc::new(Metrics::new(config.redis_url().is_some()));
    let hub = Arc::new(Hub::new(metrics.clone()));
    let publisher = match config.redis_url() {
        None => None,
        Some(url) => {
            let channels = Channels::new(config.redis_prefix.clone())
                .with_emitter_key(Some(config.redis_emitter_key.clone()));
            let publisher = Publisher::connect(url, channels.clone())
                .await
                .with_context(|| format!("cannot reach Redis at {}", redact_url(url)))?;
            info!(redis = %redact_url(url), prefix = %config.redis_prefix, "Fan-out through Redis.");
            Some((url.to_owned(), channels, publisher))
        }
    };
    let fanout = Arc::new(match &publisher {
        None => Fanout::Local,
        Some((_, _, publisher)) => Fanout::Redis(RedisFanout::new(publisher.clone())),
    });
    let leads = Arc::new(Leads::new(
        store.clone(),
        fanout.clone(),
        metrics.clone(),
        config.leads_index,
    ));
    // Without Redis, crawlers' writes are noticed by watching the table from
    // here on: from before the index is first read, so that nothing written
    // in between is missed.
    let watch = publisher.is_none() && config.leads_poll > 0;
    let watched_from = if watch {
        match store.leads_version().await {
            Ok(version) => Some(version),
            Err(e) => {
                warn!(error = %e, "Could not read the leads table before watching it; its first check counts as a change.");
                None
            }
        }
    } else {
        None
    };
    {
        // Pages come from SQL until the index has been read.
        let leads = leads.clone();
        let cancel = tasks.clone();
        background.push(tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = leads.refresh_index(true) => {}
            }
        }));
    }
    match publisher {
        Some((url, channels, _)) => {
            let handler = Arc::new(RedisHandler {
                hub: hub.clone(),
                fanout: fanout.clone(),
                leads: leads.clone(),
                metrics: metrics.clone(),
            });
            background.push(tokio::spawn(leadgate_bus::run_subscription(
                url,
                channels,
                handler,
                tasks.clone(),
            )));
        }
        // Crawlers without Redis may only write the database: notice it.
        None if watch => background.push(tokio::spawn(leads.clone().run_watcher(
            Duration::from_secs(config.leads_poll),
            watched_from,
            tasks.clone(),
        ))),
        None => {}
    }
    background.push(tokio::spawn(fanout::run_resync_sender(
        fanout.clone(),
        tasks.clone(),
    )));
    background.push(tokio::spawn(fanout::run_refresher(
        hub.clone(),
        store.clone(),
        metrics.clone(),
        tasks.clone(),
    )));
    background.push(tokio::spawn(leads.clone().run_pusher(tasks.clone())));

    let connect_rate = limits::Rate {
        per_second: f64::from(config.connect_rate),
        burst: f64::from(config.connect_rate) * 2.0,
    };
    let app = App(Arc::new(AppInner {
        store: store.clone(),
        metrics,
        io: std::sync::OnceLock::new(),
        hub,
        fanout,
        leads,
        verifier,
        api_keys: credentials.api_keys,
        job_locks: JobLocks::default(),
        limits: Limits {
            allowed_origins: config.allowed_origins.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            event_rate: limits::Rate {
                per_second: f64::from(config.event_rate),
                burst: f64::from(config.event_rate) * 2.0,
            },
            jwt_leeway: config.jwt_leeway,
            max_subscriptions: config.max_subscriptions,
            max_payload: config.max_payload,
            slow_client_grace: Duration::from_secs(config.slow_client_grace),
        },
        connect_attempts: limits::Buckets::new(connect_rate),
        // A connection is one Engine.IO handshake and one Socket.IO connect
        // per namespace; the handshake limit is the looser, so that a
        // refused connect is told why (`connect_error`) before its
        // handshakes are refused outright.
        upgrades: sio::Upgrades::default(),
        handshake_attempts: limits::Buckets::new(limits::Rate {
            per_second: connect_rate.per_second * 2.0,
            burst: connect_rate.burst * 2.0,
        }),
        user_connections: Arc::new(limits::PerUser::new(config.max_connections_per_user)),
        draining: AtomicBool::new(false),
        stopping: CancellationToken::new(),
        connections: TaskTracker::new(),
    }));

    let (layer, io) = sio::build(&app, &config);
    let _ = app.io.set(io.clone());
    app.hub.set_io(io.clone());
    // Outermost first: the handshake limit and the compaction, then
    // socketioxide, which takes every request to `/socket.io/`.
    let mut router = http::router(app.clone(), config.max_http_body)
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            sio::front,
        ));
    if !config.allowed_origins.is_empty() {
        router = router.layer(cors(&config.allowed_origins));
    }
    background.push(tokio::spawn(run_expiry(app.clone(), tasks.clone())));
    background.push(tokio::spawn(fanout::run_sweeper(
        app.clone(),
        Duration::from_secs(config.slow_client_grace),
        tasks.clone(),
    )));

    // Shutdown, in order: report not ready (load balancers stop sending
    // new clients), stop accepting, then close every client's transport.
    // Clients see `transport close` and socket.io-client reconnects by
    // itself, through the load balancer to another instance.
    let stopping = app.stopping.clone();
    let signal = {
        let (stopping, app) = (stopping.clone(), app.clone());
        async move {
            shutdown.await;
            app.draining.store(true, Ordering::Relaxed);
            stopping.cancel();
        }
    };
    let grace = config.shutdown_grace();
    let closer = {
        let (stopping, app, io) = (stopping.clone(), app.clone(), io.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            sio::close_all(&app, &io, grace).await;
        })
    };
    let listener = conn::Listener(listener);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<conn::Peer>(),
    )
    .with_graceful_shutdown(signal)
    .into_future();
    // Client connections run in tasks of their own, out of the HTTP
    // server's sight (WebSockets are upgraded, long-polling sessions outlive
    // their requests), so the server can finish before they are closed:
    // wait for the closer and the connections too.
    let drained = async {
        let result = server.await;
        let _ = closer.await;
        app.connections.close();
        app.connections.wait().await;
        result
    };
    let served = tokio::select! {
        result = drained => result.context("server error"),
        () = async { stopping.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!(grace_secs = grace.as_secs(), "Connections still open after the grace period; closing them.");
            Ok(())
        }
    };
    // Background tasks end whether the server stopped cleanly or not.
    tasks.cancel();
    for task in background {
        if let Err(e) = task.await {
            warn!(error = %e, "A background task failed.");
        }
    }
    store.close().await?;
    served?;
    info!("Stopped.");
    Ok(())
}

/// Once a second, disconnects Socket.IO sockets whose token ran out (past
/// the leeway) without a `refresh-token`, telling them why, until `cancel`.
async fn run_expiry(app: App, cancel: CancellationToken) {
    let leeway = app.limits.jwt_leeway as i64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(io) = app.io.get() else { continue };
        let now = chrono::Utc::now().timestamp();
        let reason = auth::AuthError::Expired.to_string();
        for (socket, expiry) in sio::sockets_with_expiry(io) {
            if expiry.saturating_add(leeway) >= now {
                continue;
            }
            info!(ns = socket.ns(), sid = %socket.id, "Token expired; disconnecting.");
            let told = if socket.ns() == "/" {
                socket.emit(
                    "error",
                    &leadgate_protocol::ClientError {
                        message: reason.clone(),
                    },
                )
            } else {
                socket.emit(
                    "error",
                    &leadgate_protocol::leads::LeadsErrorMessage::new(reason.clone()),
                )
            };
            // Told and disconnected as soon as both fit; a socket whose
            // queue is full is tried again next second.
            if told.is_ok() {
                sio::forget(&app, &socket);
                let _ = socket.disconnect();
            }
        }
    }
}

fn log_credentials(credentials: &Credentials, verifier: &auth::Verifier) {
    match (&credentials.jwt, &credentials.dev_file) {
        (JwtKey::Secret(_), Some(file)) => {
            warn!(
                "Development mode: no LEADGATE_JWT_SECRET or LEADGATE_JWT_PUBLIC_KEY is set, so tokens are signed with a generated secret kept in {} (with a worker API key).",
                file.display()
            );
            info!(
                "Get a development token: leadgate token --sub alice   (add --admin for an admin)"
            );
        }
        (JwtKey::Secret(_), None) => {
            info!(algorithm = ?verifier.algorithm(), "Verifying tokens with LEADGATE_JWT_SECRET. Get a development token: leadgate token --sub alice");
        }
        (JwtKey::PublicKeyPem { path, .. }, _) => {
            info!(algorithm = ?verifier.algorithm(), key = %path.display(), "Verifying tokens with a public key; tokens come from your identity provider.");
        }
    }
    if credentials.api_keys.is_empty() {
        warn!("No LEADGATE_API_KEYS: the worker HTTP API refuses every request.");
    }
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_credentials(true)
}

/// The database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
