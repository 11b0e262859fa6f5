//! `paymesh bench`: a load generator that measures committed transfers per
//! second and their latency percentiles against one or more targets, one after
//! another, and prints them side by side.
//!
//! * [`load`] is the engine: closed or open loop, warm-up, HDR histogram, the
//!   live progress line. It knows targets only through [`load::Target`].
//! * [`report`] is what a run produces: JSON and the side-by-side table.
//! * [`workload`] is what every target does: which payer pays which
//!   merchant how much, derived from `(worker, sequence)`.
//! * [`paymesh`] starts a fresh region of `paymesh start` processes and pays
//!   through the partner API over mutual TLS, then audits the region.
//! * `postgres` is the baseline: the same double-entry transfer on
//!   PostgreSQL, with an audit of its books after the run. It and its
//!   client library are built only with the crate's `postgres` feature
//!   (`cargo build --release --features postgres`), so a node's binary
//!   does not carry them; without it `--target postgres` is refused, saying
//!   so.
//!
//! `--target paymesh,postgres` runs both, one after the other, and prints the
//! ratio of their throughputs.
//!
//! `--flood` (paymesh only) measures the workload twice on the same region,
//! without and then with one extra partner flooding it (see [`flood`]), and
//! prints both side by side with the nodes' resident memory before and after.

pub mod cpu;
pub mod flood;
pub mod load;
pub mod paymesh;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod report;
pub mod soak;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use load::{Mode, Plan};
use paymesh::{PaymeshConfig, PaymeshTarget};
use paymesh_node::config::GROUP_COMMIT_INTERVAL_MS_MAX;
#[cfg(feature = "postgres")]
use postgres::{PostgresConfig, PostgresTarget};
use report::{BenchReport, RunReport};

/// What `scripts/postgres.sh start` prints with its default port.
pub const POSTGRES_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:55432/paymesh_bench";
/// Each payer's prefunded position by default, in fen: ten billion yuan,
/// enough that no realistic run declines a transfer.
pub const PREFUND_DEFAULT_MINOR: i64 = 1_000_000_000_000;
/// What is measured unless `--target` says otherwise: both, when this build
/// has the baseline.
const TARGETS_DEFAULT: &str = if cfg!(feature = "postgres") { "paymesh,postgres" } else { "paymesh" };
/// Closed-loop workers unless `--workers` says otherwise.
const WORKERS_DEFAULT: usize = 32;
/// Open-loop in-flight bound unless `--max-in-flight` says otherwise.
const IN_FLIGHT_DEFAULT: usize = 256;
/// Longest wait for a wiped node to catch up (`--rejoin-at`).
const REJOIN_TIMEOUT: Duration = Duration::from_secs(3_600);

/// The systems `paymesh bench` can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// A fresh paymesh region on loopback, through the partner API.
    Paymesh,
    /// The same double-entry transfer on PostgreSQL (see scripts/postgres.sh).
    Postgres,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Paymesh => "paymesh",
            TargetKind::Postgres => "postgres",
        }
    }
}

/// Closed or open loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeKind {
    /// N workers, each sending its next transfer when the previous one ends.
    Closed,
    /// A fixed offered rate, whatever the answers; latency from the intended start.
    Open,
}

/// Arguments of `paymesh bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure; several (comma-separated) run one after another and
    /// are printed side by side.
    /// [default: paymesh,postgres with the `postgres` feature, else paymesh]
    #[arg(long = "target", value_enum, value_delimiter = ',', default_value = TARGETS_DEFAULT, hide_default_value = true)]
    pub targets: Vec<TargetKind>,
    /// Closed loop (fixed concurrency) or open loop (fixed offered rate).
    #[arg(long, value_enum, default_value_t = ModeKind::Closed)]
    pub mode: ModeKind,
    /// Closed loop: concurrent workers [default: 32].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Open loop: transfers offered per second (required with --mode open).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open loop: most transfers outstanding; beyond it scheduled transfers
    /// are dropped and counted [default: 256].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Seconds of warm-up, excluded from the figures.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// An attempt unanswered after this many milliseconds counts as failed.
    #[arg(long, default_value_t = 5_000)]
    pub attempt_timeout_ms: u64,
    /// Where to write the JSON report [default: target/bench/<targets>.json].
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where the paymesh target's region lives (emptied first; its logs stay).
    #[arg(long, default_value = "target/bench/paymesh-region")]
    pub paymesh_dir: PathBuf,
    /// Nodes in the paymesh target's region.
    #[arg(long, default_value_t = 3)]
    pub paymesh_nodes: u64,
    /// The paymesh target's `raft.group_commit_interval_ms` (0, the default:
    /// off; see docs/ARCHITECTURE.md, "Group commit under load").
    #[arg(long, default_value_t = 0)]
    pub group_commit_ms: u64,
    /// PostgreSQL to measure (scripts/postgres.sh start prints it). Given
    /// again, each server is measured in turn: one started with
    /// `scripts/postgres.sh start-replicated` has synchronous standbys, and
    /// its runs are named `…-r3`.
    #[arg(long = "postgres-url", default_value = POSTGRES_URL_DEFAULT, action = clap::ArgAction::Append)]
    pub postgres_urls: Vec<String>,
    /// PostgreSQL schema for the baseline's tables; emptied at the start of a run.
    #[arg(long, default_value = "paymesh_bench")]
    pub postgres_schema: String,
    /// The PostgreSQL baseline's transfer: `hot` (a switch's books: every
    /// transfer updates the clearing and fee rows) or `spread` (PostgreSQL's
    /// best case: one row inserted and two accounts updated, no row shared).
    /// Several, comma-separated: one run each (with each `--postgres-batch`).
    #[cfg(feature = "postgres")]
    #[arg(long, value_enum, value_delimiter = ',', default_value = "hot")]
    pub postgres_shape: Vec<postgres::Shape>,
    /// Up to this many PostgreSQL transfers per transaction, gathered from
    /// the workers waiting while every connection is busy (1: each its own).
    /// Several, comma-separated: one run each.
    #[cfg(feature = "postgres")]
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub postgres_batch: Vec<usize>,
    /// PostgreSQL's payer and payee accounts, each (default: --payers and
    /// --payees): the spread shape needs many for no row to be shared,
    /// while paymesh's payers are partners, each with its own client.
    #[cfg(feature = "postgres")]
    #[arg(long)]
    pub postgres_accounts: Option<usize>,
    /// Payer accounts (the wallets' customers).
    #[arg(long, default_value_t = 64)]
    pub payers: usize,
    /// Payee accounts (the merchants).
    #[arg(long, default_value_t = 16)]
    pub payees: usize,
    /// Each payer's prefunded position, in minor units (fen); small values
    /// make transfers decline once it is used up.
    #[arg(long, default_value_t = PREFUND_DEFAULT_MINOR)]
    pub prefund: i64,
    /// No live progress line (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// paymesh only: measure the workload without and then with one more
    /// partner flooding the region (bogus transfers with fresh keys, unused
    /// quotes up to its cap, event streams beyond its cap), side by side.
    #[arg(long)]
    pub flood: bool,
    /// With --flood: the flooder's request rate and burst, set by the
    /// operator before the flood [default: the region's default limits].
    #[arg(long)]
    pub flood_rate: Option<u32>,
    /// paymesh only: every this many seconds, record each node's resident
    /// memory, the memory its history engine holds (block cache and write
    /// buffers) and its history bytes on disk, written beside the report as
    /// `<report>.memory.csv` and a plot, `<report>.memory.svg` (for soak
    /// runs: `--mode open --rate <half the peak> --duration 1800`).
    #[arg(long)]
    pub sample_every: Option<f64>,
    /// paymesh only: this many seconds into the run (warm-up included),
    /// kill a follower, wipe its data directory and start it again, and
    /// report how long it took to catch up under the load and the peak
    /// resident memory of it and of the leader meanwhile (also written
    /// beside the report as `<report>.rejoin.json`).
    #[arg(long)]
    pub rejoin_at: Option<f64>,
    /// paymesh only: this many seconds into the run (warm-up included),
    /// close the region's settlement window, and report how long the close
    /// took, what the window held, and the p99 of the payments that started
    /// while it closed beside the other seconds' (also written beside the
    /// report as `<report>.close.json`). For the window-close benchmark:
    /// `--workers 256 --duration 240 --close-window-at 220`.
    #[arg(long)]
    pub close_window_at: Option<f64>,
    /// paymesh only: pay with one `CreatePayment` call per transfer (priced
    /// and started in one replicated command) rather than `CreateQuote`
    /// then `CreateTransfer`.
    #[arg(long)]
    pub one_call: bool,
    /// paymesh only: pay with one `CreatePayment` call per transfer, as
    /// `--one-call`, through the SDK's batching: each payer's calls in
    /// flight at once travel together as `CreateTransfers` requests.
    #[arg(long, conflicts_with = "one_call")]
    pub batched: bool,
    /// paymesh only: run paymesh once per way of paying named, each on a
    /// region set up afresh, side by side in one report
    /// (`--paymesh-calls quote-then-transfer,one-call,batched`). Replaces
    /// --one-call and --batched.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with_all = ["one_call", "batched"])]
    pub paymesh_calls: Vec<paymesh::Calls>,
    /// paymesh only: register a webhook for every payee partner, each with a
    /// receiver of its own in this process (HTTPS on loopback), and report
    /// how fast their events arrived (also beside the report as
    /// `<report>.webhooks.json`).
    #[arg(long)]
    pub webhooks: bool,
    /// With --webhooks: this many receivers (the first payees') accept
    /// connections and never answer.
    #[arg(long, default_value_t = 0, requires = "webhooks")]
    pub webhooks_stuck: usize,
    /// paymesh only: scrape every node's Prometheus metrics every this many
    /// seconds during the run, as a Prometheus server would, and report what
    /// the scrapes took (to measure what metrics cost: compare a run
    /// without it).
    #[arg(long)]
    pub scrape_metrics_every: Option<f64>,
}

impl BenchArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        let mode = match self.mode {
            ModeKind::Closed => {
                if self.rate.is_some() || self.max_in_flight.is_some() {
                    bail!("--rate and --max-in-flight apply to --mode open");
                }
                Mode::Closed { workers: self.workers.unwrap_or(WORKERS_DEFAULT) }
            }
            ModeKind::Open => {
                if self.workers.is_some() {
                    bail!("--workers applies to --mode closed; an open loop is bounded by --max-in-flight");
                }
                let Some(rate_per_second) = self.rate else { bail!("--mode open needs --rate <transfers per second>") };
                Mode::Open { rate_per_second, in_flight_max: self.max_in_flight.unwrap_or(IN_FLIGHT_DEFAULT) }
            }
        };
        let plan = Plan {
            mode,
            warmup: seconds("warmup", self.warmup, Zero::Allowed)?,
            duration: seconds("duration", self.duration, Zero::Allowed)?,
            attempt_timeout: Duration::from_millis(self.attempt_timeout_ms),
            progress: !self.no_progress,
        };
        plan.validate()?;
        Ok(plan)
    }
}

/// Run `paymesh bench`: every target in turn, then the table, the audits and
/// the JSON report. Fails if a target's audit does not hold (after writing
/// the report, so it can be inspected).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    if args.targets.is_empty() {
        bail!("give at least one --target");
    }
    if args.group_commit_ms > GROUP_COMMIT_INTERVAL_MS_MAX {
        bail!("--group-commit-ms must be at most {GROUP_COMMIT_INTERVAL_MS_MAX}");
    }
    if (args.flood || args.rejoin_at.is_some() || args.close_window_at.is_some())
        && args.targets != [TargetKind::Paymesh]
    {
        bail!("--flood, --rejoin-at and --close-window-at apply to --target paymesh alone");
    }
    if args.close_window_at.is_some() && args.flood {
        bail!("--close-window-at runs without --flood");
    }
    if args.rejoin_at.is_some() && (args.flood || args.paymesh_nodes < 3) {
        bail!("--rejoin-at needs a region of at least 3 nodes and no --flood");
    }
    let mut runs = Vec::with_capacity(args.targets.len());
    for &kind in &args.targets {
        let reports = run_target(kind, &args, &plan).await.with_context(|| format!("benchmarking {}", kind.name()))?;
        runs.extend(reports);
    }
    let bench = BenchReport::new(runs);
    print!("{}", bench.table());
    for run in &bench.runs {
        let Some(audit) = &run.audit else { continue };
        println!("audit of {}: {}", run.target, if audit.holds { "holds" } else { "DOES NOT HOLD" });
        for check in &audit.checks {
            println!("  {} {} ({})", if check.holds { "ok  " } else { "FAIL" }, check.name, check.detail);
        }
    }
    let path = report_path(&args);
    bench.write_json(&path)?;
    println!("report written to {}", path.display());
    let failed: Vec<&str> =
        bench.runs.iter().filter(|r| r.audit.as_ref().is_some_and(|a| !a.holds)).map(|r| r.target.as_str()).collect();
    if !failed.is_empty() {
        bail!("the audit of {} does not hold", failed.join(", "));
    }
    Ok(())
}

fn show_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"))
}

/// The figures of a window closed `at` seconds into `report`'s run.
fn window_close(
    report: &RunReport,
    plan: &Plan,
    at: f64,
    took: Duration,
    window: &paymesh_proto::admin::v1::SettlementWindow,
) -> paymesh::WindowClose {
    let into_measured = at - plan.warmup.as_secs_f64();
    let first = into_measured.floor().max(0.0) as u64;
    let last = (into_measured + took.as_secs_f64()).floor().max(0.0) as u64 + 1;
    let during: Vec<f64> =
        report.timeline.iter().filter(|s| (first..=last).contains(&s.second)).filter_map(|s| s.p99_ms).collect();
    let mut others: Vec<f64> =
        report.timeline.iter().filter(|s| !(first..=last).contains(&s.second)).filter_map(|s| s.p99_ms).collect();
    others.sort_by(f64::total_cmp);
    let warmup_committed = report.including_warmup.committed.saturating_sub(report.committed);
    let measured_before: u64 = report.timeline.iter().filter(|s| s.second < first).map(|s| s.committed).sum();
    let volume: rust_decimal::Decimal = window
        .positions
        .iter()
        .filter(|p| p.account.starts_with("partner:"))
        .filter_map(|p| p.net.as_ref()?.amount.parse::<rust_decimal::Decimal>().ok())
        .filter(|net| net.is_sign_positive())
        .sum();
    paymesh::WindowClose {
        sent_at_s: at,
        close_ms: took.as_secs_f64() * 1000.0,
        window: window.number,
        positions: window.positions.len(),
        volume: volume.to_string(),
        committed_before: if into_measured >= 0.0 { warmup_committed + measured_before } else { 0 },
        p99_ms_while_closing: during.into_iter().reduce(f64::max),
        p99_ms_median_second: others.get(others.len() / 2).copied(),
        p99_ms_run: report.latency_ms.as_ref().map(|l| l.p99),
    }
}

/// The longest wait after a run with --webhooks for the answering
/// receivers to get every event.
const WEBHOOKS_CATCH_UP: Duration = Duration::from_secs(60);

/// Where the JSON report goes.
fn report_path(args: &BenchArgs) -> PathBuf {
    args.json.clone().unwrap_or_else(|| {
        let names: Vec<&str> = args.targets.iter().map(|t| t.name()).collect();
        PathBuf::from("target/bench").join(format!("{}.json", names.join("-")))
    })
}

/// Set up one target, run the plan against it (twice with `--flood`), audit
/// it, and release it before the next target runs.
async fn run_target(kind: TargetKind, args: &BenchArgs, plan: &Plan) -> anyhow::Result<Vec<RunReport>> {
    match kind {
        TargetKind::Paymesh => {
            let calls = match (&args.paymesh_calls[..], args.batched, args.one_call) {
                ([], true, _) => vec![paymesh::Calls::Batched],
                ([], _, true) => vec![paymesh::Calls::OneCall],
                ([], _, _) => vec![paymesh::Calls::QuoteThenTransfer],
                (calls, _, _) => calls.to_vec(),
            };
            if args.flood && calls.len() > 1 {
                bail!("--flood measures one way of paying: give one --paymesh-calls");
            }
            let mut reports = Vec::with_capacity(calls.len());
            for calls in calls {
                reports.extend(paymesh_run(calls, args, plan).await?);
            }
            Ok(reports)
        }
        #[cfg(not(feature = "postgres"))]
        TargetKind::Postgres => bail!(
            "this paymesh was built without the PostgreSQL baseline: build it with `cargo build --release \
             --features postgres` to measure --target postgres"
        ),
        #[cfg(feature = "postgres")]
        TargetKind::Postgres => {
            let mut reports = Vec::new();
            for url in &args.postgres_urls {
                for &shape in &args.postgres_shape {
                    for &batch in &args.postgres_batch {
                        let config = PostgresConfig {
                            url: url.clone(),
                            schema: args.postgres_schema.clone(),
                            connections: plan.mode.concurrency().min(postgres::CONNECTIONS_MAX),
                            payers: args.postgres_accounts.unwrap_or(args.payers),
                            payees: args.postgres_accounts.unwrap_or(args.payees),
                            prefund_minor: args.prefund,
                            shape,
                            batch,
                        };
                        eprintln!(
                            "postgres: {} payers, {} payees, {} connections, schema {}, {:?} transfers, up to {} per \
                             transaction",
                            config.payers, config.payees, config.connections, config.schema, config.shape, config.batch
                        );
                        let target = Arc::new(PostgresTarget::setup(&config).await?);
                        let mut report = load::run(target.clone(), plan).await?;
                        report.audit = Some(target.audit(&report.including_warmup).await?);
                        reports.push(report);
                    }
                }
            }
            Ok(reports)
        }
    }
}

/// Whether a number of seconds may be zero (an instant) or not (an
/// interval: a zero one would never let time pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

/// The option `--flag`'s `value` as a duration.
fn seconds(flag: &str, value: f64, zero: Zero) -> anyhow::Result<Duration> {
    let bound = if zero == Zero::Allowed { "≥ 0" } else { "> 0" };
    let duration = Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| zero == Zero::Allowed || !d.is_zero())
        .with_context(|| format!("--{flag} must be a number of seconds {bound}, not {value}"))?;
    Ok(duration)
}

/// Set up a paymesh region paying with `calls`, run the plan against it
/// (twice with `--flood`), audit it, and shut it down.
async fn paymesh_run(calls: paymesh::Calls, args: &BenchArgs, plan: &Plan) -> anyhow::Result<Vec<RunReport>> {
    let config = PaymeshConfig {
        dir: args.paymesh_dir.clone(),
        nodes: args.paymesh_nodes,
        group_commit_ms: args.group_commit_ms,
        payers: args.payers,
        payees: args.payees,
        prefund_minor: args.prefund,
        flooder: args.flood,
        calls,
        webhooks: args.webhooks,
        webhooks_stuck: args.webhooks_stuck,
    };
    eprintln!(
        "paymesh: a {}-node region in {}, {} payer and {} payee partners",
        config.nodes,
        config.dir.display(),
        config.payers,
        config.payees
    );
    if args.flood {
        return flooded(&config, args.flood_rate, plan).await;
    }
    let target = Arc::new(PaymeshTarget::setup(&config).await?);
    let every = args.sample_every.map(|s| seconds("sample-every", s, Zero::Refused)).transpose()?;
    let sampler = every.map(|every| soak::Sampler::start(target.clone(), every));
    let rejoin = args.rejoin_at.map(|s| seconds("rejoin-at", s, Zero::Allowed)).transpose()?.map(|at| {
        let target = target.clone();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            target.rejoin(REJOIN_TIMEOUT).await
        })
    });
    let close = args.close_window_at.map(|s| seconds("close-window-at", s, Zero::Allowed)).transpose()?.map(|at| {
        let target = target.clone();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            target.close_window().await
        })
    });
    let scraper = args
        .scrape_metrics_every
        .map(|s| seconds("scrape-metrics-every", s, Zero::Refused))
        .transpose()?
        .map(|every| paymesh::Scraper::start(target.metrics_addrs(), every));
    let outcome = async {
        let mut report = load::run(target.clone(), plan).await?;
        if let Some(scraper) = scraper {
            let figures = scraper.finish().await?;
            println!(
                "metrics: {} scrapes ({} failed) of every node every {} s during the run; {:.0} KiB each on \
                 average, {:.1} ms median, {:.1} ms longest",
                figures.scrapes,
                figures.failures,
                figures.every_s,
                figures.bytes_mean as f64 / 1024.0,
                figures.ms_p50,
                figures.ms_max
            );
            let path = report_path(args).with_extension("scrapes.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let (Some(close), Some(at)) = (close, args.close_window_at) {
            let (took, window) = close.await.context("the window-close task")??;
            let figures = window_close(&report, plan, at, took, &window);
            println!(
                "settlement window {} closed {:.0} s into the run in {:.1} ms over about {} committed \
                     transfers ({} CNY, {} accounts); p99 of payments started while it closed {} ms, median \
                     p99 of the other seconds {} ms, the run's p99 {} ms",
                figures.window,
                figures.sent_at_s,
                figures.close_ms,
                figures.committed_before,
                figures.volume,
                figures.positions,
                show_ms(figures.p99_ms_while_closing),
                show_ms(figures.p99_ms_median_second),
                show_ms(figures.p99_ms_run)
            );
            let path = report_path(args).with_extension("close.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(rejoin) = rejoin {
            let rejoin = rejoin.await.context("the rejoin task")??;
            println!(
                "rejoin: node {} wiped at leader index {}, caught up with node {} in {:.1} s; its history \
                     {} records, {:.0} MiB; peak resident memory {:.0} MiB (rejoined), {:.0} MiB (leader)",
                rejoin.node,
                rejoin.leader_applied,
                rejoin.leader,
                rejoin.seconds,
                rejoin.history_records,
                rejoin.history_mib,
                rejoin.peak_rss_mib_rejoined,
                rejoin.peak_rss_mib_leader
            );
            let path = report_path(args).with_extension("rejoin.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&rejoin)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(sampler) = sampler {
            let samples = sampler.finish().await;
            let (csv, svg) = soak::write(&report_path(args), &samples)?;
            println!("memory over time written to {} and {}", csv.display(), svg.display());
            let last: Vec<String> = samples
                .iter()
                .rev()
                .take(config.nodes as usize)
                .map(|s| format!("node {} {:.0} MiB resident, {:.0} MiB history", s.node, s.rss_mib, s.history_mib))
                .collect();
            println!("at the end: {}", last.join("; "));
        }
        if let Some(figures) = target.webhook_figures(WEBHOOKS_CATCH_UP).await? {
            println!(
                "webhooks: {} answering receivers got {} of {} events ({} again), event to arrival p50 {} ms, p99 {} \
                 ms, max {} ms; caught up {} after the run; {} never-answering receivers got {} requests",
                figures.answering,
                figures.events,
                figures.expected,
                figures.repeats,
                figures.latency_ms_p50,
                figures.latency_ms_p99,
                figures.latency_ms_max,
                figures.caught_up_after_s.map_or("not".to_owned(), |s| format!("{s:.1} s")),
                figures.stuck,
                figures.stuck_requests
            );
            let path = report_path(args).with_extension("webhooks.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        report.audit = Some(target.audit(&report.including_warmup).await?);
        anyhow::Ok(vec![report])
    }
    .await;
    target.shutdown()?;
    outcome
}

fn show_resident(when: &str, nodes: &[(u64, u64)]) {
    let each: Vec<String> =
        nodes.iter().map(|(id, kib)| format!("node {id} {:.1} MiB", *kib as f64 / 1024.0)).collect();
    println!("resident memory {when}: {}", each.join(", "));
}

/// CPU time this process has used, in seconds.
fn own_cpu_seconds() -> f64 {
    paymesh::process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// The workload without the flood and with it, each on a region of its own
/// set up afresh (the flooder configured in both, idle in the first), each
/// audited.
///
/// Each run has a new region because a region does not stay the same from
/// one run to the next: its state keeps every transfer of the earlier runs
/// (for a day), so each run's snapshots and applies cost more than the last
/// one's. Measured on one region with a flooder limited to 1 request/s (no
/// flood at all), a second run was a quarter to a third slower than the
/// first, which a comparison of two runs on one region would have blamed on
/// the flood.
async fn flooded(config: &PaymeshConfig, flood_rate: Option<u32>, plan: &Plan) -> anyhow::Result<Vec<RunReport>> {
    let mut reports = Vec::with_capacity(2);
    for flooding in [false, true] {
        let target = Arc::new(PaymeshTarget::setup(config).await?);
        let outcome = flood_run(&target, flooding, flood_rate, plan).await;
        target.shutdown()?;
        reports.push(outcome?);
    }
    let change = |a: f64, b: f64| if b > 0.0 { format!("{:+.1} %", (a / b - 1.0) * 100.0) } else { "-".into() };
    let p99 = |r: &RunReport| r.latency_ms.as_ref().map_or(0.0, |l| l.p99);
    println!(
        "normal workload under the flood: throughput {}, p99 {}",
        change(reports[1].throughput_per_s, reports[0].throughput_per_s),
        change(p99(&reports[1]), p99(&reports[0]))
    );
    Ok(reports)
}

/// One run of [`flooded`] on a new region: the workload, with the flood if
/// `flooding`; what the nodes' memory and the CPU did.
async fn flood_run(
    target: &Arc<PaymeshTarget>,
    flooding: bool,
    flood_rate: Option<u32>,
    plan: &Plan,
) -> anyhow::Result<RunReport> {
    let flooder = target.flooder.clone().context("the flooder was not configured")?;
    if let Some(rate) = flood_rate {
        target.limit_flooder(rate).await?;
    }
    let cpu = || (target.cpu_seconds().iter().map(|(_, s)| s).sum::<f64>(), own_cpu_seconds());
    let before = target.resident_kib();
    let flood = if flooding {
        eprintln!("paymesh: the workload while {} floods a new region", flood::FLOODER);
        let flood = flood::Flood::start(flooder, paymesh::payee_qr(0));
        // Let the flood reach its caps before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(flood)
    } else {
        eprintln!("paymesh: the workload without the flood, on a new region");
        None
    };
    let (nodes_0, own_0) = cpu();
    let mut report = load::run(target.clone(), plan).await?;
    let (nodes_1, own_1) = cpu();
    let during = target.resident_kib();
    report.target = if flooding { "paymesh (flood)" } else { "paymesh (no flood)" }.to_owned();
    if let Some(flood) = flood {
        let flood = flood.stop().await;
        println!(
            "flood by {}: {} requests in {:.1} s ({:.0}/s); event streams held {}, refused {}",
            flood::FLOODER,
            flood.requests,
            flood.seconds,
            flood.requests as f64 / flood.seconds.max(1e-9),
            flood.streams_open,
            flood.streams_refused
        );
        for (kind, n) in &flood.answers {
            println!("  {kind}: {n}");
        }
    }
    report.audit = Some(target.audit(&report.including_warmup).await?);
    let when = if flooding { "with the flood" } else { "without the flood" };
    show_resident(&format!("before the run {when}"), &before);
    show_resident(&format!("at the end of the run {when}"), &during);
    // Where the machine's CPU went (warm-up included): the three nodes, and
    // this process (the normal workload's clients, and the flooder's), per
    // normal transfer committed.
    let transfers = report.including_warmup.committed.max(1) as f64;
    println!(
        "CPU in the run {when}: nodes {:.1} s, clients {:.1} s; per normal transfer: nodes {:.0} µs, clients {:.0} µs",
        nodes_1 - nodes_0,
        own_1 - own_0,
        (nodes_1 - nodes_0) / transfers * 1e6,
        (own_1 - own_0) / transfers * 1e6
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_seconds_refuse_what_they_cannot_mean() {
        assert_eq!(seconds("warmup", 0.0, Zero::Allowed).ok(), Some(Duration::ZERO));
        assert_eq!(seconds("sample-every", 0.5, Zero::Refused).ok(), Some(Duration::from_millis(500)));
        let zero = seconds("scrape-metrics-every", 0.0, Zero::Refused).unwrap_err().to_string();
        assert_eq!(zero, "--scrape-metrics-every must be a number of seconds > 0, not 0");
        assert!(seconds("duration", -1.0, Zero::Allowed).is_err());
        assert!(seconds("duration", f64::NAN, Zero::Allowed).is_err());
    }
}
