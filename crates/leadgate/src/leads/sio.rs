//! Socket.IO namespace `/leads`: the leads conversation with the `type` as
//! the event name.

use std::sync::Arc;

use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::MessageHandler;
use socketioxide::socket::{DisconnectReason, Socket};
use tracing::info;

use super::{Frame, LeadsSession, Sink};
use crate::App;
use crate::auth::AuthError;
use crate::requests::{Pushed, Requests};
use crate::session::TokenExpiry;
use crate::sio::Incoming;

/// What the gateway keeps for one socket of `/leads`, in its extensions.
pub struct Client {
    pub session: LeadsSession,
    pub expiry: TokenExpiry,
    requests: Requests<Request>,
}

enum Request {
    /// `leads_init` for the page the client looks at, ahead of any answer.
    Init,
    Event {
        event: String,
        data: Option<Value>,
    },
}

/// Connect middleware: authenticates the client and wires its handlers
/// before it is told it is connected (see `jobs::authenticate`). Its
/// requests wait behind its first page, which the connect handler sends.
pub async fn authenticate(
    socket: SocketRef,
    State(app): State<App>,
    TryData(auth): TryData<Value>,
) -> Result<(), AuthError> {
    let (principal, slot) = crate::sio::admit(&app, &socket, auth.ok().as_ref())?;
    let client = Arc::new(Client {
        expiry: TokenExpiry::new(principal.expires_at),
        session: LeadsSession::new(&app, principal, slot),
        requests: Requests::held(Request::Init),
    });
    socket.extensions.insert(client.clone());
    socket.on_fallback(Events { app, client });
    socket.on_disconnect(on_disconnect);
    Ok(())
}

/// Connect handler: registers the client (here, once the socket is
/// connected: a handshake that fails after the middleware runs no
/// disconnect handler) and starts serving its requests, the first page
/// first.
pub async fn on_connect(socket: SocketRef, State(app): State<App>) {
    let Some(client) = socket.extensions.get::<Arc<Client>>() else {
        return;
    };
    app.leads
        .register_as(client.session.id, Sink::Socket(socket.clone()));
    // The disconnect handler may have run already (handlers run in tasks of
    // their own); then it found nothing to remove.
    if !socket.connected() {
        app.leads.unregister(client.session.id);
        return;
    }
    info!(ns = socket.ns(), sid = %socket.id, user = %client.session.principal.sub, transport = ?socket.transport_type(), "Connected.");
    serve(app, socket, client).await;
}

/// The handler of every event of a `/leads` socket; see `jobs::Events`.
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
            data,
            ..
        }) = Incoming::read(s, v, ack_id)
        else {
            return;
        };
        let (app, client) = (&self.app, &self.client);
        if let Err(refusal) = client.session.allow_request(app, &event) {
            return super::send(app, &socket, &refusal);
        }
        let request = Request::Event { event, data };
        match client.requests.push(request) {
            Pushed::Start => {
                tokio::spawn(serve(app.clone(), socket, client.clone()));
            }
            Pushed::Queued => {}
            Pushed::Full(_) => {
                info!(sid = %socket.id, "Refused a leads request: too many waiting.");
                super::send(app, &socket, &Frame::error(app.limits.too_many_requests()));
            }
        }
    }
}

/// Serves the socket's queued requests, one at a time, until none waits.
async fn serve(app: App, socket: SocketRef, client: Arc<Client>) {
    while let Some(request) = client.requests.next() {
        let frame = match request {
            Request::Init => app.leads.current_page(client.session.id).await,
            Request::Event { event, data } => {
                super::answer(&app, &client.session, &client.expiry, &event, data).await
            }
        };
        super::send(&app, &socket, &frame);
    }
}

async fn on_disconnect(socket: SocketRef, State(app): State<App>, reason: DisconnectReason) {
    if let Some(user) = leave(&app, &socket) {
        info!(ns = socket.ns(), sid = %socket.id, %user, ?reason, "Disconnected.");
    }
}

/// Unregisters the client; see `jobs::leave`. Returns the user the first
/// time.
pub(crate) fn leave(app: &App, socket: &SocketRef) -> Option<String> {
    let client = socket.extensions.get::<Arc<Client>>()?;
    client.session.release();
    app.leads
        .unregister(client.session.id)
        .then(|| client.session.principal.sub.clone())
}
