//! Namespace `/`: subscriptions, ordering, snapshots.

use std::time::Duration;

use leadgate_tests::{Backend, Gateway, SioClient};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

on_every_backend!(
    snapshot_then_every_update_in_order,
    concurrent_worker_events_arrive_once_in_seq_order,
    subscribing_mid_stream_never_repeats_or_skips,
    unsubscribe_stops_updates_even_when_sent_back_to_back,
    other_users_job_and_unknown_job_look_the_same,
    bad_job_ids_get_a_clear_error_and_the_socket_stays_usable,
    state_survives_a_restart,
    shutdown_closes_connections_and_finishes,
    shutdown_is_not_held_up_by_a_client_that_does_not_read,
);

fn progress(n: u32) -> Value {
    json!({ "type": "progress", "progress": n, "processedLeads": n, "totalLeads": 100 })
}

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {v}"))
}

async fn snapshot_then_every_update_in_order(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let mut socket = SioClient::connect(gw.addr, &gw.token("alice")).await;

    assert_eq!(
        socket.emit_ack("subscribe-job", json!(job)).await,
        json!({ "ok": true })
    );
    let status = socket.expect("job-status").await;
    assert_eq!(
        status,
        json!({
            "jobId": job, "status": "pending", "progress": 0, "total_leads": 100,
            "processed_leads": 0, "enriched_leads": 0, "high_score_leads": 0,
            "error_message": null, "results": null, "recentLogs": [], "seq": 0
        })
    );

    let events = [
        json!({ "type": "status", "status": "processing", "message": "Started" }),
        progress(50),
        json!({ "type": "log", "log": { "level": "info", "message": "Processing lead...", "timestamp": "2026-11-22T10:00:00.000Z" } }),
        json!({ "type": "complete", "status": "completed", "results": { "enriched_leads": 40, "high_score_leads": 12, "summary": "ok" } }),
    ];
    for (i, event) in events.iter().enumerate() {
        let (code, body) = gw.post_event(job, event.clone()).await;
        assert_eq!(code, 202, "{body}");
        let update = socket.expect("job-update").await;
        let mut expected = event.clone();
        expected["jobId"] = json!(job);
        expected["seq"] = json!(i + 1);
        assert_eq!(update, expected);
    }

    // A later subscriber sees the applied state.
    let mut late = SioClient::connect(gw.addr, &gw.token("alice")).await;
    late.emit("subscribe-job", json!(job)).await;
    let status = late.expect("job-status").await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["progress"], 100);
    assert_eq!(status["processed_leads"], 50);
    assert_eq!(status["enriched_leads"], 40);
    assert_eq!(status["high_score_leads"], 12);
    assert_eq!(status["results"]["summary"], "ok");
    assert_eq!(status["seq"], 4);
    assert_eq!(
        status["recentLogs"],
        json!([{ "level": "info", "message": "Processing lead...", "timestamp": "2026-11-22T10:00:00.000Z" }])
    );

    let failing = gw.create_job("alice").await;
    socket.emit("subscribe-job", json!(failing)).await;
    socket.expect("job-status").await;
    gw.post_event(
        failing,
        json!({ "type": "error", "status": "failed", "error": "Crawler blocked" }),
    )
    .await;
    let update = socket.expect("job-update").await;
    assert_eq!(update["error"], "Crawler blocked");
    let mut again = SioClient::connect(gw.addr, &gw.token("alice")).await;
    again.emit("subscribe-job", json!(failing)).await;
    let status = again.expect("job-status").await;
    assert_eq!(
        (status["status"].clone(), status["error_message"].clone()),
        (json!("failed"), json!("Crawler blocked"))
    );
    gw.shutdown().await;
}

async fn concurrent_worker_events_arrive_once_in_seq_order(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let mut a = SioClient::connect(gw.addr, &gw.token("alice")).await;
    let mut b = SioClient::connect(gw.addr, &gw.token("alice")).await;
    for s in [&mut a, &mut b] {
        s.emit_ack("subscribe-job", json!(job)).await;
        s.expect("job-status").await;
    }
    const N: u32 = 40;
    let posts = (1..=N).map(|n| gw.post_event(job, progress(n % 101)));
    for (code, body) in futures_util::future::join_all(posts).await {
        assert_eq!(code, 202, "{body}");
    }
    for s in [&mut a, &mut b] {
        let mut seqs = Vec::new();
        for _ in 0..N {
            seqs.push(seq(&s.expect("job-update").await));
        }
        assert_eq!(seqs, (1..=i64::from(N)).collect::<Vec<_>>());
        s.expect_silence(QUIET).await;
    }
    gw.shutdown().await;
}

async fn subscribing_mid_stream_never_repeats_or_skips(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    const N: u32 = 60;
    let writer = {
        let http = gw.http.clone();
        let url = gw.url(&format!("/api/v1/jobs/{job}/events"));
        tokio::spawn(async move {
            for n in 1..=N {
                let r = http
                    .post(&url)
                    .bearer_auth(leadgate_tests::gateway::API_KEY)
                    .body(progress(n).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut socket = SioClient::connect(gw.addr, &gw.token("alice")).await;
    socket.emit("subscribe-job", json!(job)).await;
    let start = seq(&socket.expect("job-status").await);
    writer.await.unwrap();
    let mut expected = start + 1;
    while expected <= i64::from(N) {
        assert_eq!(seq(&socket.expect("job-update").await), expected);
        expected += 1;
    }
    socket.expect_silence(QUIET).await;
    gw.shutdown().await;
}

async fn unsubscribe_stops_updates_even_when_sent_back_to_back(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let mut stays = SioClient::connect(gw.addr, &gw.token("alice")).await;
    stays.emit_ack("subscribe-job", json!(job)).await;
    stays.expect("job-status").await;

    let mut leaves = SioClient::connect(gw.addr, &gw.token("alice")).await;
    // No waiting in between: the gateway must apply them in this order.
    leaves.emit("subscribe-job", json!(job)).await;
    leaves.emit("unsubscribe-job", json!(job)).await;
    leaves.expect("job-status").await;
    // A round trip after the unsubscribe, so it has surely been handled.
    assert_eq!(
        leaves.emit_ack("unsubscribe-job", json!(job)).await,
        json!({ "ok": true })
    );

    gw.post_event(job, progress(10)).await;
    assert_eq!(seq(&stays.expect("job-update").await), 1);
    leaves.expect_silence(QUIET).await;

    // Subscribing again works and starts from the current state.
    leaves.emit("subscribe-job", json!(job)).await;
    assert_eq!(seq(&leaves.expect("job-status").await), 1);
    gw.post_event(job, progress(20)).await;
    assert_eq!(seq(&leaves.expect("job-update").await), 2);
    gw.shutdown().await;
}

async fn other_users_job_and_unknown_job_look_the_same(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let bobs = gw.create_job("bob").await;
    let mut alice = SioClient::connect(gw.addr, &gw.token("alice")).await;

    let foreign = alice.emit_ack("subscribe-job", json!(bobs)).await;
    let foreign_error = alice.expect("error").await;
    let unknown = alice
        .emit_ack("subscribe-job", json!(uuid::Uuid::new_v4()))
        .await;
    let unknown_error = alice.expect("error").await;
    assert_eq!(foreign, json!({ "ok": false, "error": "job not found" }));
    assert_eq!(foreign, unknown);
    assert_eq!(foreign_error, unknown_error);
    assert_eq!(foreign_error, json!({ "message": "job not found" }));

    // Nothing of bob's job leaks to alice.
    gw.post_event(bobs, progress(5)).await;
    alice.expect_silence(QUIET).await;

    let mut admin = SioClient::connect(gw.addr, &gw.admin_token("root")).await;
    assert_eq!(
        admin.emit_ack("subscribe-job", json!(bobs)).await,
        json!({ "ok": true })
    );
    assert_eq!(admin.expect("job-status").await["seq"], 1);
    gw.shutdown().await;
}

async fn bad_job_ids_get_a_clear_error_and_the_socket_stays_usable(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let mut socket = SioClient::connect(gw.addr, &gw.token("alice")).await;
    for bad in [
        json!("not-a-uuid"),
        json!(42),
        json!({ "jobId": job }),
        json!(null),
        json!([job]),
    ] {
        let ack = socket.emit_ack("subscribe-job", bad.clone()).await;
        assert_eq!(
            ack,
            json!({ "ok": false, "error": "jobId must be a UUID string" }),
            "{bad}"
        );
        assert_eq!(
            socket.expect("error").await["message"],
            "jobId must be a UUID string"
        );
    }
    // No argument at all, and garbage packets the parser refuses.
    socket.send_raw("2[\"subscribe-job\"]").await;
    assert_eq!(
        socket.expect("error").await["message"],
        "jobId must be a UUID string"
    );
    assert_eq!(
        socket.emit_ack("subscribe-job", json!(job)).await,
        json!({ "ok": true })
    );
    assert_eq!(socket.expect("job-status").await["jobId"], json!(job));
    gw.shutdown().await;
}

async fn state_survives_a_restart(backend: Backend) {
    let mut gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    gw.post_event(job, progress(30)).await;
    gw.post_event(
        job,
        json!({ "type": "log", "log": { "level": "warn", "message": "slow portal" } }),
    )
    .await;
    let db = gw.stop().await.unwrap();

    let gw = Gateway::start_on(db, &[]).await;
    let mut socket = SioClient::connect(gw.addr, &gw.token("alice")).await;
    socket.emit("subscribe-job", json!(job)).await;
    let status = socket.expect("job-status").await;
    assert_eq!(
        (status["progress"].clone(), status["seq"].clone()),
        (json!(30), json!(2))
    );
    assert_eq!(status["recentLogs"][0]["message"], "slow portal");
    let (code, body) = gw.post_event(job, progress(31)).await;
    assert_eq!((code, body["seq"].clone()), (202, json!(3)));
    gw.shutdown().await;
}

/// A client that has stopped reading cannot hold a shutdown up: the gateway
/// drains within its grace period, and the others are closed at once.
async fn shutdown_is_not_held_up_by_a_client_that_does_not_read(backend: Backend) {
    let db = leadgate_tests::TestDb::new(backend).await;
    let mut gw = Gateway::start_on(db, &["--shutdown-grace", "3", "--socket-buffer", "16"]).await;
    let job = gw.create_job("alice").await;
    let mut stuck = SioClient::connect(gw.addr, &gw.token("alice")).await;
    stuck.emit_ack("subscribe-job", json!(job)).await;
    stuck.expect("job-status").await;
    let mut reading = SioClient::connect(gw.addr, &gw.token("alice")).await;
    reading.emit_ack("subscribe-job", json!(job)).await;
    reading.expect("job-status").await;
    // Enough to fill the kernel's buffers and the stuck client's queue; the
    // stuck client reads none of it.
    let line = "x".repeat(16 * 1024);
    for _ in 0..400 {
        let event = json!({ "type": "log", "log": { "level": "info", "message": line } });
        gw.post_event(job, event).await;
    }
    let drain = tokio::spawn(async move {
        while reading.next_event(Duration::from_secs(1)).await.is_some() {}
        reading
    });
    let started = std::time::Instant::now();
    let db = tokio::time::timeout(Duration::from_secs(8), gw.stop())
        .await
        .expect("the gateway stops within its grace period");
    println!("shutdown took {} ms", started.elapsed().as_millis());
    let mut reading = drain.await.unwrap();
    assert!(reading.closed_within(Duration::from_secs(2)).await);
    drop(stuck);
    if let Some(mut db) = db {
        db.drop_now().await;
    }
}

async fn shutdown_closes_connections_and_finishes(backend: Backend) {
    let mut gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut socket = SioClient::connect(gw.addr, &gw.token("alice")).await;
        socket.emit_ack("subscribe-job", json!(job)).await;
        socket.expect("job-status").await;
        sockets.push(socket);
    }
    let leads_url = format!("ws://{}/ws/leads/?token={}", gw.addr, gw.token("alice"));
    let (mut leads, _) = tokio_tungstenite::connect_async(leads_url).await.unwrap();
    use futures_util::StreamExt;
    let first = leads.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("leads_init"));
    // A long-polling client, its GET waiting when the shutdown begins.
    let (mut polling, _) = super::transports::Polling::open(&gw).await;
    let auth = json!({ "token": gw.token("alice") });
    polling.post(format!("40{auth}")).await;
    assert!(polling.next().await.starts_with("40{"));
    let waiting = tokio::spawn(async move { polling.get().await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = std::time::Instant::now();
    let db = tokio::time::timeout(Duration::from_secs(12), gw.stop())
        .await
        .expect("the gateway drains within its grace period");
    println!(
        "shutdown with 3 sockets took {} ms",
        started.elapsed().as_millis()
    );
    for mut socket in sockets {
        assert!(socket.closed_within(Duration::from_secs(2)).await);
    }
    // The plain WebSocket is told the server is going away.
    let close = tokio::time::timeout(Duration::from_secs(2), leads.next())
        .await
        .expect("a close frame")
        .expect("a message")
        .expect("a frame");
    match close {
        tokio_tungstenite::tungstenite::Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The long-polling client's waiting GET is answered with the close
    // packet.
    let last = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the waiting GET is answered")
        .unwrap();
    assert_eq!(last.last().map(String::as_str), Some("1"), "{last:?}");
    if let Some(mut db) = db {
        db.drop_now().await;
    }
}
