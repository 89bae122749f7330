//! What operators see: metrics.

use leadgate_tests::{Backend, Gateway, SioClient};
use serde_json::json;

on_every_backend!(metrics_are_served_and_move);

/// The value of one sample line, e.g. `leadgate_subscriptions 2`.
pub(super) fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

pub(super) async fn scrape(gw: &Gateway) -> String {
    let response = gw.http.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    response.text().await.unwrap()
}

async fn metrics_are_served_and_move(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let mut a = SioClient::connect(gw.addr, &gw.token("alice")).await;
    let mut b = SioClient::connect(gw.addr, &gw.token("alice")).await;
    for s in [&mut a, &mut b] {
        s.emit_ack("subscribe-job", json!(job)).await;
        s.expect("job-status").await;
    }
    let before = scrape(&gw).await;
    assert_eq!(
        sample(
            &before,
            r#"leadgate_connections{namespace="/",transport="websocket"}"#
        ),
        2.0
    );
    assert_eq!(sample(&before, "leadgate_subscriptions"), 2.0);
    assert_eq!(
        sample(
            &before,
            r#"leadgate_messages_sent_total{event="job-status"}"#
        ),
        2.0
    );

    for n in 1..=3 {
        let event =
            json!({ "type": "progress", "progress": n, "processedLeads": n, "totalLeads": 3 });
        assert_eq!(gw.post_event(job, event).await.0, 202);
    }
    assert_eq!(
        gw.post_event(job, json!({ "type": "nonsense" })).await.0,
        400
    );
    for s in [&mut a, &mut b] {
        for _ in 0..3 {
            s.expect("job-update").await;
        }
    }
    let after = scrape(&gw).await;
    assert_eq!(
        sample(
            &after,
            r#"leadgate_worker_events_total{source="http",outcome="delivered"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &after,
            r#"leadgate_worker_events_total{source="http",outcome="invalid"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"leadgate_messages_sent_total{event="job-update"}"#
        ),
        6.0
    );
    assert_eq!(
        sample(&after, "leadgate_publish_to_delivery_seconds_count"),
        3.0
    );
    assert!(
        sample(
            &after,
            r#"leadgate_db_query_seconds_count{query="apply_event"}"#
        ) >= 3.0
    );
    assert!(
        sample(
            &after,
            r#"leadgate_db_query_seconds_count{query="job_status"}"#
        ) >= 2.0
    );

    a.close().await;
    // The gauges follow the disconnect.
    let mut gauge = f64::NAN;
    for _ in 0..50 {
        gauge = sample(&scrape(&gw).await, "leadgate_subscriptions");
        if gauge == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gauge, 1.0);
    gw.shutdown().await;
}

/// A client that stops reading misses updates but is not allowed to hold
/// anything up: the others get every update, it is sent a fresh
/// `job-status` once it reads again, and one that stays behind is
/// disconnected and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_resynced_then_evicted() {
    let db = leadgate_tests::TestDb::new(Backend::Sqlite).await;
    let gw = Gateway::start_on(db, &["--socket-buffer", "16", "--slow-client-grace", "2"]).await;
    let job = gw.create_job("alice").await;
    let mut good = SioClient::connect(gw.addr, &gw.token("alice")).await;
    let mut slow = SioClient::connect(gw.addr, &gw.token("alice")).await;
    for s in [&mut good, &mut slow] {
        s.emit_ack("subscribe-job", json!(job)).await;
        s.expect("job-status").await;
    }
    // Big messages, so the kernel's socket buffers fill quickly too.
    let line = "x".repeat(16 * 1024);
    const N: i64 = 300;
    // The good client is never held up and never misses a step: it gets
    // every update in order, except that when its room could not be sent
    // one (the slow client's queue was full, and socketioxide does not say
    // whose), a fresh job-status stands for the updates it covers.
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < N {
            let (event, data) = good
                .next_event(std::time::Duration::from_secs(10))
                .await
                .expect("the good client is served");
            let seq = data["seq"].as_i64().unwrap();
            match event.as_str() {
                "job-update" => assert_eq!(seq, last + 1, "updates stay in order"),
                "job-status" => assert!(seq >= last, "a snapshot never goes back"),
                other => panic!("unexpected {other}"),
            }
            last = seq;
        }
        good
    });
    for _ in 0..N {
        let event = json!({ "type": "log", "log": { "level": "info", "message": line } });
        assert_eq!(gw.post_event(job, event).await.0, 202);
    }
    let mut good = reader.await.unwrap();
    let metrics = scrape(&gw).await;
    assert!(
        sample(
            &metrics,
            r#"leadgate_messages_dropped_total{event="job-update"}"#
        ) >= 1.0
    );

    // Past the grace period the slow client is disconnected.
    let mut evicted = 0.0;
    for _ in 0..100 {
        evicted = sample(
            &scrape(&gw).await,
            "leadgate_slow_clients_disconnected_total",
        );
        if evicted >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(evicted, 1.0);
    // It was told why, after what it had been sent, and then the connection
    // ended (or Engine.IO closed it); it never got an update out of order.
    let mut last = 0;
    let mut told = false;
    while let Some((event, data)) = slow.next_event(std::time::Duration::from_secs(5)).await {
        match event.as_str() {
            "job-update" => {
                let seq = data["seq"].as_i64().unwrap();
                assert_eq!(seq, last + 1, "updates stay in order");
                last = seq;
            }
            "job-status" => last = data["seq"].as_i64().unwrap(),
            "error" => told = true,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(told, "the slow client was told why it was disconnected");
    assert!(last < N, "the slow client missed updates");
    // The good client is unaffected and still served.
    gw.post_event(
        job,
        json!({ "type": "progress", "progress": 100, "processedLeads": 1, "totalLeads": 1 }),
    )
    .await;
    assert_eq!(good.expect("job-update").await["seq"], N + 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_catches_up_with_a_fresh_status() {
    let db = leadgate_tests::TestDb::new(Backend::Sqlite).await;
    let gw = Gateway::start_on(db, &["--socket-buffer", "16"]).await;
    let job = gw.create_job("alice").await;
    let mut slow = SioClient::connect(gw.addr, &gw.token("alice")).await;
    slow.emit_ack("subscribe-job", json!(job)).await;
    slow.expect("job-status").await;
    let line = "y".repeat(16 * 1024);
    const N: i64 = 300;
    for _ in 0..N {
        let event = json!({ "type": "log", "log": { "level": "info", "message": line } });
        assert_eq!(gw.post_event(job, event).await.0, 202);
    }
    // Now it reads: what it got is in order, and a job-status brings it to
    // the job's state in place of what it missed.
    let mut last = 0;
    let mut statuses = 0;
    while last < N {
        let Some((event, data)) = slow.next_event(std::time::Duration::from_secs(10)).await else {
            panic!("stuck at seq {last}");
        };
        let seq = data["seq"].as_i64().unwrap();
        match event.as_str() {
            "job-update" => assert_eq!(seq, last + 1, "updates stay in order"),
            "job-status" => {
                assert!(seq > last);
                statuses += 1;
            }
            other => panic!("unexpected {other}"),
        }
        last = seq;
    }
    assert!(statuses >= 1, "it caught up through a job-status");
    let metrics = scrape(&gw).await;
    assert_eq!(
        sample(&metrics, "leadgate_slow_clients_disconnected_total"),
        0.0
    );
    // And it is live again.
    gw.post_event(
        job,
        json!({ "type": "progress", "progress": 1, "processedLeads": 1, "totalLeads": 1 }),
    )
    .await;
    assert_eq!(slow.expect("job-update").await["seq"], N + 1);
    gw.shutdown().await;
}

/// A client that takes nothing at all, not even the message that tells it
/// it is evicted: its connection is cut, so its socket and queue go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_nothing_is_cut_after_its_eviction() {
    let db = leadgate_tests::TestDb::new(Backend::Sqlite).await;
    let gw = Gateway::start_on(db, &["--socket-buffer", "16", "--slow-client-grace", "1"]).await;
    let job = gw.create_job("alice").await;
    let mut good = SioClient::connect(gw.addr, &gw.token("alice")).await;
    let mut stuck = SioClient::connect(gw.addr, &gw.token("alice")).await;
    for s in [&mut good, &mut stuck] {
        s.emit_ack("subscribe-job", json!(job)).await;
        s.expect("job-status").await;
    }
    let reader = tokio::spawn(async move {
        while good
            .next_event(std::time::Duration::from_secs(3))
            .await
            .is_some()
        {}
        good
    });
    // More than the kernel's buffers on both sides hold: the stuck client's
    // queue stays full.
    let line = "x".repeat(16 * 1024);
    for _ in 0..1200 {
        let event = json!({ "type": "log", "log": { "level": "info", "message": line } });
        assert_eq!(gw.post_event(job, event).await.0, 202);
    }
    let websockets = r#"leadgate_connections{namespace="/",transport="websocket"}"#;
    let mut open = f64::NAN;
    for _ in 0..200 {
        open = sample(&scrape(&gw).await, websockets);
        if open == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(open, 1.0, "the stuck client's socket is gone");
    assert_eq!(
        sample(
            &scrape(&gw).await,
            "leadgate_slow_clients_disconnected_total"
        ),
        1.0
    );
    assert!(
        stuck
            .closed_within(std::time::Duration::from_secs(10))
            .await,
        "its connection was cut"
    );
    let _good = reader.await.unwrap();
    gw.shutdown().await;
}
