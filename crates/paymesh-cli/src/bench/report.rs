//! What a benchmark run reports: a serde struct per run written as JSON, and
//! a table that puts several targets measured in one invocation side by side
//! with the ratio of their throughputs.
//!
//! Latencies and throughputs are measurements, so they are `f64` (milliseconds
//! and transfers per second); no amount of money appears here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::Mode;

/// Attempts counted by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Transfers sent to the target.
    pub attempted: u64,
    /// Of those, committed.
    pub committed: u64,
    /// Of those, rejected for a business reason.
    pub declined: u64,
    /// Of those, errors and timeouts.
    pub failed: u64,
    /// Transfers an open loop scheduled but did not send (no free in-flight slot).
    pub dropped: u64,
}

/// Latency percentiles of committed transfers, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds; `None` if it is empty.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Option<Latency> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        })
    }
}

/// One second of the measured period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the end of the warm-up.
    pub second: u64,
    /// Transfers that started in this second and committed.
    pub committed: u64,
    /// Their 99th-percentile latency in milliseconds (2 significant figures);
    /// `None` if none committed.
    pub p99_ms: Option<f64>,
}

/// One check of a target's audit after its run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditCheck {
    /// What is checked, e.g. "debits equal credits in every currency".
    pub name: String,
    /// Whether it held.
    pub holds: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// What a target's own store says after a run: the books balance and agree
/// with what the load generator saw committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// True when every check held.
    pub holds: bool,
    /// Each check and its verdict.
    pub checks: Vec<AuditCheck>,
}

impl Audit {
    /// An audit made of `checks`; it holds when they all do.
    pub fn new(checks: Vec<AuditCheck>) -> Audit {
        Audit { holds: checks.iter().all(|c| c.holds), checks }
    }
}

/// Everything measured in one run against one target.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The target's name ("postgres", "paymesh").
    pub target: String,
    /// Closed or open loop, and its parameters.
    pub mode: Mode,
    /// The warm-up before measuring, in seconds.
    pub warmup_s: f64,
    /// The measured duration, in seconds.
    pub duration_s: f64,
    /// An attempt unanswered after this many milliseconds counted as failed.
    pub attempt_timeout_ms: u64,
    /// Transfers sent that (intendedly) started in the measured period.
    pub attempted: u64,
    /// Of those, committed.
    pub committed: u64,
    /// Of those, declined.
    pub declined: u64,
    /// Of those, failed (errors and timeouts).
    pub failed: u64,
    /// Transfers scheduled in the measured period but not sent (open loop).
    pub dropped: u64,
    /// Committed transfers per second of the measured period.
    pub throughput_per_s: f64,
    /// Latencies of the committed transfers; `None` if none committed.
    pub latency_ms: Option<Latency>,
    /// Commits and p99 per second of the measured period.
    pub timeline: Vec<Second>,
    /// Why transfers were declined, with counts (measured period).
    pub decline_reasons: BTreeMap<String, u64>,
    /// Why transfers failed, with counts (measured period).
    pub failure_reasons: BTreeMap<String, u64>,
    /// Counts over the whole run, warm-up included: what the target's store
    /// should hold afterwards.
    pub including_warmup: Totals,
    /// The target's audit after the run, if it has one.
    pub audit: Option<Audit>,
    /// CPU time of the target's processes and of the load generator over
    /// the measured period, per committed transfer (empty when the target
    /// names no processes).
    pub cpu: Vec<ProcessCpu>,
}

/// One process's CPU time over the measured period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessCpu {
    /// Which process ("node-1", "load generator").
    pub process: String,
    /// User and system CPU time, in seconds.
    pub cpu_s: f64,
    /// That divided by the committed transfers, in microseconds.
    pub us_per_transfer: f64,
}

/// `numerator`'s throughput divided by `denominator`'s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThroughputRatio {
    /// The target compared.
    pub numerator: String,
    /// The baseline it is compared with.
    pub denominator: String,
    /// How many times the baseline's throughput.
    pub ratio: f64,
}

/// One `paymesh bench` invocation: its runs, in the order they ran, and how
/// their throughputs compare. This is what `--json` writes.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// One report per target.
    pub runs: Vec<RunReport>,
    /// Each run's throughput relative to each baseline (every PostgreSQL
    /// run, or the first run when none is PostgreSQL's).
    pub throughput_ratios: Vec<ThroughputRatio>,
}

impl BenchReport {
    /// The report of `runs`, with their ratios computed: every other run
    /// against each PostgreSQL run (each shape and batching a baseline of
    /// its own), or against the first run when none is PostgreSQL's.
    pub fn new(runs: Vec<RunReport>) -> BenchReport {
        let postgres = |r: &RunReport| r.target.starts_with("postgres");
        let mut baselines: Vec<&RunReport> = runs.iter().filter(|r| postgres(r)).collect();
        if baselines.is_empty() {
            baselines.extend(runs.first());
        }
        let mut throughput_ratios = Vec::new();
        for run in runs.iter().filter(|r| !baselines.iter().any(|b| std::ptr::eq(*r, *b))) {
            for baseline in baselines.iter().filter(|b| b.throughput_per_s > 0.0) {
                throughput_ratios.push(ThroughputRatio {
                    numerator: run.target.clone(),
                    denominator: baseline.target.clone(),
                    ratio: run.throughput_per_s / baseline.throughput_per_s,
                });
            }
        }
        BenchReport { runs, throughput_ratios }
    }

    /// Write the report as pretty JSON to `path`, creating its directory.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// A table with one column per run, then one line per throughput ratio.
    pub fn table(&self) -> String {
        let ms = |f: fn(&Latency) -> f64| -> Box<dyn Fn(&RunReport) -> String> {
            Box::new(move |r| r.latency_ms.as_ref().map_or_else(|| "-".to_owned(), |l| format!("{:.3} ms", f(l))))
        };
        type Cell = Box<dyn Fn(&RunReport) -> String>;
        let rows: Vec<(&str, Cell)> = vec![
            ("mode", Box::new(|r| describe_mode(&r.mode))),
            ("warm-up + measured", Box::new(|r| format!("{} s + {} s", r.warmup_s, r.duration_s))),
            ("attempted", Box::new(|r| thousands(r.attempted))),
            ("committed", Box::new(|r| thousands(r.committed))),
            ("declined", Box::new(|r| thousands(r.declined))),
            ("failed", Box::new(|r| thousands(r.failed))),
            ("dropped", Box::new(|r| thousands(r.dropped))),
            ("throughput", Box::new(|r| format!("{}/s", thousands(r.throughput_per_s.round() as u64)))),
            ("latency p50", ms(|l| l.p50)),
            ("latency p90", ms(|l| l.p90)),
            ("latency p99", ms(|l| l.p99)),
            ("latency p99.9", ms(|l| l.p999)),
            ("latency max", ms(|l| l.max)),
            ("latency mean", ms(|l| l.mean)),
            (
                "CPU per transfer",
                Box::new(|r| {
                    if r.cpu.is_empty() {
                        return "-".to_owned();
                    }
                    let total: f64 = r.cpu.iter().map(|c| c.us_per_transfer).sum();
                    format!("{total:.0} µs")
                }),
            ),
            (
                "audit",
                Box::new(|r| match &r.audit {
                    None => "-".to_owned(),
                    Some(a) if a.holds => "holds".to_owned(),
                    Some(_) => "FAILS".to_owned(),
                }),
            ),
        ];
        let header: Vec<String> = self.runs.iter().map(|r| r.target.clone()).collect();
        let cells: Vec<Vec<String>> = rows.iter().map(|(_, cell)| self.runs.iter().map(cell).collect()).collect();
        let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..self.runs.len())
            .map(|i| cells.iter().map(|row| row[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        let mut line = |label: &str, values: &[String]| {
            let _ = write!(out, "{label:<label_width$}");
            for (value, width) in values.iter().zip(&widths) {
                let _ = write!(out, "  {value:>width$}");
            }
            out.push('\n');
        };
        line("", &header);
        for ((label, _), values) in rows.iter().zip(&cells) {
            line(label, values);
        }
        for ratio in &self.throughput_ratios {
            let _ = writeln!(out, "{} / {} = {:.1}×", ratio.numerator, ratio.denominator, ratio.ratio);
        }
        for run in self.runs.iter().filter(|r| !r.cpu.is_empty()) {
            let each: Vec<String> = run
                .cpu
                .iter()
                .map(|c| format!("{} {:.0} µs ({:.1} s)", c.process, c.us_per_transfer, c.cpu_s))
                .collect();
            let _ = writeln!(out, "{} CPU per transfer: {}", run.target, each.join(", "));
        }
        out
    }
}

fn describe_mode(mode: &Mode) -> String {
    match *mode {
        Mode::Closed { workers } => format!("closed, {workers} workers"),
        Mode::Open { rate_per_second, in_flight_max } => {
            format!("open, {}/s, ≤{in_flight_max} in flight", thousands(rate_per_second))
        }
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, throughput_per_s: f64) -> RunReport {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        // 1 ms … 1,000 ms, one value each.
        for ms in 1..=1_000u64 {
            histogram.record(ms * 1_000).unwrap();
        }
        RunReport {
            target: target.to_owned(),
            mode: Mode::Closed { workers: 32 },
            warmup_s: 2.0,
            duration_s: 10.0,
            attempt_timeout_ms: 5_000,
            attempted: 12_345,
            committed: 12_340,
            declined: 5,
            failed: 0,
            dropped: 0,
            throughput_per_s,
            latency_ms: Latency::from_histogram(&histogram),
            timeline: vec![Second { second: 0, committed: 1_234, p99_ms: Some(4.5) }],
            decline_reasons: BTreeMap::from([("insufficient position".to_owned(), 5)]),
            failure_reasons: BTreeMap::new(),
            including_warmup: Totals::default(),
            audit: Some(Audit::new(vec![AuditCheck { name: "x".to_owned(), holds: true, detail: String::new() }])),
            cpu: Vec::new(),
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let latency = run("postgres", 1.0).latency_ms.unwrap();
        // 3 significant figures: each value within 0.1 % of the exact one.
        let close = |value: f64, exact: f64| (value - exact).abs() <= exact * 0.001 + 1e-9;
        assert!(close(latency.p50, 500.0), "{latency:?}");
        assert!(close(latency.p90, 900.0), "{latency:?}");
        assert!(close(latency.p99, 990.0), "{latency:?}");
        assert!(close(latency.p999, 999.0), "{latency:?}");
        assert!(close(latency.max, 1_000.0), "{latency:?}");
        assert!(close(latency.mean, 500.5), "{latency:?}");
        assert!(Latency::from_histogram(&Histogram::<u64>::new(3).unwrap()).is_none());
    }

    #[test]
    fn several_runs_print_side_by_side_with_the_throughput_ratio() {
        let report = BenchReport::new(vec![run("postgres", 1_000.0), run("paymesh", 3_400.0)]);
        assert_eq!(report.throughput_ratios.len(), 1);
        let table = report.table();
        assert!(table.contains("paymesh / postgres = 3.4×"), "{table}");
        let header = table.lines().next().unwrap();
        assert!(header.contains("postgres") && header.contains("paymesh"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("committed") && l.matches("12,340").count() == 2), "{table}");
        assert!(table.lines().any(|l| l.starts_with("audit") && l.contains("holds")), "{table}");
    }

    #[test]
    fn every_other_run_is_compared_with_each_postgres_run() {
        let runs =
            vec![run("paymesh-batched", 12_000.0), run("postgres", 2_000.0), run("postgres-spread-b64", 24_000.0)];
        let report = BenchReport::new(runs);
        let ratios: Vec<(&str, &str, f64)> =
            report.throughput_ratios.iter().map(|r| (r.numerator.as_str(), r.denominator.as_str(), r.ratio)).collect();
        assert_eq!(ratios, [("paymesh-batched", "postgres", 6.0), ("paymesh-batched", "postgres-spread-b64", 0.5)]);
        let table = report.table();
        assert!(table.contains("paymesh-batched / postgres-spread-b64 = 0.5×"), "{table}");
        // Without PostgreSQL, the first run is the baseline.
        let report = BenchReport::new(vec![run("paymesh", 1_000.0), run("paymesh-one-call", 1_500.0)]);
        assert_eq!(report.throughput_ratios.len(), 1);
        assert_eq!(format!("{:.2}", report.throughput_ratios[0].ratio), "1.50");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/bench.json");
        BenchReport::new(vec![run("postgres", 1_000.0)]).write_json(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let run = &json["runs"][0];
        assert_eq!(run["target"], "postgres");
        assert_eq!(run["mode"]["kind"], "closed");
        assert_eq!(run["mode"]["workers"], 32);
        for field in ["attempted", "committed", "declined", "failed", "dropped", "throughput_per_s"] {
            assert!(run[field].is_number(), "{field}");
        }
        for field in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(run["latency_ms"][field].is_f64(), "{field}");
        }
        assert_eq!(run["timeline"][0]["committed"], 1_234);
        assert_eq!(run["audit"]["holds"], true);
        assert_eq!(json["throughput_ratios"], serde_json::json!([]));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
