//! Handshake authentication: every token source, every refusal.

use leadgate_tests::gateway::SECRET;
use leadgate_tests::sio::Connect;
use leadgate_tests::{Backend, Gateway, SioClient};
use serde_json::json;

on_every_backend!(
    token_sources_in_contract_order,
    refusals_say_what_is_wrong,
    pages_of_foreign_origins_are_refused,
);

async fn token_sources_in_contract_order(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let job = gw.create_job("alice").await;
    let good = gw.token("alice");
    let sources = [
        Connect {
            auth: Some(json!({ "token": good })),
            ..Connect::default()
        },
        Connect {
            headers: vec![("authorization", format!("Bearer {good}"))],
            ..Connect::default()
        },
        Connect {
            query: &format!("token={good}"),
            ..Connect::default()
        },
        Connect {
            headers: vec![("cookie", format!("theme=dark; token={good}"))],
            ..Connect::default()
        },
        // The handshake auth wins over a bad header.
        Connect {
            auth: Some(json!({ "token": good })),
            headers: vec![("authorization", "Bearer nonsense".into())],
            ..Connect::default()
        },
    ];
    for (i, source) in sources.into_iter().enumerate() {
        let mut socket = SioClient::try_connect(gw.addr, source)
            .await
            .unwrap_or_else(|e| panic!("source {i} refused: {e}"));
        assert_eq!(
            socket.emit_ack("subscribe-job", json!(job)).await,
            json!({ "ok": true }),
            "source {i}"
        );
        socket.close().await;
    }
    gw.shutdown().await;
}

async fn refusals_say_what_is_wrong(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let refused = |auth: serde_json::Value| Connect {
        auth: Some(auth),
        ..Connect::default()
    };
    let expired = leadgate::auth::mint(SECRET, "alice", false, -3600).unwrap();
    let forged = leadgate::auth::mint("some-other-secret-entirely", "alice", false, 3600).unwrap();
    // {"alg":"none"} with a valid-looking payload and no signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.";
    let cases = [
        (Connect::default(), "authentication required: missing token"),
        (refused(json!({})), "authentication required: missing token"),
        (
            refused(json!({ "token": "garbage" })),
            "invalid token: malformed",
        ),
        (refused(json!({ "token": 17 })), "invalid token: malformed"),
        (
            refused(json!({ "token": expired })),
            "invalid token: expired",
        ),
        (
            refused(json!({ "token": forged })),
            "invalid token: bad signature",
        ),
        (
            refused(json!({ "token": none })),
            "invalid token: malformed",
        ),
    ];
    for (options, expected) in cases {
        match SioClient::try_connect(gw.addr, options).await {
            Ok(_) => panic!("connected, expected refusal {expected:?}"),
            Err(message) => assert_eq!(message, expected),
        }
    }
    // The gateway still serves a well-behaved client.
    SioClient::connect(gw.addr, &gw.token("alice"))
        .await
        .close()
        .await;
    gw.shutdown().await;
}

async fn pages_of_foreign_origins_are_refused(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let token = gw.token("alice");
    let with_origin = |origin: String| Connect {
        auth: Some(json!({ "token": token })),
        headers: vec![("origin", origin)],
        ..Connect::default()
    };
    // Another site's page, even with a valid token (say from a cookie).
    let refused = SioClient::try_connect(gw.addr, with_origin("http://evil.example".into())).await;
    assert_eq!(refused.err().as_deref(), Some("origin not allowed"));
    // The gateway's own origin, and clients that are not browsers.
    let own = format!("http://{}", gw.addr);
    SioClient::try_connect(gw.addr, with_origin(own))
        .await
        .unwrap()
        .close()
        .await;
    SioClient::connect(gw.addr, &token).await.close().await;

    let url = format!("ws://{}/ws/leads/?token={token}", gw.addr);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    gw.shutdown().await;
}
