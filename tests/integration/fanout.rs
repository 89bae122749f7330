//! Several gateway instances fanned out through Redis.

use std::time::{Duration, Instant};

use leadgate_tests::{Backend, Gateway, RedisServer, SioClient, TestDb, shared_redis_url};
use leadgate_worker::{LogLevel, Worker};
use redis::AsyncCommands;
use serde_json::{Value, json};

on_every_backend!(
    every_instance_delivers_worker_and_http_events_once_in_order,
    fan_out_resumes_after_a_redis_restart,
);

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {v}"))
}

fn unique_prefix() -> String {
    format!("lgtest{}:", uuid::Uuid::new_v4().simple())
}

/// Two gateways on one database and one Redis prefix.
/// Two gateways on one database and one Redis prefix, started with
/// `extra` arguments too.
async fn pair(
    backend: Backend,
    redis_url: &str,
    prefix: &str,
    extra: &[&str],
) -> (Gateway, Gateway) {
    let mut args = vec!["--redis-url", redis_url, "--redis-prefix", prefix];
    args.extend_from_slice(extra);
    let db = TestDb::new(backend).await;
    let url = db.url.clone();
    let a = Gateway::start_on(db, &args).await;
    let b = Gateway::start_shared(&url, &args).await;
    (a, b)
}

async fn subscribed(gw: &Gateway, user: &str, job: uuid::Uuid) -> SioClient {
    let mut socket = SioClient::connect(gw.addr, &gw.token(user)).await;
    assert_eq!(
        socket.emit_ack("subscribe-job", json!(job)).await,
        json!({ "ok": true })
    );
    socket.expect("job-status").await;
    socket
}

async fn every_instance_delivers_worker_and_http_events_once_in_order(backend: Backend) {
    let redis_url = shared_redis_url().await;
    let prefix = unique_prefix();
    let (a, b) = pair(backend, &redis_url, &prefix, &[]).await;
    let job = a.create_job("alice").await;
    let other = a.create_job("alice").await;

    let mut sockets = vec![
        subscribed(&a, "alice", job).await,
        subscribed(&a, "alice", job).await,
        subscribed(&b, "alice", job).await,
        subscribed(&b, "alice", job).await,
    ];
    let mut bystander = subscribed(&b, "alice", other).await;

    // A worker that writes the database and publishes itself…
    let worker = Worker::connect(a.database_url(), &redis_url, &prefix)
        .await
        .unwrap();
    for n in 1..=20u32 {
        if n % 2 == 0 {
            worker.progress(job, (n * 5) as u8, n, 20).await.unwrap();
        } else {
            worker
                .log(job, LogLevel::Info, format!("lead {n}"))
                .await
                .unwrap();
        }
    }
    // …then events posted over HTTP to one instance.
    for n in 21..=30u32 {
        let (code, body) = b
            .post_event(job, json!({ "type": "log", "log": { "level": "info", "message": format!("http {n}") } }))
            .await;
        assert_eq!(code, 202, "{body}");
    }
    for socket in &mut sockets {
        let seqs: Vec<i64> = {
            let mut seqs = Vec::new();
            for _ in 0..30 {
                seqs.push(seq(&socket.expect("job-update").await));
            }
            seqs
        };
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    }

    // Garbage on a job channel harms nobody.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}job:{job}");
    for junk in ["not json", "{\"type\":\"progress\"}", "[1,2]"] {
        let _: i64 = conn.publish(&channel, junk).await.unwrap();
    }
    let _: i64 = conn
        .publish(format!("{prefix}job:not-a-uuid"), "{}")
        .await
        .unwrap();
    for socket in sockets.iter_mut().chain([&mut bystander]) {
        socket.expect_silence(Duration::from_millis(300)).await;
    }
    // A worker with nothing but a Redis client publishes without seq: every
    // subscriber on both instances gets each event live, in order, without
    // a seq, and the seq order goes on undisturbed.
    for n in 0..5 {
        let plain =
            json!({"type": "log", "log": {"level": "info", "message": format!("plain {n}")}});
        let _: i64 = conn.publish(&channel, plain.to_string()).await.unwrap();
    }
    for socket in &mut sockets {
        for n in 0..5 {
            let update = socket.expect("job-update").await;
            assert_eq!(
                update["log"]["message"],
                json!(format!("plain {n}")),
                "{update}"
            );
            assert_eq!(update["jobId"], json!(job.to_string()));
            assert!(update.get("seq").is_none(), "{update}");
        }
    }
    worker.complete(job, serde_json::Map::new()).await.unwrap();
    for socket in &mut sockets {
        let update = socket.expect("job-update").await;
        assert_eq!(
            (seq(&update), update["type"].clone()),
            (31, json!("complete"))
        );
    }
    bystander.expect_silence(Duration::from_millis(200)).await;

    b.shutdown().await;
    a.shutdown().await;
}

async fn fan_out_resumes_after_a_redis_restart(backend: Backend) {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let (a, b) = pair(backend, &redis.url(), &prefix, &[]).await;
    let job = a.create_job("alice").await;
    let mut on_a = subscribed(&a, "alice", job).await;
    let mut on_b = subscribed(&b, "alice", job).await;

    redis.kill();
    wait_until(|| async { b.readiness().await["redis"] != "ok" }).await;
    assert_eq!(b.readiness().await["status"], "unavailable");

    // Events applied while Redis is down: instance A delivers them to its own
    // sockets; B cannot hear of them.
    for n in 1..=3 {
        let (code, _) = a
            .post_event(
                job,
                json!({ "type": "progress", "progress": n, "processedLeads": n, "totalLeads": 10 }),
            )
            .await;
        assert_eq!(code, 202);
        assert_eq!(seq(&on_a.expect("job-update").await), n);
    }
    on_b.expect_silence(Duration::from_millis(200)).await;
    // The sockets stayed connected through the outage.
    assert_eq!(
        on_b.emit_ack("unsubscribe-job", json!(uuid::Uuid::new_v4()))
            .await,
        json!({ "ok": true })
    );

    let restarted = Instant::now();
    redis.resume().await;
    // B converges to the job's true state with a fresh job-status.
    let status = on_b.expect("job-status").await;
    let converged = restarted.elapsed();
    assert_eq!(
        (status["seq"].clone(), status["progress"].clone()),
        (json!(3), json!(3))
    );
    wait_until(|| async {
        a.readiness().await["status"] == "ok" && b.readiness().await["status"] == "ok"
    })
    .await;

    // And fan-out works again, across instances.
    let resumed = Instant::now();
    let (code, _) = a
        .post_event(
            job,
            json!({ "type": "status", "status": "processing", "message": "back" }),
        )
        .await;
    assert_eq!(code, 202);
    assert_eq!(seq(&on_b.expect("job-update").await), 4);
    assert_eq!(seq(&on_a.expect("job-update").await), 4);
    println!(
        "fan-out after Redis restart: converged in {} ms, next event delivered {} ms after posting",
        converged.as_millis(),
        resumed.elapsed().as_millis()
    );
    on_a.expect_silence(Duration::from_millis(200)).await;
    b.shutdown().await;
    a.shutdown().await;
}

async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 10 s");
}

/// The subscription stays up while Redis is idle (its keep-alive pings must
/// not be mistaken for failures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_stays_up() {
    let redis_url = shared_redis_url().await;
    let prefix = unique_prefix();
    let (a, b) = pair(Backend::Sqlite, &redis_url, &prefix, &[]).await;
    let job = a.create_job("alice").await;
    let mut on_b = subscribed(&b, "alice", job).await;
    // Longer than the 5 s between pings.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(b.readiness().await["status"], "ok");
    a.post_event(
        job,
        json!({ "type": "status", "status": "processing", "message": "still here" }),
    )
    .await;
    let update = on_b.expect("job-update").await;
    assert_eq!(seq(&update), 1);
    // Nothing was refreshed meanwhile: no reconnect happened.
    on_b.expect_silence(Duration::from_millis(200)).await;
    b.shutdown().await;
    a.shutdown().await;
}

/// Sockets that subscribe while a worker publishes without seq get, after
/// their `job-status`, an unbroken run of the events up to the last one, in
/// order and none twice, whether an event reached them in the room, one by
/// one, or buffered while their snapshot loaded. Many subscribe at once, so
/// that snapshots queue for the database while events arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_reach_sockets_that_subscribe_meanwhile_in_order() {
    const EVENTS: usize = 1500;
    let redis_url = shared_redis_url().await;
    let prefix = unique_prefix();
    // What is tested is order across the subscription, not back-pressure:
    // queues deep enough that a debug build on a loaded machine, whose
    // readers fall a few hundred events behind for a moment, loses nothing
    // (a lagging socket rightly loses live events; see README, Slow
    // clients).
    let (a, b) = pair(
        Backend::Postgres,
        &redis_url,
        &prefix,
        &["--socket-buffer", "4096"],
    )
    .await;
    let job = a.create_job("alice").await;
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}job:{job}");
    // Connected first; they subscribe all at once below.
    let mut sockets = Vec::new();
    for n in 0..32 {
        let gw = if n % 2 == 0 { &a } else { &b };
        sockets.push(SioClient::connect(gw.addr, &gw.token("alice")).await);
    }
    let publisher = tokio::spawn(async move {
        for n in 1..=EVENTS {
            let plain = json!({"type": "log", "log": {"level": "info", "message": n.to_string()}});
            let _: i64 = conn.publish(&channel, plain.to_string()).await.unwrap();
            // About 3,000 a second: a rate every client keeps up with (one
            // that could not would rightly miss events).
            if n % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for socket in &mut sockets {
        socket.emit("subscribe-job", json!(job)).await;
    }
    // Every client reads as the events come, as a browser does: one left
    // unread would fill its queue and rightly lose events.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                socket.expect("job-status").await;
                let mut got = Vec::new();
                while got.last() != Some(&EVENTS) {
                    let update = socket.expect("job-update").await;
                    assert!(update.get("seq").is_none(), "{update}");
                    got.push(
                        update["log"]["message"]
                            .as_str()
                            .unwrap()
                            .parse::<usize>()
                            .unwrap(),
                    );
                }
                got
            })
        })
        .collect();
    publisher.await.unwrap();
    for reader in readers {
        let got = reader.await.unwrap();
        let broken = got.windows(2).find(|w| w[1] != w[0] + 1);
        assert_eq!(broken, None, "an unbroken run from {} to {EVENTS}", got[0]);
    }
    b.shutdown().await;
    a.shutdown().await;
}
