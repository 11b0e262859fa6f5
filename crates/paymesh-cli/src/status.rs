//! `paymesh status`: ask every node for its own view and print them together.

use std::collections::{BTreeMap, BTreeSet};

use paymesh_node::cluster_client::ClusterClient;
use paymesh_proto::admin::v1 as wire;
use serde::Serialize;

/// One node's status as printed.
#[derive(Debug, Serialize)]
struct NodeView {
    api_addr: String,
    reachable: bool,
    error: Option<String>,
    node_id: Option<u64>,
    region: Option<String>,
    role: Option<String>,
    term: Option<u64>,
    leader_id: Option<u64>,
    last_log_index: Option<u64>,
    applied_index: Option<u64>,
    snapshot_index: Option<u64>,
    purged_index: Option<u64>,
    /// Entries the leader still has to send to this node.
    replication_lag: Option<u64>,
    voters: Vec<u64>,
    learners: Vec<u64>,
    state_digest: Option<String>,
    log_appends: Option<u64>,
    log_syncs: Option<u64>,
    /// Log syncs that took over 50 ms (the disk stalled).
    log_slow_syncs: Option<u64>,
    /// The longest log sync, in microseconds.
    log_sync_max_micros: Option<u64>,
    /// The paymesh release the node runs.
    release: Option<String>,
    /// The newest protocol its release supports.
    protocol: Option<u32>,
    /// The protocol the region runs, as the node applied it.
    region_protocol: Option<u32>,
    /// The restore the region was seeded by and its reconciliation, as
    /// this node has applied it.
    #[serde(skip_serializing_if = "Option::is_none")]
    restore: Option<RestoreView>,
}

/// A restore and its reconciliation with the other regions.
#[derive(Debug, Serialize)]
struct RestoreView {
    backup_index: u64,
    backup_time: String,
    regions: Vec<ReconciliationView>,
}

/// The reconciliation with one other region.
#[derive(Debug, Serialize)]
struct ReconciliationView {
    region: String,
    done: bool,
    records: u64,
    credits_recovered: u64,
    committed: u64,
    aborted: u64,
    aborts_sent: u64,
    decisions_resent: u64,
    unrecoverable_count: u64,
    /// `transfer: principal -> credit to payee`, the first 10,000.
    unrecoverable: Vec<String>,
    conflict_count: u64,
    /// `transfer: detail`, the first 10,000.
    conflicts: Vec<String>,
}

fn money_text(money: Option<&paymesh_proto::common::v1::Money>) -> String {
    money.map_or_else(|| "?".to_owned(), |m| format!("{} {}", m.amount, m.currency))
}

fn restore_view(report: wire::RestoreReport) -> RestoreView {
    let at = paymesh_core::Timestamp::from_unix_ms(u64::try_from(report.backup_time_unix_ms).unwrap_or(0));
    RestoreView {
        backup_index: report.backup_index,
        backup_time: at.to_rfc3339(),
        regions: report
            .regions
            .into_iter()
            .map(|r| ReconciliationView {
                region: r.region,
                done: r.done,
                records: r.records,
                credits_recovered: r.credits_recovered,
                committed: r.committed,
                aborted: r.aborted,
                aborts_sent: r.aborts_sent,
                decisions_resent: r.decisions_resent,
                unrecoverable_count: r.unrecoverable_count,
                unrecoverable: r
                    .unrecoverable
                    .iter()
                    .map(|u| {
                        format!(
                            "{}: {} paid, {} credited to {}",
                            u.transfer_id,
                            money_text(u.source_amount.as_ref()),
                            money_text(u.destination_amount.as_ref()),
                            u.payee_partner_id
                        )
                    })
                    .collect(),
                conflict_count: r.conflict_count,
                conflicts: r.conflicts.iter().map(|c| format!("{}: {}", c.transfer_id, c.detail)).collect(),
            })
            .collect(),
    }
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
struct RegionView {
    nodes: Vec<NodeView>,
    /// True when every reachable node has the same applied index and digest.
    replicas_agree: bool,
}

fn role_name(role: i32) -> &'static str {
    match wire::NodeRole::try_from(role).unwrap_or(wire::NodeRole::Unspecified) {
        wire::NodeRole::Leader => "leader",
        wire::NodeRole::Follower => "follower",
        wire::NodeRole::Candidate => "candidate",
        wire::NodeRole::Learner => "learner",
        wire::NodeRole::Shutdown => "shutdown",
        wire::NodeRole::Unspecified => "unknown",
    }
}

/// Query `addresses` and every member they report, then print.
pub async fn show(client: &ClusterClient, addresses: &[String], json: bool) -> anyhow::Result<()> {
    let mut to_ask: BTreeSet<String> = addresses.iter().cloned().collect();
    let mut answers: BTreeMap<String, Result<wire::GetNodeStatusResponse, tonic::Status>> = BTreeMap::new();
    // Members discovered from the answers are asked too (bounded: a region has
    // at most a handful of nodes).
    for _round in 0..3 {
        let pending: Vec<String> = to_ask.iter().filter(|a| !answers.contains_key(*a)).cloned().collect();
        if pending.is_empty() {
            break;
        }
        let results = futures::future::join_all(pending.iter().map(|addr| client.status(addr, true))).await;
        for (addr, result) in pending.into_iter().zip(results) {
            if let Ok(status) = &result {
                to_ask.extend(status.nodes.iter().map(|n| n.api_addr.clone()));
            }
            answers.insert(addr, result);
        }
    }
    let lags: BTreeMap<u64, u64> = answers
        .values()
        .flatten()
        .filter(|s| s.role == wire::NodeRole::Leader as i32)
        .flat_map(|s| s.replication.iter().map(|r| (r.node_id, r.lag)))
        .collect();
    let nodes: Vec<NodeView> = answers
        .into_iter()
        .map(|(api_addr, result)| match result {
            Ok(s) => NodeView {
                api_addr,
                reachable: true,
                error: None,
                node_id: Some(s.node_id),
                region: Some(s.region),
                role: Some(role_name(s.role).to_owned()),
                term: Some(s.current_term),
                leader_id: s.leader_id,
                last_log_index: s.last_log_index,
                applied_index: s.applied_index,
                snapshot_index: s.snapshot_index,
                purged_index: s.purged_index,
                replication_lag: lags.get(&s.node_id).copied(),
                voters: s.voters,
                learners: s.learners,
                state_digest: (!s.state_digest.is_empty()).then(|| hex::encode(&s.state_digest)),
                log_appends: Some(s.log_appends),
                log_syncs: Some(s.log_syncs),
                log_slow_syncs: Some(s.log_slow_syncs),
                log_sync_max_micros: Some(s.log_sync_max_micros),
                restore: s.restore.map(restore_view),
                release: (!s.release.is_empty()).then_some(s.release),
                // A release before protocols reports none: it runs 1.
                protocol: Some(s.protocol.max(1)),
                region_protocol: Some(s.region_protocol.max(1)),
            },
            Err(e) => NodeView {
                api_addr,
                reachable: false,
                error: Some(format!("{}: {}", e.code(), e.message())),
                node_id: None,
                region: None,
                role: None,
                term: None,
                leader_id: None,
                last_log_index: None,
                applied_index: None,
                snapshot_index: None,
                purged_index: None,
                replication_lag: None,
                voters: Vec::new(),
                learners: Vec::new(),
                state_digest: None,
                log_appends: None,
                log_syncs: None,
                log_slow_syncs: None,
                log_sync_max_micros: None,
                restore: None,
                release: None,
                protocol: None,
                region_protocol: None,
            },
        })
        .collect();
    let reached: Vec<&NodeView> = nodes.iter().filter(|n| n.reachable).collect();
    let any_reached = !reached.is_empty();
    let replicas_agree = any_reached
        && reached
            .iter()
            .all(|n| n.applied_index == reached[0].applied_index && n.state_digest == reached[0].state_digest);
    let view = RegionView { nodes, replicas_agree };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_table(&view);
    }
    if !any_reached {
        anyhow::bail!("no node answered");
    }
    Ok(())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_table(view: &RegionView) {
    println!(
        "{:<6} {:<22} {:<10} {:>5} {:>7} {:>10} {:>10} {:>6} {:>10}  DIGEST",
        "NODE", "API", "ROLE", "TERM", "LEADER", "LAST LOG", "APPLIED", "LAG", "SNAPSHOT"
    );
    for node in &view.nodes {
        let digest = match (&node.state_digest, &node.error) {
            (Some(d), _) => d[..16].to_owned(),
            (None, Some(e)) => format!("unreachable ({e})"),
            (None, None) => "-".to_owned(),
        };
        println!(
            "{:<6} {:<22} {:<10} {:>5} {:>7} {:>10} {:>10} {:>6} {:>10}  {}",
            or_dash(node.node_id),
            node.api_addr,
            node.role.as_deref().unwrap_or("down"),
            or_dash(node.term),
            or_dash(node.leader_id),
            or_dash(node.last_log_index),
            or_dash(node.applied_index),
            or_dash(node.replication_lag),
            or_dash(node.snapshot_index),
            digest
        );
    }
    if !view.nodes.iter().any(|n| n.reachable) {
        // Nothing is known of the replicas: say only that no node answered
        // (the caller's error).
    } else if view.replicas_agree {
        println!("replicas agree: every reachable node has the same applied index and state digest");
    } else {
        println!("replicas differ (still catching up, or diverged): compare APPLIED and DIGEST");
    }
    let releases: BTreeSet<&str> = view.nodes.iter().filter_map(|n| n.release.as_deref()).collect();
    if releases.len() > 1 {
        let each: Vec<String> =
            view.nodes.iter().filter_map(|n| Some(format!("node {} {}", n.node_id?, n.release.as_deref()?))).collect();
        println!("releases differ (an upgrade in progress?): {}", each.join(", "));
    }
    print_protocols(view);
    // The restore as the most advanced reachable node applied it.
    let newest = view.nodes.iter().filter(|n| n.restore.is_some()).max_by_key(|n| n.applied_index);
    if let Some(restore) = newest.and_then(|n| n.restore.as_ref()) {
        print_restore(restore);
    }
}

/// The protocol the region runs and what its nodes support: whether an
/// upgrade waits to be finalized, or a node cannot follow.
fn print_protocols(view: &RegionView) {
    let Some(runs) = view.nodes.iter().filter_map(|n| n.region_protocol).max() else {
        return;
    };
    let supported: Vec<(u64, u32)> = view.nodes.iter().filter_map(|n| Some((n.node_id?, n.protocol?))).collect();
    let Some(common) = supported.iter().map(|(_, p)| *p).min() else {
        return;
    };
    println!("protocol: the region runs {runs}; every reachable node supports up to {common}");
    for (node, protocol) in supported.iter().filter(|(_, p)| *p < runs) {
        println!("  node {node} supports protocols up to {protocol} only: it cannot follow; run the new release on it");
    }
    let all_reached = view.nodes.iter().all(|n| n.reachable);
    if common > runs && all_reached {
        println!(
            "  every node runs a release of protocol {common}: finish the upgrade with `paymesh upgrade finalize`"
        );
    }
}

fn print_restore(restore: &RestoreView) {
    println!(
        "restored from a backup at index {} ({}); reconciliation with the other regions:",
        restore.backup_index, restore.backup_time
    );
    for r in &restore.regions {
        println!(
            "  {:<14} {:<12} {} records: {} credits recovered, {} committed, {} aborted, {} aborts sent, {} decisions \
             sent again; {} unrecoverable, {} conflicts",
            r.region,
            if r.done { "done" } else { "in progress" },
            r.records,
            r.credits_recovered,
            r.committed,
            r.aborted,
            r.aborts_sent,
            r.decisions_resent,
            r.unrecoverable_count,
            r.conflict_count
        );
        for line in r.unrecoverable.iter().take(20) {
            println!("    unrecoverable {line}");
        }
        for line in r.conflicts.iter().take(20) {
            println!("    conflict {line}");
        }
        let more = r.unrecoverable.len().saturating_sub(20) + r.conflicts.len().saturating_sub(20);
        if more > 0 {
            println!("    … and more: `paymesh status --json` lists them all");
        }
    }
}
