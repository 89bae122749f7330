//! The engine's HTTP side: every request to `/socket.io/` comes here. It
//! opens connections on either transport, answers long-polling's GETs and
//! POSTs, and hands a WebSocket opened to upgrade a long-polling
//! connection to that connection's task.
//!
//! Requests it cannot serve get engine.io's refusals: status 400 and
//! `{"code":…,"message":…}`, which clients know.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::{
    Closing, Conn, Driver, Handshake, KEPT_HEADERS, Post, READ_BUFFER, Shared, Sid, Transport,
};
use crate::App;

/// Middleware in front of the rest of the router: takes the requests to
/// `/socket.io/` and passes on every other.
pub async fn route(State(app): State<App>, request: Request, next: Next) -> Response {
    if request.uri().path().trim_end_matches('/') != "/socket.io" {
        return next.run(request).await;
    }
    let query = EngineQuery::read(request.uri().query());
    let (parts, body) = request.into_parts();
    match serve(app, parts, body, query).await {
        Ok(response) => response,
        Err(refusal) => {
            debug!(?refusal, "Refused an Engine.IO request.");
            refusal.into_response()
        }
    }
}

/// What the engine reads from a request's query.
#[derive(Default)]
struct EngineQuery {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl EngineQuery {
    fn read(query: Option<&str>) -> EngineQuery {
        let mut read = EngineQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let field = match &*key {
                "EIO" => &mut read.eio,
                "transport" => &mut read.transport,
                "sid" => &mut read.sid,
                _ => continue,
            };
            *field = Some(value.into_owned());
        }
        read
    }
}

/// engine.io's reasons to refuse a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    UnknownTransport,
    UnknownSession,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedVersion,
    /// A POST larger than the `maxPayload` the client was told.
    TooLarge,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            Refusal::UnknownTransport => (0, "Transport unknown"),
            Refusal::UnknownSession => (1, "Session ID unknown"),
            Refusal::BadHandshakeMethod => (2, "Bad handshake method"),
            Refusal::BadRequest => (3, "Bad request"),
            Refusal::UnsupportedVersion => (5, "Unsupported protocol version"),
            Refusal::TooLarge => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        };
        let body = format!("{{\"code\":{code},\"message\":\"{message}\"}}");
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

async fn serve(
    app: App,
    parts: Parts,
    body: Body,
    query: EngineQuery,
) -> Result<Response, Refusal> {
    if query.eio.as_deref() != Some("4") {
        return Err(Refusal::UnsupportedVersion);
    }
    let websocket = match query.transport.as_deref() {
        Some("websocket") => true,
        Some("polling") => false,
        _ => return Err(Refusal::UnknownTransport),
    };
    let Some(sid) = query.sid else {
        if parts.method != Method::GET {
            return Err(Refusal::BadHandshakeMethod);
        }
        return if websocket {
            open_websocket(app, parts).await
        } else {
            Ok(open_polling(app, &parts).await)
        };
    };
    let conn = sid
        .parse::<Sid>()
        .ok()
        .and_then(|sid| app.engine.conns().get(&sid).cloned())
        .ok_or(Refusal::UnknownSession)?;
    if websocket {
        return upgrade(&app, conn, parts).await;
    }
    match parts.method {
        Method::GET => poll(conn).await,
        Method::POST => post(&app, conn, &parts.headers, body).await,
        _ => Err(Refusal::BadRequest),
    }
}

impl Handshake {
    /// Keeps what the namespaces' handshakes read from the request.
    fn read(parts: &Parts) -> Box<Handshake> {
        // Sized to what is kept: an empty map does not allocate.
        let kept = KEPT_HEADERS
            .iter()
            .map(|name| parts.headers.get_all(name).iter().count())
            .sum();
        let mut headers = HeaderMap::with_capacity(kept);
        for name in KEPT_HEADERS {
            for value in parts.headers.get_all(&name) {
                // Copied: hyper parses a header value as a slice of the
                // connection's read buffer, and a clone would keep that
                // whole buffer (8 KiB or more) for the connection's life.
                // The bytes of a parsed header value are always valid.
                let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) else {
                    continue;
                };
                copy.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), copy);
            }
        }
        Box::new(Handshake {
            peer: crate::limits::peer(parts),
            headers,
            query: parts.uri.query().map(str::to_owned),
        })
    }
}

fn configure(upgrade: WebSocketUpgrade, max_payload: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(max_payload)
        .max_frame_size(max_payload)
}

/// The WebSocket a request asks for; engine.io's "Bad request" when it is
/// not a WebSocket handshake.
async fn websocket_upgrade(parts: &mut Parts) -> Result<WebSocketUpgrade, Refusal> {
    WebSocketUpgrade::from_request_parts(parts, &())
        .await
        .map_err(|rejection| {
            debug!(%rejection, "Not a WebSocket handshake.");
            Refusal::BadRequest
        })
}

/// A connection opened as a WebSocket straight away.
async fn open_websocket(app: App, mut parts: Parts) -> Result<Response, Refusal> {
    let upgrade = websocket_upgrade(&mut parts).await?;
    let handshake = Handshake::read(&parts);
    Ok(
        configure(upgrade, app.engine.max_payload).on_upgrade(move |ws| {
            // A task of its own: the upgrade's task, which ends here, holds
            // more than a connection needs for its life.
            let connections = app.connections.clone();
            connections.spawn(Driver::new(app, Transport::WebSocket(ws), handshake).run());
            std::future::ready(())
        }),
    )
}

/// A connection opened on long-polling: the handshake's GET is answered
/// with the open packet, like any later GET with what is queued.
async fn open_polling(app: App, parts: &Parts) -> Response {
    let driver = Driver::new(
        app.clone(),
        Transport::Polling(None),
        Handshake::read(parts),
    );
    let (answer, answered) = oneshot::channel();
    driver.conn.shared().poll = Some(answer);
    app.connections.spawn(driver.run());
    payload(answered.await).unwrap_or_else(IntoResponse::into_response)
}

/// A long-polling GET: waits for what is queued for the client.
async fn poll(conn: Arc<Conn>) -> Result<Response, Refusal> {
    let (answer, answered) = oneshot::channel();
    wait_with(&conn, |shared| {
        if shared.poll.as_ref().is_some_and(|poll| !poll.is_closed()) {
            return Err("two GETs at once");
        }
        shared.poll = Some(answer);
        Ok(())
    })?;
    payload(answered.await)
}

/// Leaves a long-polling request for the connection's task (`leave`
/// refuses a second request of a kind while one waits: a client that does
/// that is closed) and wakes the task.
fn wait_with(
    conn: &Conn,
    leave: impl FnOnce(&mut Shared) -> Result<(), &'static str>,
) -> Result<(), Refusal> {
    let mut shared = conn.shared();
    if shared.closing == Some(Closing::Closed) {
        return Err(Refusal::UnknownSession);
    }
    // Under the lock: a request left on a connection that has just moved
    // to a WebSocket would never be answered.
    if !shared.polling {
        return Err(Refusal::BadRequest);
    }
    if let Err(overlap) = leave(&mut shared) {
        drop(shared);
        info!(conn = %conn.id, overlap, "Closing a long-polling connection that sent two requests at once.");
        conn.close(Closing::Malformed);
        return Err(Refusal::BadRequest);
    }
    Conn::wake(shared);
    Ok(())
}

fn payload(answered: Result<String, oneshot::error::RecvError>) -> Result<Response, Refusal> {
    let payload = answered.map_err(|_| Refusal::UnknownSession)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        payload,
    )
        .into_response())
}

/// A long-polling POST: the client's packets. Answered once the
/// connection's task has read them, so a client that sends faster than its
/// requests run is slowed down.
async fn post(
    app: &App,
    conn: Arc<Conn>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let max = app.engine.max_payload;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = match declared {
        Some(length) if length > max => None,
        _ => axum::body::to_bytes(body, max).await.ok(),
    };
    let Some(bytes) = bytes else {
        info!(conn = %conn.id, max, "Closing a long-polling connection that sent a payload over the limit.");
        conn.close(Closing::Malformed);
        return Err(Refusal::TooLarge);
    };
    let Ok(payload) = String::from_utf8(bytes.into()) else {
        info!(conn = %conn.id, "Closing a long-polling connection that sent a payload that is not UTF-8.");
        conn.close(Closing::Malformed);
        return Err(Refusal::BadRequest);
    };
    let (read, was_read) = oneshot::channel();
    wait_with(&conn, |shared| {
        if shared.post.is_some() {
            return Err("two POSTs at once");
        }
        shared.post = Some(Box::new(Post { payload, read }));
        Ok(())
    })?;
    match was_read.await {
        Ok(true) => Ok(([(header::CONTENT_TYPE, "text/html")], "ok").into_response()),
        Ok(false) => Err(Refusal::BadRequest),
        Err(_) => Err(Refusal::UnknownSession),
    }
}

/// A WebSocket opened to upgrade a long-polling connection: handed to the
/// connection's task, which probes it.
async fn upgrade(app: &App, conn: Arc<Conn>, mut parts: Parts) -> Result<Response, Refusal> {
    {
        let shared = conn.shared();
        if !shared.polling || shared.closing.is_some() {
            return Err(Refusal::BadRequest);
        }
    }
    let upgrade = websocket_upgrade(&mut parts).await?;
    Ok(
        configure(upgrade, app.engine.max_payload).on_upgrade(move |ws| {
            let mut shared = conn.shared();
            if shared.polling && shared.closing.is_none() && shared.upgrade.is_none() {
                shared.upgrade = Some(Box::new(ws));
                Conn::wake(shared);
            }
            std::future::ready(())
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_keeps_copies_of_what_it_reads() {
        let request = axum::http::Request::builder()
            .uri("/socket.io/?EIO=4&transport=polling&token=abc")
            .header(header::ORIGIN, "http://app.example")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .header("x-custom", "not kept")
            .body(())
            .expect("a valid request");
        let (mut parts, ()) = request.into_parts();
        let mut bearer = HeaderValue::from_static("Bearer secret");
        bearer.set_sensitive(true);
        parts.headers.insert(header::AUTHORIZATION, bearer);

        let handshake = Handshake::read(&parts);
        assert_eq!(
            handshake.query.as_deref(),
            Some("EIO=4&transport=polling&token=abc")
        );
        assert_eq!(
            handshake.headers.len(),
            4,
            "origin, authorization, two forwarded"
        );
        assert!(handshake.headers.get("x-custom").is_none());
        assert!(handshake.headers[header::AUTHORIZATION].is_sensitive());
        for (name, value) in &handshake.headers {
            let original = parts
                .headers
                .get_all(name)
                .iter()
                .find(|v| v.as_bytes() == value.as_bytes())
                .expect("the same value");
            // Not a view of the request's buffer, which it would keep alive.
            assert_ne!(original.as_bytes().as_ptr(), value.as_bytes().as_ptr());
        }
    }
}
