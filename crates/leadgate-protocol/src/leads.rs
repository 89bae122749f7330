//! Lead messages (seed 000): what browsers ask on namespace `/leads` and on
//! the plain WebSocket `/ws/leads/`, what they are sent, and what crawlers
//! report. Both transports speak the same messages: on Socket.IO the `type`
//! is the event name, on the plain WebSocket every frame is one JSON object
//! with a `type` field.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::time::rfc3339_millis;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 500;
/// Longest free-text query, in characters.
pub const MAX_QUERY_LEN: usize = 200;
/// Most skills one filter may require.
pub const MAX_FILTER_SKILLS: usize = 20;
/// Longest provider name or skill, in characters.
pub const MAX_NAME_LEN: usize = 100;

/// Why a leads request or a crawler's lead was refused; the text is sent as
/// `error.detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LeadsError(pub String);

impl LeadsError {
    fn new(detail: impl Into<String>) -> Self {
        LeadsError(detail.into())
    }
}

/// What a client may filter by. Every field is optional; all that are given
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Words that must all occur in the title, company or skills (prefix
    /// match, case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Skills the lead must all have (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
}

impl LeadFilter {
    /// The canonical form: trimmed, empty values dropped, skills lowercased,
    /// sorted and deduplicated, so that equal filters compare equal.
    pub fn normalized(self) -> Result<Self, LeadsError> {
        let provider = non_empty(self.provider);
        if provider
            .as_ref()
            .is_some_and(|p| p.chars().count() > MAX_NAME_LEN)
        {
            return Err(LeadsError::new(format!(
                "filter.provider is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let q = non_empty(self.q);
        if q.as_ref()
            .is_some_and(|q| q.chars().count() > MAX_QUERY_LEN)
        {
            return Err(LeadsError::new(format!(
                "filter.q is longer than {MAX_QUERY_LEN} characters"
            )));
        }
        let mut skills: Vec<String> = self
            .skills
            .into_iter()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        skills.sort();
        skills.dedup();
        if skills.len() > MAX_FILTER_SKILLS {
            return Err(LeadsError::new(format!(
                "filter.skills has more than {MAX_FILTER_SKILLS} skills"
            )));
        }
        if skills.iter().any(|s| s.chars().count() > MAX_NAME_LEN) {
            return Err(LeadsError::new(format!(
                "a skill in filter.skills is longer than {MAX_NAME_LEN} characters"
            )));
        }
        Ok(LeadFilter {
            remote: self.remote,
            provider,
            q,
            skills,
        })
    }

    /// The words of `q` (see [`words`]).
    pub fn words(&self) -> Vec<String> {
        words(self.q.as_deref().unwrap_or(""))
    }
}

/// The words of a text as `q` matches them: lowercased, split on anything
/// that is not a letter or digit. A word of `q` matches a lead when it
/// begins one of the words of its title, company or skills.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a lead's `q` matches against: the [`words`] of its title, company
/// and skills, separated by single spaces. Both databases match a word of
/// `q` at the start of one of these words.
pub fn search_text(title: &str, company: Option<&str>, skills: &[String]) -> String {
    let mut all = words(title);
    all.extend(words(company.unwrap_or("")));
    for skill in skills {
        all.extend(words(skill));
    }
    all.join(" ")
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// One page of one filter: what a client looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeadsQuery {
    pub page: u32,
    pub page_size: u32,
    pub filter: LeadFilter,
}

impl Default for LeadsQuery {
    fn default() -> Self {
        LeadsQuery {
            page: 1,
            page_size: DEFAULT_PAGE_SIZE,
            filter: LeadFilter::default(),
        }
    }
}

impl LeadsQuery {
    /// Rows to skip.
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.page_size)
    }
}

/// A message from a leads client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LeadsRequest {
    /// Ask for a page; fields left out keep the client's current values
    /// (a new filter starts again at page 1).
    GetLeads {
        #[serde(default)]
        page: Option<u32>,
        #[serde(default)]
        page_size: Option<u32>,
        #[serde(default)]
        filter: Option<LeadFilter>,
        /// Seed 000's provider-agnostic form: the same as `filter.provider`.
        #[serde(default)]
        provider: Option<String>,
    },
    GetLeadDetails {
        #[serde(deserialize_with = "string_or_number")]
        project_id: String,
        #[serde(default)]
        provider: Option<String>,
    },
    /// Ask the crawlers for fresh data (of one provider, or all).
    Sync {
        #[serde(default)]
        provider: Option<String>,
    },
}

impl LeadsRequest {
    /// Parses a plain WebSocket frame.
    pub fn from_frame(text: &str) -> Result<Self, LeadsError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| LeadsError::new(format!("frame is not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Parses a Socket.IO event: `event` is the type, `data` its payload
    /// (an object, or nothing).
    pub fn from_event(event: &str, data: Value) -> Result<Self, LeadsError> {
        let mut map = match data {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(LeadsError::new(format!("{event} expects an object"))),
        };
        map.insert("type".into(), Value::String(event.to_owned()));
        Self::from_value(Value::Object(map))
    }

    fn from_value(value: Value) -> Result<Self, LeadsError> {
        if !value.is_object() {
            return Err(LeadsError::new(
                "a message must be a JSON object with a type",
            ));
        }
        serde_json::from_value(value).map_err(|e| LeadsError::new(e.to_string()))
    }

    /// Applies a `get_leads` to the client's current query.
    pub fn next_query(
        current: &LeadsQuery,
        request: &LeadsRequest,
    ) -> Result<LeadsQuery, LeadsError> {
        let LeadsRequest::GetLeads {
            page,
            page_size,
            filter,
            provider,
        } = request
        else {
            return Ok(current.clone());
        };
        if *page == Some(0) {
            return Err(LeadsError::new("page must be 1 or more"));
        }
        if page_size.is_some_and(|s| s == 0 || s > MAX_PAGE_SIZE) {
            return Err(LeadsError::new(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let mut next_filter = filter.clone().unwrap_or_else(|| current.filter.clone());
        if let Some(provider) = provider {
            match &next_filter.provider {
                Some(p) if filter.is_some() && p.trim() != provider.trim() => {
                    return Err(LeadsError::new("provider and filter.provider differ"));
                }
                _ => next_filter.provider = Some(provider.clone()),
            }
        }
        let next_filter = next_filter.normalized()?;
        let filter_changed = next_filter != current.filter;
        Ok(LeadsQuery {
            page: page.unwrap_or(if filter_changed { 1 } else { current.page }),
            page_size: page_size.unwrap_or(current.page_size),
            filter: next_filter,
        })
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "project_id must be a non-empty string or a number, got {other}"
        ))),
    }
}

/// A lead as listed on a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub provider: String,
    pub project_id: String,
    pub title: String,
    pub company: Option<String>,
    pub location: Option<String>,
    pub remote: Option<bool>,
    pub rate: Option<String>,
    pub skills: Vec<String>,
    pub url: Option<String>,
    #[serde(with = "rfc3339_millis::option", default)]
    pub posted_at: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339_millis")]
    pub updated_at: DateTime<Utc>,
}

/// Everything known about one lead: the list fields plus the description
/// and the crawler's extra fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadDetails {
    #[serde(flatten)]
    pub lead: Lead,
    pub description: Option<String>,
    pub raw: Option<Map<String, Value>>,
    #[serde(with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
}

/// `{ page, page_size, total }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub page: u32,
    pub page_size: u32,
    pub total: u64,
}

/// `leads_init` and `leads_updated`: one page of the client's filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadsPage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub projects: &'a [Lead],
    pub pagination: Pagination,
}

/// `lead_details`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadDetailsMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub project_id: &'a str,
    pub details: &'a LeadDetails,
}

/// `sync_accepted`: the crawl request was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncAccepted {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_id: i64,
    pub provider: Option<String>,
    pub state: String,
}

/// `error` on the leads transports: `{ type: 'error', detail }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadsErrorMessage {
    #[serde(rename = "type")]
    pub kind: String,
    pub detail: String,
}

impl LeadsErrorMessage {
    pub fn new(detail: impl Into<String>) -> Self {
        LeadsErrorMessage {
            kind: "error".into(),
            detail: detail.into(),
        }
    }
}

/// What a crawler publishes after storing new data:
/// `{ type: 'leads_updated', provider }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadsChanged {
    #[serde(rename = "type")]
    pub kind: LeadsChangedKind,
    #[serde(default)]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeadsChangedKind {
    #[serde(rename = "leads_updated")]
    LeadsUpdated,
}

/// A crawl request as crawlers are told of it on `<prefix>crawl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlRequested {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_id: i64,
    pub provider: Option<String>,
}

/// A lead as a crawler reports it, in the leads table's field names.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadInput {
    pub project_id: String,
    pub title: String,
    pub company: Option<String>,
    pub location: Option<String>,
    pub remote: Option<bool>,
    pub rate: Option<String>,
    pub skills: Vec<String>,
    pub url: Option<String>,
    pub posted_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    /// Every field not listed above, kept as it came.
    pub raw: Map<String, Value>,
}

impl LeadInput {
    /// Reads one lead of a crawler's JSON; `index` names it in errors.
    pub fn from_value(value: Value, index: usize) -> Result<Self, LeadsError> {
        let at = |field: &str, what: &str| LeadsError::new(format!("lead {index}: {field} {what}"));
        let Value::Object(mut map) = value else {
            return Err(LeadsError::new(format!("lead {index}: not a JSON object")));
        };
        let mut text = |field: &str| -> Result<Option<String>, LeadsError> {
            match map.remove(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(non_empty(Some(s))),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(at(field, "must be a string")),
            }
        };
        let project_id = text("project_id")?.ok_or_else(|| at("project_id", "is missing"))?;
        let title = text("title")?.ok_or_else(|| at("title", "is missing"))?;
        let company = text("company")?;
        let location = text("location")?;
        let rate = text("rate")?;
        let url = text("url")?;
        let description = text("description")?;
        let posted_at = match text("posted_at")? {
            None => None,
            Some(s) => Some(
                DateTime::parse_from_rfc3339(&s)
                    .map_err(|_| at("posted_at", "must be an RFC 3339 timestamp"))?
                    .with_timezone(&Utc),
            ),
        };
        let remote = match map.remove("remote") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => return Err(at("remote", "must be true or false")),
        };
        let skills = match map.remove("skills") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|s| match s {
                    Value::String(s) => Ok(s.trim().to_owned()),
                    _ => Err(at("skills", "must be an array of strings")),
                })
                .filter(|s| s.as_ref().map_or(true, |s| !s.is_empty()))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(at("skills", "must be an array of strings")),
        };
        if project_id.chars().count() > 255 {
            return Err(at("project_id", "is longer than 255 characters"));
        }
        Ok(LeadInput {
            project_id,
            title,
            company,
            location,
            remote,
            rate,
            skills,
            url,
            posted_at,
            description,
            raw: map,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn search_text_is_the_words_q_matches() {
        assert_eq!(
            search_text(
                "Rust-Entwickler (Senior, 80%)",
                Some("Müller & Söhne GmbH"),
                &["c++".into(), "node.js".into()]
            ),
            "rust entwickler senior 80 müller söhne gmbh c node js"
        );
        assert_eq!(search_text("", None, &[]), "");
        assert_eq!(words("  Über--ALLES "), ["über", "alles"]);
    }

    fn query(request: Value) -> Result<LeadsQuery, LeadsError> {
        let request = LeadsRequest::from_frame(&request.to_string())?;
        LeadsRequest::next_query(&LeadsQuery::default(), &request)
    }

    #[test]
    fn get_leads_updates_the_remembered_query() {
        let q = query(json!({"type": "get_leads", "page": 2, "page_size": 50, "filter": {"remote": true, "skills": [" Rust", "rust", "Go"]}})).unwrap();
        assert_eq!(q.page, 2);
        assert_eq!(q.page_size, 50);
        assert_eq!(q.filter.skills, vec!["go", "rust"]);
        // Page only: the filter stays.
        let next = LeadsRequest::next_query(
            &q,
            &LeadsRequest::from_frame(r#"{"type":"get_leads","page":3}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (next.page, next.page_size, next.filter.remote),
            (3, 50, Some(true))
        );
        // A new filter starts at page 1.
        let next = LeadsRequest::next_query(
            &next,
            &LeadsRequest::from_frame(r#"{"type":"get_leads","provider":"xing"}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (next.page, next.filter.provider.as_deref()),
            (1, Some("xing"))
        );
    }

    #[test]
    fn refuses_bad_requests_with_a_detail() {
        let cases = [
            (
                json!({"type": "get_leads", "page": 0}),
                "page must be 1 or more",
            ),
            (
                json!({"type": "get_leads", "page_size": 501}),
                "page_size must be between 1 and 500",
            ),
            (
                json!({"type": "get_leads", "filter": {"colour": "red"}}),
                "unknown field `colour`",
            ),
            (json!({"type": "get_leads", "page": "2"}), "invalid type"),
            (
                json!({"type": "get_leads", "filter": {"remote": "yes"}}),
                "invalid type",
            ),
            (
                json!({"type": "get_leads", "filter": {"q": "x".repeat(201)}}),
                "filter.q is longer",
            ),
            (
                json!({"type": "get_lead_details"}),
                "missing field `project_id`",
            ),
            (
                json!({"type": "get_lead_details", "project_id": ""}),
                "project_id must be",
            ),
            (json!({"type": "dance"}), "unknown variant `dance`"),
            (json!({"page": 1}), "missing field `type`"),
            (json!([1]), "JSON object"),
        ];
        for (case, expected) in cases {
            let err = query(case.clone()).expect_err(&case.to_string()).0;
            assert!(err.contains(expected), "{case}: {err:?} lacks {expected:?}");
        }
        assert!(
            LeadsRequest::from_frame("not json")
                .unwrap_err()
                .0
                .contains("not valid JSON")
        );
        assert!(LeadsRequest::from_event("get_leads", json!(5)).is_err());
        assert_eq!(
            LeadsRequest::from_event("get_lead_details", json!({"project_id": 42})).unwrap(),
            LeadsRequest::GetLeadDetails {
                project_id: "42".into(),
                provider: None
            }
        );
    }

    #[test]
    fn lead_input_keeps_unknown_fields_in_raw() {
        let lead = LeadInput::from_value(
            json!({"project_id": 7, "title": "Rust dev", "remote": true, "skills": ["Rust", ""], "budget": 5, "posted_at": "2026-11-01T10:00:00+01:00"}),
            0,
        )
        .unwrap();
        assert_eq!(lead.project_id, "7");
        assert_eq!(lead.skills, vec!["Rust"]);
        assert_eq!(lead.raw.get("budget"), Some(&json!(5)));
        assert!(
            LeadInput::from_value(json!({"title": "x"}), 3)
                .unwrap_err()
                .0
                .contains("lead 3: project_id is missing")
        );
        assert!(
            LeadInput::from_value(json!({"project_id": "1", "title": "x", "remote": "yes"}), 0)
                .is_err()
        );
    }

    #[test]
    fn query_words_split_on_punctuation() {
        let f = LeadFilter {
            q: Some("Rust-Entwickler, Berlin".into()),
            ..LeadFilter::default()
        };
        assert_eq!(f.words(), vec!["rust", "entwickler", "berlin"]);
    }
}
