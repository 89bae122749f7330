//! The real gateway, started in-process on `127.0.0.1:0` through the same
//! `leadgate::run` that `main` calls.

use std::net::SocketAddr;

use clap::Parser;
use leadgate::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::db::{Backend, TestDb};

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const API_KEY: &str = "integration-test-worker-key";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

pub struct Gateway {
    pub addr: SocketAddr,
    database_url: String,
    pub http: reqwest::Client,
    db: Option<TestDb>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    /// Starts a gateway on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> Gateway {
        Self::start_on(TestDb::new(backend).await, &[]).await
    }

    /// Starts a gateway on `db` with extra command-line flags.
    pub async fn start_on(db: TestDb, extra: &[&str]) -> Gateway {
        let mut gateway = Self::start_shared(&db.url, extra).await;
        gateway.db = Some(db);
        gateway
    }

    /// Starts a gateway on a database another gateway owns.
    pub async fn start_shared(database_url: &str, extra: &[&str]) -> Gateway {
        let mut args = vec![
            "leadgate",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--jwt-secret",
            SECRET,
            "--api-keys",
            API_KEY,
        ];
        // Tests open many connections and send many requests at once; the
        // rate limits are tested where a test sets them.
        for (flag, generous) in [("--connect-rate", "100000"), ("--event-rate", "100000")] {
            if !extra.contains(&flag) {
                args.extend([flag, generous]);
            }
        }
        args.extend_from_slice(extra);
        let config = Args::try_parse_from(args)
            .expect("valid test configuration")
            .config;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(leadgate::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let gateway = Gateway {
            addr,
            database_url: database_url.to_owned(),
            http: reqwest::Client::new(),
            db: None,
            stop: Some(stop),
            task: Some(task),
        };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the gateway did not become ready on {}", self.addr);
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token(&self, sub: &str) -> String {
        leadgate::auth::mint(SECRET, sub, false, 3600).unwrap()
    }

    pub fn admin_token(&self, sub: &str) -> String {
        leadgate::auth::mint(SECRET, sub, true, 3600).unwrap()
    }

    /// `POST /api/v1/jobs` with the worker key; returns the new job's id.
    pub async fn create_job(&self, user: &str) -> Uuid {
        let (status, body) = self
            .post(
                "/api/v1/jobs",
                json!({ "user_id": user, "total_leads": 100 }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["jobId"].as_str().unwrap().parse().unwrap()
    }

    /// `POST /api/v1/jobs/<job>/events` with the worker key.
    pub async fn post_event(&self, job: Uuid, event: Value) -> (u16, Value) {
        self.post(&format!("/api/v1/jobs/{job}/events"), event)
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, Some(API_KEY), body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, key: Option<&str>, body: String) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /readyz`'s body.
    pub async fn readiness(&self) -> serde_json::Value {
        let response = self.http.get(self.url("/readyz")).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// Stops the gateway and waits for it to finish; hands back the
    /// database it owned.
    pub async fn stop(&mut self) -> Option<TestDb> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .unwrap()
                .expect("the gateway stopped with an error");
        }
        self.db.take()
    }

    /// Stops the gateway and drops its database, if it owned one.
    pub async fn shutdown(mut self) {
        if let Some(mut db) = self.stop().await {
            db.drop_now().await;
        }
    }
}
