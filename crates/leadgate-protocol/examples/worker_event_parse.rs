//! How long reading one worker event takes, the way every instance reads
//! each event it delivers (`from_slice`), against reading it as a JSON
//! value first (`from_slice_as_value`).
//!
//! `cargo run --release -p leadgate-protocol --example worker_event_parse`

use std::hint::black_box;
use std::time::Instant;

use leadgate_protocol::{EventError, WorkerEvent};

const ROUNDS: u32 = 5;
const PER_ROUND: u32 = 200_000;

/// Nanoseconds per event, the best of [`ROUNDS`].
fn time(read: impl Fn(&[u8]) -> Result<WorkerEvent, EventError>, bytes: &[u8]) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PER_ROUND {
                black_box(read(black_box(bytes)).expect("a valid event"));
            }
            started.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let id = "6f1c1f46-3f0b-4c36-9f0e-3f1d8f5f2b10";
    let events = [
        (
            "log (the benchmark's)",
            format!(
                r#"{{"type":"log","jobId":"{id}","seq":41,"log":{{"level":"info","message":"t=1764410000000000 enriched lead 41 of the benchmark","timestamp":"2026-11-22T10:00:00.000Z"}}}}"#
            ),
        ),
        (
            "progress",
            format!(
                r#"{{"type":"progress","jobId":"{id}","seq":42,"progress":40,"processedLeads":400,"totalLeads":1000}}"#
            ),
        ),
        (
            "complete",
            format!(
                r#"{{"type":"complete","jobId":"{id}","seq":43,"results":{{"total_leads":1000,"enriched_leads":930,"high_score_leads":57}}}}"#
            ),
        ),
    ];
    println!(
        "{:<24} {:>16} {:>16} {:>7}",
        "event", "as a value, ns", "from_slice, ns", "ratio"
    );
    for (name, text) in &events {
        let bytes = text.as_bytes();
        assert_eq!(
            WorkerEvent::from_slice(bytes),
            WorkerEvent::from_slice_as_value(bytes)
        );
        let slow = time(WorkerEvent::from_slice_as_value, bytes);
        let fast = time(WorkerEvent::from_slice, bytes);
        println!("{name:<24} {slow:>16.0} {fast:>16.0} {:>6.2}×", fast / slow);
    }
}
