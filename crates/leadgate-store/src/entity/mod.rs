//! sea-orm entities, one module per table of `migrations/`.

pub mod job;
pub mod job_log;
