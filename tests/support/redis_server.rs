//! Redis for the tests: the machine's server for ordinary fan-out tests (each
//! test under its own channel prefix), or a private `redis-server` on a free
//! port for tests that stop and start it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HINT: &str = "Redis is needed for the fan-out tests. Start it with `redis-server \
    --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no`, or point \
    LEADGATE_TEST_REDIS_URL at a server.";

/// The machine's Redis; panics with a hint when it does not answer.
pub async fn shared_redis_url() -> String {
    let url = std::env::var("LEADGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).expect("a valid Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url} ({e}). {HINT}"));
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    url
}

/// A private redis-server process that can be stopped and started again on
/// the same port.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install Redis (apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
