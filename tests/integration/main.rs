//! Integration tests: each starts the real gateway on `127.0.0.1:0` and runs
//! once on SQLite and once on the machine's PostgreSQL.

/// Declares each listed `async fn name(backend)` as a test per backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(leadgate_tests::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(leadgate_tests::Backend::Postgres).await
                }
            )*
        }
    };
}

mod auth;
mod fanout;
mod hostile;
mod jobs;
mod leads;
mod ops;
mod transports;
mod worker_api;
