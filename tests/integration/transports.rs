//! Socket.IO as socketioxide serves it for leadgate, on the wire: one
//! connection carrying both namespaces, what is answered to what a stock
//! client never sends, that sockets are counted and forgotten, long-polling
//! with its upgrade to a WebSocket, the payload limit on both transports,
//! and the heartbeat.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use leadgate_tests::{Backend, Gateway};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(gw: &Gateway) -> (Ws, Value) {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_text(&mut ws).await;
    let handshake = serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
    (ws, handshake)
}

/// The next text frame, answering pings; panics after 5 s.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the connection is open")
            .unwrap();
        match frame {
            Message::Text(text) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap();
            }
            Message::Text(text) => return text.to_string(),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, text: String) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The packet after `prefix`, parsed as JSON.
fn after(packet: &str, prefix: &str) -> Value {
    let rest = packet
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{packet:?} does not start with {prefix:?}"));
    serde_json::from_str(rest).unwrap()
}

async fn one_connection_carries_both_namespaces(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let (mut ws, handshake) = open(&gw).await;
    assert_eq!(handshake["upgrades"], json!([]));
    assert_eq!(handshake["pingInterval"], json!(25000));
    assert_eq!(handshake["pingTimeout"], json!(20000));
    assert!(handshake["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(handshake["maxPayload"].as_u64().is_some());

    let auth = json!({ "token": gw.token("alice") });
    send(&mut ws, format!("40{auth}")).await;
    let jobs_sid = after(&next_text(&mut ws).await, "40")["sid"].clone();
    send(&mut ws, format!("40/leads,{auth}")).await;
    let leads_sid = after(&next_text(&mut ws).await, "40/leads,")["sid"].clone();
    assert!(jobs_sid.is_string() && leads_sid.is_string());
    assert_eq!(
        after(&next_text(&mut ws).await, "42/leads,")[0],
        "leads_init"
    );
    assert_eq!(gauge(&gw, "/", "websocket").await, 1.0);
    assert_eq!(gauge(&gw, "/leads", "websocket").await, 1.0);

    // A namespace that does not exist is answered on that namespace; the
    // connection goes on.
    send(&mut ws, "40/nowhere,".into()).await;
    assert_eq!(
        after(&next_text(&mut ws).await, "44/nowhere,"),
        json!({ "message": "Invalid namespace" })
    );

    // Requests and acks on `/`, then an update.
    // The snapshot goes out before the ack.
    send(&mut ws, format!("427[\"subscribe-job\",\"{job}\"]")).await;
    let status = after(&next_text(&mut ws).await, "42");
    assert_eq!(status[0], "job-status");
    assert_eq!(status[1]["jobId"], json!(job));
    assert_eq!(
        after(&next_text(&mut ws).await, "437"),
        json!([{ "ok": true }])
    );
    progress(&gw, job, 1).await;
    let update = after(&next_text(&mut ws).await, "42");
    assert_eq!(
        (update[0].clone(), update[1]["seq"].clone()),
        (json!("job-update"), json!(1))
    );

    // Leaving `/leads` leaves `/` as it was.
    send(&mut ws, "41/leads,".into()).await;
    progress(&gw, job, 2).await;
    let update = after(&next_text(&mut ws).await, "42");
    assert_eq!(update[1]["seq"], json!(2), "nothing for the namespace left");
    assert_eq!(gauge(&gw, "/leads", "websocket").await, 0.0);

    progress(&gw, job, 3).await;
    assert_eq!(after(&next_text(&mut ws).await, "42")[1]["seq"], json!(3));

    ws.close(None).await.unwrap();
    for _ in 0..50 {
        if gauge(&gw, "/", "websocket").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gauge(&gw, "/", "websocket").await,
        0.0,
        "a closed connection is forgotten"
    );
    gw.shutdown().await;
}

async fn what_stock_clients_never_send_is_handled(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("bob").await;
    let (mut ws, _) = open(&gw).await;

    // A refused connect leaves the connection open for another try.
    send(&mut ws, "40{\"token\":\"garbage\"}".into()).await;
    assert_eq!(
        after(&next_text(&mut ws).await, "44"),
        json!({ "message": "invalid token: malformed" })
    );
    let auth = json!({ "token": gw.token("bob") });
    send(&mut ws, format!("40{auth}")).await;
    let connected = next_text(&mut ws).await;
    assert!(connected.starts_with("40{"), "{connected}");

    // A binary event: its attachment is read, the event refused.
    send(
        &mut ws,
        "451-2[\"subscribe-job\",{\"_placeholder\":true,\"num\":0}]".into(),
    )
    .await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let error = after(&next_text(&mut ws).await, "42");
    assert_eq!(error[0], "error");
    assert!(error[1]["message"].as_str().unwrap().contains("UUID"));
    assert_eq!(
        after(&next_text(&mut ws).await, "432"),
        json!([{ "ok": false, "error": "jobId must be a UUID string" }])
    );

    // Then the connection serves as before.
    send(&mut ws, format!("423[\"subscribe-job\",\"{job}\"]")).await;
    assert_eq!(after(&next_text(&mut ws).await, "42")[0], "job-status");
    assert_eq!(
        after(&next_text(&mut ws).await, "433"),
        json!([{ "ok": true }])
    );

    // A packet that is not Socket.IO ends the connection: Engine.IO's close
    // packet, then the WebSocket closes.
    send(&mut ws, "4x".into()).await;
    closed_by_server(&mut ws).await;

    // So does an event for a namespace the client has not joined.
    let (mut ws, _) = open(&gw).await;
    send(&mut ws, format!("421[\"subscribe-job\",\"{job}\"]")).await;
    closed_by_server(&mut ws).await;

    // A message over the payload limit ends the connection.
    let (mut ws, handshake) = open(&gw).await;
    send(&mut ws, format!("40{auth}")).await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    let max = handshake["maxPayload"].as_u64().unwrap() as usize;
    send(
        &mut ws,
        format!("42[\"subscribe-job\",\"{}\"]", "x".repeat(max)),
    )
    .await;
    assert!(
        ended(&mut ws).await,
        "an oversized message ends the connection"
    );
    still_serves(&gw, job).await;
    gw.shutdown().await;
}

/// Asserts that the server ends the session within 5 s: Engine.IO's close
/// packet `1`, then the end of the WebSocket. The connection may also be
/// reset before the client has read the packet, which loses it: that too
/// is the server ending it.
async fn closed_by_server(ws: &mut Ws) {
    let mut close_packet = false;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the session ends within 5 s");
        match frame {
            Some(Ok(Message::Text(text))) if text.as_str() == "1" => close_packet = true,
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {}
            Some(Ok(Message::Text(text))) => panic!("unexpected {text} before the close"),
            Some(Ok(Message::Close(_))) | None => {
                assert!(close_packet, "the close packet 1 before the end");
                return;
            }
            Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// Whether the WebSocket ends (a close frame, or the stream ends) within
/// 5 s, whatever text comes before.
async fn ended(ws: &mut Ws) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
}

/// A new client is served: connect, subscribe, the snapshot.
async fn still_serves(gw: &Gateway, job: uuid::Uuid) {
    let (mut ws, _) = open(gw).await;
    let auth = json!({ "token": gw.token("bob") });
    send(&mut ws, format!("40{auth}")).await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    send(&mut ws, format!("421[\"subscribe-job\",\"{job}\"]")).await;
    assert_eq!(after(&next_text(&mut ws).await, "42")[0], "job-status");
}

/// A long-polling connection, as socket.io-client drives one: GETs take
/// what the server queued, POSTs carry the client's packets.
pub(super) struct Polling {
    http: reqwest::Client,
    url: String,
    sid: String,
    /// Packets a GET brought after the one looked for.
    backlog: std::collections::VecDeque<String>,
}

impl Polling {
    pub(super) async fn open(gw: &Gateway) -> (Polling, Value) {
        let http = reqwest::Client::new();
        let base = format!("http://{}/socket.io/?EIO=4&transport=polling", gw.addr);
        let body = http.get(&base).send().await.unwrap().text().await.unwrap();
        let handshake: Value =
            serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
        let sid = handshake["sid"].as_str().unwrap().to_owned();
        let url = format!("{base}&sid={sid}");
        let backlog = Default::default();
        (
            Polling {
                http,
                url,
                sid,
                backlog,
            },
            handshake,
        )
    }

    /// The packets of the next GET; panics after 5 s.
    pub(super) async fn get(&self) -> Vec<String> {
        let response =
            tokio::time::timeout(Duration::from_secs(5), self.http.get(&self.url).send())
                .await
                .expect("a GET answered within 5 s")
                .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        body.split('\x1e').map(str::to_owned).collect()
    }

    pub(super) async fn post(&self, payload: impl Into<String>) -> reqwest::Response {
        self.http
            .post(&self.url)
            .body(payload.into())
            .send()
            .await
            .unwrap()
    }

    /// The next packet, GETting when none is left over; answers pings.
    pub(super) async fn next(&mut self) -> String {
        loop {
            if self.backlog.is_empty() {
                self.backlog.extend(self.get().await);
            }
            match self.backlog.pop_front() {
                Some(ping) if ping == "2" => {
                    self.post("3").await;
                }
                Some(packet) => return packet,
                None => {}
            }
        }
    }
}

/// Posts progress `step` of 10 for `job`: its update has seq `step`.
async fn progress(gw: &Gateway, job: uuid::Uuid, step: u32) {
    let event = json!({ "type": "progress", "progress": step * 10, "processedLeads": step, "totalLeads": 10 });
    gw.post_event(job, event).await;
}

/// The connection gauge of `namespace` on `transport`.
async fn gauge(gw: &Gateway, namespace: &str, transport: &str) -> f64 {
    let series =
        format!("leadgate_connections{{namespace=\"{namespace}\",transport=\"{transport}\"}}");
    super::ops::sample(&super::ops::scrape(gw).await, &series)
}

/// engine.io's refusal: status 400 and its code (socketioxide sends it as
/// a string).
async fn refusal(response: reqwest::Response) -> u64 {
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    body["code"]
        .as_u64()
        .or_else(|| body["code"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no code in {body}"))
}

async fn long_polling_serves_and_upgrades(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("carol").await;
    let (mut polling, handshake) = Polling::open(&gw).await;
    assert_eq!(handshake["upgrades"], json!(["websocket"]));

    let auth = json!({ "token": gw.token("carol") });
    let posted = polling.post(format!("40{auth}")).await;
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.text().await.unwrap(), "ok");
    assert!(polling.next().await.starts_with("40{"));
    // Two packets in one POST, as the client batches them.
    polling
        .post(format!(
            "42[\"nothing\"]\x1e421[\"subscribe-job\",\"{job}\"]"
        ))
        .await;
    assert_eq!(after(&polling.next().await, "42")[0], "job-status");
    assert_eq!(after(&polling.next().await, "431"), json!([{ "ok": true }]));
    assert_eq!(gauge(&gw, "/", "polling").await, 1.0);
    progress(&gw, job, 1).await;
    assert_eq!(after(&polling.next().await, "42")[1]["seq"], json!(1));

    // The upgrade: probe the WebSocket while a GET waits; the GET is let go
    // with a noop, and after `5` the WebSocket carries the connection.
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        gw.addr, polling.sid
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let waiting = tokio::spawn({
        let (http, url) = (polling.http.clone(), polling.url.clone());
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&mut ws, "2probe".into()).await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    assert_eq!(waiting.await.unwrap(), "6");
    send(&mut ws, "5".into()).await;
    progress(&gw, job, 2).await;
    assert_eq!(after(&next_text(&mut ws).await, "42")[1]["seq"], json!(2));
    assert_eq!(gauge(&gw, "/", "websocket").await, 1.0);
    assert_eq!(gauge(&gw, "/", "polling").await, 0.0);
    // Long-polling is over for this connection.
    assert_eq!(
        refusal(polling.http.get(&polling.url).send().await.unwrap()).await,
        3
    );

    ws.close(None).await.unwrap();
    for _ in 0..50 {
        if gauge(&gw, "/", "websocket").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge(&gw, "/", "websocket").await, 0.0);
    assert_eq!(
        refusal(polling.post("3").await).await,
        1,
        "the session is forgotten"
    );
    gw.shutdown().await;
}

async fn long_polling_refuses_what_it_cannot_serve(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/socket.io/", gw.addr);
    let get = |query: &str| http.get(format!("{base}?{query}")).send();
    assert_eq!(
        refusal(
            get("EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA")
                .await
                .unwrap()
        )
        .await,
        1
    );
    assert_eq!(
        refusal(get("EIO=5&transport=polling").await.unwrap()).await,
        5
    );
    assert_eq!(
        refusal(get("EIO=4&transport=flash").await.unwrap()).await,
        0
    );
    // A payload over maxPayload: 413, and the connection is closed.
    let (polling, handshake) = Polling::open(&gw).await;
    let max = handshake["maxPayload"].as_u64().unwrap() as usize;
    let huge = format!("42[\"subscribe-job\",\"{}\"]", "x".repeat(max));
    assert_eq!(polling.post(huge).await.status(), 413);
    assert_eq!(
        refusal(polling.http.get(&polling.url).send().await.unwrap()).await,
        1,
        "the session is gone"
    );

    // A packet that is not Socket.IO: the session is closed.
    let (polling, _) = Polling::open(&gw).await;
    polling.post("4x").await;
    assert_eq!(
        refusal(polling.http.get(&polling.url).send().await.unwrap()).await,
        1
    );

    // Two GETs at once: the second is refused, the first told the end.
    let (polling, _) = Polling::open(&gw).await;
    // The first GET takes the ping the session starts with.
    polling.get().await;
    let first = tokio::spawn({
        let (http, url) = (polling.http.clone(), polling.url.clone());
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        polling
            .http
            .get(&polling.url)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(first.await.unwrap(), "1");

    // A WebSocket upgrade that sends anything but the probe ends the
    // session.
    let (polling, _) = Polling::open(&gw).await;
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        gw.addr, polling.sid
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut ws, "5".into()).await;
    assert!(ended(&mut ws).await, "the WebSocket is dropped");
    let mut code = 0;
    for _ in 0..50 {
        let response = polling.post("3").await;
        if response.status() == 400 {
            code = refusal(response).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, 1, "the session is gone");
    gw.shutdown().await;
}

async fn a_long_polling_post_is_served_in_order(backend: Backend) {
    // Room for every answer, and no request refused for its rate.
    let db = leadgate_tests::TestDb::new(backend).await;
    let gw = Gateway::start_on(db, &["--event-rate", "10000", "--socket-buffer", "1024"]).await;
    let (mut polling, _) = Polling::open(&gw).await;
    let auth = json!({ "token": gw.token("erin") });
    polling.post(format!("40{auth}")).await;
    assert!(polling.next().await.starts_with("40{"));

    // More requests in one POST than may wait on a socket (64): each is
    // answered, those that waited in the order they came, the rest refused
    // at once.
    let requests: Vec<String> = (100..300)
        .map(|ack| format!("42{ack}[\"unsubscribe-job\",\"{}\"]", uuid::Uuid::new_v4()))
        .collect();
    let posted = polling.post(requests.join("\x1e")).await;
    assert_eq!(posted.text().await.unwrap(), "ok");
    let (mut served, mut refused) = (Vec::new(), 0);
    while served.len() + refused < requests.len() {
        let packet = polling.next().await;
        if packet.starts_with("42[\"error\"") {
            continue;
        }
        let ack = packet.strip_prefix("43").expect("acks and errors only");
        let digits = ack.bytes().take_while(u8::is_ascii_digit).count();
        let answer = after(&ack[digits..], "");
        if answer == json!([{ "ok": true }]) {
            served.push(ack[..digits].parse::<u32>().unwrap());
        } else {
            assert!(
                answer[0]["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("too many requests")
            );
            refused += 1;
        }
    }
    assert!(served.len() >= 64, "{} served", served.len());
    assert!(
        served.is_sorted(),
        "served in the order they came: {served:?}"
    );
    gw.shutdown().await;
}

async fn the_heartbeat_ends_silent_clients_only(backend: Backend) {
    let db = leadgate_tests::TestDb::new(backend).await;
    let gw = Gateway::start_on(db, &["--ping-interval", "1", "--ping-timeout", "1"]).await;
    let job = gw.create_job("frank").await;
    let auth = json!({ "token": gw.token("frank") });

    let (mut silent, handshake) = open(&gw).await;
    assert_eq!(
        (&handshake["pingInterval"], &handshake["pingTimeout"]),
        (&json!(1000), &json!(1000))
    );
    send(&mut silent, format!("40{auth}")).await;
    let (mut answering, _) = open(&gw).await;
    send(&mut answering, format!("40{auth}")).await;
    assert!(next_text(&mut answering).await.starts_with("40{"));
    let (polling, _) = Polling::open(&gw).await;
    polling.post(format!("40{auth}")).await;

    // For 4 s, one WebSocket answers every ping, the other none, and the
    // long-polling client asks for nothing.
    let answered = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, answering.next()).await {
            if frame == Message::text("2") {
                answering.send(Message::text("3")).await.unwrap();
            }
        }
        answering
    });
    let mut pings = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), silent.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => pings += 1,
            Ok(Some(Ok(Message::Text(_)))) => {}
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => break true,
            Ok(Some(Ok(_))) => {}
            Err(_) => break false,
        }
    };
    assert!(ended, "the silent client's connection ends");
    assert!(pings >= 1, "pinged, unanswered, then the end");

    let mut answering = answered.await.unwrap();
    send(&mut answering, format!("421[\"subscribe-job\",\"{job}\"]")).await;
    assert_eq!(
        after(&next_text(&mut answering).await, "42")[0],
        "job-status"
    );
    assert_eq!(
        after(&next_text(&mut answering).await, "431"),
        json!([{ "ok": true }]),
        "the client that answered is still served"
    );
    let gone = polling.http.get(&polling.url).send().await.unwrap();
    assert_eq!(
        refusal(gone).await,
        1,
        "the long-polling session that asked for nothing is gone"
    );
    gw.shutdown().await;
}

on_every_backend!(
    the_heartbeat_ends_silent_clients_only,
    a_long_polling_post_is_served_in_order,
    one_connection_carries_both_namespaces,
    what_stock_clients_never_send_is_handled,
    long_polling_serves_and_upgrades,
    long_polling_refuses_what_it_cannot_serve,
);
