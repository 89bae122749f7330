//! How late the machine wakes a thread: a thread that asks to sleep for a
//! millisecond, again and again, records how much later than that it runs.
//!
//! Latency figures include every wait for a core, in the servers, Redis, the
//! publisher and the clients. This probe shows what such a wait costs on its
//! own while the load runs, so a latency tail can be told apart from the
//! gateway's work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::clients::new_histogram;

const NAP: Duration = Duration::from_millis(1);

pub struct WakeupProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Histogram<u64>>,
}

impl WakeupProbe {
    pub fn start() -> std::io::Result<WakeupProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wakeup-probe".into())
            .spawn(move || {
                let mut late = new_histogram();
                while !stopped.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    std::thread::sleep(NAP);
                    let overshoot = asked.elapsed().saturating_sub(NAP);
                    late.saturating_record(overshoot.as_micros().max(1) as u64);
                }
                late
            })?;
        Ok(WakeupProbe { stop, thread })
    }

    /// Stops the probe; returns its delays in microseconds.
    pub fn finish(self) -> Histogram<u64> {
        self.stop.store(true, Ordering::Relaxed);
        // The thread only sleeps and records; should it panic, say so
        // rather than report a delay of zero.
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}
