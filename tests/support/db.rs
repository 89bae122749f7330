//! A fresh database per test: a temporary SQLite file, or a new PostgreSQL
//! database on the machine's server that is dropped afterwards.

use sea_orm::{ConnectionTrait, Database};

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("LEADGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

const POSTGRES_HINT: &str = "PostgreSQL is needed for the postgres tests. Start it with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
    or point LEADGATE_TEST_POSTGRES_URL at a server where the user may create databases.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that lives as long as the test.
pub struct TestDb {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let unique = format!(
            "{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..12)
                .unwrap_or_default()
        );
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new(&unique);
                TestDb {
                    url: format!("sqlite://{}/leadgate.db?mode=rwc", dir.0.display()),
                    postgres_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("leadgate_test_{unique}");
                let admin = Database::connect(postgres_admin_url())
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL ({e}). {POSTGRES_HINT}"));
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cannot create database {name}: {e}. {POSTGRES_HINT}")
                    });
                let _ = admin.close().await;
                let base = postgres_admin_url();
                let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
                TestDb {
                    url: format!("{server}/{name}"),
                    postgres_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    /// Drops a PostgreSQL database; SQLite files go with their directory.
    pub async fn drop_now(&mut self) {
        if let Some(name) = self.postgres_name.take()
            && let Ok(admin) = Database::connect(postgres_admin_url()).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(unique: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("leadgate-test-{unique}"));
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
