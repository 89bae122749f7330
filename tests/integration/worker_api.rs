//! The worker HTTP API: creating jobs, posting events, and every refusal.

use leadgate_tests::{Backend, Gateway};
use serde_json::json;

on_every_backend!(
    refuses_bad_requests_with_reasons,
    explicit_seq_makes_retries_harmless
);

async fn refuses_bad_requests_with_reasons(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let events = format!("/api/v1/jobs/{job}/events");
    let progress =
        json!({ "type": "progress", "progress": 1, "processedLeads": 1, "totalLeads": 2 });

    let (code, body) = gw.post_raw(&events, None, progress.to_string()).await;
    assert_eq!(
        (
            code,
            body["error"].as_str().unwrap().contains("missing API key")
        ),
        (401, true)
    );
    let (code, body) = gw
        .post_raw(&events, Some("wrong"), progress.to_string())
        .await;
    assert_eq!((code, body), (401, json!({ "error": "unknown API key" })));
    let (code, _) = gw
        .post_raw("/api/v1/jobs", Some("wrong"), "{}".into())
        .await;
    assert_eq!(code, 401);

    let bad_bodies = [
        ("{\"type\":", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ("{\"type\":\"teleport\"}", "unknown variant `teleport`"),
        (
            "{\"type\":\"progress\",\"progress\":1,\"processedLeads\":1}",
            "missing field `totalLeads`",
        ),
        (
            "{\"type\":\"log\",\"log\":{\"level\":\"info\",\"message\":\"x\"},\"color\":1}",
            "unknown field `color`",
        ),
        (
            "{\"type\":\"progress\",\"progress\":\"half\",\"processedLeads\":1,\"totalLeads\":2}",
            "invalid type",
        ),
        (
            "{\"type\":\"progress\",\"progress\":150,\"processedLeads\":1,\"totalLeads\":2}",
            "between 0 and 100",
        ),
        (
            "{\"type\":\"error\",\"error\":\"x\",\"jobId\":\"00000000-0000-0000-0000-000000000000\"}",
            "does not match",
        ),
    ];
    for (body, reason) in bad_bodies {
        let (code, answer) = gw
            .post_raw(&events, Some(leadgate_tests::gateway::API_KEY), body.into())
            .await;
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{body} -> {answer}");
        assert!(error.contains(reason), "{body}: {error:?} lacks {reason:?}");
    }
    let (code, body) = gw
        .post("/api/v1/jobs/not-a-uuid/events", progress.clone())
        .await;
    assert_eq!(
        (code, body["error"].as_str().unwrap().contains("UUID")),
        (400, true)
    );
    let (code, body) = gw
        .post(
            &format!("/api/v1/jobs/{}/events", uuid::Uuid::new_v4()),
            progress.clone(),
        )
        .await;
    assert_eq!((code, body), (404, json!({ "error": "job not found" })));

    for bad in [
        json!({}),
        json!({ "user_id": "" }),
        json!({ "user_id": "a", "owner": "b" }),
        json!({ "user_id": 5 }),
    ] {
        let (code, body) = gw.post("/api/v1/jobs", bad.clone()).await;
        assert_eq!(code, 400, "{bad} -> {body}");
    }
    let huge = json!({ "type": "log", "log": { "level": "info", "message": "x".repeat(2 * 1024 * 1024) } });
    let (code, _) = gw.post(&events, huge).await;
    assert_eq!(code, 413);

    // Nothing was applied by any of the refused requests.
    let (code, body) = gw.post(&events, progress).await;
    assert_eq!((code, body["seq"].clone()), (202, json!(1)));
    gw.shutdown().await;
}

async fn explicit_seq_makes_retries_harmless(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let log = |seq: i64| json!({ "type": "log", "seq": seq, "log": { "level": "info", "message": format!("line {seq}") } });
    assert_eq!(gw.post_event(job, log(1)).await.0, 202);
    let (code, body) = gw.post_event(job, log(1)).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the next seq is 2"),
        "{body}"
    );
    assert_eq!(gw.post_event(job, log(3)).await.0, 409);
    assert_eq!(
        gw.post_event(job, log(2)).await,
        (202, json!({ "jobId": job, "seq": 2 }))
    );
    gw.shutdown().await;
}
