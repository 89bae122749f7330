//! leadgate's database: the tables of `migrations/` and every query on them.
//!
//! This is the only crate of the gateway that speaks SQL. Its central
//! operation is [`Store::apply_event`], the one implementation of "apply a
//! job event to the database" that the HTTP API and worker tooling share: it
//! assigns the event its `seq`, updates the job's row and log in one
//! transaction, and returns the `job-update` to fan out.

mod entity;
mod index;
mod leads;

use std::time::Duration;

use leadgate_migration::{Migrator, MigratorTrait};
use leadgate_protocol::{
    COUNTER_FIELDS, JobEvent, JobState, JobStatus, JobUpdate, LogEntry, LogLevel, now_millis,
};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use entity::{job, job_log};

/// The advisory lock key that serializes migrations (ASCII "leadgate").
const MIGRATION_LOCK: i64 = 0x6c65_6164_6761_7465;

/// How many log lines a `job-status` snapshot carries.
pub const RECENT_LOGS: u64 = 50;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job not found")]
    JobNotFound,
    #[error("seq {got} does not follow the job's last event: the next seq is {expected}")]
    SeqConflict { expected: i64, got: i64 },
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// A job's snapshot together with its owner, for authorization.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedJobStatus {
    pub user_id: String,
    pub status: JobStatus,
}

pub use index::{IndexedLead, LeadIndex, LeadSearch, OVERLAP, Refreshed};
pub use leads::{CRAWL_QUEUED, LeadsVersion};

/// A handle on the database; cheap to clone (it wraps a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
}

impl Store {
    /// Connects to `postgres://…` or `sqlite://…`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new(url);
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        let db = Database::connect(options).await?;
        Ok(Store { db })
    }

    /// Applies every pending migration.
    ///
    /// On PostgreSQL, instances starting together take turns: a transaction
    /// holds an advisory lock while the migrations run on other pooled
    /// connections, so the second instance finds them applied instead of
    /// failing on tables the first one is creating.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            Migrator::up(&self.db, None).await?;
            return Ok(());
        }
        let guard = self.db.begin().await?;
        guard
            .execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        let result = Migrator::up(&self.db, None).await;
        // The migrations' own error says more than a failed unlock would.
        let unlocked = guard.commit().await;
        result?;
        Ok(unlocked?)
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    /// Closes every pooled connection.
    pub async fn close(&self) -> Result<(), StoreError> {
        Ok(self.db.close_by_ref().await?)
    }

    /// Creates a `pending` job owned by `user_id` and returns its id.
    pub async fn create_job(&self, user_id: &str, total_leads: u32) -> Result<Uuid, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let row = job::ActiveModel {
            id: Set(id),
            user_id: Set(user_id.to_owned()),
            status: Set(JobState::Pending.as_str().to_owned()),
            progress: Set(0),
            total_leads: Set(total_leads.into()),
            processed_leads: Set(0),
            enriched_leads: Set(0),
            high_score_leads: Set(0),
            error_message: Set(None),
            results: Set(None),
            seq: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        };
        job::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await?;
        Ok(id)
    }

    /// Applies one event to a job: takes the job's next `seq`, updates its
    /// row (and log, for a log event) in one transaction, and returns the
    /// update to deliver.
    ///
    /// With `expected_seq`, the event is applied only if it is exactly the
    /// job's next one, which makes a worker's retry of an event that was
    /// already applied a harmless [`StoreError::SeqConflict`].
    pub async fn apply_event(
        &self,
        job_id: Uuid,
        mut event: JobEvent,
        expected_seq: Option<i64>,
    ) -> Result<JobUpdate, StoreError> {
        let now = now_millis();
        if let JobEvent::Log { log } = &mut event {
            log.timestamp.get_or_insert(now);
        }

        let mut update = job::Entity::update_many()
            .col_expr(job::Column::Seq, Expr::col(job::Column::Seq).add(1))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(job_id));
        match &event {
            JobEvent::Progress {
                progress,
                processed_leads,
                total_leads,
            } => {
                update = update
                    .col_expr(job::Column::Progress, Expr::value(i16::from(*progress)))
                    .col_expr(
                        job::Column::ProcessedLeads,
                        Expr::value(i64::from(*processed_leads)),
                    )
                    .col_expr(
                        job::Column::TotalLeads,
                        Expr::value(i64::from(*total_leads)),
                    );
            }
            JobEvent::Status { status, .. } => {
                update = update.col_expr(job::Column::Status, Expr::value(status.as_str()));
            }
            JobEvent::Log { .. } => {}
            JobEvent::Complete { results, .. } => {
                update = update
                    .col_expr(
                        job::Column::Status,
                        Expr::value(JobState::Completed.as_str()),
                    )
                    .col_expr(job::Column::Progress, Expr::value(100i16))
                    .col_expr(
                        job::Column::ErrorMessage,
                        Expr::value(Option::<String>::None),
                    )
                    .col_expr(
                        job::Column::Results,
                        Expr::value(serde_json::Value::Object(results.clone())),
                    );
                for (field, column) in COUNTER_FIELDS.iter().zip(counter_columns()) {
                    // validate() has checked that these are u32.
                    if let Some(n) = results.get(*field).and_then(|v| v.as_i64()) {
                        update = update.col_expr(column, Expr::value(n));
                    }
                }
            }
            JobEvent::Error { error, .. } => {
                update = update
                    .col_expr(job::Column::Status, Expr::value(JobState::Failed.as_str()))
                    .col_expr(job::Column::ErrorMessage, Expr::value(error.clone()));
            }
        }

        let txn = self.db.begin().await?;
        // The row lock this UPDATE takes (PostgreSQL) or the write lock
        // (SQLite) serializes concurrent events of one job: each gets a
        // distinct seq, and the log row below commits with it.
        let updated = update.exec_with_returning(&txn).await?;
        let Some(row) = updated.into_iter().next() else {
            return Err(StoreError::JobNotFound);
        };
        let seq = row.seq;
        if let Some(got) = expected_seq.filter(|got| *got != seq) {
            txn.rollback().await?;
            return Err(StoreError::SeqConflict { expected: seq, got });
        }
        if let JobEvent::Log { log } = &event {
            let line = job_log::ActiveModel {
                job_id: Set(job_id),
                seq: Set(seq),
                level: Set(log.level.as_str().to_owned()),
                message: Set(log.message.clone()),
                created_at: Set(log.timestamp.unwrap_or(now)),
            };
            job_log::Entity::insert(line)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(JobUpdate { job_id, seq, event })
    }

    /// The job's current snapshot and owner, or `None` if there is no such
    /// job.
    pub async fn job_status(&self, job_id: Uuid) -> Result<Option<OwnedJobStatus>, StoreError> {
        let Some(row) = job::Entity::find_by_id(job_id).one(&self.db).await? else {
            return Ok(None);
        };
        // Log lines newer than the row just read belong to a later snapshot:
        // bounding by seq keeps `recentLogs` consistent with `seq`.
        let mut logs = job_log::Entity::find()
            .filter(job_log::Column::JobId.eq(job_id))
            .filter(job_log::Column::Seq.lte(row.seq))
            .order_by_desc(job_log::Column::Seq)
            .limit(RECENT_LOGS)
            .all(&self.db)
            .await?;
        logs.reverse();
        let recent_logs = logs
            .into_iter()
            .map(|line| LogEntry {
                level: LogLevel::parse(&line.level).unwrap_or(LogLevel::Info),
                message: line.message,
                timestamp: Some(line.created_at),
            })
            .collect();
        let status = JobState::parse(&row.status).unwrap_or_else(|| {
            tracing::warn!(job = %job_id, status = %row.status, "Unknown job status in the database; reporting it as processing.");
            JobState::Processing
        });
        let results = match row.results {
            Some(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        };
        Ok(Some(OwnedJobStatus {
            user_id: row.user_id,
            status: JobStatus {
                job_id,
                status,
                progress: row.progress.clamp(0, 100) as u8,
                total_leads: row.total_leads,
                processed_leads: row.processed_leads,
                enriched_leads: row.enriched_leads,
                high_score_leads: row.high_score_leads,
                error_message: row.error_message,
                results,
                recent_logs,
                seq: row.seq,
            },
        }))
    }
}

/// The columns named by [`COUNTER_FIELDS`], in the same order.
fn counter_columns() -> [job::Column; 4] {
    [
        job::Column::TotalLeads,
        job::Column::ProcessedLeads,
        job::Column::EnrichedLeads,
        job::Column::HighScoreLeads,
    ]
}
