//! What operators see: metrics.

use leadgate_tests::{Backend, Gateway, SioClient};
use serde_json::json;

on_every_backend!(metrics_are_served_and_move);

/// The value of one sample line, e.g. `leadgate_subscriptions 2`.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

async fn scrape(gw: &Gateway) -> String {
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
