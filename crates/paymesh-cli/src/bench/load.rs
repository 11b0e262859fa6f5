//! The load generator: drives a [`Target`] in a closed or an open loop for a
//! warm-up period and then a measured duration, and records what happened in
//! an HDR histogram.
//!
//! * **Closed loop**: `workers` tasks, each issuing its next transfer when the
//!   previous one has finished. It measures the capacity of the target at that
//!   concurrency, but a slow answer also delays the next request, so its
//!   latencies understate what clients arriving on their own schedule see.
//! * **Open loop**: transfers are scheduled at a fixed offered rate on a
//!   timeline that does not depend on the answers, and each latency is
//!   measured from the transfer's *intended* start time, so a stall shows up as
//!   the latency of every transfer it delayed (no coordinated omission). At
//!   most `in_flight_max` transfers are outstanding; a scheduled transfer that
//!   finds no free slot is not sent and is counted as `dropped`.
//!
//! An attempt belongs to the phase in which it (intendedly) started: attempts
//! started during the warm-up are counted only in the report's
//! `including_warmup` totals, which a target's audit compares with what it
//! stored. Latencies are those of committed transfers, in microseconds,
//! recorded with 3 significant figures. Every loop ends by itself: nothing is
//! started after the measured duration, and every attempt is bounded by
//! `attempt_timeout`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::report::{Latency, RunReport, Second, Totals};

/// Most workers of a closed loop.
pub const WORKERS_MAX: usize = 4_096;
/// Most transfers outstanding at once in an open loop.
pub const IN_FLIGHT_MAX: usize = 65_536;
/// Highest offered rate of an open loop, in transfers per second.
pub const RATE_PER_SECOND_MAX: u64 = 1_000_000;
/// Longest warm-up or measured duration, in seconds (the per-second timeline
/// holds one small histogram per second).
pub const DURATION_MAX_S: u64 = 3_600;
/// Longest time one attempt may take before it is abandoned as failed, in milliseconds.
pub const ATTEMPT_TIMEOUT_MAX_MS: u64 = 600_000;
/// Latencies above this are recorded as this, in microseconds (one minute).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant figures of the run's latency histogram.
pub const LATENCY_SIGNIFICANT_FIGURES: u8 = 3;
/// Significant figures of the per-second and live histograms (1 % resolution
/// is plenty for a p99 per second, and keeps an hour's timeline small).
const SECOND_SIGNIFICANT_FIGURES: u8 = 2;
/// Distinct decline or failure reasons kept by name; the rest are counted together.
pub const REASON_KINDS_MAX: usize = 16;
/// How often the live progress line is refreshed, in milliseconds.
const PROGRESS_TICK_MS: u64 = 1_000;
/// How many transfers an open loop that is behind its timeline sends before
/// yielding, so that the tasks it started get to run even on one thread.
const CATCH_UP_BURST_MAX: u32 = 64;
/// Name under which reasons beyond [`REASON_KINDS_MAX`] are counted.
const OTHER_REASONS: &str = "(other reasons)";

/// How one attempted transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The transfer was committed durably.
    Committed,
    /// The target answered with a business rejection (insufficient position,
    /// duplicate key, ...); the reason is for the report.
    Declined(String),
    /// An error or a timeout: the outcome is unknown or nothing was done.
    Failed(String),
}

/// Something that can carry out a transfer: PostgreSQL, or a paymesh region
/// reached over gRPC.
///
/// The engine guarantees, within one run, that calls with the same `worker`
/// never overlap and that each worker's `sequence` numbers start at 0 and go up
/// by one, so `(worker, sequence)` is unique and can name the transfer (an
/// idempotency key). `worker` is below [`Mode::concurrency`]: a closed loop's
/// worker, or an open loop's in-flight slot.
pub trait Target: Send + Sync + 'static {
    /// A short name for reports ("postgres", "paymesh").
    fn name(&self) -> String;

    /// Carry out one transfer and say how it ended. It must not panic on
    /// errors: they are [`Attempt::Failed`].
    fn transfer(&self, worker: usize, sequence: u64) -> impl Future<Output = Attempt> + Send;

    /// The target's own processes whose CPU time the report gives per
    /// transfer, by name and pid (none by default).
    fn processes(&self) -> Vec<(String, u32)> {
        Vec::new()
    }
}

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// `workers` tasks, each sending its next transfer when the previous one ends.
    Closed {
        /// How many transfers are outstanding at all times.
        workers: usize,
    },
    /// Transfers scheduled at a fixed rate, whatever the answers.
    Open {
        /// Transfers scheduled per second.
        rate_per_second: u64,
        /// Most transfers outstanding at once; beyond it scheduled transfers are dropped.
        in_flight_max: usize,
    },
}

impl Mode {
    /// Most transfers outstanding at once, which is also the number of
    /// distinct `worker` values a target sees.
    // The PostgreSQL baseline sizes its connection pool by it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn concurrency(&self) -> usize {
        match *self {
            Mode::Closed { workers } => workers,
            Mode::Open { in_flight_max, .. } => in_flight_max,
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Closed or open loop.
    pub mode: Mode,
    /// Run before measuring; excluded from the figures.
    pub warmup: Duration,
    /// The measured duration.
    pub duration: Duration,
    /// An attempt still unanswered after this is abandoned and counted as failed.
    pub attempt_timeout: Duration,
    /// Show the live progress line on stderr (only drawn on a terminal).
    pub progress: bool,
}

impl Plan {
    /// Refuse plans outside the limits above.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.mode {
            Mode::Closed { workers } => {
                if workers == 0 || workers > WORKERS_MAX {
                    bail!("workers must be between 1 and {WORKERS_MAX}, not {workers}");
                }
            }
            Mode::Open { rate_per_second, in_flight_max } => {
                if rate_per_second == 0 || rate_per_second > RATE_PER_SECOND_MAX {
                    bail!("the rate must be between 1 and {RATE_PER_SECOND_MAX} per second, not {rate_per_second}");
                }
                if in_flight_max == 0 || in_flight_max > IN_FLIGHT_MAX {
                    bail!("max-in-flight must be between 1 and {IN_FLIGHT_MAX}, not {in_flight_max}");
                }
            }
        }
        if self.duration.is_zero() {
            bail!("the measured duration must be positive");
        }
        if self.duration.as_secs_f64() > DURATION_MAX_S as f64 || self.warmup.as_secs_f64() > DURATION_MAX_S as f64 {
            bail!("warm-up and duration are limited to {DURATION_MAX_S} s each");
        }
        if self.attempt_timeout.is_zero() || self.attempt_timeout > Duration::from_millis(ATTEMPT_TIMEOUT_MAX_MS) {
            bail!("the attempt timeout must be between 1 ms and {ATTEMPT_TIMEOUT_MAX_MS} ms");
        }
        Ok(())
    }
}

/// Run `plan` against `target` and report the measured period.
///
/// Errors only for an invalid plan or a panicking target; failed transfers
/// are counted, not returned.
pub async fn run<T: Target>(target: Arc<T>, plan: &Plan) -> anyhow::Result<RunReport> {
    plan.validate()?;
    let started = Instant::now();
    let measure_start = started + plan.warmup;
    let end = measure_start + plan.duration;
    let recorder = Arc::new(Mutex::new(Recorder::new(measure_start, end)?));
    let progress = Progress::start(target.name(), plan, started, recorder.clone());
    let cpu = super::cpu::Meter::start(target.processes(), measure_start, end);
    let result = match plan.mode {
        Mode::Closed { workers } => closed_loop(&target, workers, end, plan.attempt_timeout, &recorder).await,
        Mode::Open { rate_per_second, in_flight_max } => {
            open_loop(&target, rate_per_second, in_flight_max, started, end, plan.attempt_timeout, &recorder).await
        }
    };
    progress.finish();
    result?;
    let mut report = lock(&recorder).report(target.name(), plan);
    report.cpu = cpu.read(report.committed).await;
    Ok(report)
}

/// `workers` tasks, each with its own sequence, until `end`.
async fn closed_loop<T: Target>(
    target: &Arc<T>,
    workers: usize,
    end: Instant,
    attempt_timeout: Duration,
    recorder: &Arc<Mutex<Recorder>>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let target = target.clone();
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let mut sequence = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let attempt = attempt(&*target, worker, sequence, attempt_timeout).await;
                lock(&recorder).record(start, Instant::now(), &attempt);
                sequence += 1;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a closed-loop worker panicked")?;
    }
    Ok(())
}

/// An open loop's in-flight slot: the `worker` a target sees, and the next
/// sequence number sent through it.
#[derive(Debug)]
struct Slot {
    worker: usize,
    sequence: u64,
}

/// Hands its slot back, with the sequence advanced, when the task holding it
/// ends, even by a panic.
struct SlotGuard {
    slot: Slot,
    free: mpsc::Sender<Slot>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // The channel holds every slot, so it is never full; it is closed only
        // when the open loop has stopped waiting, and then nobody needs the slot.
        let _ = self.free.try_send(Slot { worker: self.slot.worker, sequence: self.slot.sequence + 1 });
    }
}

/// Transfers at `rate_per_second` from `started` until `end`, each sent at
/// its intended time if a slot is free and dropped otherwise.
async fn open_loop<T: Target>(
    target: &Arc<T>,
    rate_per_second: u64,
    in_flight_max: usize,
    started: Instant,
    end: Instant,
    attempt_timeout: Duration,
    recorder: &Arc<Mutex<Recorder>>,
) -> anyhow::Result<()> {
    let (free, mut slots) = mpsc::channel(in_flight_max);
    for worker in 0..in_flight_max {
        free.try_send(Slot { worker, sequence: 0 }).context("preparing the in-flight slots")?;
    }
    let mut burst = 0u32;
    for index in 0u64.. {
        // Integer arithmetic keeps the timeline exact over long runs.
        let offset_ns = u128::from(index) * 1_000_000_000 / u128::from(rate_per_second);
        let intended = started + Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(u64::MAX));
        if intended >= end {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended).await;
            burst = 0;
        } else {
            burst += 1;
            if burst >= CATCH_UP_BURST_MAX {
                tokio::task::yield_now().await;
                burst = 0;
            }
        }
        let Ok(slot) = slots.try_recv() else {
            lock(recorder).record_dropped(intended);
            continue;
        };
        let guard = SlotGuard { slot, free: free.clone() };
        let target = target.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let attempt = attempt(&*target, guard.slot.worker, guard.slot.sequence, attempt_timeout).await;
            lock(&recorder).record(intended, Instant::now(), &attempt);
            drop(guard);
        });
    }
    // Every attempt ends within its timeout; the margin covers a busy runtime.
    let deadline = Instant::now() + attempt_timeout + attempt_timeout / 2 + Duration::from_secs(1);
    for _ in 0..in_flight_max {
        match tokio::time::timeout_at(deadline, slots.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("open loop: in-flight transfers did not end within their timeout"),
        }
    }
    Ok(())
}

/// One transfer, bounded by `timeout`.
async fn attempt<T: Target>(target: &T, worker: usize, sequence: u64, timeout: Duration) -> Attempt {
    match tokio::time::timeout(timeout, target.transfer(worker, sequence)).await {
        Ok(attempt) => attempt,
        Err(_) => Attempt::Failed(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Lock the recorder; a panic elsewhere does not make its counts unusable.
fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One second of the measured period.
#[derive(Default)]
struct SecondStats {
    committed: u64,
    /// Created at the second's first commit.
    latencies: Option<Histogram<u64>>,
}

/// Counts and histograms of a run, shared by its tasks.
struct Recorder {
    measure_start: Instant,
    end: Instant,
    /// Attempts started in the measured period.
    measured: Totals,
    dropped: u64,
    /// Every attempt, warm-up included.
    all: Totals,
    dropped_all: u64,
    latencies: Histogram<u64>,
    seconds: Vec<SecondStats>,
    decline_reasons: BTreeMap<String, u64>,
    failure_reasons: BTreeMap<String, u64>,
    /// An empty histogram that each second's histogram is cloned from.
    second_template: Histogram<u64>,
    /// Committed since the progress line last looked, and their latencies.
    window_committed: u64,
    window_latencies: Histogram<u64>,
}

impl Recorder {
    fn new(measure_start: Instant, end: Instant) -> anyhow::Result<Self> {
        let latencies = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_FIGURES)
            .context("creating the latency histogram")?;
        let second_template = Histogram::new_with_bounds(1, LATENCY_MAX_US, SECOND_SIGNIFICANT_FIGURES)
            .context("creating the per-second latency histogram")?;
        let second_count = end.saturating_duration_since(measure_start).as_secs_f64().ceil() as usize;
        Ok(Recorder {
            measure_start,
            end,
            measured: Totals::default(),
            dropped: 0,
            all: Totals::default(),
            dropped_all: 0,
            latencies,
            seconds: (0..second_count).map(|_| SecondStats::default()).collect(),
            decline_reasons: BTreeMap::new(),
            failure_reasons: BTreeMap::new(),
            window_committed: 0,
            window_latencies: second_template.clone(),
            second_template,
        })
    }

    fn in_measured_period(&self, start: Instant) -> bool {
        start >= self.measure_start && start < self.end
    }

    /// An attempt that (intendedly) started at `start` and ended at `finished`.
    fn record(&mut self, start: Instant, finished: Instant, attempt: &Attempt) {
        let latency_us = u64::try_from(finished.saturating_duration_since(start).as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MAX_US);
        self.all.count(attempt);
        if matches!(attempt, Attempt::Committed) {
            self.window_committed += 1;
            self.window_latencies.saturating_record(latency_us);
        }
        if !self.in_measured_period(start) {
            return;
        }
        self.measured.count(attempt);
        match attempt {
            Attempt::Committed => {
                self.latencies.saturating_record(latency_us);
                let second = start.saturating_duration_since(self.measure_start).as_secs() as usize;
                let template = &self.second_template;
                if let Some(stats) = self.seconds.get_mut(second) {
                    stats.committed += 1;
                    stats.latencies.get_or_insert_with(|| template.clone()).saturating_record(latency_us);
                }
            }
            Attempt::Declined(reason) => tally(&mut self.decline_reasons, reason),
            Attempt::Failed(reason) => tally(&mut self.failure_reasons, reason),
        }
    }

    /// A transfer scheduled for `intended` that found no free slot.
    fn record_dropped(&mut self, intended: Instant) {
        self.dropped_all += 1;
        if self.in_measured_period(intended) {
            self.dropped += 1;
        }
    }

    /// Commits and p99 (ms) since the last call.
    fn take_window(&mut self) -> (u64, Option<f64>) {
        let committed = std::mem::take(&mut self.window_committed);
        let p99 =
            (!self.window_latencies.is_empty()).then(|| self.window_latencies.value_at_quantile(0.99) as f64 / 1_000.0);
        self.window_latencies.reset();
        (committed, p99)
    }

    fn report(&self, target: String, plan: &Plan) -> RunReport {
        let duration_s = plan.duration.as_secs_f64();
        let timeline = self
            .seconds
            .iter()
            .enumerate()
            .map(|(second, stats)| Second {
                second: second as u64,
                committed: stats.committed,
                p99_ms: stats.latencies.as_ref().map(|h| h.value_at_quantile(0.99) as f64 / 1_000.0),
            })
            .collect();
        RunReport {
            target,
            mode: plan.mode,
            warmup_s: plan.warmup.as_secs_f64(),
            duration_s,
            attempt_timeout_ms: u64::try_from(plan.attempt_timeout.as_millis()).unwrap_or(u64::MAX),
            attempted: self.measured.attempted,
            committed: self.measured.committed,
            declined: self.measured.declined,
            failed: self.measured.failed,
            dropped: self.dropped,
            throughput_per_s: self.measured.committed as f64 / duration_s,
            latency_ms: Latency::from_histogram(&self.latencies),
            timeline,
            decline_reasons: self.decline_reasons.clone(),
            failure_reasons: self.failure_reasons.clone(),
            including_warmup: Totals { dropped: self.dropped_all, ..self.all.clone() },
            audit: None,
            cpu: Vec::new(),
        }
    }
}

impl Totals {
    fn count(&mut self, attempt: &Attempt) {
        self.attempted += 1;
        match attempt {
            Attempt::Committed => self.committed += 1,
            Attempt::Declined(_) => self.declined += 1,
            Attempt::Failed(_) => self.failed += 1,
        }
    }
}

/// Count `reason`, keeping at most [`REASON_KINDS_MAX`] distinct names.
fn tally(reasons: &mut BTreeMap<String, u64>, reason: &str) {
    if let Some(count) = reasons.get_mut(reason) {
        *count += 1;
    } else if reasons.len() < REASON_KINDS_MAX {
        reasons.insert(reason.to_owned(), 1);
    } else {
        *reasons.entry(OTHER_REASONS.to_owned()).or_default() += 1;
    }
}

/// The live progress line: elapsed time, committed per second and the p99 of
/// the last second, refreshed every second until the run ends.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(name: String, plan: &Plan, started: Instant, recorder: Arc<Mutex<Recorder>>) -> Progress {
        let total = plan.warmup + plan.duration;
        let bar = if plan.progress {
            ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("{prefix:>10} [{bar:24}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name);
        let warmup = plan.warmup;
        let duration = plan.duration;
        // The ticker stops at the end of the run, or at the latest when the
        // last attempt must have ended.
        let stop_at = started + total + plan.attempt_timeout * 2 + Duration::from_secs(1);
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(PROGRESS_TICK_MS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            while Instant::now() < stop_at {
                interval.tick().await;
                let now = Instant::now();
                let (committed, p99) = lock(&recorder).take_window();
                let rate = committed as f64 / now.saturating_duration_since(last).as_secs_f64().max(1e-3);
                last = now;
                let elapsed = now.saturating_duration_since(started);
                let phase = if elapsed < warmup {
                    format!("warm-up {:.1}/{} s", elapsed.as_secs_f64(), warmup.as_secs_f64())
                } else {
                    let measured = (elapsed - warmup).min(duration);
                    format!("measuring {:.1}/{} s", measured.as_secs_f64(), duration.as_secs_f64())
                };
                let p99 = p99.map_or_else(|| "-".to_owned(), |p99| format!("{p99:.2} ms"));
                ticker_bar.set_position(elapsed.as_millis() as u64);
                ticker_bar.set_message(format!("{phase}  {rate:>8.0} committed/s  p99 {p99}"));
            }
        });
        Progress { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A target in this process: sleeps `latency(sequence)` and records every call.
    struct FakeTarget {
        calls: Mutex<Vec<(usize, u64)>>,
        /// Calls currently running, per worker and in all.
        running: Vec<AtomicUsize>,
        running_all: AtomicUsize,
        running_all_max: AtomicUsize,
        overlapping_worker_calls: AtomicUsize,
        latency: fn(u64) -> Duration,
        outcome: Box<dyn Fn(usize, u64) -> Attempt + Send + Sync>,
    }

    impl FakeTarget {
        fn new(concurrency: usize, latency: fn(u64) -> Duration) -> Self {
            FakeTarget {
                calls: Mutex::new(Vec::new()),
                running: (0..concurrency).map(|_| AtomicUsize::new(0)).collect(),
                running_all: AtomicUsize::new(0),
                running_all_max: AtomicUsize::new(0),
                overlapping_worker_calls: AtomicUsize::new(0),
                latency,
                outcome: Box::new(|_, _| Attempt::Committed),
            }
        }

        fn calls(&self) -> Vec<(usize, u64)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Target for FakeTarget {
        fn name(&self) -> String {
            "fake".to_owned()
        }

        async fn transfer(&self, worker: usize, sequence: u64) -> Attempt {
            if self.running[worker].fetch_add(1, Ordering::SeqCst) != 0 {
                self.overlapping_worker_calls.fetch_add(1, Ordering::SeqCst);
            }
            let running = self.running_all.fetch_add(1, Ordering::SeqCst) + 1;
            self.running_all_max.fetch_max(running, Ordering::SeqCst);
            self.calls.lock().unwrap().push((worker, sequence));
            tokio::time::sleep((self.latency)(sequence)).await;
            let outcome = (self.outcome)(worker, sequence);
            self.running_all.fetch_sub(1, Ordering::SeqCst);
            self.running[worker].fetch_sub(1, Ordering::SeqCst);
            outcome
        }
    }

    fn plan(mode: Mode, warmup_ms: u64, duration_ms: u64) -> Plan {
        Plan {
            mode,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
            attempt_timeout: Duration::from_secs(5),
            progress: false,
        }
    }

    fn assert_counts_add_up(report: &RunReport) {
        assert_eq!(report.attempted, report.committed + report.declined + report.failed, "{report:?}");
        let all = &report.including_warmup;
        assert_eq!(all.attempted, all.committed + all.declined + all.failed, "{report:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_workers_send_one_transfer_at_a_time_in_sequence() {
        let workers = 6;
        // Every fifth transfer is declined and every seventh fails.
        let mut target = FakeTarget::new(workers, |_| Duration::from_millis(2));
        target.outcome = Box::new(|_, sequence| match sequence {
            s if s % 7 == 3 => Attempt::Failed("boom".to_owned()),
            s if s % 5 == 1 => Attempt::Declined("insufficient position".to_owned()),
            _ => Attempt::Committed,
        });
        let target = Arc::new(target);
        let report = run(target.clone(), &plan(Mode::Closed { workers }, 100, 400)).await.unwrap();

        assert_eq!(target.overlapping_worker_calls.load(Ordering::SeqCst), 0);
        assert!(target.running_all_max.load(Ordering::SeqCst) <= workers);
        let calls = target.calls();
        for worker in 0..workers {
            let sequences: Vec<u64> = calls.iter().filter(|(w, _)| *w == worker).map(|(_, s)| *s).collect();
            assert!(!sequences.is_empty(), "worker {worker} sent nothing");
            let expected: Vec<u64> = (0..sequences.len() as u64).collect();
            assert_eq!(sequences, expected, "worker {worker} did not send 0, 1, 2, ... one after another");
        }
        assert_counts_add_up(&report);
        assert_eq!(report.including_warmup.attempted, calls.len() as u64);
        assert!(report.committed > 0 && report.declined > 0 && report.failed > 0, "{report:?}");
        assert_eq!(report.decline_reasons.get("insufficient position"), Some(&report.declined));
        assert_eq!(report.failure_reasons.get("boom"), Some(&report.failed));
        assert_eq!(report.dropped, 0);
        assert_eq!(report.timeline.len(), 1);
        assert_eq!(report.timeline.iter().map(|s| s.committed).sum::<u64>(), report.committed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_drops_what_exceeds_the_in_flight_bound() {
        let in_flight_max = 4;
        // 4 slots of 100 ms serve at most 40 transfers/s; 200/s are offered.
        let target = Arc::new(FakeTarget::new(in_flight_max, |_| Duration::from_millis(100)));
        let mode = Mode::Open { rate_per_second: 200, in_flight_max };
        let report = run(target.clone(), &plan(mode, 0, 1_000)).await.unwrap();

        assert!(target.running_all_max.load(Ordering::SeqCst) <= in_flight_max);
        assert_eq!(target.overlapping_worker_calls.load(Ordering::SeqCst), 0);
        assert!(report.dropped > 0, "{report:?}");
        // Exactly the scheduled transfers were either sent or dropped.
        assert_eq!(report.attempted + report.dropped, 200, "{report:?}");
        assert!(report.attempted <= 4 * 11, "{report:?}");
        assert_counts_add_up(&report);
        // Each slot's sequence numbers are contiguous too.
        let calls = target.calls();
        for worker in 0..in_flight_max {
            let sequences: Vec<u64> = calls.iter().filter(|(w, _)| *w == worker).map(|(_, s)| *s).collect();
            assert_eq!(sequences, (0..sequences.len() as u64).collect::<Vec<_>>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_sends_at_the_offered_rate_when_the_target_keeps_up() {
        let target = Arc::new(FakeTarget::new(64, |_| Duration::from_millis(1)));
        let mode = Mode::Open { rate_per_second: 500, in_flight_max: 64 };
        let report = run(target.clone(), &plan(mode, 200, 1_000)).await.unwrap();
        assert_eq!(report.attempted + report.dropped, 500, "{report:?}");
        assert_eq!(report.including_warmup.attempted + report.including_warmup.dropped, 600, "{report:?}");
        assert_counts_add_up(&report);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_up_attempts_are_excluded_from_the_report() {
        for mode in [Mode::Closed { workers: 4 }, Mode::Open { rate_per_second: 400, in_flight_max: 32 }] {
            let warmup = Duration::from_millis(300);
            // The engine's warm-up ends no earlier than `before + warmup`, so
            // whatever this target sees start before then is warm-up to the
            // engine too: it fails all of those, and commits the rest.
            let before = Instant::now();
            let mut target = FakeTarget::new(mode.concurrency(), |_| Duration::from_millis(2));
            target.outcome = Box::new(move |_, _| {
                if Instant::now() < before + warmup {
                    Attempt::Failed("warm-up".to_owned())
                } else {
                    Attempt::Committed
                }
            });
            let target = Arc::new(target);
            let report = run(target.clone(), &plan(mode, 300, 500)).await.unwrap();
            assert!(report.including_warmup.failed > 0, "{mode:?}: no warm-up attempt: {report:?}");
            assert_eq!(report.failed, 0, "{mode:?}: warm-up attempts were measured: {report:?}");
            assert!(report.committed > 0, "{report:?}");
            assert!(report.attempted < report.including_warmup.attempted, "{report:?}");
            assert_counts_add_up(&report);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn percentiles_are_ordered_and_match_injected_latencies() {
        // 95 % of transfers take 5 ms and 5 % take 60 ms; sleeps only ever run
        // late, so the injected values are lower bounds.
        let target =
            Arc::new(FakeTarget::new(8, |sequence| Duration::from_millis(if sequence % 20 == 7 { 60 } else { 5 })));
        let report = run(target, &plan(Mode::Closed { workers: 8 }, 0, 1_500)).await.unwrap();
        let latency = report.latency_ms.unwrap();
        assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99, "{latency:?}");
        assert!(latency.p99 <= latency.p999 && latency.p999 <= latency.max, "{latency:?}");
        assert!(latency.p50 >= 5.0 && latency.p50 < 30.0, "{latency:?}");
        assert!(latency.p99 >= 60.0 && latency.max < 1_000.0, "{latency:?}");
        assert!(latency.mean > 5.0 && latency.mean < latency.p99, "{latency:?}");
    }

    #[test]
    fn reasons_are_bounded() {
        let mut reasons = BTreeMap::new();
        for i in 0..100 {
            tally(&mut reasons, &format!("reason {i}"));
        }
        tally(&mut reasons, "reason 3");
        assert_eq!(reasons.len(), REASON_KINDS_MAX + 1);
        assert_eq!(reasons["reason 3"], 2);
        assert_eq!(reasons[OTHER_REASONS], 100 - REASON_KINDS_MAX as u64);
    }

    #[test]
    fn plans_outside_the_limits_are_refused() {
        assert!(plan(Mode::Closed { workers: 0 }, 0, 1_000).validate().is_err());
        assert!(plan(Mode::Closed { workers: WORKERS_MAX + 1 }, 0, 1_000).validate().is_err());
        assert!(plan(Mode::Open { rate_per_second: 0, in_flight_max: 1 }, 0, 1_000).validate().is_err());
        assert!(plan(Mode::Open { rate_per_second: 10, in_flight_max: 0 }, 0, 1_000).validate().is_err());
        assert!(plan(Mode::Closed { workers: 1 }, 0, 0).validate().is_err());
        assert!(plan(Mode::Closed { workers: 1 }, 0, (DURATION_MAX_S + 1) * 1_000).validate().is_err());
        assert!(plan(Mode::Closed { workers: 1 }, 0, 1_000).validate().is_ok());
    }
}
