//! The plain WebSocket `/ws/leads/`, for frontends written against the
//! Django Channels version: every frame is one JSON object with a `type`.
//!
//! The token comes from the `token` query parameter or cookie (what a
//! browser's `WebSocket` can send), or an `Authorization: Bearer` header. A
//! refused connection is accepted only to be sent `{type: 'error', detail}`
//! and closed with code 1008, because a browser cannot read the status of a
//! refused handshake.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use leadgate_protocol::leads::LeadsRequest;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Frame, Sink};
use crate::App;
use crate::auth::{AuthError, Principal, handshake_token};
use crate::limits::Bucket;

/// Frames queued for one connection; past this, pushes to it are dropped.
const QUEUE: usize = 32;
/// How often an idle connection is pinged, so dead peers are noticed.
const PING_EVERY: Duration = Duration::from_secs(25);

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<App>,
    ConnectInfo(crate::conn::Peer { addr: peer, .. }): ConnectInfo<crate::conn::Peer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // A foreign page or a flood is refused before the upgrade: neither is a
    // user's app that needs a readable reason.
    if let Err(e) = app.admit(Some(peer), &headers) {
        info!(path = "/ws/leads/", %peer, reason = %e, "Refused a connection.");
        let status = match e {
            AuthError::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        };
        return (status, e.to_string()).into_response();
    }
    let user = handshake_token(None, &headers, query.as_deref())
        .and_then(|token| app.verifier.verify(&token))
        .and_then(|user| Ok((app.user_slot(&user.sub)?, user)));
    let max = app.limits.max_payload;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let connections = app.connections.clone();
            connections.track_future(serve(app, socket, user))
        })
}

async fn serve(
    app: App,
    socket: WebSocket,
    user: Result<(std::sync::Arc<crate::UserSlot>, Principal), AuthError>,
) {
    let (mut outgoing, mut incoming) = socket.split();
    let (_slot, user) = match user {
        Ok(user) => user,
        Err(e) => {
            info!(path = "/ws/leads/", reason = %e, "Refused a connection.");
            let _ = outgoing
                .send(Message::Text(Frame::error(e.to_string()).text))
                .await;
            let close = CloseFrame {
                code: close_code::POLICY,
                reason: "unauthorized".into(),
            };
            let _ = outgoing.send(Message::Close(Some(close))).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
    let id = app.leads.register(Sink::WebSocket(tx.clone()));
    info!(path = "/ws/leads/", client = id, user = %user.sub, "Connected.");

    // The writer owns the sending half; it ends when every sender is gone
    // (the reader below finished and the client was unregistered) or the
    // peer stops accepting frames.
    let stopping = app.stopping.clone();
    let metrics = app.metrics.clone();
    let grace = app.limits.slow_client_grace;
    // Cancelled when the writer gives up, so the reader stops too.
    let writer_gone = tokio_util::sync::CancellationToken::new();
    let writer_done = writer_gone.clone();
    let writer = tokio::spawn(async move {
        let done = writer_done.drop_guard();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        metrics.message(frame.kind, true);
                        Message::Text(frame.text)
                    }
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            // A peer that takes nothing for the grace period is dropped;
            // meanwhile pushes to it are dropped at the queue.
            match tokio::time::timeout(grace, outgoing.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    warn!(
                        path = "/ws/leads/",
                        grace_secs = grace.as_secs(),
                        "Disconnecting a client that has not taken its messages."
                    );
                    metrics.slow_clients.inc();
                    break;
                }
            }
        }
        // The reader stops now; closing may not complete if the peer takes
        // nothing, so it is bounded.
        drop(done);
        let close = async {
            if stopping.is_cancelled() {
                let away = CloseFrame {
                    code: close_code::AWAY,
                    reason: "server shutting down".into(),
                };
                let _ = outgoing.send(Message::Close(Some(away))).await;
            }
            let _ = outgoing.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    });

    let mut requests = Bucket::new(app.limits.event_rate);
    let mut expires_at = user.expires_at;
    if tx.send(app.leads.current_page(id).await).await.is_ok() {
        loop {
            let expiry = expiry_instant(expires_at, app.limits.jwt_leeway);
            let message = tokio::select! {
                () = app.stopping.cancelled() => break,
                () = writer_gone.cancelled() => break,
                () = tokio::time::sleep_until(expiry) => {
                    info!(path = "/ws/leads/", client = id, user = %user.sub, "Token expired; disconnecting.");
                    let _ = tx.send(Frame::error(AuthError::Expired.to_string())).await;
                    break;
                }
                message = incoming.next() => match message {
                    Some(Ok(message)) => message,
                    _ => break,
                },
            };
            if !requests.take(app.limits.event_rate) {
                info!(
                    path = "/ws/leads/",
                    client = id,
                    "Refused a leads request over the rate."
                );
                if tx
                    .send(Frame::error(app.limits.too_many_requests()))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            let frame = match message {
                Message::Text(text) => match refresh_request(text.as_str()) {
                    Some(token) => match app.verifier.refresh_for(&user, &token) {
                        Ok(fresh) => {
                            expires_at = fresh;
                            Frame::token_refreshed(fresh)
                        }
                        Err(e) => Frame::error(e.to_string()),
                    },
                    None => match LeadsRequest::from_frame(text.as_str()) {
                        Ok(request) => app.leads.handle(id, &user, request).await,
                        Err(e) => {
                            info!(path = "/ws/leads/", client = id, detail = %e, "Refused a leads request.");
                            Frame::error(e.0)
                        }
                    },
                },
                Message::Binary(_) => {
                    Frame::error("binary frames are not supported; send JSON text")
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            // Answers wait for room: a client that floods requests is
            // slowed to the pace it reads.
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    }
    app.leads.unregister(id);
    drop(tx);
    if let Err(e) = writer.await {
        warn!(error = %e, "A leads writer task failed.");
    }
    info!(path = "/ws/leads/", client = id, user = %user.sub, "Disconnected.");
}

/// When a token of `expires_at` (seconds since the epoch) runs out, with the
/// configured leeway, as a tokio instant.
fn expiry_instant(expires_at: i64, leeway: u64) -> tokio::time::Instant {
    let left = expires_at.saturating_add(leeway as i64) - chrono::Utc::now().timestamp();
    tokio::time::Instant::now() + Duration::from_secs(left.max(0) as u64)
}

/// The token of a `{ type: 'refresh_token', token }` frame (empty if it
/// has none), or `None` for any other frame.
fn refresh_request(text: &str) -> Option<String> {
    if !text.contains("refresh_token") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    (value["type"] == "refresh_token")
        .then(|| value["token"].as_str().unwrap_or_default().to_owned())
}
