//! Socket.IO namespace `/leads` on socketioxide: the leads conversation with
//! the `type` as the event name (see [`super::answer`]).

use std::sync::{Arc, Mutex};

use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, State, TryData};
use tracing::info;

use super::{LeadsSession, Sink};
use crate::App;
use crate::auth::{AuthError, handshake_token};
use crate::client::Client;
use crate::session::{TokenExpiry, Turn, Turnstile};

/// The client's session, in the socket's extensions.
#[derive(Clone)]
struct LeadsClient {
    session: Arc<LeadsSession>,
    /// The turn drawn for `leads_init`, before any request could be.
    first_turn: Arc<Mutex<Option<Turn>>>,
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
        session: LeadsSession::new(&app, principal, slot),
        first_turn: Arc::new(Mutex::new(Some(turnstile.ticket()))),
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
    let id = client.session.id;
    app.leads
        .register_as(id, Sink::Socket(Client::Sio(socket.clone())));
    // The disconnect handler may have run already (handlers run in tasks of
    // their own); then it found nothing to remove.
    if !socket.connected() {
        app.leads.unregister(id);
        return;
    }
    info!(ns = socket.ns(), sid = %socket.id, user = %client.session.principal.sub, transport = ?socket.transport_type(), "Connected.");
    let turn = client
        .first_turn
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(mut turn) = turn {
        turn.wait().await;
        let page = app.leads.current_page(id).await;
        super::send(&app, &Client::Sio(socket), &page);
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
    let (Some(client), Some(expiry)) = (
        socket.extensions.get::<LeadsClient>(),
        socket.extensions.get::<TokenExpiry>(),
    ) else {
        return;
    };
    let frame = super::answer(&app, &client.session, &expiry, &event, data.ok()).await;
    super::send(&app, &Client::Sio(socket), &frame);
}

async fn on_disconnect(socket: SocketRef, State(app): State<App>) {
    if let Some(client) = socket.extensions.get::<LeadsClient>() {
        app.leads.unregister(client.session.id);
        info!(ns = socket.ns(), sid = %socket.id, user = %client.session.principal.sub, "Disconnected.");
    }
}
