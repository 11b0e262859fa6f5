//! `paymesh-chaos`: the chaos suite's command (see the crate documentation
//! and `chaos/README.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use paymesh_chaos::backend::Backend;
use paymesh_chaos::report;
use paymesh_chaos::run::{run, RunConfig};
use paymesh_harness::{check, history::History};

#[derive(Debug, Parser)]
#[command(name = "paymesh-chaos", about = "Faults against a 3-region paymesh, and the checks that no money was lost")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring up a mesh, run the workload under the seed's faults, check the
    /// history; exit 0 only with no violation.
    Run {
        /// The seed of the fault schedule and the workload.
        #[arg(long)]
        seed: u64,
        /// How long the workload runs, in seconds (faults included).
        #[arg(long, default_value_t = 180)]
        duration: u64,
        /// Where the mesh runs: containers of deploy/ (the default when a
        /// Docker engine answers), or local processes.
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        /// Where the mesh, the history and the report go.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Concurrent payment workers, each paying any corridor.
        #[arg(long, default_value_t = 8, conflicts_with = "per_corridor")]
        workers: u32,
        /// Workers of each corridor instead (a wallet and the region of the
        /// merchants it pays), each paying only that corridor: a stalled
        /// corridor holds only its own workers (1 to 32).
        #[arg(long)]
        per_corridor: Option<u32>,
        /// With --per-corridor: payments offered per second on each
        /// corridor (a tick missed while all its workers wait is skipped).
        #[arg(long, requires = "per_corridor")]
        rate_per_corridor: Option<f64>,
        /// The normal round trip between regions, in milliseconds.
        #[arg(long, default_value_t = 50)]
        rtt_ms: u64,
        /// The `paymesh` binary (default: next to this one).
        #[arg(long)]
        paymesh: Option<PathBuf>,
    },
    /// Check a recorded history again and rewrite its report.
    Check {
        /// The history.json of a run.
        history: PathBuf,
        /// Where the report goes (default: next to the history).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The in-process simulation: many seeds (`--seeds N [--first S]`),
    /// each failing one printed with the command that replays it; or one
    /// seed replayed (`--seed S`), its history and report written.
    Sim {
        /// How many seeds to run, from --first.
        #[arg(long, conflicts_with = "seed")]
        seeds: Option<u64>,
        /// The first seed of --seeds.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// Replay this seed; history and report go to --dir.
        #[arg(long)]
        seed: Option<u64>,
        /// Simulated workload time per seed, in milliseconds.
        #[arg(long, default_value_t = paymesh_chaos::sim::SimConfig::default().duration_ms)]
        duration_ms: u64,
        /// Payment workers.
        #[arg(long, default_value_t = paymesh_chaos::sim::SimConfig::default().workers)]
        workers: u32,
        /// No injected faults (the network's everyday loss and jitter remain).
        #[arg(long)]
        no_faults: bool,
        /// Seeds run at once (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Where a replayed seed's history and report go (default
        /// target/chaos/sim-<seed>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// `paymesh start` processes on loopback.
    Process,
    /// Containers of the `paymesh:dev` image (deploy/).
    Docker,
}

fn main() -> ExitCode {
    // RUST_LOG chooses what is printed (`paymesh_client=debug` shows every
    // retried attempt of the workload's calls); warnings by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match execute(Cli::parse()) {
        Ok(0) => {
            println!("violations: 0");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("violations: {n}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("violations: unknown (the run did not complete)");
            ExitCode::from(2)
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<usize> {
    match cli.command {
        Command::Run { seed, duration, backend, dir, workers, per_corridor, rate_per_corridor, rtt_ms, paymesh } => {
            let docker_answers = || {
                std::process::Command::new("docker")
                    .args(["version", "--format", "{{.Server.Version}}"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            let backend = match backend {
                Some(BackendArg::Process) => Backend::Process,
                Some(BackendArg::Docker) => Backend::Docker(deploy_dir()?),
                None if docker_answers() => Backend::Docker(deploy_dir()?),
                None => Backend::Process,
            };
            let exe = match paymesh {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("paymesh"),
            };
            if !exe.is_file() {
                bail!("no paymesh binary at {} (build it, or pass --paymesh)", exe.display());
            }
            if workers == 0 || workers > 256 || duration == 0 || duration > 24 * 3600 {
                bail!("--workers must be 1..=256 and --duration 1..=86400 s");
            }
            if per_corridor.is_some_and(|n| n == 0 || n > 32) {
                bail!("--per-corridor must be 1..=32");
            }
            if rate_per_corridor.is_some_and(|r| !(r > 0.0 && r <= 1000.0)) {
                bail!("--rate-per-corridor must be above 0 and at most 1000");
            }
            let dir = dir.unwrap_or_else(|| PathBuf::from(format!("target/chaos/seed-{seed}")));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
            }
            let config = RunConfig {
                seed,
                duration: Duration::from_secs(duration),
                backend,
                dir,
                exe,
                workers,
                per_corridor,
                rate_per_corridor,
                rtt_ms,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = runtime.block_on(run(&config))?;
            eprintln!("chaos: report in {}", result.report.markdown.display());
            Ok(result.violations)
        }
        Command::Check { history, out } => {
            let text = std::fs::read(&history).with_context(|| format!("reading {}", history.display()))?;
            let parsed: History = serde_json::from_slice(&text).context("parsing the history")?;
            let verdict = check::check_all(&parsed);
            let out = out.unwrap_or_else(|| history.with_file_name("report"));
            let paths = report::write(&out, &parsed, &verdict)?;
            eprint!("{}", verdict.failures(paymesh_chaos::run::FAILURES_SHOWN));
            eprintln!("chaos: report in {}", paths.markdown.display());
            Ok(verdict.violations())
        }
        Command::Sim { seeds, first, seed, duration_ms, workers, no_faults, threads, dir } => {
            use paymesh_chaos::sim;
            let config = sim::SimConfig { duration_ms, workers, faults: !no_faults, ..sim::SimConfig::default() };
            match (seed, seeds) {
                (Some(seed), _) => {
                    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("target/chaos/sim-{seed}")));
                    sim::replay(seed, &config, &dir)
                }
                (None, Some(count)) => sim::sweep(first, count, &config, threads.unwrap_or_else(sim::default_threads)),
                (None, None) => bail!("give --seeds N (and --first S) to run many seeds, or --seed S to replay one"),
            }
        }
    }
}

/// The repository's deploy/ directory (the working directory's, as
/// chaos/run runs from the repository's root).
fn deploy_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_dir()?.join("deploy");
    if !dir.join("up.sh").is_file() {
        bail!("no deploy/up.sh under {}: run from the repository's root", dir.display());
    }
    Ok(dir)
}
