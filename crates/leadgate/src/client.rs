//! A connected Socket.IO client of one namespace, whichever engine serves
//! it: socketioxide (long-polling, and WebSockets upgraded from it) or
//! leadgate's own WebSocket engine ([`crate::engine`]).

use serde::Serialize;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use crate::engine;

#[derive(Clone)]
pub enum Client {
    Sio(SocketRef),
    Own(engine::Socket),
}

/// Why a message did not reach a client's queue.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Sio(#[from] socketioxide::SendError),
    #[error(transparent)]
    Own(#[from] engine::SendError),
}

impl Client {
    pub fn id(&self) -> Sid {
        match self {
            Client::Sio(socket) => socket.id,
            Client::Own(socket) => socket.id(),
        }
    }

    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), EmitError> {
        match self {
            Client::Sio(socket) => Ok(socket.emit(event, data)?),
            Client::Own(socket) => Ok(socket.emit(event, data)?),
        }
    }

    /// Sends an event with one argument, encoded once for many clients (see
    /// [`engine::EncodedEvent`]).
    pub fn emit_encoded(&self, event: &engine::EncodedEvent) -> Result<(), EmitError> {
        match self {
            Client::Sio(socket) => Ok(socket.emit(event.name(), event.data())?),
            Client::Own(socket) => Ok(socket.send(event.packet())?),
        }
    }

    /// Whether the client is still connected to the namespace.
    pub fn connected(&self) -> bool {
        match self {
            Client::Sio(socket) => socket.connected(),
            Client::Own(socket) => socket.connected(),
        }
    }

    /// Ends the client's connection to the namespace, telling it so.
    pub fn disconnect(&self) -> bool {
        match self {
            Client::Sio(socket) => socket.clone().disconnect().is_ok(),
            Client::Own(socket) => socket.disconnect(),
        }
    }
}
