//! Socket.IO namespace `/`: job progress for browsers (seed 001).
//!
//! `subscribe-job` answers with `job-status` and from then on the socket gets
//! every `job-update` of the job (see [`crate::hub`] for the ordering rules);
//! `unsubscribe-job` stops them. A job that does not exist and a job of
//! another user get the same answer, so job ids cannot be probed.

use std::sync::Arc;

use leadgate_protocol::{Ack, ClientError, parse_job_id};
use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::MessageHandler;
use socketioxide::socket::{DisconnectReason, Socket};
use tracing::{debug, error, info};

use crate::App;
use crate::auth::AuthError;
use crate::hub::Activation;
use crate::requests::{Pushed, Requests};
use crate::session::{Session, TokenExpiry};
use crate::sio::Incoming;

/// The answer for an unknown job and for another user's job alike.
pub const JOB_NOT_FOUND: &str = "job not found";
const BAD_JOB_ID: &str = "jobId must be a UUID string";

/// What the gateway keeps for one socket of `/`, in its extensions.
pub struct Client {
    pub session: Session,
    pub expiry: TokenExpiry,
    requests: Requests<Request>,
}

struct Request {
    /// `subscribe-job` or `unsubscribe-job`.
    event: &'static str,
    arg: Option<Value>,
    ack: AckSender,
}

/// Connect middleware: refuses the handshake unless it carries a valid
/// token, and registers the socket's handlers before the client is told it
/// is connected (socketioxide runs the connect handler in a task of its
/// own, so an event emitted from the client's `connect` callback could
/// otherwise arrive before its handler exists, and be lost).
pub async fn authenticate(
    socket: SocketRef,
    State(app): State<App>,
    TryData(auth): TryData<Value>,
) -> Result<(), AuthError> {
    let (principal, slot) = crate::sio::admit(&app, &socket, auth.ok().as_ref())?;
    let client = Arc::new(Client {
        expiry: TokenExpiry::new(principal.expires_at),
        session: Session::new(principal, slot, app.limits.event_rate),
        requests: Requests::new(),
    });
    socket.extensions.insert(client.clone());
    socket.on_fallback(Events { app, client });
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: the socket is authenticated and its events are wired.
pub async fn on_connect(socket: SocketRef) {
    if let Some(client) = socket.extensions.get::<Arc<Client>>() {
        info!(ns = socket.ns(), sid = %socket.id, user = %client.session.principal.sub, transport = ?socket.transport_type(), "Connected.");
    }
}

/// The handler of every event of a socket of `/`: it runs on the
/// connection's read path, so requests are queued in the order they came
/// (see [`crate::requests`]).
struct Events {
    app: App,
    client: Arc<Client>,
}

impl MessageHandler<LocalAdapter, Events> for Events {
    fn call(
        &self,
        s: Arc<Socket<LocalAdapter>>,
        v: socketioxide::handler::Value,
        ack_id: Option<i64>,
    ) {
        let Some(Incoming {
            socket,
            event,
            data: arg,
            ack,
        }) = Incoming::read(s, v, ack_id)
        else {
            return;
        };
        let (app, client) = (&self.app, &self.client);
        let event = match event.as_str() {
            "subscribe-job" => "subscribe-job",
            "unsubscribe-job" => "unsubscribe-job",
            // Not queued: a token about to run out is not made to wait
            // behind slow requests.
            "refresh-token" => {
                let answer = refresh(app, &socket, client, arg);
                let _ = ack.send(&answer);
                return;
            }
            _ => {
                debug!(sid = %socket.id, event, "Ignored an unknown event.");
                return;
            }
        };
        if !client.session.allow_request(app.limits.event_rate) {
            let _ = ack.send(&refuse(&socket, event, &app.limits.too_many_requests()));
            return;
        }
        let request = Request { event, arg, ack };
        match client.requests.push(request) {
            Pushed::Start => {
                tokio::spawn(serve(app.clone(), socket, client.clone()));
            }
            Pushed::Queued => {}
            Pushed::Full(request) => {
                let answer = refuse(&socket, event, &app.limits.too_many_requests());
                let _ = request.ack.send(&answer);
            }
        }
    }
}

/// Serves the socket's queued requests, one at a time, until none waits.
async fn serve(app: App, socket: SocketRef, client: Arc<Client>) {
    while let Some(request) = client.requests.next() {
        let event = request.event;
        let outcome = if event == "subscribe-job" {
            subscribe_job(&app, &socket, &client.session, request.arg).await
        } else {
            unsubscribe_job(&app, &socket, &client.session, request.arg)
        };
        let answer = match outcome {
            Ok(true) => Ack::ok(),
            Ok(false) => continue,
            Err(message) => refuse(&socket, event, &message),
        };
        let _ = request.ack.send(&answer);
    }
}

/// `refresh-token`: takes a fresh token for the same user; the answer for
/// its ack.
fn refresh(app: &App, socket: &SocketRef, client: &Client, arg: Option<Value>) -> Ack {
    if !client.session.allow_request(app.limits.event_rate) {
        return refuse(socket, "refresh-token", &app.limits.too_many_requests());
    }
    match crate::session::refresh_token(
        app,
        Some(&client.expiry),
        &client.session.principal,
        arg.unwrap_or_default(),
    ) {
        Ok(_) => {
            debug!(sid = %socket.id, "Token refreshed.");
            Ack::ok()
        }
        Err(e) => refuse(socket, "refresh-token", &e.to_string()),
    }
}

/// `Ok(true)` once the snapshot was sent, `Ok(false)` if the subscription
/// ended meanwhile, `Err` with the refusal.
async fn subscribe_job(
    app: &App,
    socket: &SocketRef,
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
    let sid = socket.id;
    let token = app.hub.begin(job, socket);
    // A request still running when the socket goes: if the disconnect
    // cleanup already ran, this subscription must not outlive it. (It closes
    // the session before it takes the jobs, and the job was added before
    // `begin`, so one of the two always ends it.)
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
    socket: &SocketRef,
    session: &Session,
    arg: Option<Value>,
) -> Result<bool, String> {
    let Some(job) = arg.and_then(|v| parse_job_id(&v).ok()) else {
        return Err(BAD_JOB_ID.to_owned());
    };
    app.hub.end(job, socket.id, None);
    session.remove_job(&job);
    debug!(sid = %socket.id, job = %job, "Unsubscribed.");
    Ok(true)
}

async fn on_disconnect(socket: SocketRef, State(app): State<App>, reason: DisconnectReason) {
    if let Some(user) = leave(&app, &socket) {
        info!(ns = socket.ns(), sid = %socket.id, %user, ?reason, "Disconnected.");
    }
}

/// Ends the socket's subscriptions, once: from its disconnect handler, or
/// earlier, when the gateway lets the socket go (an evicted client, shut
/// down) and socketioxide may run that handler late or not at all. Returns
/// the user the first time.
pub(crate) fn leave(app: &App, socket: &SocketRef) -> Option<String> {
    let client = socket.extensions.get::<Arc<Client>>()?;
    if client.session.is_closed() {
        return None;
    }
    for job in client.session.close() {
        app.hub.end(job, socket.id, None);
    }
    Some(client.session.principal.sub.clone())
}

/// Refuses a request: tells the client with an `error` event and returns
/// the ack's answer.
pub(crate) fn refuse(socket: &SocketRef, event: &str, message: &str) -> Ack {
    info!(sid = %socket.id, event, reason = message, "Refused a request.");
    let _ = socket.emit(
        "error",
        &ClientError {
            message: message.to_owned(),
        },
    );
    Ack::err(message)
}
