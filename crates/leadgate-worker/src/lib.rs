//! The worker library: what a Rust worker needs to report a job's life to
//! browsers through leadgate.
//!
//! [`Worker::report`] applies an event to the job's row and log (assigning
//! its `seq`) and publishes it on the job's Redis channel, from where every
//! gateway instance delivers it to the job's subscribers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leadgate_worker::WorkerError> {
//! use leadgate_worker::{LogLevel, Worker};
//! let worker = Worker::connect("postgres://…", "redis://127.0.0.1:6379", "leadgate:").await?;
//! let job = worker.create_job("alice", 100).await?;
//! worker.progress(job, 10, 10, 100).await?;
//! worker.log(job, LogLevel::Info, "Scored lead 10").await?;
//! # Ok(()) }
//! ```

use leadgate_bus::{BusError, Channels, Publisher};
pub use leadgate_protocol::{EventError, JobEvent, JobState, JobUpdate, LogEntry, LogLevel};
use leadgate_store::{Store, StoreError};
use serde_json::{Map, Value};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the event was applied (seq {seq}) but could not be published: {source}")]
    Publish { seq: i64, source: BusError },
    #[error("cannot connect to Redis: {0}")]
    Connect(BusError),
    #[error("invalid event: {0}")]
    Invalid(#[from] EventError),
}

/// A connection to leadgate's database and Redis.
#[derive(Debug, Clone)]
pub struct Worker {
    store: Store,
    publisher: Publisher,
}

impl Worker {
    /// Connects to the database and Redis the gateways use; `prefix` is
    /// their `LEADGATE_REDIS_PREFIX`. Migrations are the gateway's job.
    pub async fn connect(
        database_url: &str,
        redis_url: &str,
        prefix: &str,
    ) -> Result<Self, WorkerError> {
        let store = Store::connect(database_url).await?;
        let publisher = Publisher::connect(redis_url, Channels::new(prefix))
            .await
            .map_err(WorkerError::Connect)?;
        Ok(Worker { store, publisher })
    }

    /// Creates a `pending` job for `user_id`.
    pub async fn create_job(&self, user_id: &str, total_leads: u32) -> Result<Uuid, WorkerError> {
        Ok(self.store.create_job(user_id, total_leads).await?)
    }

    /// Applies `event` to the job and publishes the resulting `job-update`.
    ///
    /// If publishing fails the event stays applied: gateways pick it up the
    /// next time they read the job (at the job's next event, or when their
    /// subscribers re-subscribe). Retrying the publish is not needed.
    pub async fn report(&self, job: Uuid, event: JobEvent) -> Result<JobUpdate, WorkerError> {
        event.validate()?;
        let update = self.store.apply_event(job, event, None).await?;
        self.publisher
            .publish_update(&update)
            .await
            .map_err(|source| WorkerError::Publish {
                seq: update.seq,
                source,
            })?;
        Ok(update)
    }

    pub async fn status(
        &self,
        job: Uuid,
        status: JobState,
        message: impl Into<String>,
    ) -> Result<JobUpdate, WorkerError> {
        let message = Some(message.into());
        self.report(job, JobEvent::Status { status, message }).await
    }

    pub async fn progress(
        &self,
        job: Uuid,
        progress: u8,
        processed_leads: u32,
        total_leads: u32,
    ) -> Result<JobUpdate, WorkerError> {
        self.report(
            job,
            JobEvent::Progress {
                progress,
                processed_leads,
                total_leads,
            },
        )
        .await
    }

    pub async fn log(
        &self,
        job: Uuid,
        level: LogLevel,
        message: impl Into<String>,
    ) -> Result<JobUpdate, WorkerError> {
        let log = LogEntry {
            level,
            message: message.into(),
            timestamp: None,
        };
        self.report(job, JobEvent::Log { log }).await
    }

    pub async fn complete(
        &self,
        job: Uuid,
        results: Map<String, Value>,
    ) -> Result<JobUpdate, WorkerError> {
        let status = JobState::Completed;
        self.report(job, JobEvent::Complete { status, results })
            .await
    }

    pub async fn fail(
        &self,
        job: Uuid,
        error: impl Into<String>,
    ) -> Result<JobUpdate, WorkerError> {
        let (status, error) = (JobState::Failed, error.into());
        self.report(job, JobEvent::Error { status, error }).await
    }
}
