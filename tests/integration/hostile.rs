//! Hostile input: every case is refused as expected, nothing panics, and
//! afterwards the gateway still serves a well-behaved client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use leadgate_tests::gateway::SECRET;
use leadgate_tests::{Backend, Gateway, SioClient, TestDb};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A good client can still connect, subscribe and be sent a job-status.
async fn still_serves(gw: &Gateway) {
    let job = gw.create_job("good").await;
    let mut good = SioClient::connect(gw.addr, &gw.token("good")).await;
    assert_eq!(
        good.emit_ack("subscribe-job", json!(job)).await,
        json!({ "ok": true })
    );
    assert_eq!(good.expect("job-status").await["jobId"], json!(job));
    good.close().await;
}

/// Opens a raw Engine.IO WebSocket already connected to namespace `/`.
async fn raw_socket(
    gw: &Gateway,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // open
    let auth = json!({ "token": gw.token("mallory") });
    ws.send(Message::text(format!("40{auth}"))).await.unwrap();
    ws.next().await.unwrap().unwrap(); // connected
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_and_payloads_harm_nobody() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let deep = format!(
        "42[\"subscribe-job\",{}{}]",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let oversized = format!("42[\"subscribe-job\",\"{}\"]", "x".repeat(200 * 1024));
    let texts: Vec<String> = vec![
        "4".into(),
        "42".into(),
        "42[".into(),
        "42{}".into(),
        "42[\"subscribe-job\",".into(),
        "43[]".into(),
        "4x".into(),
        "9".into(),
        "".into(),
        "40/nowhere,".into(),
        "42[42,\"x\"]".into(),
        "42[\"subscribe-job\",{\"$ne\":null}]".into(),
        "451-[\"subscribe-job\",{\"_placeholder\":true,\"num\":0}]".into(),
        deep,
        oversized,
    ];
    let mut cases = 0;
    for text in texts {
        let mut ws = raw_socket(&gw).await;
        let _ = ws.send(Message::text(text)).await;
        // Whatever the gateway answers, or if it closes the connection.
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        still_serves(&gw).await;
        cases += 1;
    }
    for bytes in [
        vec![0xff, 0xfe, 0x00, 0x80],
        vec![0xc3, 0x28],
        b"4\xff\xfe".to_vec(),
    ] {
        let mut ws = raw_socket(&gw).await;
        let _ = ws.send(Message::binary(bytes)).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        still_serves(&gw).await;
        cases += 1;
    }
    // The plain WebSocket: garbage, invalid UTF-8 and an oversized frame.
    let url = format!("ws://{}/ws/leads/?token={}", gw.addr, gw.token("mallory"));
    for message in [
        Message::text("{\"type\":"),
        Message::binary(vec![0xff, 0xfe]),
        Message::text(format!(
            "{{\"type\":\"get_leads\",\"filter\":{{\"q\":\"{}\"}}}}",
            "x".repeat(200 * 1024)
        )),
        Message::text(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.next().await.unwrap().unwrap(); // leads_init
        let _ = ws.send(message).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        still_serves(&gw).await;
        cases += 1;
    }
    println!("hostile input: {cases} malformed-packet cases, no panic, still serving");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_above_every_limit_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let limits = [
        "--event-rate",
        "5",
        "--connect-rate",
        "5",
        "--max-connections-per-user",
        "3",
        "--max-subscriptions",
        "2",
    ];
    let gw = Gateway::start_on(db, &limits).await;

    // Requests per connection: a burst of 10 is allowed, then refusals.
    let mut flooder = SioClient::connect(gw.addr, &gw.token("flood")).await;
    let mut refused = 0;
    for _ in 0..30 {
        let ack = flooder
            .emit_ack("unsubscribe-job", json!(uuid::Uuid::new_v4()))
            .await;
        if ack["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("too many requests"))
        {
            refused += 1;
        }
    }
    assert!(refused >= 15, "only {refused} of 30 refused");
    flooder.close().await;

    // Subscriptions per connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut many = SioClient::connect(gw.addr, &gw.token("subs")).await;
    for n in 0..3 {
        let job = gw.create_job("subs").await;
        let ack = many.emit_ack("subscribe-job", json!(job)).await;
        if n < 2 {
            assert_eq!(ack, json!({ "ok": true }));
        } else {
            assert!(
                ack["error"]
                    .as_str()
                    .unwrap()
                    .contains("too many subscriptions"),
                "{ack}"
            );
        }
    }
    many.close().await;

    // Connections per user (3), then attempts per address (burst of 10).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(SioClient::connect(gw.addr, &gw.token("many")).await);
    }
    let over = leadgate_tests::sio::Connect {
        auth: Some(json!({ "token": gw.token("many") })),
        ..Default::default()
    };
    assert_eq!(
        SioClient::try_connect(gw.addr, over).await.err().as_deref(),
        Some("too many connections for this user")
    );
    let mut attempts = Vec::new();
    for _ in 0..20 {
        let options = leadgate_tests::sio::Connect {
            auth: Some(json!({ "token": "x" })),
            ..Default::default()
        };
        attempts.push(
            SioClient::try_connect(gw.addr, options)
                .await
                .err()
                .unwrap_or_default(),
        );
    }
    assert!(
        attempts
            .iter()
            .any(|e| e == "too many connection attempts; retry later"),
        "{attempts:?}"
    );
    // Engine.IO handshakes have a limit of their own, twice as loose: past
    // it the handshake itself is refused, with 429.
    let mut handshakes = Vec::new();
    for _ in 0..40 {
        let options = leadgate_tests::sio::Connect {
            auth: Some(json!({ "token": "x" })),
            ..Default::default()
        };
        let refusal = SioClient::try_connect(gw.addr, options)
            .await
            .err()
            .unwrap_or_default();
        let done = refusal.contains("429");
        handshakes.push(refusal);
        if done {
            break;
        }
    }
    assert!(
        handshakes.last().is_some_and(|e| e.contains("429")),
        "{handshakes:?}"
    );
    for socket in open {
        socket.close().await;
    }
    // The address is allowed again once its bucket refills.
    tokio::time::sleep(Duration::from_secs(2)).await;
    still_serves(&gw).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_disconnects_unless_refreshed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let gw = Gateway::start_on(db, &["--jwt-leeway", "0"]).await;
    let short = leadgate::auth::mint(SECRET, "alice", false, 2).unwrap();
    let mut lapses = SioClient::connect(gw.addr, &short).await;
    let mut refreshes = SioClient::connect(gw.addr, &short).await;
    let fresh = gw.token("alice");
    assert_eq!(
        refreshes.emit_ack("refresh-token", json!(fresh)).await,
        json!({ "ok": true })
    );
    // Another user's token is no refresh.
    let other = refreshes
        .emit_ack("refresh-token", json!(gw.token("bob")))
        .await;
    assert_eq!(other["ok"], false);
    refreshes.expect("error").await;

    let told = lapses.expect("error").await;
    assert_eq!(told["message"], "invalid token: expired");
    assert!(lapses.disconnected_within(Duration::from_secs(3)).await);
    // The refreshed one is still there, past the first token's expiry.
    let job = gw.create_job("alice").await;
    assert_eq!(
        refreshes.emit_ack("subscribe-job", json!(job)).await,
        json!({ "ok": true })
    );
    gw.shutdown().await;
}
