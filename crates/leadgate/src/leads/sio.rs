//! Socket.IO namespace `/leads`: the leads conversation with the `type` as
//! the event name.

use std::sync::{Arc, Mutex};

use leadgate_protocol::leads::LeadsRequest;
use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, State, TryData};
use tracing::info;

use super::{Frame, Sink};
use crate::App;
use crate::auth::{AuthError, Principal, handshake_token};
use crate::limits::Bucket;
use crate::session::{TokenExpiry, Turn, Turnstile};

/// The client's registration and user, in the socket's extensions.
#[derive(Clone)]
struct LeadsClient {
    id: u64,
    principal: Arc<Principal>,
    /// The turn drawn for `leads_init`, before any request could be.
    first_turn: Arc<Mutex<Option<Turn>>>,
    requests: Arc<Mutex<Bucket>>,
    _slot: Arc<crate::UserSlot>,
}

/// Connect middleware: authenticates and registers the client.
pub async fn authenticate(
    socket: SocketRef,
    State(app): State<App>,
    TryData(auth): TryData<Value>,
) -> Result<(), AuthError> {
    let parts = socket.req_parts();
    let (slot, principal) = app
        .admit(crate::limits::peer(parts), &parts.headers)
        .and_then(|()| handshake_token(auth.as_ref().ok(), &parts.headers, parts.uri.query()))
        .and_then(|token| app.verifier.verify(&token))
        .and_then(|principal| Ok((app.user_slot(&principal.sub)?, principal)))
        .inspect_err(
            |e| info!(ns = socket.ns(), sid = %socket.id, reason = %e, "Refused a connection."),
        )?;
    socket
        .extensions
        .insert(TokenExpiry::new(principal.expires_at));
    let turnstile = Turnstile::new();
    // Registered in the connect handler, once the socket is connected: a
    // handshake that fails after this middleware runs no disconnect handler.
    let client = LeadsClient {
        id: app.leads.new_id(),
        principal: Arc::new(principal),
        first_turn: Arc::new(Mutex::new(Some(turnstile.ticket()))),
        requests: Arc::new(Mutex::new(Bucket::new(app.limits.event_rate))),
        _slot: slot,
    };
    socket.extensions.insert(turnstile);
    socket.extensions.insert(client);
    // Registered before the client is told it is connected; see
    // `jobs::authenticate`.
    socket.on_fallback(on_event);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: registers the client and sends `leads_init`, ahead of
/// any request's answer.
pub async fn on_connect(socket: SocketRef, State(app): State<App>) {
    let Some(client) = socket.extensions.get::<LeadsClient>() else {
        return;
    };
    app.leads
        .register_as(client.id, Sink::Socket(socket.clone()));
    // The disconnect handler may have run already (handlers run in tasks of
    // their own); then it found nothing to remove.
    if !socket.connected() {
        app.leads.unregister(client.id);
        return;
    }
    info!(ns = socket.ns(), sid = %socket.id, user = %client.principal.sub, transport = ?socket.transport_type(), "Connected.");
    let turn = client
        .first_turn
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(mut turn) = turn {
        turn.wait().await;
        send(&app, &socket, &app.leads.current_page(client.id).await);
    }
}

async fn on_event(
    socket: SocketRef,
    State(app): State<App>,
    Event(event): Event,
    TryData(data): TryData<Value>,
    mut turn: Turn,
) {
    turn.wait().await;
    let Some(client) = socket.extensions.get::<LeadsClient>() else {
        return;
    };
    let allowed = client
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(app.limits.event_rate);
    if !allowed {
        info!(sid = %socket.id, event, "Refused a leads request over the rate.");
        return send(&app, &socket, &Frame::error(app.limits.too_many_requests()));
    }
    if event == "refresh_token" {
        let frame = match crate::session::refresh_token(
            &app,
            &socket,
            &client.principal,
            data.unwrap_or_default(),
        ) {
            Ok(expires_at) => Frame::token_refreshed(expires_at),
            Err(e) => Frame::error(e.to_string()),
        };
        return send(&app, &socket, &frame);
    }
    // An event sent without a payload (`emit('sync')`) has nothing to
    // deserialize; it means the same as an empty object.
    let data = data.unwrap_or(Value::Null);
    let frame = match LeadsRequest::from_event(&event, data) {
        Ok(request) => {
            app.leads
                .handle(client.id, &client.principal, request)
                .await
        }
        Err(e) => {
            info!(sid = %socket.id, event, detail = %e, "Refused a leads request.");
            Frame::error(e.0)
        }
    };
    send(&app, &socket, &frame);
}

async fn on_disconnect(socket: SocketRef, State(app): State<App>) {
    if let Some(client) = socket.extensions.get::<LeadsClient>() {
        app.leads.unregister(client.id);
        info!(ns = socket.ns(), sid = %socket.id, user = %client.principal.sub, "Disconnected.");
    }
}

fn send(app: &App, socket: &SocketRef, frame: &Frame) {
    let result = socket.emit(frame.kind, &*frame.json);
    app.metrics.message(frame.kind, result.is_ok());
    if let Err(e) = result {
        tracing::warn!(sid = %socket.id, error = %e, "Dropped a leads message for a socket.");
    }
}
