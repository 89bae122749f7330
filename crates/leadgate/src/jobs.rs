//! Socket.IO namespace `/`: job progress for browsers (seed 001).
//!
//! `subscribe-job` answers with `job-status` and from then on the socket gets
//! every `job-update` of the job (see [`crate::hub`] for the ordering rules);
//! `unsubscribe-job` stops them. A job that does not exist and a job of
//! another user get the same answer, so job ids cannot be probed.

use std::sync::Arc;

use leadgate_protocol::{Ack, ClientError, parse_job_id};
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;
use tracing::{debug, error, info};

use crate::App;
use crate::auth::{AuthError, handshake_token};
use crate::client::Client;
use crate::hub::Activation;
use crate::session::{Session, TokenExpiry, Turn, Turnstile};

/// The answer for an unknown job and for another user's job alike.
pub const JOB_NOT_FOUND: &str = "job not found";
const BAD_JOB_ID: &str = "jobId must be a UUID string";

/// Connect middleware: refuses the handshake unless it carries a valid token.
pub async fn authenticate(
    socket: SocketRef,
    State(app): State<App>,
    TryData(auth): TryData<Value>,
) -> Result<(), AuthError> {
    let parts = socket.req_parts();
    let result = app
        .admit(crate::limits::peer(parts), &parts.headers)
        .and_then(|()| handshake_token(auth.as_ref().ok(), &parts.headers, parts.uri.query()))
        .and_then(|token| app.verifier.verify(&token))
        .and_then(|principal| Ok((app.user_slot(&principal.sub)?, principal)));
    match result {
        Ok((slot, principal)) => {
            socket
                .extensions
                .insert(TokenExpiry::new(principal.expires_at));
            socket
                .extensions
                .insert(Session::new(principal, slot, app.limits.event_rate));
            socket.extensions.insert(Turnstile::new());
            // Registered here, before the client is told it is connected:
            // socketioxide runs the connect handler in a task of its own, so
            // an event sent right after `connect` could otherwise arrive
            // before its handler exists and be lost.
            socket.on("subscribe-job", subscribe);
            socket.on("unsubscribe-job", unsubscribe);
            socket.on("refresh-token", refresh_token);
            socket.on_disconnect(on_disconnect);
            Ok(())
        }
        Err(e) => {
            info!(ns = socket.ns(), sid = %socket.id, reason = %e, "Refused a connection.");
            Err(e)
        }
    }
}

/// Connect handler: the socket is authenticated and its events are wired.
pub async fn on_connect(socket: SocketRef) {
    if let Some(session) = socket.extensions.get::<Arc<Session>>() {
        info!(ns = socket.ns(), sid = %socket.id, user = %session.principal.sub, transport = ?socket.transport_type(), "Connected.");
    }
}

async fn subscribe(
    socket: SocketRef,
    State(app): State<App>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
    mut turn: Turn,
) {
    turn.wait().await;
    answer(socket, &app, "subscribe-job", arg.ok(), ack).await;
}

async fn unsubscribe(
    socket: SocketRef,
    State(app): State<App>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
    mut turn: Turn,
) {
    turn.wait().await;
    answer(socket, &app, "unsubscribe-job", arg.ok(), ack).await;
}

/// `refresh-token` `token` (or `{ token }`): a fresh token for the same user
/// keeps the connection beyond the first token's expiry.
async fn refresh_token(
    socket: SocketRef,
    State(app): State<App>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
) {
    answer(socket, &app, "refresh-token", arg.ok(), ack).await;
}

/// Runs a request of a socketioxide socket and acks the answer.
async fn answer(socket: SocketRef, app: &App, event: &str, arg: Option<Value>, ack: AckSender) {
    let (Some(session), Some(expiry)) = (
        socket.extensions.get::<Arc<Session>>(),
        socket.extensions.get::<TokenExpiry>(),
    ) else {
        return;
    };
    let client = Client::Sio(socket);
    if let Some(answer) = request(app, &client, &session, &expiry, event, arg).await {
        let _ = ack.send(&answer);
    }
}

/// Runs one request of a client of `/`, whichever engine serves it, and
/// returns the answer for its ack: `None` for an event the namespace does
/// not know (ignored) and for a subscription that ended while it was made.
/// A refused request is also told with an `error` event.
pub(crate) async fn request(
    app: &App,
    client: &Client,
    session: &Session,
    expiry: &TokenExpiry,
    event: &str,
    arg: Option<Value>,
) -> Option<Ack> {
    let event = match event {
        "subscribe-job" => "subscribe-job",
        "unsubscribe-job" => "unsubscribe-job",
        "refresh-token" => return Some(refresh(app, client, session, expiry, arg)),
        _ => {
            debug!(sid = %client.id(), event, "Ignored an unknown event.");
            return None;
        }
    };
    if !session.allow_request(app.limits.event_rate) {
        return Some(refuse(client, event, &app.limits.too_many_requests()));
    }
    let outcome = if event == "subscribe-job" {
        subscribe_job(app, client, session, arg).await
    } else {
        unsubscribe_job(app, client, session, arg)
    };
    match outcome {
        Ok(true) => Some(Ack::ok()),
        Ok(false) => None,
        Err(message) => Some(refuse(client, event, &message)),
    }
}

/// `refresh-token`: takes a fresh token for the same user; the answer for
/// its ack.
pub(crate) fn refresh(
    app: &App,
    client: &Client,
    session: &Session,
    expiry: &TokenExpiry,
    arg: Option<Value>,
) -> Ack {
    if !session.allow_request(app.limits.event_rate) {
        return refuse(client, "refresh-token", &app.limits.too_many_requests());
    }
    match crate::session::refresh_token(
        app,
        Some(expiry),
        &session.principal,
        arg.unwrap_or_default(),
    ) {
        Ok(_) => {
            debug!(sid = %client.id(), "Token refreshed.");
            Ack::ok()
        }
        Err(e) => refuse(client, "refresh-token", &e.to_string()),
    }
}

/// `Ok(true)` once the snapshot was sent, `Ok(false)` if the subscription
/// ended meanwhile, `Err` with the refusal.
async fn subscribe_job(
    app: &App,
    client: &Client,
    session: &Session,
    arg: Option<Value>,
) -> Result<bool, String> {
    let Some(job) = arg.and_then(|v| parse_job_id(&v).ok()) else {
        return Err(BAD_JOB_ID.to_owned());
    };
    if !session.add_job(job, app.limits.max_subscriptions) {
        return Err(format!(
            "too many subscriptions: at most {} jobs per connection",
            app.limits.max_subscriptions
        ));
    }
    let sid = client.id();
    let token = app.hub.begin(job, client);
    // Handlers are not cancelled when the socket goes: if the disconnect
    // handler already cleaned up, this subscription must not outlive it.
    // (It closes the session before it takes the jobs, and the job was
    // added before `begin`, so one of the two always ends it.)
    if session.is_closed() {
        app.hub.end(job, sid, Some(token));
        session.remove_job(&job);
        return Ok(false);
    }
    loop {
        let started = std::time::Instant::now();
        let found = app.store.job_status(job).await;
        app.metrics.query("job_status", started.elapsed());
        match found {
            Ok(Some(found)) if session.principal.may_read(&found.user_id) => {
                match app.hub.activate(job, sid, token, &found.status) {
                    Activation::Sent => {
                        debug!(%sid, job = %job, seq = found.status.seq, "Subscribed.");
                        return Ok(true);
                    }
                    Activation::Reload => continue,
                    Activation::Gone => return Ok(false),
                }
            }
            Ok(_) => {
                app.hub.end(job, sid, Some(token));
                session.remove_job(&job);
                return Err(JOB_NOT_FOUND.to_owned());
            }
            Err(e) => {
                error!(%sid, job = %job, error = %e, "Could not load a job for a subscriber.");
                app.hub.end(job, sid, Some(token));
                session.remove_job(&job);
                return Err("could not load the job; try again".to_owned());
            }
        }
    }
}

fn unsubscribe_job(
    app: &App,
    client: &Client,
    session: &Session,
    arg: Option<Value>,
) -> Result<bool, String> {
    let Some(job) = arg.and_then(|v| parse_job_id(&v).ok()) else {
        return Err(BAD_JOB_ID.to_owned());
    };
    app.hub.end(job, client.id(), None);
    session.remove_job(&job);
    debug!(sid = %client.id(), job = %job, "Unsubscribed.");
    Ok(true)
}

async fn on_disconnect(socket: SocketRef, State(app): State<App>, reason: DisconnectReason) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    for job in session.close() {
        app.hub.end(job, socket.id, None);
    }
    info!(ns = socket.ns(), sid = %socket.id, user = %session.principal.sub, ?reason, "Disconnected.");
}

/// Refuses a request: tells the client with an `error` event and returns
/// the ack's answer.
pub(crate) fn refuse(client: &Client, event: &str, message: &str) -> Ack {
    info!(sid = %client.id(), event, reason = message, "Refused a request.");
    let _ = client.emit(
        "error",
        &ClientError {
            message: message.to_owned(),
        },
    );
    Ack::err(message)
}
