//! `paymesh bench` end to end: `scripts/postgres.sh start` brings up a local
//! cluster (installing Debian's postgresql if it is missing: a missing
//! PostgreSQL is an error here, not a skip), then the `paymesh bench` binary
//! runs the baseline's double-entry transfers against it, audits the books and
//! writes its JSON report; and the same workload runs side by side on a fresh
//! paymesh region and on PostgreSQL.
//!
//! Built with the crate's `postgres` feature, which the README's test
//! command turns on; without it, `baseline_feature.rs` fails, so the
//! baseline's tests cannot be skipped unnoticed.
//!
//! Nothing here depends on the machine's speed: the runs only need to commit
//! something, and the audit must hold however many transfers they made.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

use crate::common::repo;

use std::process::Command;

use serde_json::Value;

/// Short runs of 16 workers on 100 accounts, for the tests that measure
/// several runs in one invocation.
const SHORT_RUNS: &[&str] =
    &["--workers", "16", "--warmup", "0.5", "--duration", "1", "--postgres-accounts", "100", "--no-progress"];

/// Start the cluster (idempotent) and return the URL the script prints.
fn start_postgres() -> String {
    run_postgres_script("start")
}

/// Run `scripts/postgres.sh <command>`, a start (idempotent), and return the
/// URL it prints.
fn run_postgres_script(command: &str) -> String {
    let output = Command::new("bash").arg(repo().join("scripts/postgres.sh")).arg(command).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/postgres.sh {command} failed:\n{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let url = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert!(url.starts_with("postgres://"), "the script printed {stdout:?}, not a URL; stderr:\n{stderr}");
    url
}

/// Run `paymesh bench --target postgres` with `args`; returns its first run's
/// JSON report and what it printed.
fn bench(url: &str, schema: &str, args: &[&str]) -> (Value, String) {
    let (report, stdout) = bench_targets("postgres", url, schema, args);
    assert_eq!(report["runs"].as_array().unwrap().len(), 1, "{report}");
    (report["runs"][0].clone(), stdout)
}

/// Run `paymesh bench --target <targets>` with `args`; returns its JSON
/// report and what it printed. A paymesh region lives in a temporary
/// directory.
fn bench_targets(targets: &str, url: &str, schema: &str, args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report/bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_paymesh"))
        .args(["bench", "--target", targets, "--postgres-url", url, "--postgres-schema", schema, "--json"])
        .arg(&json)
        .arg("--paymesh-dir")
        .arg(dir.path().join("region"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "paymesh bench failed:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, stdout)
}

fn count(run: &Value, field: &str) -> u64 {
    run[field].as_u64().unwrap_or_else(|| panic!("{field} is not a count in {run}"))
}

fn assert_audit_holds(run: &Value, stdout: &str) {
    assert_eq!(run["audit"]["holds"], true, "the audit does not hold: {}", run["audit"]);
    let checks = run["audit"]["checks"].as_array().unwrap();
    assert!(checks.len() >= 4, "{checks:?}");
    assert!(checks.iter().all(|c| c["holds"] == true), "{checks:?}");
    let target = run["target"].as_str().unwrap();
    assert!(stdout.contains(&format!("audit of {target}: holds")), "{stdout}");
}

/// The report's runs are `targets`, in order, each committed something,
/// failed nothing and was audited; returns them.
fn assert_runs_committed<'a>(report: &'a Value, targets: &[&str], stdout: &str) -> &'a Vec<Value> {
    let runs = report["runs"].as_array().unwrap();
    let named: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(named, targets, "{report}");
    for run in runs {
        assert!(count(run, "committed") > 0, "{run}");
        assert_eq!(count(run, "failed"), 0, "{run}");
        assert_audit_holds(run, stdout);
    }
    runs
}

fn assert_counts_add_up(run: &Value) {
    assert_eq!(
        count(run, "attempted"),
        count(run, "committed") + count(run, "declined") + count(run, "failed"),
        "{run}"
    );
    let all = &run["including_warmup"];
    assert_eq!(count(all, "attempted"), count(all, "committed") + count(all, "declined") + count(all, "failed"));
    assert!(count(all, "attempted") >= count(run, "attempted"), "{run}");
}

#[test]
fn closed_loop_commits_durably_and_the_books_balance() {
    let url = start_postgres();
    let (run, stdout) =
        bench(&url, "test_baseline_closed", &["--workers", "8", "--warmup", "1", "--duration", "2", "--no-progress"]);

    assert_eq!(run["target"], "postgres");
    assert_eq!(run["mode"], serde_json::json!({"kind": "closed", "workers": 8}));
    assert_eq!(run["warmup_s"], 1.0);
    assert_eq!(run["duration_s"], 2.0);
    assert!(count(&run, "committed") > 0, "{run}");
    assert_eq!(count(&run, "dropped"), 0, "a closed loop drops nothing");
    assert_counts_add_up(&run);
    let throughput = run["throughput_per_s"].as_f64().unwrap();
    assert!((throughput - count(&run, "committed") as f64 / 2.0).abs() < 1e-6, "{run}");

    let latency = &run["latency_ms"];
    let ms = |field: &str| latency[field].as_f64().unwrap_or_else(|| panic!("latency_ms.{field} in {run}"));
    assert!(ms("p50") > 0.0, "{latency}");
    assert!(ms("p50") <= ms("p90") && ms("p90") <= ms("p99"), "{latency}");
    assert!(ms("p99") <= ms("p999") && ms("p999") <= ms("max"), "{latency}");
    assert!(ms("mean") > 0.0 && ms("mean") <= ms("max"), "{latency}");

    let timeline = run["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 2, "one entry per measured second: {timeline:?}");
    let per_second: u64 = timeline.iter().map(|s| s["committed"].as_u64().unwrap()).sum();
    assert_eq!(per_second, count(&run, "committed"));

    assert_audit_holds(&run, &stdout);
    assert!(stdout.contains("latency p99.9"), "the table is printed:\n{stdout}");
}

/// Payers funded for at most one transfer each: the conditional debit must
/// decline the rest, and no payer may end beyond its cap. Also drives the
/// open loop against a real target.
#[test]
fn open_loop_declines_transfers_beyond_the_position_and_the_books_balance() {
    let url = start_postgres();
    // The smallest transfer is 10 yuan plus its fee, so 15 yuan buys at most one.
    let (run, stdout) = bench(
        &url,
        "test_baseline_declines",
        &[
            "--mode",
            "open",
            "--rate",
            "300",
            "--max-in-flight",
            "16",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
            "--payers",
            "8",
            "--prefund",
            "1500",
            "--no-progress",
        ],
    );
    assert_eq!(run["mode"], serde_json::json!({"kind": "open", "rate_per_second": 300, "in_flight_max": 16}));
    assert_counts_add_up(&run);
    let all = &run["including_warmup"];
    // 600 scheduled; some may be dropped on a slow machine, but far more than
    // eight are sent, and at most eight can commit.
    assert_eq!(count(all, "attempted") + count(all, "dropped"), 600, "{run}");
    assert!(count(all, "committed") <= 8, "a payer paid twice on a one-transfer position: {run}");
    assert!(count(all, "declined") > 0, "{run}");
    assert_eq!(count(all, "failed"), 0, "{run}");
    assert!(run["decline_reasons"]["insufficient position"].as_u64().unwrap_or(0) > 0 || count(&run, "declined") == 0);
    assert_audit_holds(&run, &stdout);
}

/// Both shapes with transfers batched into transactions, each payer funded
/// for one transfer at most: most batches hold a transfer to decline, which
/// rolls the batch back and makes its transfers again one by one, so each is
/// decided as it would be alone; and well funded, the batches commit whole.
#[test]
fn batched_transfers_are_each_decided_as_alone_in_both_shapes() {
    let url = start_postgres();
    for (shape, name) in [("hot", "postgres-b16"), ("spread", "postgres-spread-b16")] {
        let common = ["--workers", "32", "--warmup", "0.5", "--duration", "1.5", "--payers", "8", "--no-progress"];
        let batched = ["--postgres-shape", shape, "--postgres-batch", "16"];
        let poor = [common.as_slice(), &batched, &["--prefund", "1500"]].concat();
        let (run, stdout) = bench(&url, &format!("test_baseline_poor_{shape}"), &poor);
        assert_eq!(run["target"], name);
        assert_counts_add_up(&run);
        let all = &run["including_warmup"];
        assert!(count(all, "committed") <= 8, "a payer paid twice on a one-transfer position: {run}");
        assert!(count(all, "declined") > 0, "{run}");
        assert_eq!(count(all, "failed"), 0, "{run}");
        assert_audit_holds(&run, &stdout);

        let rich = [common.as_slice(), &batched].concat();
        let (run, stdout) = bench(&url, &format!("test_baseline_rich_{shape}"), &rich);
        assert!(count(&run, "committed") > 8, "{run}");
        assert_eq!((count(&run, "declined"), count(&run, "failed")), (0, 0), "{run}");
        assert_audit_holds(&run, &stdout);
    }
}

/// A primary with two synchronous standbys (`start-replicated`) measured
/// beside the server alone in one invocation: its runs are named for its
/// three servers, its commits reach a standby (the standbys' flushed WAL
/// holds every transfer row) and its audit says the standbys counted.
#[test]
fn a_replicated_server_is_measured_beside_the_single_one() {
    let single = start_postgres();
    let replicated = run_postgres_script("start-replicated");
    assert_ne!(single, replicated);
    let schema = "test_baseline_replicated";
    let (report, stdout) = bench_targets(
        "postgres",
        &single,
        schema,
        &[SHORT_RUNS, &["--postgres-url", &replicated, "--postgres-shape", "spread", "--postgres-batch", "8"]].concat(),
    );
    let runs = assert_runs_committed(&report, &["postgres-spread-b8", "postgres-spread-b8-r3"], &stdout);
    let standby_check = |run: &Value| {
        run["audit"]["checks"].as_array().unwrap().iter().any(|c| c["name"].as_str().unwrap().contains("standby"))
    };
    assert!(!standby_check(&runs[0]), "{}", runs[0]["audit"]);
    assert!(standby_check(&runs[1]), "{}", runs[1]["audit"]);

    // What the replicated run committed is on a standby: its own port's
    // server, read only, holds the primary's transfer rows.
    let committed = count(&runs[1]["including_warmup"], "committed");
    let port: u16 = replicated.rsplit_once(':').unwrap().1.split('/').next().unwrap().parse().unwrap();
    let standby = replicated.replace(&format!(":{port}/"), &format!(":{}/", port + 1));
    let rows = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let (client, connection) = tokio_postgres::connect(&standby, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let recovering: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
        assert!(recovering, "{standby} is not a standby");
        // Replay may trail the flush by a moment: wait for it, boundedly.
        let mut rows = 0;
        for _ in 0..100 {
            let query = format!("SELECT count(*) FROM {schema}.transfers");
            rows = client.query_one(&query, &[]).await.map(|row| row.get::<_, i64>(0)).unwrap_or(0);
            if u64::try_from(rows).unwrap() >= committed {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        rows
    });
    assert_eq!(u64::try_from(rows).unwrap(), committed, "the standby's transfer rows");
}

/// Several shapes and batch sizes in one invocation: one run each, in one
/// report, each audited.
#[test]
fn shapes_and_batches_run_side_by_side_in_one_report() {
    let url = start_postgres();
    let (report, stdout) = bench_targets(
        "postgres",
        &url,
        "test_baseline_matrix",
        &[SHORT_RUNS, &["--postgres-shape", "hot,spread", "--postgres-batch", "1,8"]].concat(),
    );
    assert_runs_committed(&report, &["postgres", "postgres-b8", "postgres-spread", "postgres-spread-b8"], &stdout);
}

/// The default comparison: a fresh 3-node paymesh region (partner API over
/// mutual TLS) in each of its three ways of paying and PostgreSQL carry out
/// the same transfers; every audit holds and the report gives each paymesh
/// run's ratio to PostgreSQL.
#[test]
fn paymesh_and_postgres_side_by_side() {
    let url = start_postgres();
    let (report, stdout) = bench_targets(
        "paymesh,postgres",
        &url,
        "test_side_by_side",
        &[
            "--workers",
            "16",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
            "--payers",
            "8",
            "--payees",
            "4",
            "--paymesh-calls",
            "quote-then-transfer,one-call,batched",
            "--no-progress",
        ],
    );
    let runs = report["runs"].as_array().unwrap();
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["paymesh", "paymesh-one-call", "paymesh-batched", "postgres"], "{report}");
    for run in runs {
        assert!(count(run, "committed") > 0, "{run}");
        assert_eq!(count(run, "failed"), 0, "{run}");
        assert_counts_add_up(run);
        assert_eq!(run["audit"]["holds"], true, "{}", run["audit"]);
    }
    let checks: Vec<&str> =
        runs[0]["audit"]["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(checks.iter().any(|c| c.contains("every replica applied the same state")), "{checks:?}");
    assert!(checks.iter().any(|c| c.contains("committed transfers listed")), "{checks:?}");
    let ratios: Vec<(&str, &str)> = report["throughput_ratios"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|ratio| assert!(ratio["ratio"].as_f64().unwrap() > 0.0, "{report}"))
        .map(|ratio| (ratio["numerator"].as_str().unwrap(), ratio["denominator"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ratios,
        [("paymesh", "postgres"), ("paymesh-one-call", "postgres"), ("paymesh-batched", "postgres")],
        "{report}"
    );
    assert!(stdout.contains("paymesh / postgres = "), "{stdout}");
    assert!(stdout.contains("audit of paymesh: holds"), "{stdout}");
}
