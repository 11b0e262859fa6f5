//! A region restored from a backup reconciles with the other region: the
//! transfers after the backup's index come to the end the other region's
//! records dictate, and what cannot be recovered is reported.

use super::*;
use crate::reconcile::{Ask, HistoryScan, ReconcileStep};

/// Deliver only the Prepares of `from`'s outbox to `to`: the answers are
/// lost on the way back.
fn deliver_prepares(from: &Region, to: &mut Region, now: Timestamp) {
    let prepares: Vec<PrepareMessage> = from
        .state
        .outbox_for(to.state.region())
        .filter_map(|m| match m {
            OutboxMessage::Prepare(prepare) => Some(prepare.clone()),
            _ => None,
        })
        .collect();
    for prepare in prepares {
        assert!(matches!(to.run(CommandBody::Prepare(prepare), now), Outcome::PrepareReply(PrepareReply::Prepared)));
    }
}

/// What `other` answers `ask` with, as the node's inter-region service
/// does: its records of the ids, or a page of its scan.
fn answer(other: &Region, restored: &RegionId, since: Timestamp, ask: &Ask) -> (Vec<RemoteRecord>, u64) {
    let recall = other.history.at(other.index + 1);
    match ask {
        Ask::Ids(ids) => (ids.iter().map(|id| other.state.remote_record(id, &recall)).collect(), 0),
        Ask::Scan(below) => {
            let mut records = if *below == 0 { other.state.pending_participations_of(restored) } else { Vec::new() };
            let mut scan = HistoryScan::new(restored.clone(), since);
            for (index, record) in other.history.newest_first() {
                if (*below == 0 || index < *below) && !scan.feed(index, record) {
                    break;
                }
            }
            let (found, next) = scan.finish();
            records.extend(found);
            (records, next)
        }
    }
}

/// Reconcile `restored` with `other` to the end, as its leader's driver
/// does, applying one step twice on the way (a new leader's repeat).
fn reconcile(restored: &mut Region, other: &Region, now: Timestamp) {
    let region = other.state.region().clone();
    let since = restored.state.reconciliation().unwrap().since;
    let mut steps = 0;
    while let Some((from, ask)) = restored.state.reconcile_next(&region) {
        steps += 1;
        assert!(steps < 100, "reconciliation ends");
        let (records, next) = answer(other, restored.state.region(), since, &ask);
        let to = ask.step_after(next);
        let body = CommandBody::Reconciled { region: region.clone(), from, records, to };
        restored.ok(body.clone(), now);
        // Applied again (another command id): the step has moved on.
        let before = restored.state.clone();
        restored.ok(body, now);
        let after = &restored.state;
        assert!(
            before.reconciliation == after.reconciliation
                && before.ledger == after.ledger
                && before.outbox == after.outbox
                && before.transfers == after.transfers
                && before.participations == after.participations,
            "a step applied twice changes nothing"
        );
    }
    assert!(!restored.state.reconciling_with(&region));
}

/// The mesh before the disaster, at the backup and after it: `a`
/// committed before the backup; `b` prepared in cn-east with its answer
/// lost, `c` committed in us-west with its decision not yet delivered, at
/// the backup; after it `b` and `c` committed everywhere, `d` paid and
/// committed, `e` prepared in cn-east with its answer not yet back.
struct Story {
    backup: (Region, Region),
    after: (Region, Region),
    ids: BTreeMap<&'static str, TransferId>,
}

const BACKUP_AT: Timestamp = T0.plus_ms(1_000);
const AFTER: Timestamp = T0.plus_ms(2_000);
const RESTORED_AT: Timestamp = T0.plus_ms(3_000);

fn story() -> Story {
    let (mut west, mut east) = mesh();
    let mut ids = BTreeMap::new();
    ids.insert("a", paid(&mut west, &mut east, "a", T0).id);
    ids.insert("b", transfer_view(&pay(&mut west, "b", usd("10"), T0)).id);
    deliver_prepares(&west, &mut east, T0);
    ids.insert("c", transfer_view(&pay(&mut west, "c", usd("20"), T0)).id);
    let c = west.state.outbox_for(east.state.region()).find_map(|m| match m {
        OutboxMessage::Prepare(p) if p.transfer == ids["c"] => Some(p.clone()),
        _ => None,
    });
    let Outcome::PrepareReply(reply) = east.run(CommandBody::Prepare(c.unwrap()), T0) else { panic!() };
    west.run(CommandBody::PrepareReplied { transfer: ids["c"].clone(), reply }, T0);
    west.run(CommandBody::Tick, BACKUP_AT);
    east.run(CommandBody::Tick, BACKUP_AT);
    let backup = (west.clone(), east.clone());
    assert_eq!(west.transfer(&ids["b"]).unwrap().view.state, CoordinatorState::Reserved);
    assert_eq!(west.transfer(&ids["c"]).unwrap().view.state, CoordinatorState::Committed);
    assert_eq!(east.participation(&ids["c"]).unwrap().state, ParticipantState::Prepared);

    deliver_all(&mut west, &mut east, AFTER);
    deliver_all(&mut west, &mut east, AFTER);
    ids.insert("d", paid(&mut west, &mut east, "d", AFTER).id);
    ids.insert("e", transfer_view(&pay(&mut west, "e", usd("40"), AFTER)).id);
    deliver_prepares(&west, &mut east, AFTER);
    for name in ["a", "b", "c", "d"] {
        assert_eq!(west.transfer(&ids[name]).unwrap().view.state, CoordinatorState::Committed, "{name}");
        assert_eq!(east.participation(&ids[name]).unwrap().state, ParticipantState::Committed, "{name}");
    }
    Story { backup, after: (west, east), ids }
}

/// A region restored from its backup, as `paymesh restore` seeds it.
fn restored(backup: &Region, other: &Region) -> Region {
    let mut region = backup.clone();
    region.session += 100;
    region.state.begin_reconciliation(region.index, [other.state.region().clone(), region.state.region().clone()]);
    region.state.skip_numbers(1_000_000);
    region
}

#[test]
fn a_restored_payee_region_recovers_every_credit_its_coordinator_committed() {
    let Story { backup: (_, east_backup), after: (mut west, _), ids } = story();
    let mut east = restored(&east_backup, &west);
    assert!(east.state.reconciling_with(&region("us-west")));
    reconcile(&mut east, &west, RESTORED_AT);
    let report = &east.state.reconciliation().unwrap().regions[&region("us-west")];
    assert_eq!(report.step, ReconcileStep::Done);
    assert_eq!((report.committed, report.credits_recovered), (2, 1), "b and c committed, d recovered: {report:?}");
    assert_eq!((report.unrecoverable_count, report.conflict_count, report.aborts_sent), (0, 0, 0), "{report:?}");
    // e, which the restore lost while it was only prepared, is prepared
    // again by us-west's outbox and commits.
    deliver_all(&mut west, &mut east, RESTORED_AT);
    deliver_all(&mut west, &mut east, RESTORED_AT);
    for (name, id) in &ids {
        assert_eq!(west.transfer(id).unwrap().view.state, CoordinatorState::Committed, "{name}");
        assert_eq!(east.participation(id).unwrap().state, ParticipantState::Committed, "{name}");
    }
    // The payee holds every credit: five payments, none twice.
    let credited: Money = ids
        .values()
        .map(|id| west.transfer(id).unwrap().view.priced.destination)
        .try_fold(cny("0"), |sum, m| sum.checked_add(&m))
        .unwrap();
    assert_eq!(east.position("wechat-cn").posted.to_wire(), credited.to_wire());
    east.state.verify().unwrap();
}

#[test]
fn a_restored_payer_region_takes_its_payee_regions_outcomes_aborts_what_it_lost_and_reports_the_rest() {
    let Story { backup: (west_backup, _), after: (_, mut east), ids } = story();
    let mut west = restored(&west_backup, &east);
    // While it reconciles, no deadline fires: b, reserved at the backup,
    // was committed in cn-east since.
    let late = T0.plus_ms(60_000);
    assert!(!west.state.tick_due(late));
    west.run(CommandBody::Tick, late);
    assert_eq!(west.transfer(&ids["b"]).unwrap().view.state, CoordinatorState::Reserved);

    reconcile(&mut west, &east, late);
    let report = west.state.reconciliation().unwrap().regions[&region("cn-east")].clone();
    assert_eq!(report.committed, 1, "b took cn-east's commit: {report:?}");
    assert_eq!(report.aborts_sent, 1, "e, lost here and prepared there, is aborted: {report:?}");
    assert_eq!(report.unrecoverable_count, 1, "d, committed there and lost here: {report:?}");
    let lost = &report.unrecoverable[0];
    assert_eq!(lost.transfer, ids["d"]);
    assert_eq!((lost.source, lost.payee.clone()), (usd("100"), pid("wechat-cn")));
    assert_eq!(lost.destination, east.participation(&ids["d"]).unwrap().prepare.unwrap().destination);
    assert_eq!(report.conflict_count, 0, "{report:?}");
    assert_eq!(west.transfer(&ids["b"]).unwrap().view.state, CoordinatorState::Committed);

    deliver_all(&mut west, &mut east, late);
    assert_eq!(east.participation(&ids["e"]).unwrap().state, ParticipantState::Aborted, "e's credit released");
    assert!(west.state.outbox_for(east.state.region()).next().is_none(), "every decision acknowledged");
    for name in ["a", "b", "c"] {
        assert_eq!(west.transfer(&ids[name]).unwrap().view.state, CoordinatorState::Committed, "{name}");
        assert_eq!(east.participation(&ids[name]).unwrap().state, ParticipantState::Committed, "{name}");
    }
    assert!(west.transfer(&ids["d"]).is_none() && west.transfer(&ids["e"]).is_none());
    // The payer paid for a, b and c (with fees), not d, which is reported.
    let paid: Money = ["a", "b", "c"]
        .iter()
        .map(|name| east_transfer_total(&west, &ids[*name]))
        .try_fold(usd("0"), |sum, m| sum.checked_add(&m))
        .unwrap();
    let posted = west.position("paypal-us").posted;
    assert_eq!(usd("10000").checked_sub(&paid).unwrap().to_wire(), posted.to_wire());
    assert_eq!(west.state.reconciliation().unwrap().regions[&region("cn-east")].records, report.records);
    west.state.verify().unwrap();
    // New transfers flow again.
    assert!(!west.state.reconciling_with(&region("cn-east")));
    assert!(west.state.tick_due(late) || west.state.deadlines.is_empty());
}

fn east_transfer_total(west: &Region, id: &TransferId) -> Money {
    west.transfer(id).unwrap().view.priced.total_debit
}
