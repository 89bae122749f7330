//! leadgate's Engine.IO 4 / Socket.IO 5 server: both transports
//! (WebSocket, and long-polling with its upgrade to a WebSocket), both
//! namespaces (`/` and `/leads`).
//!
//! Why its own: an idle subscribed connection cost about 21 KiB in
//! socketioxide, most of it in three tasks and a channel per connection.
//! Here a connection is one task driving one state machine ([`Driver`]):
//! it reads what the client sends, runs each namespace's requests one at a
//! time in arrival order, writes what was queued for it, and keeps the
//! heartbeat. Others queue packets through a [`Socket`] handle; a packet
//! meant for many clients (a `job-update`) is encoded once and shared.
//! [`routes`] is the HTTP side: which requests are the engine's, and the
//! long-polling GETs and POSTs.

pub mod packet;
mod routes;
mod sid;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use axum::http::{HeaderMap, HeaderName, header};
use futures_util::{Sink, Stream};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tracing::{debug, error, info, warn};

use self::packet::{Kind, Namespace};
use crate::App;
use crate::auth::{AuthError, handshake_token};
use crate::session::{Session, TokenExpiry};

pub use self::routes::route;
pub use self::sid::Sid;

/// How long a closing connection may take to flush what it was sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of a connection's read buffer. Clients send small packets (pongs,
/// requests); a larger frame grows the buffer when it comes.
const READ_BUFFER: usize = 128;
/// Requests of one namespace waiting for the one that runs; while as many
/// wait, the connection is not read (the client's sends slow down).
const WAITING_REQUESTS: usize = 64;
/// How long a connection may stay without a namespace before it is closed:
/// socket.io's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a WebSocket opened to upgrade a long-polling connection may
/// take to be probed and taken over: engine.io's upgrade timeout.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// The request headers kept for the namespaces' handshakes: what the
/// origin check, the client address and the token may be read from.
const KEPT_HEADERS: [HeaderName; 5] = [
    header::ORIGIN,
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-forwarded-for"),
];

/// Every Socket.IO connection on this instance.
pub struct Engine {
    conns: Mutex<HashMap<Sid, Arc<Conn>>>,
    /// Packets queued per connection before more are refused.
    queue_limit: usize,
    max_payload: usize,
    heartbeat: Heartbeat,
}

/// How often the server pings, and how long it waits for the pong.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Engine {
    pub fn new(queue_limit: usize, max_payload: usize, heartbeat: Heartbeat) -> Self {
        Engine {
            conns: Mutex::default(),
            queue_limit,
            max_payload,
            heartbeat,
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<Sid, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connected sockets by namespace ([`Namespace::index`]) and by
    /// transport (`[websocket, polling]`).
    pub fn socket_counts(&self) -> [[usize; 2]; 2] {
        let mut counts = [[0; 2]; 2];
        for conn in self.conns().values() {
            let shared = conn.shared();
            for ns in Namespace::ALL {
                if shared.open(ns).is_some() {
                    counts[ns.index()][usize::from(shared.polling)] += 1;
                }
            }
        }
        counts
    }

    /// Every connected socket with its token's expiry.
    pub fn sockets(&self) -> Vec<(Socket, TokenExpiry)> {
        let mut sockets = Vec::new();
        for conn in self.conns().values() {
            let shared = conn.shared();
            for ns in Namespace::ALL {
                if let Some(slot) = shared.open(ns) {
                    let socket = Socket {
                        conn: conn.clone(),
                        sid: slot.sid,
                        namespace: ns,
                    };
                    sockets.push((socket, slot.expiry.clone()));
                }
            }
        }
        sockets
    }

    /// Closes every connection (code 1001): the server is shutting down.
    pub fn close_all(&self) -> usize {
        let conns = self.conns();
        for conn in conns.values() {
            conn.close(Closing::Shutdown);
        }
        conns.len()
    }
}

/// Why a packet was not queued for a client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the client's queue is full")]
    Full,
    #[error("the socket is disconnected")]
    Closed,
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

/// What one connection shares with the rest of the gateway.
struct Conn {
    id: Sid,
    queue_limit: usize,
    shared: Mutex<Shared>,
}

struct Shared {
    queue: VecDeque<Utf8Bytes>,
    /// The connection's task, to wake when something was queued, a
    /// namespace ended, or the client's requests came.
    waker: Option<Waker>,
    closing: Option<Closing>,
    /// The connected namespaces, by [`Namespace::index`].
    slots: [Option<Slot>; 2],
    /// On long-polling (not yet upgraded to a WebSocket).
    polling: bool,
    /// Long-polling: the client's waiting GET, answered with what is
    /// queued.
    poll: Option<oneshot::Sender<String>>,
    /// Long-polling: packets the client POSTed, for the task to read.
    post: Option<Box<Post>>,
    /// A WebSocket the client opened to upgrade to, for the task to probe.
    upgrade: Option<Box<WebSocket>>,
}

/// The body of a client's POST, and where to tell whether it was read
/// (`false`: it was malformed).
struct Post {
    payload: String,
    read: oneshot::Sender<bool>,
}

struct Slot {
    sid: Sid,
    expiry: TokenExpiry,
    /// The server disconnected this socket; its task has yet to clean up.
    ended: bool,
}

impl Shared {
    fn open(&self, ns: Namespace) -> Option<&Slot> {
        self.slots[ns.index()].as_ref().filter(|s| !s.ended)
    }

    /// Queues `packet`, refused when the queue already holds `limit`.
    /// Packets without a limit are the connection's own (the open packet,
    /// pings, a namespace's connect and disconnect): a few at a time.
    ///
    /// Returns the waker to wake, only when the queue was empty: otherwise
    /// the task already has a reason to run (it is writing, or the socket
    /// will tell it when it takes more).
    fn push(
        &mut self,
        packet: Utf8Bytes,
        limit: Option<usize>,
    ) -> Result<Option<Waker>, SendError> {
        if self.closing.is_some() {
            return Err(SendError::Closed);
        }
        if limit.is_some_and(|limit| self.queue.len() >= limit) {
            return Err(SendError::Full);
        }
        let was_empty = self.queue.is_empty();
        self.queue.push_back(packet);
        Ok(if was_empty { self.waker.clone() } else { None })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The server is shutting down: close with 1001, clients reconnect.
    Shutdown,
    /// No namespace is left: the server disconnected the last one, or the
    /// client joined none in time.
    Ended,
    /// The client sent what is not Engine.IO / Socket.IO: close with 1002.
    Malformed,
    /// The connection is gone; nothing more is queued.
    Closed,
}

impl Conn {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the connection's task.
    fn wake(shared: MutexGuard<'_, Shared>) {
        let waker = shared.waker.clone();
        drop(shared);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues a packet of the connection's own (see [`Shared::push`]), or
    /// with the queue's limit.
    fn push(&self, packet: impl Into<Utf8Bytes>, limited: bool) -> Result<(), SendError> {
        let limit = limited.then_some(self.queue_limit);
        let waker = self.shared().push(packet.into(), limit)?;
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Closes the connection once what is queued is written (for at most
    /// [`CLOSE_TIMEOUT`]).
    fn close(&self, why: Closing) {
        let mut shared = self.shared();
        if shared.closing.is_none() {
            shared.closing = Some(why);
            Conn::wake(shared);
        }
    }
}

/// A client's connection to one namespace.
#[derive(Clone)]
pub struct Socket {
    conn: Arc<Conn>,
    sid: Sid,
    namespace: Namespace,
}

impl Socket {
    pub fn id(&self) -> Sid {
        self.sid
    }

    pub fn namespace(&self) -> Namespace {
        self.namespace
    }

    /// Queues a whole packet for the client, unless its queue is full.
    pub fn send(&self, packet: Utf8Bytes) -> Result<(), SendError> {
        let mut shared = self.conn.shared();
        if shared
            .open(self.namespace)
            .is_none_or(|s| s.sid != self.sid)
        {
            return Err(SendError::Closed);
        }
        let waker = shared.push(packet, Some(self.conn.queue_limit))?;
        drop(shared);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Sends an event encoded once for many clients.
    pub fn emit_encoded(&self, event: &EncodedEvent) -> Result<(), SendError> {
        self.send(event.packet.clone())
    }

    /// Sends `event` with `data` as its one argument.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), SendError> {
        let packet = packet::event(self.namespace, event, data)
            .map_err(|e| SendError::Encode(e.to_string()))?;
        self.send(packet.into())
    }

    pub fn connected(&self) -> bool {
        self.conn
            .shared()
            .open(self.namespace)
            .is_some_and(|s| s.sid == self.sid)
    }

    /// Disconnects the client from the namespace, telling it so; the
    /// connection's task cleans up. `false` if it was not connected.
    pub fn disconnect(&self) -> bool {
        let mut shared = self.conn.shared();
        let Some(slot) = shared.slots[self.namespace.index()]
            .as_mut()
            .filter(|s| s.sid == self.sid && !s.ended)
        else {
            return false;
        };
        slot.ended = true;
        // Woken whatever the queue holds: the task has to clean up.
        let _ = shared.push(packet::disconnect(self.namespace).into(), None);
        Conn::wake(shared);
        true
    }
}

/// An event of namespace `/` with one argument, encoded once as a whole
/// packet for every client it goes to.
pub struct EncodedEvent {
    name: &'static str,
    packet: Utf8Bytes,
}

impl EncodedEvent {
    /// Encodes `data` once as the one argument of `name`.
    pub fn encode<T: Serialize + ?Sized>(
        name: &'static str,
        data: &T,
    ) -> Result<Self, serde_json::Error> {
        let data = serde_json::value::to_raw_value(data)?;
        Ok(EncodedEvent {
            name,
            packet: packet::event_raw(Namespace::Jobs, name, &data).into(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// What the namespaces' handshakes read from the HTTP request.
struct Handshake {
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    query: Option<String>,
}

type RequestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Namespace `/` of a connection.
struct Jobs {
    socket: Socket,
    session: Arc<Session>,
    expiry: TokenExpiry,
}

/// Namespace `/leads` of a connection.
struct Leads {
    socket: Socket,
    client: Arc<crate::leads::LeadsSession>,
    expiry: TokenExpiry,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed it, or the transport failed.
    Transport,
    PingTimeout,
    /// The server closed it (see [`Closing`]).
    Server(Closing),
}

impl End {
    fn reason(self) -> &'static str {
        match self {
            End::Transport => "transport close",
            End::PingTimeout => "ping timeout",
            End::Server(Closing::Shutdown) => "server shutting down",
            End::Server(Closing::Malformed) => "malformed packet",
            End::Server(_) => "server namespace disconnect",
        }
    }
}

/// How a connection reaches its client.
// The WebSocket stays inline: most connections end up on one, and a box
// would cost each of them an allocation.
#[allow(clippy::large_enum_variant)]
enum Transport {
    WebSocket(WebSocket),
    /// Long-polling: the client's GETs take what is queued and its POSTs
    /// bring packets (see [`Shared::poll`] and [`Shared::post`]). `Some`
    /// while a WebSocket is being probed to take over.
    Polling(Option<Box<Probe>>),
}

/// A WebSocket opened to upgrade a long-polling connection. The client
/// probes it (`2probe`, answered with `3probe`), lets its last GET return,
/// then sends `5`, and from then on the connection is that WebSocket.
struct Probe {
    ws: WebSocket,
    /// `3probe` was sent: the client is moving over, so a waiting GET is
    /// answered at once (with a noop when nothing is queued).
    answered: bool,
    unflushed: bool,
    by: Instant,
}

/// The state machine of one connection. Dropping it ends the connection's
/// sockets, however it ended.
struct Driver {
    app: App,
    conn: Arc<Conn>,
    transport: Transport,
    /// Boxed: it is read only when a namespace connects.
    handshake: Box<Handshake>,
    jobs: Option<Jobs>,
    leads: Option<Leads>,
    /// Per namespace, the request that runs and those that wait for it:
    /// one namespace's requests run in the order they came, and neither
    /// namespace waits for the other's.
    running: [Option<RequestFuture>; 2],
    waiting: [VecDeque<RequestFuture>; 2],
    /// Binary messages still to come for the last binary packet; they are
    /// not used (no event takes binary data) and are skipped.
    attachments: usize,
    /// Long-polling: the rest of a POST that did not fit in the request
    /// queues, read before the next.
    post: Option<Box<Post>>,
    /// Packets handed to the WebSocket but not yet flushed.
    unflushed: bool,
    next_ping: Instant,
    pong_due: Option<Instant>,
    /// While no namespace is connected: when the connection is closed.
    connect_by: Option<Instant>,
    close_by: Option<Instant>,
    /// Set when the close frame was handed to the WebSocket.
    close_sent: bool,
    end: Option<End>,
}

impl Driver {
    /// Registers a new connection and queues its open packet.
    fn new(app: App, transport: Transport, handshake: Box<Handshake>) -> Driver {
        let polling = matches!(transport, Transport::Polling(_));
        let conn = Arc::new(Conn {
            id: Sid::new(),
            queue_limit: app.engine.queue_limit,
            shared: Mutex::new(Shared {
                queue: VecDeque::new(),
                waker: None,
                closing: None,
                slots: [None, None],
                polling,
                poll: None,
                post: None,
                upgrade: None,
            }),
        });
        let open = packet::open(
            conn.id.as_str(),
            polling,
            app.engine.heartbeat.interval,
            app.engine.heartbeat.timeout,
            app.engine.max_payload,
        );
        let _ = conn.push(open, false);
        app.engine.conns().insert(conn.id, conn.clone());
        // Shutdown may have begun before this connection was registered.
        if app.stopping.is_cancelled() {
            conn.close(Closing::Shutdown);
        }
        let now = Instant::now();
        let heartbeat = app.engine.heartbeat;
        Driver {
            app,
            conn,
            transport,
            handshake,
            jobs: None,
            leads: None,
            running: [None, None],
            waiting: [VecDeque::new(), VecDeque::new()],
            attachments: 0,
            post: None,
            unflushed: false,
            next_ping: now + heartbeat.interval,
            pong_due: None,
            connect_by: Some(now + CONNECT_TIMEOUT),
            close_by: None,
            close_sent: false,
            end: None,
        }
    }

    /// Serves the connection until it ends.
    ///
    /// Not an `async fn`: one would keep its argument twice, as the
    /// argument and as the body's binding, and a connection would carry
    /// two drivers.
    fn run(self) -> impl Future<Output = ()> + Send {
        let mut timer = Box::pin(tokio::time::sleep_until(self.deadline()));
        let mut driver = Some(self);
        std::future::poll_fn(move |cx| {
            let Some(running) = driver.as_mut() else {
                return Poll::Ready(());
            };
            let Poll::Ready(end) = running.poll(cx, timer.as_mut()) else {
                return Poll::Pending;
            };
            running.end = Some(end);
            // Dropped here, which ends its sockets.
            driver = None;
            Poll::Ready(())
        })
    }

    fn poll(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<End> {
        // Bounded, so one busy connection cannot hold the thread.
        for _ in 0..64 {
            let mut busy = false;
            // Not read while closing, nor while a namespace has as many
            // requests waiting as it may.
            let reading =
                self.close_by.is_none() && self.waiting.iter().all(|w| w.len() < WAITING_REQUESTS);
            let (post, upgrade) = self.sync(cx, reading);
            if let Some(upgrade) = upgrade {
                self.probe(upgrade);
            }
            if let Some(post) = post {
                busy = true;
                if let Err(end) = self.on_post(post) {
                    return Poll::Ready(end);
                }
            }
            if reading && let Transport::WebSocket(ws) = &mut self.transport {
                match Pin::new(ws).poll_next(cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        busy = true;
                        if let Err(end) = self.on_message(message) {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        debug!(conn = %self.conn.id, error = %e, "WebSocket error.");
                        return Poll::Ready(End::Transport);
                    }
                    Poll::Ready(None) => return Poll::Ready(End::Transport),
                    Poll::Pending => {}
                }
            }
            busy |= self.poll_probe(cx);
            for ns in Namespace::ALL {
                busy |= self.run_requests(ns, cx);
            }
            match self.write(cx) {
                Ok(wrote) => busy |= wrote,
                Err(end) => return Poll::Ready(end),
            }
            let deadline = self.deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                if let Err(end) = self.on_timer() {
                    return Poll::Ready(end);
                }
                // Polled again with the next deadline; one that did not
                // move would fire at once, so it waits for the next wake.
                busy |= self.deadline() != timer.deadline();
            }
            if !busy {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Under one lock: leaves the task's waker for whoever queues next,
    /// cleans up the namespaces the server disconnected, notes that the
    /// connection is closing, and takes a WebSocket opened to upgrade and,
    /// when `reading`, the client's POST (the one partly read first).
    fn sync(
        &mut self,
        cx: &Context<'_>,
        reading: bool,
    ) -> (Option<Box<Post>>, Option<Box<WebSocket>>) {
        let mut post = if reading { self.post.take() } else { None };
        let (ended, closing, upgrade) = {
            let mut shared = self.conn.shared();
            if !shared
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                shared.waker = Some(cx.waker().clone());
            }
            if reading && post.is_none() {
                post = shared.post.take();
            }
            let closing = shared.closing.is_some();
            (take_ended(&mut shared), closing, shared.upgrade.take())
        };
        // A closing connection gets a moment to flush, however stuck its
        // client is.
        if closing && self.close_by.is_none() {
            self.close_by = Some(Instant::now() + CLOSE_TIMEOUT);
        }
        self.reap_ended(ended);
        (post, upgrade)
    }

    /// Polls the namespace's running request, and starts the next one when
    /// it is done; `true` if one finished.
    fn run_requests(&mut self, ns: Namespace, cx: &mut Context<'_>) -> bool {
        let i = ns.index();
        let mut finished = false;
        loop {
            if self.running[i].is_none() {
                self.running[i] = self.waiting[i].pop_front();
            }
            let Some(running) = &mut self.running[i] else {
                return finished;
            };
            // A request that panics ends alone, as a handler's task would.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                running.as_mut().poll(cx)
            }));
            match polled {
                Ok(Poll::Pending) => return finished,
                Ok(Poll::Ready(())) => {}
                Err(_) => error!(conn = %self.conn.id, ns = ns.path(), "A request panicked."),
            }
            self.running[i] = None;
            finished = true;
        }
    }

    /// Sends what is queued to the client; `Ok(true)` if another pass may
    /// find more to send. A packet queued later wakes the task, and so does
    /// a socket that takes more after being full, so that is only so when
    /// a flush just made room the same pass cannot use any more.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        match &self.transport {
            Transport::WebSocket(_) => self.write_websocket(cx),
            Transport::Polling(probe) => {
                let upgrading = probe.as_ref().is_some_and(|p| p.answered);
                self.answer_poll(upgrading)
            }
        }
    }

    /// Moves queued packets into the WebSocket and flushes it.
    fn write_websocket(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let Transport::WebSocket(ws) = &mut self.transport else {
            return Ok(false);
        };
        let mut full = false;
        let mut closing_seen = false;
        loop {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(End::Transport),
                // The socket wakes the task when it takes more.
                Poll::Pending => {
                    full = true;
                    break;
                }
            }
            let (packet, closing) = {
                let mut shared = self.conn.shared();
                (shared.queue.pop_front(), shared.closing)
            };
            closing_seen |= closing.is_some();
            let message = match (packet, closing) {
                (Some(packet), _) => Message::Text(packet),
                (None, Some(closing)) if !self.close_sent && !self.unflushed => {
                    self.close_sent = true;
                    Message::Close(Some(close_frame(closing)))
                }
                (None, _) => break,
            };
            if Pin::new(&mut *ws).start_send(message).is_err() {
                return Err(End::Transport);
            }
            self.unflushed = true;
        }
        let mut again = false;
        if self.unflushed {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    if self.close_sent {
                        let closing = self.conn.shared().closing;
                        return Err(End::Server(closing.unwrap_or(Closing::Ended)));
                    }
                    // Flushed: what did not fit, or the close frame, may
                    // follow at once.
                    again = full || closing_seen;
                }
                Poll::Ready(Err(_)) => return Err(End::Transport),
                Poll::Pending => {}
            }
        }
        Ok(again)
    }

    /// Long-polling: answers the client's waiting GET with everything
    /// queued, as one payload. A closing connection adds the close packet
    /// and ends; while upgrading, a GET is answered at once, with a noop
    /// when nothing is queued, so that the client can move over.
    fn answer_poll(&mut self, upgrading: bool) -> Result<bool, End> {
        let mut shared = self.conn.shared();
        let closing = shared.closing;
        // A GET the client gave up on is not answered: what is queued
        // waits for the next.
        if shared.poll.as_ref().is_some_and(|poll| poll.is_closed()) {
            shared.poll = None;
        }
        if shared.poll.is_none() || (shared.queue.is_empty() && closing.is_none() && !upgrading) {
            return Ok(false);
        }
        let mut payload = String::new();
        for packet in shared.queue.drain(..) {
            if !payload.is_empty() {
                payload.push(packet::SEPARATOR);
            }
            payload.push_str(&packet);
        }
        if closing.is_some() {
            if !payload.is_empty() {
                payload.push(packet::SEPARATOR);
            }
            payload.push('1');
        } else if payload.is_empty() {
            payload.push('6');
        }
        let poll = shared.poll.take();
        drop(shared);
        if let Some(poll) = poll {
            let _ = poll.send(payload);
        }
        match closing {
            Some(closing) => Err(End::Server(closing)),
            None => Ok(true),
        }
    }

    /// Reads what a client POSTed: packets separated by the record
    /// separator, binary ones (attachments, skipped) written as `b` and
    /// base64.
    ///
    /// Read as far as the namespaces' request queues take: the rest is kept
    /// for later, and the POST is answered once all of it was read, so a
    /// long-polling client is slowed down as a WebSocket one is.
    fn on_post(&mut self, mut post: Box<Post>) -> Result<(), End> {
        if post.payload.is_empty() {
            self.malformed("Engine.IO");
        }
        let mut read = 0;
        let mut result = Ok(());
        while read < post.payload.len() {
            if self.waiting.iter().any(|w| w.len() >= WAITING_REQUESTS) {
                post.payload.drain(..read);
                self.post = Some(post);
                return Ok(());
            }
            let rest = &post.payload[read..];
            let text = rest.split(packet::SEPARATOR).next().unwrap_or(rest);
            read += text.len() + packet::SEPARATOR.len_utf8();
            result = match text.strip_prefix('b') {
                Some(_) => {
                    self.on_binary();
                    Ok(())
                }
                None => self.on_text(text),
            };
            if result.is_err() || self.close_by.is_some() {
                break;
            }
        }
        let malformed = self.conn.shared().closing == Some(Closing::Malformed);
        let _ = post.read.send(!malformed);
        result
    }

    /// Takes a WebSocket the client opened to upgrade to, unless one is
    /// already being probed or the connection no longer polls.
    fn probe(&mut self, ws: Box<WebSocket>) {
        match &mut self.transport {
            Transport::Polling(probe @ None) => {
                *probe = Some(Box::new(Probe {
                    ws: *ws,
                    answered: false,
                    unflushed: false,
                    by: Instant::now() + UPGRADE_TIMEOUT,
                }));
            }
            _ => debug!(conn = %self.conn.id, "Dropped a second upgrade WebSocket."),
        }
    }

    /// Reads the WebSocket being probed: answers `2probe`, and on `5`
    /// makes it the connection's transport. Anything else, or a failure,
    /// drops it and the connection stays on long-polling.
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> bool {
        let Transport::Polling(Some(probe)) = &mut self.transport else {
            return false;
        };
        let mut busy = false;
        let mut upgraded = false;
        let mut failed = false;
        loop {
            if !probe.answered {
                match Pin::new(&mut probe.ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        failed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            match Pin::new(&mut probe.ws).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(Message::Text(text))))
                    if !probe.answered && text == "2probe" =>
                {
                    if Pin::new(&mut probe.ws)
                        .start_send(Message::text("3probe"))
                        .is_err()
                    {
                        failed = true;
                        break;
                    }
                    probe.answered = true;
                    probe.unflushed = true;
                    busy = true;
                }
                Poll::Ready(Some(Ok(Message::Text(text)))) if probe.answered && text == "5" => {
                    upgraded = true;
                    break;
                }
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed && probe.unflushed {
            match Pin::new(&mut probe.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => probe.unflushed = false,
                Poll::Ready(Err(_)) => failed = true,
                Poll::Pending => {}
            }
        }
        if failed {
            debug!(conn = %self.conn.id, "An upgrade failed; the connection stays on long-polling.");
            self.transport = Transport::Polling(None);
        } else if upgraded {
            let old = std::mem::replace(&mut self.transport, Transport::Polling(None));
            if let Transport::Polling(Some(probe)) = old {
                self.transport = Transport::WebSocket(probe.ws);
            }
            let poll = {
                let mut shared = self.conn.shared();
                shared.polling = false;
                shared.poll.take()
            };
            // The client waits for no GET now; one still open is let go.
            if let Some(poll) = poll {
                let _ = poll.send("6".to_owned());
            }
            debug!(conn = %self.conn.id, "Upgraded to a WebSocket.");
            busy = true;
        }
        busy
    }

    /// Cleans up namespaces the server disconnected (a token that ran out,
    /// a client too slow); when none is left, the connection closes.
    fn reap(&mut self) {
        let ended = take_ended(&mut self.conn.shared());
        self.reap_ended(ended);
    }

    fn reap_ended(&mut self, ended: [bool; 2]) {
        if ended == [false; 2] {
            return;
        }
        for ns in Namespace::ALL {
            if ended[ns.index()] {
                self.leave(ns, "server namespace disconnect");
            }
        }
        if self.jobs.is_none() && self.leads.is_none() {
            self.conn.close(Closing::Ended);
        }
    }

    /// When the timer should fire next: the earliest of the heartbeat's
    /// next step (ping, or the pong's limit), the close's limit, the
    /// connect timeout and the upgrade's.
    fn deadline(&self) -> Instant {
        let heartbeat = self.pong_due.unwrap_or(self.next_ping);
        [self.close_by, self.connect_by, self.upgrade_by()]
            .into_iter()
            .flatten()
            .fold(heartbeat, Instant::min)
    }

    fn upgrade_by(&self) -> Option<Instant> {
        match &self.transport {
            Transport::Polling(Some(probe)) => Some(probe.by),
            _ => None,
        }
    }

    fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if let Some(by) = self.close_by
            && now >= by
        {
            let closing = self.conn.shared().closing.unwrap_or(Closing::Ended);
            return Err(End::Server(closing));
        }
        if let Some(by) = self.connect_by
            && now >= by
        {
            self.connect_by = None;
            info!(conn = %self.conn.id, "Closing a connection that joined no namespace in time.");
            self.conn.close(Closing::Ended);
        }
        if self.upgrade_by().is_some_and(|by| now >= by) {
            debug!(conn = %self.conn.id, "An upgrade timed out; the connection stays on long-polling.");
            self.transport = Transport::Polling(None);
        }
        match self.pong_due {
            Some(due) if now >= due => return Err(End::PingTimeout),
            Some(_) => {}
            None if now >= self.next_ping => {
                {
                    // An idle connection gives back its queue's memory.
                    let mut shared = self.conn.shared();
                    if shared.queue.is_empty() {
                        shared.queue.shrink_to_fit();
                    }
                }
                let _ = self.conn.push(Utf8Bytes::from_static("2"), false);
                let heartbeat = self.app.engine.heartbeat;
                self.pong_due = Some(now + heartbeat.timeout);
                self.next_ping = now + heartbeat.interval;
            }
            None => {}
        }
        Ok(())
    }

    fn on_message(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => self.on_text(&text),
            Message::Binary(_) => {
                self.on_binary();
                Ok(())
            }
            // Read on: the WebSocket answers the close, then ends.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    fn on_binary(&mut self) {
        if self.attachments > 0 {
            self.attachments -= 1;
        } else {
            debug!(conn = %self.conn.id, "Ignored a binary message that no packet announced.");
        }
    }

    /// Reads one Engine.IO packet.
    fn on_text(&mut self, text: &str) -> Result<(), End> {
        match text.as_bytes().first() {
            Some(b'4') => self.on_packet(&text[1..]),
            // A pong, or a client's ping: either says the client is there.
            Some(b'3' | b'2') => self.pong_due = None,
            Some(b'1') => return Err(End::Transport),
            // Noop, and an upgrade that did not come through a probe: the
            // probing WebSocket is read apart (see `poll_probe`).
            Some(b'5' | b'6') => {}
            _ => self.malformed("Engine.IO"),
        }
        Ok(())
    }

    /// Closes the connection with 1002 and reads nothing more.
    fn malformed(&mut self, layer: &str) {
        info!(conn = %self.conn.id, layer, "Closing a connection that sent a malformed packet.");
        self.conn.close(Closing::Malformed);
        self.close_by = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    fn on_packet(&mut self, text: &str) {
        let packet = match packet::parse(text) {
            Ok(packet) => packet,
            Err(e) => {
                debug!(conn = %self.conn.id, error = %e, "Malformed Socket.IO packet.");
                return self.malformed("Socket.IO");
            }
        };
        self.attachments = packet.attachments;
        let ns = Namespace::from_path(packet.namespace);
        match (packet.kind, ns) {
            (Kind::Connect, None) => {
                let refusal = packet::connect_error(packet.namespace, "Invalid namespace");
                let _ = self.conn.push(refusal, true);
            }
            (Kind::Connect, Some(ns)) => self.connect(ns, packet.data),
            (Kind::Disconnect, Some(ns)) => {
                let mut shared = self.conn.shared();
                if shared.slots[ns.index()].take().is_some() {
                    drop(shared);
                    self.leave(ns, "client namespace disconnect");
                }
            }
            (Kind::Event | Kind::BinaryEvent, Some(ns)) => {
                self.on_event(ns, packet.ack, packet.data);
            }
            // The server asks for no acks; a connect error is the server's
            // to send.
            _ => {}
        }
    }

    fn connect(&mut self, ns: Namespace, data: &str) {
        // A namespace the server just disconnected may connect again.
        self.reap();
        if self.conn.shared().slots[ns.index()].is_some() {
            debug!(conn = %self.conn.id, ns = ns.path(), "Ignored a second connect to a namespace.");
            return;
        }
        let auth: Option<Value> = serde_json::from_str(data).ok();
        let app = &self.app;
        let handshake = &self.handshake;
        let admitted = app
            .admit(handshake.peer, &handshake.headers)
            .and_then(|()| {
                handshake_token(
                    auth.as_ref(),
                    &handshake.headers,
                    handshake.query.as_deref(),
                )
            })
            .and_then(|token| app.verifier.verify(&token))
            .and_then(|principal| Ok((app.user_slot(&principal.sub)?, principal)));
        let sid = Sid::new();
        let (slot, principal) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return self.refuse_connect(ns, sid, &e),
        };
        let expiry = TokenExpiry::new(principal.expires_at);
        let socket = Socket {
            conn: self.conn.clone(),
            sid,
            namespace: ns,
        };
        let transport = match self.transport {
            Transport::WebSocket(_) => "websocket",
            Transport::Polling(_) => "polling",
        };
        info!(ns = ns.path(), %sid, user = %principal.sub, transport, "Connected.");
        {
            let mut shared = self.conn.shared();
            shared.slots[ns.index()] = Some(Slot {
                sid,
                expiry: expiry.clone(),
                ended: false,
            });
        }
        let _ = self.conn.push(packet::connected(ns, sid.as_str()), false);
        self.connect_by = None;
        match ns {
            Namespace::Jobs => {
                let session = Session::new(principal, slot, app.limits.event_rate);
                self.jobs = Some(Jobs {
                    socket,
                    session,
                    expiry,
                });
            }
            Namespace::Leads => {
                let client = crate::leads::LeadsSession::new(app, principal, slot);
                app.leads
                    .register_as(client.id, crate::leads::Sink::Socket(socket.clone()));
                // The page comes first, before any request's answer.
                let (app, first) = (app.clone(), socket.clone());
                let id = client.id;
                self.waiting[ns.index()].push_back(Box::pin(async move {
                    let page = app.leads.current_page(id).await;
                    crate::leads::send(&app, &first, &page);
                }));
                self.leads = Some(Leads {
                    socket,
                    client,
                    expiry,
                });
            }
        }
    }

    fn refuse_connect(&self, ns: Namespace, sid: Sid, e: &AuthError) {
        info!(ns = ns.path(), %sid, reason = %e, "Refused a connection.");
        let _ = self
            .conn
            .push(packet::connect_error(ns.path(), &e.to_string()), true);
    }

    fn on_event(&mut self, ns: Namespace, ack: Option<u64>, data: &str) {
        let Some((event, arg)) = packet::event_args(data) else {
            info!(conn = %self.conn.id, ns = ns.path(), "Ignored an event packet without an event name.");
            return;
        };
        let app = self.app.clone();
        let request: RequestFuture = match ns {
            Namespace::Jobs => {
                let Some(jobs) = &self.jobs else { return };
                let client = jobs.socket.clone();
                // Not queued: a token about to run out is not made to wait
                // behind slow requests.
                if event == "refresh-token" {
                    let answer =
                        crate::jobs::refresh(&app, &client, &jobs.session, &jobs.expiry, arg);
                    return answer_with(&jobs.socket, ack, &answer);
                }
                let (socket, session, expiry) = (
                    jobs.socket.clone(),
                    jobs.session.clone(),
                    jobs.expiry.clone(),
                );
                Box::pin(async move {
                    let answer =
                        crate::jobs::request(&app, &client, &session, &expiry, &event, arg).await;
                    if let Some(answer) = answer {
                        answer_with(&socket, ack, &answer);
                    }
                })
            }
            Namespace::Leads => {
                let Some(leads) = &self.leads else { return };
                let client = leads.socket.clone();
                let (session, expiry) = (leads.client.clone(), leads.expiry.clone());
                Box::pin(async move {
                    let frame = crate::leads::answer(&app, &session, &expiry, &event, arg).await;
                    crate::leads::send(&app, &client, &frame);
                })
            }
        };
        self.waiting[ns.index()].push_back(request);
    }

    /// Ends this connection's socket of `ns`, if it has one.
    fn leave(&mut self, ns: Namespace, reason: &str) {
        match ns {
            Namespace::Jobs => {
                if let Some(jobs) = self.jobs.take() {
                    for job in jobs.session.close() {
                        self.app.hub.end(job, jobs.socket.sid, None);
                    }
                    info!(ns = "/", sid = %jobs.socket.sid, user = %jobs.session.principal.sub, reason, "Disconnected.");
                }
            }
            Namespace::Leads => {
                if let Some(leads) = self.leads.take() {
                    self.app.leads.unregister(leads.client.id);
                    info!(ns = "/leads", sid = %leads.socket.sid, user = %leads.client.principal.sub, reason, "Disconnected.");
                }
            }
        }
        // A client that left every namespace has as long to join one as a
        // new connection.
        if self.jobs.is_none() && self.leads.is_none() && self.connect_by.is_none() {
            self.connect_by = Some(Instant::now() + CONNECT_TIMEOUT);
        }
    }
}

/// Takes the slots of the namespaces the server disconnected; `true` for
/// each one taken.
fn take_ended(shared: &mut Shared) -> [bool; 2] {
    let mut ended = [false; 2];
    for ns in Namespace::ALL {
        if shared.slots[ns.index()].as_ref().is_some_and(|s| s.ended) {
            shared.slots[ns.index()] = None;
            ended[ns.index()] = true;
        }
    }
    ended
}

impl Drop for Driver {
    fn drop(&mut self) {
        let poll = {
            let mut shared = self.conn.shared();
            shared.closing = Some(Closing::Closed);
            shared.queue = VecDeque::new();
            shared.slots = [None, None];
            shared.waker = None;
            shared.post = None;
            shared.upgrade = None;
            shared.poll.take()
        };
        // A long-polling client still waiting learns that it is over.
        if let Some(poll) = poll {
            let _ = poll.send("1".to_owned());
        }
        let reason = self.end.map_or("connection dropped", End::reason);
        for ns in Namespace::ALL {
            self.leave(ns, reason);
        }
        self.app.engine.conns().remove(&self.conn.id);
    }
}

fn close_frame(closing: Closing) -> CloseFrame {
    match closing {
        Closing::Shutdown => CloseFrame {
            code: close_code::AWAY,
            reason: "server shutting down".into(),
        },
        Closing::Malformed => CloseFrame {
            code: close_code::PROTOCOL,
            reason: "malformed packet".into(),
        },
        Closing::Ended | Closing::Closed => CloseFrame {
            code: close_code::NORMAL,
            reason: Utf8Bytes::default(),
        },
    }
}

/// Sends `answer` as the ack of a request that asked for one.
fn answer_with<T: Serialize>(socket: &Socket, ack: Option<u64>, answer: &T) {
    let Some(id) = ack else { return };
    match packet::ack(socket.namespace, id, answer) {
        Ok(packet) => {
            if let Err(e) = socket.send(packet.into()) {
                debug!(sid = %socket.sid, error = %e, "Dropped an ack.");
            }
        }
        Err(e) => warn!(sid = %socket.sid, error = %e, "Could not encode an ack."),
    }
}
