//! Wire types of leadgate: what workers publish, what browsers receive.
//!
//! Every name here is part of the public contract (`CONTRACT.md`): the
//! payloads keep the mixed camelCase/snake_case of the Socket.IO API that
//! existing React/Vue apps already read. This crate does no I/O, so the
//! gateway, the store and worker tooling can all share it.

mod job;
pub mod leads;
mod time;

pub use job::{
    Ack, COUNTER_FIELDS, ClientError, EventError, JobEvent, JobState, JobStatus, JobUpdate,
    LogEntry, LogLevel, MAX_TEXT_LEN, WorkerEvent, parse_job_id,
};
pub use time::{now_millis, rfc3339_millis};
