//! Socket.IO on socketioxide: the server's options, what runs in front of
//! it, the handshake every namespace shares, and what the gateway asks of
//! all sockets at once (counts for `/metrics`, token expiry, shutdown).
//!
//! socketioxide serves Engine.IO (both transports and the upgrade, and
//! Engine.IO 3 for socket.io-client 1.x/2.x) and Socket.IO; namespace `/`
//! is [`crate::jobs`], `/leads` is [`crate::leads::sio`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, TransportType};
use tracing::{info, warn};

use crate::auth::{AuthError, Principal, handshake_token};
use crate::conn::{Peer, WeakPeer};
use crate::{App, Config, UserSlot, jobs, leads};

/// Where Engine.IO is served.
pub const PATH: &str = "/socket.io";

/// Bytes of a WebSocket connection's read buffer until a larger frame
/// comes. Clients send small frames (events, pings); socketioxide's default
/// of 4 KiB, kept for every idle connection, is a large part of its memory.
const WS_READ_BUFFER: usize = 128;

/// Builds the Socket.IO server and its namespaces. Built once: each layer
/// socketioxide makes has its own sessions.
pub fn build(app: &App, config: &Config) -> (SocketIoLayer, SocketIo) {
    let max_payload = config.max_payload;
    let (layer, io) = SocketIo::builder()
        .with_state(app.clone())
        .req_path(format!("{PATH}/"))
        .ping_interval(Duration::from_secs(config.ping_interval))
        .ping_timeout(Duration::from_secs(config.ping_timeout))
        .max_buffer_size(config.socket_buffer)
        // Long-polling's limit is on a POST as a whole; WebSocket's on
        // one message and one frame.
        .max_payload(max_payload as u64)
        .ws_max_message_size(max_payload)
        .ws_max_frame_size(max_payload)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer();
    // `/` first: Engine.IO 3 clients are connected to it without asking.
    io.ns("/", jobs::on_connect.with(jobs::authenticate));
    io.ns(
        "/leads",
        leads::sio::on_connect.with(leads::sio::authenticate),
    );
    (layer, io)
}

/// The checks of every namespace's handshake: the page's origin, the
/// address's connection rate, the token (from the handshake `auth`, the
/// header, the query or the cookie of the request that opened the
/// connection), and the user's connection cap. Logs a refusal.
pub fn admit(
    app: &App,
    socket: &SocketRef,
    auth: Option<&serde_json::Value>,
) -> Result<(Principal, Arc<UserSlot>), AuthError> {
    let parts = socket.req_parts();
    app.admit(crate::limits::peer(parts), &parts.headers)
        .and_then(|()| handshake_token(auth, &parts.headers, parts.uri.query()))
        .and_then(|token| app.verifier.verify(&token))
        .and_then(|principal| {
            let slot = app.user_slot(&principal.sub)?;
            Ok((principal, slot))
        })
        .inspect_err(
            |e| info!(ns = socket.ns(), sid = %socket.id, reason = %e, "Refused a connection."),
        )
}

/// One event of a socket, as its handler gets it on the connection's read
/// path.
pub struct Incoming {
    pub socket: SocketRef,
    pub event: String,
    /// The event's first argument, if it has one that is JSON.
    pub data: Option<serde_json::Value>,
    pub ack: AckSender,
}

impl Incoming {
    /// Reads an event's parts; `None` for a packet without an event name.
    pub fn read(
        s: Arc<socketioxide::socket::Socket<LocalAdapter>>,
        mut v: socketioxide::handler::Value,
        ack_id: Option<i64>,
    ) -> Option<Incoming> {
        let Event(event) = Event::from_message_parts(&s, &mut v, &ack_id).ok()?;
        let Ok(socket) = SocketRef::from_message_parts(&s, &mut v, &ack_id);
        let Ok(ack) = AckSender::from_message_parts(&s, &mut v, &ack_id);
        let Ok(TryData(data)) = TryData::from_message_parts(&s, &mut v, &ack_id);
        Some(Incoming {
            socket,
            event,
            data: data.ok(),
            ack,
        })
    }
}

/// In front of socketioxide, for requests to [`PATH`]: a new Engine.IO
/// session (a GET with a `transport` and no `sid`) counts against the
/// address's connection rate, and is answered `429` over it; the
/// connection of a WebSocket that upgrades a session is noted
/// ([`Upgrades`]); both, the requests Engine.IO keeps for a session's
/// life, are [compacted](compact).
pub async fn front(State(app): State<App>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET || !request.uri().path().starts_with(PATH) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    match Session::of(request.uri().query()) {
        Session::Opens => {
            let addr = peer.map(|peer| peer.addr);
            if let Some(ip) =
                crate::limits::client_ip(addr, request.headers(), &app.limits.trusted_proxies)
                && !app.handshake_attempts.take(ip)
            {
                warn!(client = %ip, "Too many Engine.IO handshakes from one address.");
                let body = serde_json::json!({
                    "code": 429,
                    "message": AuthError::TooManyAttempts.to_string(),
                });
                return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            }
            next.run(compact(request)).await
        }
        Session::Upgrade(sid) => {
            if let Some(peer) = &peer {
                app.upgrades.note(&sid, peer);
            }
            next.run(compact(request)).await
        }
        Session::Other => next.run(request).await,
    }
}

/// What a request to [`PATH`] does to an Engine.IO session, by its query.
#[derive(Debug, PartialEq, Eq)]
enum Session {
    /// Opens one: a transport and no session id.
    Opens,
    /// A WebSocket for the session: it upgrades it.
    Upgrade(String),
    Other,
}

impl Session {
    fn of(query: Option<&str>) -> Session {
        let Some(query) = query else {
            return Session::Other;
        };
        let (mut transport, mut sid) = (None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sid" => sid = Some(value),
                "transport" => transport = Some(value),
                _ => {}
            }
        }
        match (transport.as_deref(), sid) {
            (Some(_), None) => Session::Opens,
            (Some("websocket"), Some(sid)) => Session::Upgrade(sid.into_owned()),
            _ => Session::Other,
        }
    }
}

/// The connections that took over upgraded Engine.IO sessions, by session
/// id: socketioxide keeps only the request that opened a session, which for
/// an upgraded one came on another connection. An entry holds no more than
/// a weak reference, and goes once its connection has closed.
#[derive(Default)]
pub struct Upgrades(Mutex<HashMap<String, WeakPeer>>);

impl Upgrades {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, WeakPeer>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, sid: &str, peer: &Peer) {
        self.map().insert(sid.to_owned(), peer.downgrade());
    }

    fn get(&self, sid: &str) -> Option<Peer> {
        self.map().get(sid)?.upgrade()
    }

    /// Forgets the connections that closed.
    pub fn prune(&self) {
        self.map().retain(|_, peer| !peer.is_gone());
    }
}

/// Cuts the connection that carries `socket` (see [`crate::conn`]): its
/// pending write fails, and socketioxide ends the socket.
pub fn cut(app: &App, socket: &SocketRef) {
    let upgraded = app.upgrades.get(&socket.id.to_string());
    let opened = || {
        socket
            .req_parts()
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0.clone())
    };
    if let Some(peer) = upgraded.or_else(opened) {
        info!(ns = socket.ns(), sid = %socket.id, client = %peer.addr, "Cutting the connection of a client that takes nothing.");
        peer.cut();
    }
}

/// Copies the request's URI and headers out of the connection's read buffer.
///
/// hyper parses them as slices of that buffer (8 KiB or more), and Engine.IO
/// keeps a session's request for the session's life, so each connection
/// would keep its whole handshake buffer: about 16 KiB of an idle
/// connection. The copies take a few hundred bytes.
pub fn compact(request: Request) -> Request {
    let (mut parts, body) = request.into_parts();
    let mut headers = axum::http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let (Ok(name), Ok(mut copy)) = (
            axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            // Cannot happen for what was parsed from these bytes; keeping
            // the original is correct anyway.
            headers.append(name.clone(), value.clone());
            continue;
        };
        copy.set_sensitive(value.is_sensitive());
        headers.append(name, copy);
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

/// Open Socket.IO sockets of `namespace`, by current transport:
/// `[websocket, polling]`.
pub fn socket_counts(io: &SocketIo, namespace: &str) -> [usize; 2] {
    let mut counts = [0; 2];
    for socket in io.of(namespace).map(|ns| ns.sockets()).unwrap_or_default() {
        match socket.transport_type() {
            TransportType::Websocket => counts[0] += 1,
            TransportType::Polling => counts[1] += 1,
        }
    }
    counts
}

/// Every socket with the expiry of its token, in either namespace.
pub fn sockets_with_expiry(io: &SocketIo) -> Vec<(SocketRef, i64)> {
    let mut sockets = Vec::new();
    for socket in io.of("/").map(|ns| ns.sockets()).unwrap_or_default() {
        if let Some(client) = socket.extensions.get::<Arc<jobs::Client>>() {
            sockets.push((socket, client.expiry.get()));
        }
    }
    for socket in io.of("/leads").map(|ns| ns.sockets()).unwrap_or_default() {
        if let Some(client) = socket.extensions.get::<Arc<leads::sio::Client>>() {
            sockets.push((socket, client.expiry.get()));
        }
    }
    sockets
}

/// Lets a socket go on the gateway's side: its subscriptions or its leads
/// registration end now, whenever socketioxide runs its disconnect handler
/// (which waits for a blocked write to end, and does not run on shutdown).
pub fn forget(app: &App, socket: &SocketRef) {
    let user = match socket.ns() {
        "/" => jobs::leave(app, socket),
        _ => leads::sio::leave(app, socket),
    };
    if let Some(user) = user {
        info!(ns = socket.ns(), sid = %socket.id, %user, "Disconnected by the gateway.");
    }
}

/// Shutdown: forgets every socket, then closes every client's transport
/// (clients see `transport close` and reconnect, to another instance behind
/// a load balancer). A client that does not read can keep socketioxide's
/// close waiting; past `grace` it is left to end with the process.
pub async fn close_all(app: &App, io: &SocketIo, grace: Duration) {
    let sockets = io.sockets();
    info!(
        sockets = sockets.len(),
        "Shutting down: closing client connections."
    );
    for socket in sockets.iter().chain(
        io.of("/leads")
            .map(|ns| ns.sockets())
            .unwrap_or_default()
            .iter(),
    ) {
        forget(app, socket);
    }
    if tokio::time::timeout(grace, io.close()).await.is_err() {
        warn!(
            grace_secs = grace.as_secs(),
            "Some Socket.IO connections did not close within the grace period."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    fn request() -> Request {
        let mut request = axum::http::Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket&token=abc")
            .header(header::ORIGIN, "http://app.example")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .header("x-custom", "kept")
            .body(axum::body::Body::empty())
            .expect("a valid request");
        let mut bearer = HeaderValue::from_static("Bearer secret");
        bearer.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
        request.extensions_mut().insert(7u32);
        request
    }

    #[test]
    fn compacting_a_request_keeps_what_it_says() {
        let original = request();
        let compacted = compact(request());
        assert_eq!(compacted.uri(), original.uri());
        assert_eq!(compacted.method(), original.method());
        assert_eq!(compacted.headers(), original.headers());
        let forwarded: Vec<_> = compacted
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .collect();
        assert_eq!(forwarded, ["10.0.0.1", "10.0.0.2"]);
        assert!(compacted.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(compacted.extensions().get::<u32>(), Some(&7));
    }

    #[test]
    fn what_a_request_does_to_a_session() {
        assert_eq!(
            Session::of(Some("EIO=4&transport=polling&t=abc")),
            Session::Opens
        );
        assert_eq!(
            Session::of(Some("EIO=3&transport=websocket")),
            Session::Opens
        );
        assert_eq!(
            Session::of(Some("EIO=4&transport=websocket&sid=xyz")),
            Session::Upgrade("xyz".into())
        );
        assert_eq!(
            Session::of(Some("EIO=4&transport=polling&sid=xyz")),
            Session::Other
        );
        assert_eq!(Session::of(Some("EIO=4")), Session::Other);
        assert_eq!(Session::of(None), Session::Other);
    }
}
