//! The results of a run: JSON for machines, a table with ratios and targets
//! for people.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::procs::Kind;
use crate::scenarios::{FanoutResult, IdleResult, LatencyResult, Results, Settings};

#[derive(Debug, Serialize)]
pub struct Run {
    pub quick: bool,
    pub machine: Machine,
    pub settings: Settings,
    /// By gateway name: `leadgate`, `socketioxide`, `node`.
    pub gateways: BTreeMap<&'static str, Results>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub node: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let output = |program: &str, arg: &str| {
            std::process::Command::new(program)
                .arg(arg)
                .output()
                .ok()
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel: output("uname", "-r"),
            node: output("node", "--version"),
        }
    }
}

/// The idle scenario's results, of clients that upgraded or not.
fn idle_results(results: &Results, upgraded: bool) -> &[IdleResult] {
    if upgraded {
        &results.idle_upgrade
    } else {
        &results.idle
    }
}

/// What a row's figure is held to; every check must hold.
enum Target {
    Checks(&'static [Check]),
    None,
    /// A figure of the machine during that gateway's run, not of the
    /// gateway: no ratio.
    Machine,
}

/// One check of leadgate's figure.
#[derive(Clone, Copy)]
enum Check {
    /// leadgate / node at most this.
    NodeAtMost(f64),
    /// leadgate / node at least this.
    NodeAtLeast(f64),
    /// leadgate / bare socketioxide at most this.
    SioAtMost(f64),
    /// leadgate / bare socketioxide at least this.
    SioAtLeast(f64),
    /// leadgate's figure at most this much above bare socketioxide's.
    SioPlusAtMost(f64),
    /// leadgate's own figure at most this.
    ValueAtMost(f64),
}

impl Check {
    /// The check as the table shows it, and whether it holds (`None`: a
    /// figure is missing).
    fn judge(self, lg: Option<f64>, sio: Option<f64>, node: Option<f64>) -> (String, Option<bool>) {
        let ratio = |other: Option<f64>| Some(lg? / other.filter(|v| *v != 0.0)?);
        match self {
            Check::NodeAtMost(max) => (format!("≤ {max}× node"), ratio(node).map(|r| r <= max)),
            Check::NodeAtLeast(min) => (format!("≥ {min}× node"), ratio(node).map(|r| r >= min)),
            Check::SioAtMost(max) => (format!("≤ {max}× sio"), ratio(sio).map(|r| r <= max)),
            Check::SioAtLeast(min) => (format!("≥ {min}× sio"), ratio(sio).map(|r| r >= min)),
            Check::SioPlusAtMost(max) => (
                format!("≤ sio + {max}"),
                lg.zip(sio).map(|(lg, sio)| lg <= sio + max),
            ),
            Check::ValueAtMost(max) => (format!("≤ {max}"), lg.map(|v| v <= max)),
        }
    }
}

impl Run {
    pub fn new(quick: bool, settings: Settings) -> Run {
        Run {
            quick,
            machine: Machine::read(),
            settings,
            gateways: BTreeMap::new(),
        }
    }

    pub fn results_mut(&mut self, kind: Kind) -> &mut Results {
        self.gateways.entry(kind.name()).or_default()
    }

    /// The readable table: a row per figure, every gateway, leadgate's
    /// ratios to the Node.js peer and to bare socketioxide, and the target
    /// the first is held to.
    pub fn table(&self) -> String {
        let empty = Results::default();
        let results = Kind::ALL.map(|kind| self.gateways.get(kind.name()).unwrap_or(&empty));
        let mut rows = Rows::default();
        for (name, upgraded) in [("idle", false), ("idle, upgraded", true)] {
            for &n in &self.settings.idle_sizes {
                rows.push(
                    format!("{name}: KiB RSS per connection, N={n}"),
                    results.map(|r| {
                        idle_results(r, upgraded)
                            .iter()
                            .find(|idle| idle.requested == n)
                            .map(|idle| idle.kib_per_connection)
                    }),
                    // At most 1 KiB above bare socketioxide, and no more
                    // than the Node.js peer.
                    Target::Checks(&[Check::SioPlusAtMost(1.0), Check::NodeAtMost(1.0)]),
                );
            }
        }
        let connect = results.map(|r| r.connect.as_ref());
        rows.push(
            "connect: authenticated connects/s".into(),
            connect.map(|c| c.map(|c| c.per_second)),
            Target::Checks(&[Check::NodeAtLeast(5.0)]),
        );
        rows.push(
            "connect: server CPU µs per connect".into(),
            connect.map(|c| c.map(|c| c.server_cpu_us_per_connect)),
            Target::None,
        );
        for &per_client in &self.settings.fanout_in_flight {
            let fanout = results.map(|r| {
                r.fanout
                    .iter()
                    .find(|f| f.in_flight_per_client == per_client)
            });
            let name = format!("fan-out, {per_client} in flight per client");
            // The targets are set at 16 in flight.
            let held = per_client == 16;
            let mut row = |label: String, get: fn(&FanoutResult) -> f64, target| {
                rows.push(label, fanout.map(|f| f.map(get)), target);
            };
            row(
                format!("{name}: deliveries/s"),
                |f| f.delivered_per_second,
                if held {
                    Target::Checks(&[Check::NodeAtLeast(3.0), Check::SioAtLeast(0.9)])
                } else {
                    Target::None
                },
            );
            row(
                format!("{name}: server CPU µs per delivery"),
                |f| f.server_cpu_us_per_delivery,
                if held {
                    Target::Checks(&[Check::NodeAtMost(0.3), Check::SioAtMost(1.1)])
                } else {
                    Target::None
                },
            );
            row(
                "  of which in the kernel".into(),
                |f| f.server_system_us_per_delivery,
                Target::None,
            );
            row(
                "  of which in user space".into(),
                |f| f.server_cpu_us_per_delivery - f.server_system_us_per_delivery,
                Target::None,
            );
            row(
                format!("{name}: server cores busy"),
                |f| f.server_cores,
                Target::None,
            );
            row(
                format!("{name}: load generator cores busy"),
                |f| f.generator_cores,
                Target::None,
            );
        }
        let latency = results.map(|r| r.latency.as_ref());
        let rate = self.settings.latency_rate;
        rows.push(
            format!("latency at {rate}/s: deliveries/s"),
            latency.map(|l| l.map(|l| l.delivered_per_second)),
            Target::None,
        );
        for (name, get, target) in [
            (
                "p50",
                (|l: &LatencyResult| l.p50_ms) as fn(&_) -> f64,
                Target::None,
            ),
            ("p90", |l| l.p90_ms, Target::None),
            (
                "p99",
                |l| l.p99_ms,
                Target::Checks(&[Check::ValueAtMost(5.0)]),
            ),
            ("max", |l| l.max_ms, Target::None),
            (
                "the machine's wake-up delay, p99",
                |l| l.wakeup_delay_p99_ms,
                Target::Machine,
            ),
            (
                "the machine's wake-up delay, max",
                |l| l.wakeup_delay_max_ms,
                Target::Machine,
            ),
        ] {
            rows.push(
                format!("latency at {rate}/s: {name} ms"),
                latency.map(|l| l.map(get)),
                target,
            );
        }

        let mut out = rows.render();
        for (name, results) in &self.gateways {
            if !results.faults.is_clean() {
                let _ = writeln!(out, "faults of {name}: {:?}", results.faults);
            }
        }
        if self.quick {
            let _ = writeln!(
                out,
                "(quick run: the sizes are small and the figures are not comparable to a full run)"
            );
        }
        out
    }
}

/// The rows of the table, each with a figure of every gateway in
/// [`Kind::ALL`]'s order.
#[derive(Default)]
struct Rows(Vec<(String, [Option<f64>; 3], Target)>);

impl Rows {
    /// Adds a row, unless no gateway has that figure (a scenario not run).
    fn push(&mut self, name: String, figures: [Option<f64>; 3], target: Target) {
        if figures.iter().any(Option::is_some) {
            self.0.push((name, figures, target));
        }
    }

    /// The rows as text, under a heading, with a line saying what the
    /// ratios are.
    fn render(self) -> String {
        let width = self
            .0
            .iter()
            .map(|row| row.0.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<width$} {:>12} {:>12} {:>12} {:>9} {:>9}  target",
            "", "leadgate", "socketioxide", "node", "lg/node", "lg/sio"
        );
        for (name, [lg, sio, node], target) in self.0 {
            let ratio = |other: Option<f64>| match (lg, other, &target) {
                (_, _, Target::Machine) => None,
                (Some(a), Some(b), _) if b != 0.0 => Some(a / b),
                _ => None,
            };
            let (to_node, to_sio) = (ratio(node), ratio(sio));
            let verdict = match target {
                Target::Checks(checks) => checks
                    .iter()
                    .map(|check| {
                        let (text, holds) = check.judge(lg, sio, node);
                        format!("{text} {}", mark(holds))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Target::None | Target::Machine => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<width$} {:>12} {:>12} {:>12} {:>9} {:>9}  {}",
                name,
                figure(lg),
                figure(sio),
                figure(node),
                times(to_node),
                times(to_sio),
                verdict
            );
        }
        let _ = writeln!(
            out,
            "lg/node, lg/sio: leadgate's figure divided by the Node.js peer's, and by bare \
             socketioxide's (sio in the targets)."
        );
        out
    }
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or("-".into(), |r| format!("{r:.2}×"))
}

fn figure(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}
