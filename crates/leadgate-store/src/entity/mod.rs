//! sea-orm entities, one module per table of `migrations/`.

pub mod crawl_request;
pub mod job;
pub mod job_log;
pub mod lead;
