//! A small Socket.IO v5 / Engine.IO v4 client over WebSocket, enough to
//! drive the gateway exactly as a browser's socket.io-client does on the
//! wire: handshake, namespace connect with `auth`, events, acks, pings.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Something the server sent: an event, or the answer to an ack request.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Event(String, Value),
    Ack(u64, Value),
}

pub struct SioClient {
    ws: Ws,
    next_ack: u64,
    backlog: VecDeque<Incoming>,
}

/// Options of a connection attempt.
#[derive(Default)]
pub struct Connect<'a> {
    pub auth: Option<Value>,
    pub query: &'a str,
    pub headers: Vec<(&'static str, String)>,
}

impl SioClient {
    /// Connects to namespace `/` with a handshake `auth.token`.
    pub async fn connect(addr: SocketAddr, token: &str) -> SioClient {
        Self::try_connect(
            addr,
            Connect {
                auth: Some(serde_json::json!({ "token": token })),
                ..Connect::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("connect refused: {e}"))
    }

    /// Connects; `Err` carries the `connect_error` message.
    pub async fn try_connect(addr: SocketAddr, options: Connect<'_>) -> Result<SioClient, String> {
        let url = format!(
            "ws://{addr}/socket.io/?EIO=4&transport=websocket{}{}",
            if options.query.is_empty() { "" } else { "&" },
            options.query
        );
        let mut request = url.into_client_request().unwrap();
        for (name, value) in options.headers {
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("websocket: {e}"))?;
        let mut client = SioClient {
            ws,
            next_ack: 1,
            backlog: VecDeque::new(),
        };
        match client.ws.next().await {
            Some(Ok(Message::Text(open))) if open.starts_with('0') => {}
            other => return Err(format!("expected an Engine.IO open packet, got {other:?}")),
        }
        let connect = match options.auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_owned(),
        };
        client.send_text(connect).await;
        let answer = client.recv_text().await.ok_or("no connect answer")?;
        if let Some(ok) = answer.strip_prefix('0') {
            assert!(ok.contains("sid"), "{answer}");
            Ok(client)
        } else if let Some(err) = answer.strip_prefix('4') {
            let v: Value = serde_json::from_str(err).unwrap();
            Err(v["message"].as_str().unwrap_or_default().to_owned())
        } else {
            panic!("unexpected answer to connect: {answer}");
        }
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("sending");
    }

    /// The Socket.IO packet of the next Engine.IO message, answering pings
    /// meanwhile.
    async fn recv_text(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    let t = t.to_string();
                    match t.as_bytes().first() {
                        Some(b'2') => self.send_text("3".into()).await,
                        Some(b'4') => return Some(t[1..].to_owned()),
                        Some(b'1') => return None,
                        _ => {}
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends an event with one argument.
    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_text(format!("42{}", Value::Array(vec![event.into(), data])))
            .await;
    }

    /// Sends raw Socket.IO packet text (after the Engine.IO `4`).
    pub async fn send_raw(&mut self, packet: &str) {
        self.send_text(format!("4{packet}")).await;
    }

    /// Sends an event with one argument and waits for its ack.
    pub async fn emit_ack(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send_text(format!("42{id}{}", Value::Array(vec![event.into(), data])))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(remaining).await {
                Some(Incoming::Ack(got, v)) if got == id => return v,
                Some(other) => self.backlog.push_back(other),
                None => panic!("no ack for {event}"),
            }
        }
    }

    async fn next_incoming(&mut self, within: Duration) -> Option<Incoming> {
        tokio::time::timeout(within, async {
            loop {
                let text = self.recv_text().await?;
                if let Some(rest) = text.strip_prefix("2") {
                    let v: Value = serde_json::from_str(rest).expect("event JSON");
                    let mut args = v.as_array().cloned().unwrap_or_default().into_iter();
                    let name = args.next().and_then(|n| n.as_str().map(str::to_owned));
                    return Some(Incoming::Event(
                        name.unwrap_or_default(),
                        args.next().unwrap_or(Value::Null),
                    ));
                }
                if let Some(rest) = text.strip_prefix("3") {
                    let split = rest.find('[').unwrap_or(rest.len());
                    let id = rest[..split].parse().expect("ack id");
                    let v: Value = serde_json::from_str(&rest[split..]).expect("ack JSON");
                    return Some(Incoming::Ack(id, v.get(0).cloned().unwrap_or(Value::Null)));
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next event (skipping acks), or `None` after `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<(String, Value)> {
        let queued = self
            .backlog
            .iter()
            .position(|i| matches!(i, Incoming::Event(..)));
        if let Some(Incoming::Event(n, v)) = queued.and_then(|pos| self.backlog.remove(pos)) {
            return Some((n, v));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(remaining).await? {
                Incoming::Event(n, v) => return Some((n, v)),
                ack => self.backlog.push_back(ack),
            }
        }
    }

    /// The next event, which must be `name`.
    pub async fn expect(&mut self, name: &str) -> Value {
        match self.next_event(Duration::from_secs(5)).await {
            Some((n, v)) if n == name => v,
            other => panic!("expected {name}, got {other:?}"),
        }
    }

    /// Asserts that no event arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(e) = self.next_event(within).await {
            panic!("expected no event, got {e:?}");
        }
    }

    /// Whether the server closes the connection within `within` (messages
    /// received meanwhile are discarded).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let closing = async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(within, closing).await.is_ok()
    }

    /// Whether the server ends this Socket.IO connection (a DISCONNECT
    /// packet, or the transport closing) within `within`.
    pub async fn disconnected_within(&mut self, within: Duration) -> bool {
        let ended = async {
            loop {
                match self.recv_text().await {
                    None => return,
                    Some(packet) if packet.starts_with('1') => return,
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(within, ended).await.is_ok()
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
