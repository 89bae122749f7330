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

/// Passes the ack on if the request is within the connection's rate;
/// otherwise refuses the request and returns `None`.
fn over_rate(
    socket: &SocketRef,
    app: &App,
    session: &Session,
    ack: AckSender,
    event: &str,
) -> Option<AckSender> {
    if session.allow_request(app.limits.event_rate) {
        return Some(ack);
    }
    refuse(socket, ack, event, &app.limits.too_many_requests());
    None
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
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    let Some(ack) = over_rate(&socket, &app, &session, ack, "subscribe-job") else {
        return;
    };
    let Some(job) = arg.ok().and_then(|v| parse_job_id(&v).ok()) else {
        return refuse(&socket, ack, "subscribe-job", BAD_JOB_ID);
    };
    if !session.add_job(job, app.limits.max_subscriptions) {
        let message = format!(
            "too many subscriptions: at most {} jobs per connection",
            app.limits.max_subscriptions
        );
        return refuse(&socket, ack, "subscribe-job", &message);
    }
    let token = app.hub.begin(job, &socket);
    // Handlers are not cancelled when the socket goes: if the disconnect
    // handler already cleaned up, this subscription must not outlive it.
    // (It closes the session before it takes the jobs, and the job was
    // added before `begin`, so one of the two always ends it.)
    if session.is_closed() {
        app.hub.end(job, socket.id, Some(token));
        session.remove_job(&job);
        return;
    }
    loop {
        let started = std::time::Instant::now();
        let found = app.store.job_status(job).await;
        app.metrics.query("job_status", started.elapsed());
        match found {
            Ok(Some(found)) if session.principal.may_read(&found.user_id) => {
                match app.hub.activate(job, socket.id, token, &found.status) {
                    Activation::Sent => {
                        debug!(sid = %socket.id, job = %job, seq = found.status.seq, "Subscribed.");
                        let _ = ack.send(&Ack::ok());
                        return;
                    }
                    Activation::Reload => continue,
                    Activation::Gone => return,
                }
            }
            Ok(_) => {
                app.hub.end(job, socket.id, Some(token));
                session.remove_job(&job);
                return refuse(&socket, ack, "subscribe-job", JOB_NOT_FOUND);
            }
            Err(e) => {
                error!(sid = %socket.id, job = %job, error = %e, "Could not load a job for a subscriber.");
                app.hub.end(job, socket.id, Some(token));
                session.remove_job(&job);
                return refuse(
                    &socket,
                    ack,
                    "subscribe-job",
                    "could not load the job; try again",
                );
            }
        }
    }
}

async fn unsubscribe(
    socket: SocketRef,
    State(app): State<App>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
    mut turn: Turn,
) {
    turn.wait().await;
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    let Some(ack) = over_rate(&socket, &app, &session, ack, "unsubscribe-job") else {
        return;
    };
    let Some(job) = arg.ok().and_then(|v| parse_job_id(&v).ok()) else {
        return refuse(&socket, ack, "unsubscribe-job", BAD_JOB_ID);
    };
    app.hub.end(job, socket.id, None);
    session.remove_job(&job);
    debug!(sid = %socket.id, job = %job, "Unsubscribed.");
    let _ = ack.send(&Ack::ok());
}

/// `refresh-token` `token` (or `{ token }`): a fresh token for the same user
/// keeps the connection beyond the first token's expiry.
async fn refresh_token(
    socket: SocketRef,
    State(app): State<App>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
) {
    let Some(session) = socket.extensions.get::<Arc<Session>>() else {
        return;
    };
    let Some(ack) = over_rate(&socket, &app, &session, ack, "refresh-token") else {
        return;
    };
    match crate::session::refresh_token(&app, &socket, &session.principal, arg.unwrap_or_default())
    {
        Ok(_) => {
            debug!(sid = %socket.id, "Token refreshed.");
            let _ = ack.send(&Ack::ok());
        }
        Err(e) => refuse(&socket, ack, "refresh-token", &e.to_string()),
    }
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

/// Answers a refused request: an `error` event, and the ack if one was asked
/// for.
fn refuse(socket: &SocketRef, ack: AckSender, event: &str, message: &str) {
    info!(sid = %socket.id, event, reason = message, "Refused a request.");
    let _ = socket.emit(
        "error",
        &ClientError {
            message: message.to_owned(),
        },
    );
    let _ = ack.send(&Ack::err(message));
}
