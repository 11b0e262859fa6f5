//! The live invariant checks of a mesh of processes, run after a workload
//! against what the regions hold: every ledger balances, a cross-border
//! transfer committed at its source exactly when its payee region credited
//! it (with equal amounts), every replica holds the same state, and no byte
//! of a payer's personal data reached the payee region's files. `paymesh
//! demo` and the cross-border tests print or assert the verdicts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::partner::v1 as wire;

use crate::local::LocalRegion;
use crate::mesh::LocalMesh;
use crate::world::{transfers_of, MERCHANTS, PAYER_NAME, PII_MARKER, WALLETS};

/// One invariant's verdict.
#[derive(Debug)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it holds.
    pub holds: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// Every region's ledger balances and no position is past its cap.
pub async fn check_ledgers(mesh: &LocalMesh) -> anyhow::Result<Check> {
    let mut details = Vec::new();
    let mut holds = true;
    for (name, region) in &mesh.regions {
        let summary =
            region.admin(|mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await }).await?;
        holds &= summary.balanced;
        details.push(if summary.balanced {
            format!("{name}: balanced")
        } else {
            format!("{name}: {}", summary.violation)
        });
    }
    Ok(Check { name: "every region's ledger sums to zero per currency".into(), holds, detail: details.join("; ") })
}

/// Source committed ⇔ destination committed, with equal amounts, for every
/// cross-border transfer the wallets list.
pub async fn check_agreement(mesh: &LocalMesh) -> anyhow::Result<Check> {
    let mut payee_side = HashMap::new();
    for (region, merchant, _, _) in MERCHANTS.iter().filter(|m| m.0 == "cn-east") {
        payee_side.extend(transfers_of(&mesh.region(region)?.partner(merchant)?).await?);
    }
    let (mut committed, mut aborted, mut bad) = (0u64, 0u64, Vec::new());
    let committed_state = wire::TransferState::Committed as i32;
    let amount = |t: &wire::Transfer| t.destination_amount.as_ref().map(|m| (m.amount.clone(), m.currency.clone()));
    for (region, wallet, _, _) in WALLETS {
        for (id, source) in transfers_of(&mesh.region(region)?.partner(wallet)?).await? {
            if source.corridor.as_ref().is_none_or(|c| c.destination_region == region) {
                continue; // domestic
            }
            let source_committed = source.state == committed_state;
            let Some(dest) = payee_side.get(&id) else {
                if source_committed {
                    bad.push(format!("{id} committed at the source, unknown at the destination"));
                } else {
                    aborted += 1;
                }
                continue;
            };
            let dest_committed = dest.state == committed_state;
            if source_committed != dest_committed {
                bad.push(format!("{id}: source state {}, destination state {}", source.state, dest.state));
            } else if source_committed && amount(&source) != amount(dest) {
                bad.push(format!("{id}: source says {:?}, destination credited {:?}", amount(&source), amount(dest)));
            } else if source_committed {
                committed += 1;
            } else {
                aborted += 1;
            }
        }
    }
    let detail = if bad.is_empty() {
        format!("{committed} committed on both sides, {aborted} aborted")
    } else {
        format!("{} disagreements, first: {}", bad.len(), bad[0])
    };
    Ok(Check {
        name: "source committed ⇔ destination committed, equal amounts".into(), holds: bad.is_empty(), detail
    })
}

/// Every replica of every region holds the same state.
pub async fn check_replicas(mesh: &LocalMesh) -> anyhow::Result<Check> {
    let mut details = Vec::new();
    let mut holds = true;
    for (name, region) in &mesh.regions {
        match region.wait_converged(Duration::from_secs(30)).await {
            Ok(statuses) => details.push(format!(
                "{name}: {} nodes at index {}",
                statuses.len(),
                statuses.first().and_then(|s| s.applied_index).unwrap_or(0)
            )),
            Err(e) => {
                holds = false;
                details.push(format!("{name}: {}", format!("{e:#}").lines().next().unwrap_or_default()));
            }
        }
    }
    Ok(Check { name: "every replica of every region holds the same state".into(), holds, detail: details.join("; ") })
}

/// No byte of the payers' personal data is in `region`'s data files.
pub fn check_no_pii(region: &LocalRegion) -> anyhow::Result<Check> {
    let needles: [&[u8]; 2] = [PII_MARKER.as_bytes(), PAYER_NAME.as_bytes()];
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut found = Vec::new();
    for node in region.nodes.values() {
        for entry in walk(&node.data_dir)? {
            let data = std::fs::read(&entry).with_context(|| format!("reading {}", entry.display()))?;
            files += 1;
            bytes += data.len() as u64;
            if needles.iter().any(|n| data.windows(n.len()).any(|w| w == *n)) {
                found.push(entry.display().to_string());
            }
        }
    }
    let detail = if found.is_empty() {
        format!("{files} files, {bytes} bytes scanned in {}", region.region())
    } else {
        format!("found in {}", found.join(", "))
    };
    Ok(Check {
        name: "no payer personal data in the payee region's files".into(),
        holds: found.is_empty() && files > 0,
        detail,
    })
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}
