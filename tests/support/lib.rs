//! Test support: real databases, a real gateway on `127.0.0.1:0`, and a small
//! Socket.IO client that speaks the wire protocol itself.

pub mod db;
pub mod gateway;
pub mod redis_server;
pub mod sio;

pub use db::{Backend, TestDb};
pub use gateway::Gateway;
pub use redis_server::{RedisServer, shared_redis_url};
pub use sio::SioClient;
