//! Socket.IO namespace `/`: job progress for browsers (seed 001).
//!
//! `subscribe-job` answers with `job-status` and from then on the socket gets
//! every `job-update` of the job (see [`crate::hub`] for the ordering rules);
//! `unsubscribe-job` stops them. A job that does not exist and a job of
//! another user get the same answer, so job ids cannot be probed.

use leadgate_protocol::{Ack, ClientError, parse_job_id};
use serde_json::Value;
use tracing::{debug, error, info};

use crate::App;
use crate::engine::Socket;
use crate::hub::Activation;
use crate::session::{Session, TokenExpiry};

/// The answer for an unknown job and for another user's job alike.
pub const JOB_NOT_FOUND: &str = "job not found";
const BAD_JOB_ID: &str = "jobId must be a UUID string";

/// Runs one request of a client of `/` and
/// returns the answer for its ack: `None` for an event the namespace does
/// not know (ignored) and for a subscription that ended while it was made.
/// A refused request is also told with an `error` event.
pub(crate) async fn request(
    app: &App,
    client: &Socket,
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
    client: &Socket,
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
    client: &Socket,
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
    client: &Socket,
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

/// Refuses a request: tells the client with an `error` event and returns
/// the ack's answer.
pub(crate) fn refuse(client: &Socket, event: &str, message: &str) -> Ack {
    info!(sid = %client.id(), event, reason = message, "Refused a request.");
    let _ = client.emit(
        "error",
        &ClientError {
            message: message.to_owned(),
        },
    );
    Ack::err(message)
}
