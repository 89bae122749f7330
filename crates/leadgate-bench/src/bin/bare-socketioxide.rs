//! `bare-socketioxide`: the Socket.IO server a user would write with
//! socketioxide instead of running leadgate, so that the benchmark shows
//! what leadgate costs above socketioxide itself.
//!
//! It does what the benchmark asks of a gateway, on leadgate's wire: the
//! HS256 token in the handshake's `auth.token`; `subscribe-job`, which
//! joins the room `job:<id>` and answers `job-status`; `unsubscribe-job`;
//! and every worker event published on `<prefix>job:<id>` broadcast to its
//! room as `job-update`. Nothing else: no ordering, no `seq` checks, no
//! limits, no metrics. Its socketioxide options are leadgate's, so the
//! difference measured is leadgate's own code.
//!
//! ```text
//! LISTEN=127.0.0.1:3000 DATABASE_URL=postgres://… REDIS_URL=redis://… \
//!     JWT_SECRET=… [REDIS_PREFIX=leadgate:] [WORKER_THREADS=0] bare-socketioxide
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use leadgate_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use tokio::signal::unix::{SignalKind, signal};
use uuid::Uuid;

/// The answer for an unknown job and for another user's job alike, so that
/// job ids cannot be probed.
const JOB_NOT_FOUND: &str = "job not found";
const BAD_JOB_ID: &str = "jobId must be a UUID string";

/// Leadgate's defaults for its socketioxide options: 64 packets queued per
/// socket, messages of 64 KiB on both transports, a 128-byte WebSocket
/// read buffer. The ping interval and timeout are socketioxide's defaults
/// (25 s and 20 s), as they are leadgate's.
const SOCKET_BUFFER: usize = 64;
const MAX_PAYLOAD: usize = 64 * 1024;
const WS_READ_BUFFER: usize = 128;

/// The settings, from the environment.
struct Config {
    listen: SocketAddr,
    database_url: String,
    redis_url: String,
    redis_prefix: String,
    jwt_secret: String,
    /// 0 for one per core.
    worker_threads: usize,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let var = |name: &str| std::env::var(name).with_context(|| format!("{name} must be set"));
        Ok(Config {
            listen: var("LISTEN")?.parse().context("LISTEN")?,
            database_url: var("DATABASE_URL")?,
            redis_url: var("REDIS_URL")?,
            redis_prefix: var("REDIS_PREFIX").unwrap_or_else(|_| "leadgate:".into()),
            jwt_secret: var("JWT_SECRET")?,
            worker_threads: match std::env::var("WORKER_THREADS") {
                Ok(n) => n.parse().context("WORKER_THREADS")?,
                Err(_) => 0,
            },
        })
    }
}

/// How tokens are checked: HS256 with the shared secret, `exp` required.
struct Tokens {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Auth {
    token: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// Whose socket it is, in the socket's extensions.
#[derive(Clone)]
struct User {
    id: String,
    admin: bool,
}

fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime.enable_all().build()?.block_on(serve(config))
}

/// Serves until SIGTERM or SIGINT.
async fn serve(config: Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url)
        .await
        .context("connecting to the database")?;
    let tokens = Tokens {
        key: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
        validation: Validation::new(Algorithm::HS256),
    };
    let (layer, io) = SocketIo::builder()
        .with_state(store)
        .with_state(Arc::new(tokens))
        .max_buffer_size(SOCKET_BUFFER)
        .max_payload(MAX_PAYLOAD as u64)
        .ws_max_message_size(MAX_PAYLOAD)
        .ws_max_frame_size(MAX_PAYLOAD)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer();
    io.ns("/", connected.with(authenticate));
    // Subscribed before it listens: once it answers, it relays.
    let events = subscribe_jobs(&config.redis_url, &config.redis_prefix).await?;
    // Nagle's algorithm would hold each small write back for the client's
    // ACK; leadgate turns it off too, so latency compares like with like.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let app = axum::Router::new().layer(layer);
    tokio::select! {
        served = axum::serve(listener, app).into_future() => served?,
        relayed = relay(io, events, &config.redis_prefix) => relayed?,
        stop = stop_signal() => stop?,
    }
    Ok(())
}

/// SIGTERM (how the benchmark stops a gateway) or SIGINT.
async fn stop_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        interrupted = tokio::signal::ctrl_c() => interrupted,
    }
}

/// Connect middleware: refuses a handshake without a valid token, and
/// registers the socket's handlers before the client is told it is
/// connected (from the connect handler, an event the client emits on
/// `connect` could arrive before its handler exists).
async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Auth>,
    State(tokens): State<Arc<Tokens>>,
) -> Result<(), &'static str> {
    let token = auth
        .map_err(|_| "authentication required: missing token")?
        .token;
    let claims = jsonwebtoken::decode::<Claims>(&token, &tokens.key, &tokens.validation)
        .map_err(|_| "invalid token")?
        .claims;
    socket.extensions.insert(User {
        admin: claims.roles.iter().any(|role| role == "admin"),
        id: claims.sub,
    });
    socket.on("subscribe-job", subscribe_job);
    socket.on("unsubscribe-job", unsubscribe_job);
    Ok(())
}

/// Nothing is left to do once a socket is connected: the middleware did it.
async fn connected() {}

/// `subscribe-job`: joins the job's room and sends its `job-status`; the
/// ack, if asked for, gets `{ ok }`.
async fn subscribe_job(
    socket: SocketRef,
    TryData(job): TryData<String>,
    ack: AckSender,
    Extension(user): Extension<User>,
    State(store): State<Store>,
) {
    let answer = match subscribe(&socket, &user, &store, job.ok()).await {
        Ok(()) => json!({ "ok": true }),
        Err(message) => refuse(&socket, message),
    };
    let _ = ack.send(&answer);
}

async fn subscribe(
    socket: &SocketRef,
    user: &User,
    store: &Store,
    job: Option<String>,
) -> Result<(), &'static str> {
    let job = job
        .and_then(|id| Uuid::try_parse(&id).ok())
        .ok_or(BAD_JOB_ID)?;
    let found = store.job_status(job).await.map_err(|e| {
        eprintln!("loading job {job} failed: {e}");
        "could not load the job; try again"
    })?;
    let status = match found {
        Some(found) if found.user_id == user.id || user.admin => found.status,
        _ => return Err(JOB_NOT_FOUND),
    };
    socket.join(format!("job:{job}"));
    let _ = socket.emit("job-status", &status);
    Ok(())
}

/// `unsubscribe-job`: leaves the job's room.
async fn unsubscribe_job(socket: SocketRef, TryData(job): TryData<String>, ack: AckSender) {
    let answer = match job.ok().and_then(|id| Uuid::try_parse(&id).ok()) {
        Some(job) => {
            socket.leave(format!("job:{job}"));
            json!({ "ok": true })
        }
        None => refuse(&socket, BAD_JOB_ID),
    };
    let _ = ack.send(&answer);
}

/// Tells the client why a request was refused, with an `error` event;
/// returns the ack's answer.
fn refuse(socket: &SocketRef, message: &str) -> Value {
    let _ = socket.emit("error", &json!({ "message": message }));
    json!({ "ok": false, "error": message })
}

/// Subscribes to every job's channel, `<prefix>job:*`.
async fn subscribe_jobs(url: &str, prefix: &str) -> anyhow::Result<redis::aio::PubSubStream> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .context("connecting to Redis")?;
    pubsub.psubscribe(format!("{prefix}job:*")).await?;
    Ok(pubsub.into_on_message())
}

/// Broadcasts each worker event to its job's room, on this instance only:
/// every instance receives every event from Redis itself.
async fn relay(
    io: SocketIo,
    mut events: redis::aio::PubSubStream,
    prefix: &str,
) -> anyhow::Result<()> {
    let channel_prefix = format!("{prefix}job:");
    while let Some(event) = events.next().await {
        let channel = event.get_channel_name();
        let Some(job) = channel
            .strip_prefix(&channel_prefix)
            .and_then(|id| Uuid::try_parse(id).ok())
        else {
            eprintln!("ignored a message on {channel}: not a job channel");
            continue;
        };
        let mut update: Value = match serde_json::from_slice(event.get_payload_bytes()) {
            Ok(update) => update,
            Err(e) => {
                eprintln!("ignored a message on {channel}: {e}");
                continue;
            }
        };
        let Some(fields) = update.as_object_mut() else {
            eprintln!("ignored a message on {channel}: not a JSON object");
            continue;
        };
        fields
            .entry("jobId")
            .or_insert_with(|| job.to_string().into());
        if let Err(e) = io
            .local()
            .to(format!("job:{job}"))
            .emit("job-update", &update)
            .await
        {
            eprintln!("job {job}: {e}");
        }
    }
    bail!("the Redis subscription ended")
}
