//! Property tests over every parser of outside input: worker events, leads
//! requests (frames and Socket.IO events), lead filters and crawlers' leads.
//! Arbitrary bytes and arbitrary JSON must never panic; what parses must
//! survive a round trip and normalize idempotently.
//!
//! `PROPTEST_CASES=100000 cargo test --release -p leadgate-protocol --test parsers`
//! runs a longer search than the default 256 cases per property.

use leadgate_protocol::WorkerEvent;
use leadgate_protocol::leads::{LeadFilter, LeadInput, LeadsQuery, LeadsRequest};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value, nested a few levels, with the keys the parsers look for
/// mixed in so that deep paths are reached.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("progress".to_owned()),
        Just("processedLeads".to_owned()),
        Just("totalLeads".to_owned()),
        Just("status".to_owned()),
        Just("log".to_owned()),
        Just("level".to_owned()),
        Just("message".to_owned()),
        Just("timestamp".to_owned()),
        Just("results".to_owned()),
        Just("error".to_owned()),
        Just("jobId".to_owned()),
        Just("seq".to_owned()),
        Just("page".to_owned()),
        Just("page_size".to_owned()),
        Just("filter".to_owned()),
        Just("provider".to_owned()),
        Just("q".to_owned()),
        Just("skills".to_owned()),
        Just("remote".to_owned()),
        Just("project_id".to_owned()),
        Just("title".to_owned()),
        Just("posted_at".to_owned()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("progress".to_owned()),
            Just("status".to_owned()),
            Just("log".to_owned()),
            Just("complete".to_owned()),
            Just("error".to_owned()),
            Just("get_leads".to_owned()),
            Just("get_lead_details".to_owned()),
            Just("sync".to_owned()),
            Just("info".to_owned()),
            Just("processing".to_owned()),
            Just("2026-11-22T10:00:00Z".to_owned()),
            Just("6f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10".to_owned()),
            ".{0,20}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The text of an object that is often a valid worker event and often just
/// not: each variant's fields with values in and out of range, `jobId` and
/// `seq` of any kind or missing, sometimes an extra or a repeated key, in any
/// order.
fn event_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        12 => (0u64..101).prop_map(|n| n.to_string()),
        1 => (101u64..300).prop_map(|n| n.to_string()),
        1 => Just("-1".to_owned()),
        1 => Just("1.0".to_owned()),
        1 => Just("9223372036854775808".to_owned()),
        1 => Just("\"3\"".to_owned()),
    ];
    let text = prop_oneof![
        4 => Just("\"done\"".to_owned()),
        1 => Just("\"\\u00e9t\\\"e\"".to_owned()),
        1 => Just("null".to_owned()),
        1 => Just("3".to_owned()),
    ];
    let state = prop_oneof![
        2 => Just("\"processing\"".to_owned()),
        1 => Just("\"completed\"".to_owned()),
        1 => Just("\"failed\"".to_owned()),
        1 => Just("\"exploded\"".to_owned()),
    ];
    let fields = prop_oneof![
        (number.clone(), number.clone(), number.clone()).prop_map(|(p, d, t)| vec![
            ("type", "\"progress\"".to_owned()),
            ("progress", p),
            ("processedLeads", d),
            ("totalLeads", t),
        ]),
        (state.clone(), text.clone()).prop_map(|(s, m)| vec![
            ("type", "\"status\"".to_owned()),
            ("status", s),
            ("message", m),
        ]),
        (
            text.clone(),
            prop_oneof![
                Just(String::new()),
                Just(",\"timestamp\":\"2026-11-22T10:00:00.123Z\"".to_owned()),
                Just(",\"timestamp\":\"yesterday\"".to_owned()),
            ]
        )
            .prop_map(|(m, t)| vec![
                ("type", "\"log\"".to_owned()),
                ("log", format!("{{\"level\":\"info\",\"message\":{m}{t}}}")),
            ]),
        (state.clone(), number.clone()).prop_map(|(s, n)| vec![
            ("type", "\"complete\"".to_owned()),
            ("status", s),
            (
                "results",
                format!("{{\"total_leads\":{n},\"a\":[1,{{}}],\"a\":2}}")
            ),
        ]),
        (state, text).prop_map(|(s, e)| vec![
            ("type", "\"error\"".to_owned()),
            ("status", s),
            ("error", e),
        ]),
    ];
    let job_id = prop_oneof![
        2 => Just(None),
        4 => Just(Some("\"6f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10\"".to_owned())),
        1 => Just(Some("\"6F1C1F46-3F0B-4C36-9F0E-3F1D8F5F2B10\"".to_owned())),
        1 => Just(Some("\"\\u0036f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10\"".to_owned())),
        1 => Just(Some("\"42\"".to_owned())),
        1 => Just(Some("null".to_owned())),
    ];
    let seq = prop_oneof![1 => Just(None), 3 => number.prop_map(Some)];
    let extra = prop_oneof![
        12 => Just(None),
        1 => Just(Some(("extra", "1".to_owned()))),
        1 => Just(Some(("type", "\"status\"".to_owned()))),
        1 => Just(Some(("jobId", "null".to_owned()))),
        1 => Just(Some(("seq", "5".to_owned()))),
    ];
    (
        fields,
        job_id,
        seq,
        extra,
        any::<prop::sample::Index>(),
        any::<u64>(),
    )
        .prop_map(|(mut fields, job_id, seq, extra, drop, order)| {
            fields.extend(job_id.map(|v| ("jobId", v)));
            fields.extend(seq.map(|v| ("seq", v)));
            fields.extend(extra);
            // Now and then a field goes missing.
            if order % 8 == 0 {
                fields.remove(drop.index(fields.len()));
            }
            let mut order = order;
            for i in (1..fields.len()).rev() {
                fields.swap(i, (order % (i as u64 + 1)) as usize);
                order /= i as u64 + 1;
            }
            let body: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("\"{key}\":{value}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
}

proptest! {
    #[test]
    fn near_valid_events_read_the_same_both_ways(text in event_text()) {
        let bytes = text.as_bytes();
        prop_assert_eq!(
            WorkerEvent::from_slice(bytes),
            WorkerEvent::from_slice_as_value(bytes),
            "{}",
            text
        );
    }

    #[test]
    fn any_json_reads_the_same_both_ways(value in json()) {
        let text = value.to_string();
        let bytes = text.as_bytes();
        prop_assert_eq!(
            WorkerEvent::from_slice(bytes),
            WorkerEvent::from_slice_as_value(bytes)
        );
    }

    #[test]
    fn worker_events_never_panic_and_round_trip(value in json()) {
        if let Ok(parsed) = WorkerEvent::from_value(value) {
            // What was accepted serializes and is accepted again, the same.
            let again = serde_json::to_value(&parsed.event).unwrap();
            prop_assert_eq!(WorkerEvent::from_value(again).unwrap().event, parsed.event);
        }
    }

    #[test]
    fn worker_event_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(
            WorkerEvent::from_slice(&bytes),
            WorkerEvent::from_slice_as_value(&bytes)
        );
    }

    #[test]
    fn leads_frames_and_events_never_panic(value in json(), event in "[a-z_]{0,20}") {
        let _ = LeadsRequest::from_frame(&value.to_string());
        let _ = LeadsRequest::from_event(&event, value.clone());
        if let Ok(request) = LeadsRequest::from_frame(&value.to_string()) {
            // A valid get_leads gives a query within the limits.
            if let Ok(query) = LeadsRequest::next_query(&LeadsQuery::default(), &request) {
                prop_assert!(query.page >= 1);
                prop_assert!((1..=500).contains(&query.page_size));
            }
        }
    }

    #[test]
    fn leads_frame_text_never_panics(text in ".{0,200}") {
        let _ = LeadsRequest::from_frame(&text);
    }

    #[test]
    fn filters_normalize_idempotently(value in json()) {
        let normalized = serde_json::from_value::<LeadFilter>(value)
            .ok()
            .and_then(|filter| filter.normalized().ok());
        if let Some(once) = normalized {
            prop_assert_eq!(once.clone().normalized().unwrap(), once.clone());
            let _ = once.words();
        }
    }

    #[test]
    fn crawler_leads_never_panic(value in json(), index in 0usize..1000) {
        if let Ok(lead) = LeadInput::from_value(value, index) {
            prop_assert!(!lead.project_id.is_empty());
            prop_assert!(!lead.title.is_empty());
        }
    }
}
