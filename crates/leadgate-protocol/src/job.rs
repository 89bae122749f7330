//! Job progress messages (seed 001): the events workers report, and the
//! snapshots and updates browsers receive.
//!
//! Inbound events are parsed strictly: an unknown `type`, a missing field, an
//! extra field or a value out of range is refused with a message that names
//! the problem, because a worker bug is far cheaper to find at the door than
//! in a browser.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::time::rfc3339_millis;

/// Longest accepted text (log message, status message, error), in bytes.
pub const MAX_TEXT_LEN: usize = 16 * 1024;

/// Keys of a `complete` event's `results` that also update the job's counters.
///
/// The seed's React hook spreads `results` into its `job-status` state, so
/// these keys name `job-status` fields; storing them keeps a later
/// subscriber's snapshot equal to what a live subscriber has pieced together.
pub const COUNTER_FIELDS: [&str; 4] = [
    "total_leads",
    "processed_leads",
    "enriched_leads",
    "high_score_leads",
];

/// Life-cycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Queued,
        JobState::Processing,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Queued => "queued",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// Severity of a job log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    #[serde(alias = "warning")]
    Warn,
    Error,
}

impl LogLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

/// One line of a job's log: `{ level, message, timestamp }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// Set by the worker, or by the store when the event is applied.
    #[serde(
        default,
        with = "rfc3339_millis::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<DateTime<Utc>>,
}

/// What happened to a job: the body of a `job-update`, without its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum JobEvent {
    Progress {
        /// Percent done, 0–100.
        progress: u8,
        #[serde(rename = "processedLeads")]
        processed_leads: u32,
        #[serde(rename = "totalLeads")]
        total_leads: u32,
    },
    Status {
        status: JobState,
        #[serde(default)]
        message: Option<String>,
    },
    Log {
        log: LogEntry,
    },
    Complete {
        /// Always `completed`; optional on input.
        #[serde(default = "completed")]
        status: JobState,
        results: Map<String, Value>,
    },
    Error {
        /// Always `failed`; optional on input.
        #[serde(default = "failed")]
        status: JobState,
        error: String,
    },
}

fn completed() -> JobState {
    JobState::Completed
}

fn failed() -> JobState {
    JobState::Failed
}

impl JobEvent {
    /// The wire name of this event's `type`.
    pub const fn kind(&self) -> &'static str {
        match self {
            JobEvent::Progress { .. } => "progress",
            JobEvent::Status { .. } => "status",
            JobEvent::Log { .. } => "log",
            JobEvent::Complete { .. } => "complete",
            JobEvent::Error { .. } => "error",
        }
    }

    /// Checks the rules that types alone do not express.
    pub fn validate(&self) -> Result<(), EventError> {
        let text = |field: &str, value: &str| {
            if value.len() > MAX_TEXT_LEN {
                Err(EventError::Invalid(format!(
                    "{field} is longer than {MAX_TEXT_LEN} bytes"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            JobEvent::Progress { progress, .. } if *progress > 100 => Err(EventError::Invalid(
                format!("progress must be between 0 and 100, got {progress}"),
            )),
            JobEvent::Progress { .. } => Ok(()),
            JobEvent::Status { message, .. } => text("message", message.as_deref().unwrap_or("")),
            JobEvent::Log { log } => text("log.message", &log.message),
            JobEvent::Complete { status, results } => {
                if *status != JobState::Completed {
                    return Err(EventError::Invalid(format!(
                        "a complete event has status 'completed', got '{}'",
                        status.as_str()
                    )));
                }
                for field in COUNTER_FIELDS {
                    let Some(v) = results.get(field) else {
                        continue;
                    };
                    if v.as_u64().is_none_or(|n| n > u64::from(u32::MAX)) {
                        return Err(EventError::Invalid(format!(
                            "results.{field} must be a non-negative integer, got {v}"
                        )));
                    }
                }
                Ok(())
            }
            JobEvent::Error { status, error } => {
                if *status != JobState::Failed {
                    return Err(EventError::Invalid(format!(
                        "an error event has status 'failed', got '{}'",
                        status.as_str()
                    )));
                }
                text("error", error)
            }
        }
    }
}

/// A `job-update` as browsers receive it: the event plus `jobId` and `seq`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobUpdate {
    #[serde(rename = "jobId")]
    pub job_id: Uuid,
    /// The job's event counter after this event: 1 for the first event.
    pub seq: i64,
    #[serde(flatten)]
    pub event: JobEvent,
}

/// A job event as a worker reports it: a `job-update` whose `jobId` and
/// `seq` are optional (the URL may name the job; the store assigns `seq`).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEvent {
    pub job_id: Option<Uuid>,
    pub seq: Option<i64>,
    pub event: JobEvent,
}

impl WorkerEvent {
    /// Parses and validates one event from JSON text.
    ///
    /// Every event a gateway delivers passes through here, so a valid one is
    /// read straight into its types. Whatever that refuses is read again by
    /// [`WorkerEvent::from_slice_as_value`], which decides: it names what is
    /// wrong, checks in its order, and gives a repeated key the last value.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EventError> {
        match Self::read_valid(bytes) {
            Some(event) => Ok(event),
            None => Self::from_slice_as_value(bytes),
        }
    }

    /// Parses `bytes` as a JSON value, then as [`WorkerEvent::from_value`]
    /// does. Equal to [`WorkerEvent::from_slice`] on every input, and
    /// slower on a valid event; the tests and the parse timing compare the
    /// two.
    pub fn from_slice_as_value(bytes: &[u8]) -> Result<Self, EventError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// The event, if `bytes` hold a valid one that can be read in one pass
    /// (no repeated keys, no escapes in `jobId`); `None` for everything else,
    /// valid or not.
    fn read_valid(bytes: &[u8]) -> Option<Self> {
        let typed: TypedWorkerEvent<'_> = serde_json::from_slice(bytes).ok()?;
        let job_id = match typed.job_id {
            None => None,
            Some(id) => Some(parse_job_id_str(id).ok()?),
        };
        if typed.seq.is_some_and(|seq| seq <= 0) {
            return None;
        }
        typed.event.validate().ok()?;
        Some(WorkerEvent {
            job_id,
            seq: typed.seq,
            event: typed.event,
        })
    }

    /// Parses and validates one event from a JSON value.
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        let Value::Object(mut map) = value else {
            return Err(EventError::NotAnObject);
        };
        let job_id = match map.remove("jobId") {
            None => None,
            Some(v) => Some(parse_job_id(&v).map_err(|_| EventError::BadJobId)?),
        };
        let seq = match map.remove("seq") {
            None => None,
            Some(v) => Some(v.as_i64().filter(|n| *n > 0).ok_or(EventError::BadSeq)?),
        };
        let event: JobEvent = serde_json::from_value(Value::Object(map))
            .map_err(|e| EventError::Invalid(e.to_string()))?;
        event.validate()?;
        Ok(WorkerEvent { job_id, seq, event })
    }
}

/// A worker event as [`WorkerEvent::read_valid`] reads it. `jobId` and
/// `seq` may be missing but not `null`: a key that is there must hold a
/// string, or an integer.
#[derive(Deserialize)]
struct TypedWorkerEvent<'a> {
    #[serde(rename = "jobId", default, borrow, deserialize_with = "present")]
    job_id: Option<&'a str>,
    #[serde(default, deserialize_with = "present")]
    seq: Option<i64>,
    #[serde(flatten)]
    event: JobEvent,
}

fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Why a worker event was refused. The text is meant for the worker's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("a job event must be a JSON object")]
    NotAnObject,
    #[error("jobId must be a UUID string")]
    BadJobId,
    #[error("seq must be a positive integer")]
    BadSeq,
    #[error("{0}")]
    Invalid(String),
}

/// The snapshot sent as `job-status` on every (re)subscribe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    #[serde(rename = "jobId")]
    pub job_id: Uuid,
    pub status: JobState,
    pub progress: u8,
    pub total_leads: i64,
    pub processed_leads: i64,
    pub enriched_leads: i64,
    pub high_score_leads: i64,
    pub error_message: Option<String>,
    /// The `results` of the `complete` event, once there was one.
    pub results: Option<Map<String, Value>>,
    /// The most recent log lines, oldest first.
    #[serde(rename = "recentLogs")]
    pub recent_logs: Vec<LogEntry>,
    /// The job's event counter when the snapshot was taken.
    pub seq: i64,
}

/// The `error` event payload of namespace `/`: `{ message }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientError {
    pub message: String,
}

/// The acknowledgement of a client request: `{ ok: true }` or
/// `{ ok: false, error }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ack {
    pub fn ok() -> Self {
        Ack {
            ok: true,
            error: None,
        }
    }

    pub fn err(message: impl Into<String>) -> Self {
        Ack {
            ok: false,
            error: Some(message.into()),
        }
    }
}

/// Reads a job id as clients send it: a UUID string in its usual 36-character
/// hyphenated form (any case).
pub fn parse_job_id(value: &Value) -> Result<Uuid, EventError> {
    match value {
        Value::String(s) => parse_job_id_str(s),
        _ => Err(EventError::BadJobId),
    }
}

fn parse_job_id_str(s: &str) -> Result<Uuid, EventError> {
    if s.len() == 36 {
        Uuid::try_parse(s).map_err(|_| EventError::BadJobId)
    } else {
        Err(EventError::BadJobId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<WorkerEvent, EventError> {
        WorkerEvent::from_value(v)
    }

    #[test]
    fn parses_every_seed_update_type() {
        let id = "6f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10";
        let cases = [
            json!({"type": "progress", "progress": 50, "processedLeads": 50, "totalLeads": 100}),
            json!({"type": "status", "status": "completed", "message": "Job completed successfully"}),
            json!({"type": "log", "log": {"level": "info", "message": "Processing lead...", "timestamp": "2026-11-22T10:00:00.123456Z"}}),
            json!({"type": "complete", "status": "completed", "results": {"enriched_leads": 3}}),
            json!({"type": "error", "status": "failed", "error": "Error message", "jobId": id, "seq": 7}),
        ];
        for case in cases {
            let parsed = parse(case.clone()).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(parsed.event.kind(), case["type"]);
        }
        let last = parse(json!({"type": "error", "error": "x", "jobId": id, "seq": 7})).unwrap();
        assert_eq!(last.seq, Some(7));
        assert_eq!(last.job_id, Some(Uuid::parse_str(id).unwrap()));
    }

    #[test]
    fn serializes_update_with_envelope_and_millisecond_timestamps() {
        let event = parse(json!({"type": "log", "log": {"level": "warning", "message": "m", "timestamp": "2026-11-22T10:00:00.123456+01:00"}}))
            .unwrap()
            .event;
        let update = JobUpdate {
            job_id: Uuid::nil(),
            seq: 3,
            event,
        };
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({"jobId": Uuid::nil(), "seq": 3, "type": "log",
                   "log": {"level": "warn", "message": "m", "timestamp": "2026-11-22T09:00:00.123Z"}})
        );
    }

    #[test]
    fn refuses_bad_events_with_a_reason() {
        let cases = [
            (json!([1]), "JSON object"),
            (json!({"progress": 1}), "missing field `type`"),
            (json!({"type": "nope"}), "unknown variant `nope`"),
            (
                json!({"type": "progress", "progress": 1, "processedLeads": 1}),
                "missing field `totalLeads`",
            ),
            (
                json!({"type": "progress", "progress": 1, "processedLeads": 1, "totalLeads": 1, "extra": 1}),
                "unknown field `extra`",
            ),
            (
                json!({"type": "progress", "progress": "1", "processedLeads": 1, "totalLeads": 1}),
                "invalid type",
            ),
            (
                json!({"type": "progress", "progress": 101, "processedLeads": 1, "totalLeads": 1}),
                "between 0 and 100",
            ),
            (
                json!({"type": "progress", "progress": -1, "processedLeads": 1, "totalLeads": 1}),
                "invalid value",
            ),
            (
                json!({"type": "status", "status": "exploded"}),
                "unknown variant `exploded`",
            ),
            (
                json!({"type": "log", "log": {"level": "info"}}),
                "missing field `message`",
            ),
            (
                json!({"type": "log", "log": {"level": "info", "message": "x", "timestamp": "yesterday"}}),
                "RFC 3339",
            ),
            (
                json!({"type": "complete", "status": "failed", "results": {}}),
                "status 'completed'",
            ),
            (
                json!({"type": "complete", "results": {"enriched_leads": -2}}),
                "results.enriched_leads",
            ),
            (
                json!({"type": "error", "status": "failed", "error": "x".repeat(MAX_TEXT_LEN + 1)}),
                "longer than",
            ),
            (
                json!({"type": "error", "error": "x", "jobId": "42"}),
                "jobId must be a UUID",
            ),
            (
                json!({"type": "error", "error": "x", "seq": 0}),
                "seq must be a positive",
            ),
        ];
        for (case, expected) in cases {
            let err = parse(case.clone())
                .expect_err(&case.to_string())
                .to_string();
            assert!(err.contains(expected), "{case}: {err:?} lacks {expected:?}");
        }
        let err = WorkerEvent::from_slice(b"{\"type\":").unwrap_err();
        assert!(matches!(err, EventError::NotJson(_)), "{err:?}");
    }

    #[test]
    fn valid_events_are_read_in_one_pass() {
        let id = "6f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10";
        for text in [
            format!(
                r#"{{"jobId":"{id}","seq":7,"type":"progress","progress":5,"processedLeads":1,"totalLeads":20}}"#
            ),
            format!(
                r#"{{"type":"log","jobId":"{id}","seq":1,"log":{{"level":"info","message":"m","timestamp":"2026-11-22T10:00:00.000Z"}}}}"#
            ),
            r#"{"log":{"level":"warn","message":"type last"},"type":"log"}"#.to_owned(),
            r#"{"type":"status","status":"processing"}"#.to_owned(),
            r#"{"type":"complete","results":{"total_leads":3,"b":[1,{"c":null}],"a":"x"}}"#
                .to_owned(),
            format!(
                r#"{{"type":"error","error":"boom","jobId":"{}"}}"#,
                id.to_uppercase()
            ),
        ] {
            let read = WorkerEvent::read_valid(text.as_bytes());
            assert!(read.is_some(), "{text}");
            assert_eq!(
                read,
                Some(WorkerEvent::from_slice_as_value(text.as_bytes()).unwrap()),
                "{text}"
            );
        }
    }

    #[test]
    fn what_one_pass_refuses_is_decided_as_before() {
        let id = "6f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10";
        let log = r#""type":"log","log":{"level":"info","message":"m"}"#;
        for text in [
            // Valid, but not in one pass: the last of a repeated key counts,
            // and an escaped jobId is still a UUID.
            format!(r#"{{"jobId":"nope","jobId":"{id}",{log}}}"#),
            format!(r#"{{"seq":0,"seq":3,{log}}}"#),
            format!(r#"{{"jobId":"\u0036{}",{log}}}"#, &id[1..]),
            // Refused, with the reason from_value gives.
            format!(r#"{{"jobId":null,{log}}}"#),
            format!(r#"{{"jobId":"{id}","jobId":null,{log}}}"#),
            format!(r#"{{"jobId":"{}",{log}}}"#, id.replace('-', "")),
            format!(r#"{{"seq":null,{log}}}"#),
            format!(r#"{{"seq":0,{log}}}"#),
            format!(r#"{{"seq":-1,{log}}}"#),
            format!(r#"{{"seq":1.0,{log}}}"#),
            format!(r#"{{"seq":9223372036854775808,{log}}}"#),
            r#"{"jobId":7,"seq":0,"type":"nope"}"#.to_owned(),
            r#"{"seq":0,"type":"nope"}"#.to_owned(),
            format!(r#"{{{log},"type":"status"}}"#),
            format!(r#"{{{log},"extra":1}}"#),
            r#"{"type":"progress","progress":101,"processedLeads":1,"totalLeads":1}"#.to_owned(),
            r#"{"type":"complete","status":"failed","results":{}}"#.to_owned(),
            r#"{"type":"log"} trailing"#.to_owned(),
            r#"["type","log"]"#.to_owned(),
            String::new(),
        ] {
            assert_eq!(WorkerEvent::read_valid(text.as_bytes()), None, "{text}");
            assert_eq!(
                WorkerEvent::from_slice(text.as_bytes()),
                WorkerEvent::from_slice_as_value(text.as_bytes()),
                "{text}"
            );
        }
    }

    #[test]
    fn job_ids_are_hyphenated_uuid_strings() {
        assert!(parse_job_id(&json!("6F1C1F46-3F0B-4C36-9F0E-3F1D8F5F2B10")).is_ok());
        for bad in [
            json!("6f1c1f463f0b4c369f0e3f1d8f5f2b10"),
            json!(42),
            json!(null),
            json!({"jobId": "x"}),
            json!("../etc"),
        ] {
            assert_eq!(parse_job_id(&bad), Err(EventError::BadJobId), "{bad}");
        }
    }
}
