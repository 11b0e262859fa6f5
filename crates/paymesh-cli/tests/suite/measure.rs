//! Measurements of a region of real processes on this machine, reported in
//! docs/BENCHMARKS.md. They are not checks (nothing here can fail on a slow
//! machine except a broken region), so they are ignored by default; run them
//! with
//!
//! ```sh
//! cargo test --release -p paymesh-cli --test suite measure:: -- --ignored --nocapture --test-threads 1
//! ```

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Region, Writer};
use paymesh_node::cluster_client::ClusterClient;
use paymesh_proto::admin::v1 as wire;

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// What a run of top-ups took.
struct Wrote {
    elapsed: Duration,
    /// Log entries the leader appended meanwhile (its proposer groups the
    /// top-ups in flight into entries).
    entries: u64,
}

/// Send `total` top-ups through the admin API, `lanes` at a time (each lane
/// waits for its answer before the next), labelled `label`.
async fn write_top_ups(region: &Region, label: &str, total: usize, lanes: usize) -> Wrote {
    let leader = region.wait_leader(Duration::from_secs(20)).await;
    let client = region.client();
    let addr = region.nodes[&leader].api_addr.clone();
    let before = status(&client, &addr).await.and_then(|s| s.last_log_index).unwrap_or(0);
    let writer = Arc::new(Writer::new(region));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let writer = writer.clone();
        let label = label.to_owned();
        tasks.push(tokio::spawn(async move {
            for n in (lane..total).step_by(lanes) {
                writer.top_up(&format!("m{label}-{n}"), 1).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let after = status(&client, &addr).await.and_then(|s| s.last_log_index).unwrap_or(0);
    Wrote { elapsed, entries: after.saturating_sub(before) }
}

async fn status(client: &ClusterClient, addr: &str) -> Option<wire::GetNodeStatusResponse> {
    client.status(addr, false).await.ok()
}

/// How long after `killed` a node reported itself leader in a term above
/// `term` (polled every 5 ms, for at most 30 s).
async fn new_leader_after(region: &Region, client: &ClusterClient, term: u64, killed: Instant) -> Duration {
    loop {
        for addr in region.api_addrs() {
            if let Some(s) = status(client, &addr).await {
                if s.role == wire::NodeRole::Leader as i32 && s.current_term > term {
                    return killed.elapsed();
                }
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no new leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/BENCHMARKS.md; run explicitly with --ignored --nocapture"]
async fn election_time_after_killing_the_leader() {
    const TRIALS: usize = 12;
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    Writer::new(&region).partner().await;
    let mut times = Vec::new();
    for trial in 0..TRIALS {
        let leader = region.wait_leader(Duration::from_secs(20)).await;
        let client = region.client();
        let term = status(&client, &region.nodes[&leader].api_addr).await.unwrap().current_term;
        region.kill(leader);
        let killed = Instant::now();
        let elected = new_leader_after(&region, &client, term, killed).await;
        println!("trial {trial}: leader {leader} killed; new leader after {elected:?}");
        times.push(elected);
        region.spawn(leader);
        region.wait_converged(Duration::from_secs(30)).await;
    }
    let max = *times.iter().max().unwrap();
    println!("ELECTION after kill -9 of the leader, {TRIALS} trials: median {:?}, max {max:?}", median(&mut times));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/BENCHMARKS.md; run explicitly with --ignored --nocapture"]
async fn catch_up_by_log_and_by_snapshot() {
    const TOP_UPS: usize = 30_000;
    let mut region = Region::start(3, "snapshot_after_entries = 100000\nlogs_kept_after_snapshot = 0");
    region.initialize(1).await;
    Writer::new(&region).partner().await;
    let leader = region.wait_leader(Duration::from_secs(20)).await;
    let lagging = if leader == 3 { 2 } else { 3 };

    // By log: the node is down while entries accumulate, then catches up
    // from the leader's log.
    region.terminate(lagging);
    let wrote = write_top_ups(&region, "catch-up", TOP_UPS, 64).await;
    let entries = wrote.entries;
    println!(
        "wrote {TOP_UPS} top-ups from 64 lanes in {:?} ({entries} log entries; {:.0} entries/s, {:.0} top-ups/s)",
        wrote.elapsed,
        entries as f64 / wrote.elapsed.as_secs_f64(),
        TOP_UPS as f64 / wrote.elapsed.as_secs_f64()
    );
    let started = Instant::now();
    region.spawn(lagging);
    region.wait_converged(Duration::from_secs(120)).await;
    let by_log = started.elapsed();
    println!(
        "CATCH-UP BY LOG: {entries} entries in {by_log:?} = {:.0} entries/s (restart included)",
        entries as f64 / by_log.as_secs_f64()
    );

    // By snapshot: every node compacts its log, the node loses its data.
    let client = region.client();
    let mut covered = 0;
    for addr in region.api_addrs() {
        covered = client.trigger_snapshot(&addr).await.unwrap();
    }
    region.terminate(lagging);
    region.wipe(lagging);
    let started = Instant::now();
    region.spawn(lagging);
    let statuses = region.wait_converged(Duration::from_secs(120)).await;
    let by_snapshot = started.elapsed();
    let rejoined = statuses.iter().find(|s| s.node_id == lagging).unwrap();
    assert!(rejoined.snapshot_index.is_some());
    println!(
        "CATCH-UP BY SNAPSHOT: snapshot covering {covered} entries ({TOP_UPS} top-ups) installed and applied in \
         {by_snapshot:?} = {:.0} entries/s (restart included)",
        covered as f64 / by_snapshot.as_secs_f64()
    );
}

/// Attach strace to a node and count the sync calls it makes while a known
/// number of batches are acknowledged.
fn strace(pid: u32, out: &std::path::Path) -> std::process::Child {
    Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync,sync_file_range", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace is installed (it is on the machine kind this project runs on)")
}

fn calls(summary: &str, syscall: &str) -> u64 {
    summary
        .lines()
        .find(|line| line.split_whitespace().last() == Some(syscall))
        .and_then(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors], syscall
            fields.get(3).and_then(|calls| calls.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/BENCHMARKS.md; run explicitly with --ignored --nocapture (needs strace)"]
async fn fsyncs_per_acknowledged_batch() {
    const BATCHES: usize = 500;
    let region = Region::start(3, "snapshot_after_entries = 100000");
    region.initialize(1).await;
    Writer::new(&region).partner().await;
    let leader = region.wait_leader(Duration::from_secs(20)).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let dir = region.path().to_path_buf();
    let mut tracers = Vec::new();
    for id in [leader, follower] {
        let pid = region.nodes[&id].child.as_ref().unwrap().id();
        tracers.push((id, dir.join(format!("strace-{id}.txt")), strace(pid, &dir.join(format!("strace-{id}.txt")))));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = region.client();
    let before = status(&client, &region.nodes[&leader].api_addr).await.unwrap();
    // One top-up (one log entry) at a time, each acknowledged before the
    // next.
    write_top_ups(&region, "fsync", BATCHES, 1).await;
    let after = status(&client, &region.nodes[&leader].api_addr).await.unwrap();
    for (id, path, mut tracer) in tracers {
        Command::new("kill").args(["-INT", &tracer.id().to_string()]).status().unwrap();
        tracer.wait().unwrap();
        let summary = std::fs::read_to_string(&path).unwrap();
        let (fdatasync, fsync, sync_file_range) =
            (calls(&summary, "fdatasync"), calls(&summary, "fsync"), calls(&summary, "sync_file_range"));
        let role = if id == leader { "leader" } else { "follower" };
        println!(
            "FSYNC on the {role} (node {id}) over {BATCHES} acknowledged batches: fdatasync {fdatasync}, fsync {fsync}, \
             sync_file_range {sync_file_range} = {:.2} fdatasync per batch\n{summary}",
            fdatasync as f64 / BATCHES as f64
        );
    }
    println!(
        "leader log appends {} → {}, log syncs {} → {}",
        before.log_appends, after.log_appends, before.log_syncs, after.log_syncs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/BENCHMARKS.md; run explicitly with --ignored --nocapture"]
async fn write_latency_and_throughput() {
    let mut region = Region::start(3, "snapshot_after_entries = 100000");
    region.initialize(1).await;
    Writer::new(&region).partner().await;
    let leader = region.wait_leader(Duration::from_secs(20)).await;
    // Sequential, to the leader and to a follower (which names the leader;
    // the client follows).
    for (label, id) in [("leader", leader), ("follower", if leader == 1 { 2 } else { 1 })] {
        let writer = Writer::through(&region, &[id]);
        let mut latencies = Vec::new();
        for n in 0..300 {
            let started = Instant::now();
            writer.top_up(&format!("lat-{label}-{n}"), 1).await.unwrap();
            latencies.push(started.elapsed());
        }
        let p99 = {
            latencies.sort();
            latencies[latencies.len() * 99 / 100]
        };
        println!("LATENCY of one top-up sent to the {label}: median {:?}, p99 {p99:?}", median(&mut latencies));
    }
    for lanes in [1, 16, 256] {
        let total = 2_000 * lanes.min(16);
        let wrote = write_top_ups(&region, &format!("throughput-{lanes}"), total, lanes).await;
        println!(
            "THROUGHPUT with {lanes} concurrent top-ups: {:.0} top-ups/s in {:.0} entries/s ({:.1} per entry)",
            total as f64 / wrote.elapsed.as_secs_f64(),
            wrote.entries as f64 / wrote.elapsed.as_secs_f64(),
            total as f64 / wrote.entries.max(1) as f64
        );
    }
    region.kill(leader);
}

/// One worker of [`failover_under_load`]: quote and pay a cent, again and
/// again, until `stop`; each acknowledged transfer's instant goes to `acks`.
async fn pay_cents(
    client: paymesh_client::PartnerClient,
    worker: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acks: Arc<std::sync::Mutex<Vec<Instant>>>,
) {
    use paymesh_proto::partner::v1 as partner;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let quote = partner::CreateQuoteRequest {
            qr_payload: "pay://merchant/m-1".into(),
            amount: Some(partner::create_quote_request::Amount::SourceAmount(common::money("0.01", "USD"))),
            idempotency_key: String::new(),
        };
        let Ok(quote) = client.create_quote(quote).await else { continue };
        let Some(quote) = quote.quote else { continue };
        let transfer = partner::CreateTransferRequest {
            idempotency_key: format!("w{worker}-{n}"),
            quote_id: quote.quote_id,
            qr_payload: "pay://merchant/m-1".into(),
            payer: Some(partner::PayerDetails { name: "Ada".into(), account: "a-1".into(), reference: "r".into() }),
        };
        if let Ok(answer) = client.create_transfer(transfer).await {
            if answer.transfer.is_some_and(|t| t.state == partner::TransferState::Committed as i32) {
                acks.lock().unwrap().push(Instant::now());
            }
        }
    }
}

/// Wait until node `id`, restarted while the region keeps committing, is
/// within 1,000 entries of its leader.
async fn caught_up(region: &Region, id: u64, within: Duration) {
    let client = region.client();
    let deadline = Instant::now() + within;
    loop {
        let node = status(&client, &region.nodes[&id].api_addr).await;
        let leader = match node.as_ref().and_then(|n| n.leader_id) {
            Some(leader) => status(&client, &region.nodes[&leader].api_addr).await,
            None => None,
        };
        let applied = |s: &Option<wire::GetNodeStatusResponse>| s.as_ref().and_then(|s| s.applied_index);
        if let (Some(node), Some(leader)) = (applied(&node), applied(&leader)) {
            if node + 1_000 >= leader {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node {id} did not catch up within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader killed while 16 clients pay: how long until a new leader, and
/// how long no payment was acknowledged (from the last acknowledgement
/// before the kill to the first after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/BENCHMARKS.md; run explicitly with --ignored --nocapture"]
async fn failover_under_load() {
    const TRIALS: usize = 8;
    const CLIENTS: usize = 16;
    let mut region = Region::start(3, "");
    region.initialize(1).await;
    let free = wire::FeeSchedule {
        fixed: Some(common::money("0", "USD")),
        rate_bps: 0,
        min: Some(common::money("0", "USD")),
        max: Some(common::money("0", "USD")),
    };
    region.two_payers_and_a_merchant("0", free).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let client = region.partner(if w % 2 == 0 { "wallet-a" } else { "wallet-b" });
            tokio::spawn(pay_cents(client, w, stop.clone(), acks.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (mut elections, mut gaps) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        let leader = region.wait_leader(Duration::from_secs(20)).await;
        let client = region.client();
        let term = status(&client, &region.nodes[&leader].api_addr).await.unwrap().current_term;
        let before = acks.lock().unwrap().len();
        region.kill(leader);
        let killed = Instant::now();
        let elected = new_leader_after(&region, &client, term, killed).await;
        let resumed = loop {
            let after = acks.lock().unwrap().iter().copied().find(|at| *at > killed);
            if let Some(at) = after {
                break at;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no payment acknowledged after the kill");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let last_before = acks.lock().unwrap()[..before].iter().copied().filter(|at| *at <= killed).max().unwrap();
        let gap = resumed - last_before;
        println!("trial {trial}: leader {leader} killed; new leader after {elected:?}; no acknowledgement for {gap:?}");
        elections.push(elected);
        gaps.push(gap);
        region.spawn(leader);
        caught_up(&region, leader, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let total = acks.lock().unwrap().len();
    let range = |v: &[Duration]| (*v.iter().min().unwrap(), *v.iter().max().unwrap());
    let (e, g) = (range(&elections), range(&gaps));
    println!(
        "FAILOVER under {CLIENTS} clients, {TRIALS} kills ({total} payments): new leader median {:?} (range {:?} to \
         {:?}); no acknowledgement median {:?} (range {:?} to {:?})",
        median(&mut elections),
        e.0,
        e.1,
        median(&mut gaps),
        g.0,
        g.1
    );
}
