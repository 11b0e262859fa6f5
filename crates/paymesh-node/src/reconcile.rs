//! A restored region's reconciliation with the others, on the wire
//! ([`paymesh_core::reconcile`] holds the rules).
//!
//! Both halves: the answering region's leader reads its applied state and
//! history ([`answer`]); the restored region's leader asks every other
//! region step by step and proposes each answer as a
//! `CommandBody::Reconciled` ([`run`]). The driver is the first thing the
//! leader's task for a remote region does, before it ships that region's
//! outbox (see [`crate::outbox::ship`]): nothing moves between the two until
//! their records agree.

use std::time::Duration;

use paymesh_core::command::Preparing;
use paymesh_core::id::{RegionId, TransferId};
use paymesh_core::reconcile::{
    Ask, Reconciliation, RemotePhase, RemoteRecord, RECONCILE_ITEMS_MAX, RECONCILE_RECORDS_MAX,
};
use paymesh_core::{CommandBody, Outcome, Timestamp};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::interregion::v1 as wire;
use paymesh_store::history::History;
use tonic::Status;

use crate::convert;
use crate::gateway::Gateway;
use crate::interregion::{prepare_in, prepare_out};
use crate::outbox::Link;

/// How long the driver waits after a failed step before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The answer to a restored region's `Reconcile` call, from `state` and
/// `history` (the answering leader's applied state).
pub fn answer(
    state: &paymesh_core::State,
    history: &History,
    request: &wire::ReconcileRequest,
    from: &RegionId,
) -> Result<wire::ReconcileReply, Status> {
    if request.transfer_ids.len() > RECONCILE_ITEMS_MAX {
        return Err(Status::invalid_argument(format!(
            "at most {RECONCILE_ITEMS_MAX} transfer ids per call, not {}",
            request.transfer_ids.len()
        )));
    }
    let (records, next) = if request.transfer_ids.is_empty() {
        let since = convert::timestamp("since_unix_ms", request.since_unix_ms)?;
        let mut records = if request.scan_below == 0 { state.pending_participations_of(from) } else { Vec::new() };
        let (found, next) = history
            .reconcile_page(from, since, request.scan_below)
            .map_err(|e| Status::internal(format!("reading history: {e}")))?;
        records.extend(found);
        (records, next)
    } else {
        let recall = history.at(u64::MAX);
        let mut records = Vec::with_capacity(request.transfer_ids.len());
        for text in &request.transfer_ids {
            let id =
                TransferId::parse(text).map_err(|e| Status::invalid_argument(format!("transfer id {text:?}: {e}")))?;
            if id.origin() != from && id.origin() != state.region() {
                return Err(Status::invalid_argument(format!("transfer {id} is not between {from} and this region")));
            }
            records.push(state.remote_record(&id, &recall));
        }
        (records, 0)
    };
    Ok(wire::ReconcileReply {
        from_region: state.region().to_string(),
        records: records.iter().map(|record| record_out(record, from)).collect(),
        next,
        protocol: state.protocol().number(),
    })
}

/// A record's wire form, sent to the restored region `to`.
fn record_out(record: &RemoteRecord, to: &RegionId) -> wire::ReconcileRecord {
    let phase = match record.phase {
        RemotePhase::Unknown => wire::ReconcilePhase::Unknown,
        RemotePhase::Pending => wire::ReconcilePhase::Pending,
        RemotePhase::Committed => wire::ReconcilePhase::Committed,
        RemotePhase::Aborted => wire::ReconcilePhase::Aborted,
    };
    wire::ReconcileRecord {
        transfer_id: record.transfer.to_string(),
        phase: phase as i32,
        reason: convert::reject_code_opt(record.reason),
        prepare: record.prepare.clone().map(|prepare| prepare_out(&Preparing::Transfer(prepare), to, String::new())),
    }
}

/// A record from the wire, as `from` (the answering region) sent it.
fn record_in(record: &wire::ReconcileRecord, from: &RegionId) -> Result<RemoteRecord, String> {
    let transfer = TransferId::parse(&record.transfer_id).map_err(|e| format!("transfer id: {e}"))?;
    let phase = match wire::ReconcilePhase::try_from(record.phase) {
        Ok(wire::ReconcilePhase::Unknown) => RemotePhase::Unknown,
        Ok(wire::ReconcilePhase::Pending) => RemotePhase::Pending,
        Ok(wire::ReconcilePhase::Committed) => RemotePhase::Committed,
        Ok(wire::ReconcilePhase::Aborted) => RemotePhase::Aborted,
        _ => return Err(format!("transfer {transfer}: phase {} is not one", record.phase)),
    };
    let prepare = match &record.prepare {
        None => None,
        Some(item) => match prepare_in(item, transfer.origin()) {
            Ok(Preparing::Transfer(prepare)) if prepare.transfer == transfer => Some(prepare),
            _ => return Err(format!("transfer {transfer}: its Prepare from {from} is malformed")),
        },
    };
    Ok(RemoteRecord { transfer, phase, reason: convert::reject_code_in(record.reason), prepare })
}

/// Reconcile with `link`'s region until done, while this node leads (the
/// caller's task is aborted when leadership is lost; a new leader resumes
/// from the last applied step). A failed step is tried again after a
/// second.
pub async fn run(gateway: &Gateway, link: &Link) {
    let region = &link.region;
    let mut logged = false;
    loop {
        let next = gateway.state_machine.applied().state.reconcile_next(region);
        let Some((from, ask)) = next else {
            if logged {
                let applied = gateway.state_machine.applied();
                if let Some(report) = applied.state.reconciliation().and_then(|r| r.regions.get(region)) {
                    tracing::info!(%region, records = report.records, credits_recovered = report.credits_recovered,
                        committed = report.committed, aborted = report.aborted, aborts_sent = report.aborts_sent,
                        decisions_resent = report.decisions_resent, unrecoverable = report.unrecoverable_count,
                        conflicts = report.conflict_count, "reconciled after the restore");
                }
            }
            return;
        };
        if !logged {
            tracing::warn!(%region, "this region was restored from a backup: reconciling with {region} before \
                exchanging transfers with it");
            logged = true;
        }
        match step(gateway, link, from, ask).await {
            Ok(()) => {}
            Err(status) => {
                tracing::warn!(%region, code = ?status.code(), error = %status.message(),
                    "a reconciliation step failed; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Ask once and propose the answer.
async fn step(
    gateway: &Gateway,
    link: &Link,
    from: paymesh_core::reconcile::ReconcileStep,
    ask: Ask,
) -> Result<(), Status> {
    let since = {
        let applied = gateway.state_machine.applied();
        applied.state.reconciliation().map_or(Timestamp::EPOCH, |r| r.since)
    };
    let request = wire::ReconcileRequest {
        from_region: gateway.region.to_string(),
        since_unix_ms: convert::unix_ms(since),
        transfer_ids: match &ask {
            Ask::Ids(ids) => ids.iter().map(ToString::to_string).collect(),
            Ask::Scan(_) => Vec::new(),
        },
        scan_below: match ask {
            Ask::Ids(_) => 0,
            Ask::Scan(below) => below,
        },
        protocol: gateway.state_machine.protocol().number(),
    };
    let reply = link
        .client
        .call(None, |channel| {
            let request = request.clone();
            async move { crate::outbox::client(channel).reconcile(request).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| e.status().cloned().unwrap_or_else(|| Status::unavailable(e.to_string())))?;
    link.note_protocol(reply.protocol);
    if let Ask::Ids(ids) = &ask {
        if reply.records.len() != ids.len() {
            return Err(Status::internal(format!("{} records answer {} ids", reply.records.len(), ids.len())));
        }
    }
    let records = reply
        .records
        .iter()
        .map(|record| record_in(record, &link.region))
        .collect::<Result<Vec<RemoteRecord>, String>>()
        .map_err(Status::internal)?;
    let to = ask.step_after(reply.next);
    // A page may hold more records than one command carries (every
    // participation the other region holds prepared for this one comes in
    // its first page): all but the last part leave the step where it is.
    let mut parts: Vec<Vec<RemoteRecord>> = records.chunks(RECONCILE_RECORDS_MAX).map(<[_]>::to_vec).collect();
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    let last = parts.len() - 1;
    for (n, records) in parts.into_iter().enumerate() {
        let to = if n == last { to.clone() } else { from.clone() };
        let body = CommandBody::Reconciled { region: link.region.clone(), from: from.clone(), records, to };
        match gateway.operate(body).await? {
            Outcome::Done => {}
            other => return Err(Status::internal(format!("the reconciliation step was refused: {other:?}"))),
        }
    }
    Ok(())
}

/// The restore's report as `GetNodeStatus` carries it.
pub fn report_out(reconciliation: &Reconciliation) -> admin::RestoreReport {
    admin::RestoreReport {
        backup_index: reconciliation.backup_index,
        backup_time_unix_ms: convert::unix_ms(reconciliation.backup_time),
        regions: reconciliation
            .regions
            .iter()
            .map(|(region, r)| admin::RegionReconciliation {
                region: region.to_string(),
                done: r.is_done(),
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
                    .map(|lost| admin::UnrecoverableTransfer {
                        transfer_id: lost.transfer.to_string(),
                        source_amount: Some(convert::money_out(&lost.source)),
                        destination_amount: Some(convert::money_out(&lost.destination)),
                        payee_partner_id: lost.payee.to_string(),
                    })
                    .collect(),
                conflict_count: r.conflict_count,
                conflicts: r
                    .conflicts
                    .iter()
                    .map(|c| admin::ReconcileConflict { transfer_id: c.transfer.to_string(), detail: c.detail.clone() })
                    .collect(),
                done_unix_ms: r.done_at.map_or(0, convert::unix_ms),
            })
            .collect(),
    }
}
