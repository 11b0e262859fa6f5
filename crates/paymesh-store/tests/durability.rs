//! The stores keep what they acknowledged across a restart, build snapshots
//! that reload to the same state, and refuse damaged snapshots.

// Test helpers may unwrap: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Seek, SeekFrom};
use std::sync::mpsc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use paymesh_core::command::{Batch, Command, CommandBody, CommandId};
use paymesh_core::id::{PartnerId, RegionId, TopUpRef};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money, Outcome, Timestamp};
use paymesh_store::raft_types::{Entry, LogId};
use paymesh_store::{state_digest, LogStore, NodeAddr, StateMachineStore};

fn region() -> RegionId {
    RegionId::new("us-west").unwrap()
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

fn command(sequence: u64, body: CommandBody) -> Command {
    Command { id: CommandId { session: 7, sequence }, body }
}

/// Entry 1: a membership; entry 2: a partner; entries 3..: one top-up each.
fn entries(count: u64) -> Vec<Entry> {
    let nodes: std::collections::BTreeMap<u64, NodeAddr> = [(0u64, NodeAddr::default())].into();
    let membership = Membership::new(vec![[0u64].into()], nodes);
    let mut entries = vec![Entry { log_id: log_id(1), payload: EntryPayload::Membership(membership) }];
    let partner = PartnerConfig {
        id: PartnerId::new("paypal-us").unwrap(),
        region: region(),
        role: PartnerRole::Payer,
        currency: Currency::USD,
        net_debit_cap: Money::zero(Currency::USD),
    };
    let now = Timestamp::from_unix_ms(1_700_000_000_000);
    let batch = Batch::new(now, vec![command(1, CommandBody::UpsertPartner(partner))]).unwrap();
    entries.push(Entry { log_id: log_id(2), payload: EntryPayload::Normal(batch.into()) });
    for index in 3..count + 3 {
        let top_up = CommandBody::TopUp {
            partner: PartnerId::new("paypal-us").unwrap(),
            amount: Money::from_units(index, Currency::USD).unwrap(),
            reference: TopUpRef::new(format!("wire-{index}")).unwrap(),
        };
        let batch = Batch::new(now, vec![command(index, top_up)]).unwrap();
        entries.push(Entry { log_id: log_id(index), payload: EntryPayload::Normal(batch.into()) });
    }
    entries
}

fn append_durably(log: &LogStore, entries: Vec<Entry>) {
    let (done, durable) = mpsc::channel();
    log.append_entries(entries, Box::new(move |result| done.send(result).unwrap())).unwrap();
    durable.recv_timeout(Duration::from_secs(10)).expect("the append is acknowledged").expect("the append is durable");
}

#[tokio::test]
async fn acknowledged_entries_and_the_vote_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        append_durably(&log, entries(50));
        log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
        let stats = log.stats();
        assert_eq!(stats.appends.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(stats.syncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(52)));
    assert_eq!(log.read_vote().await.unwrap(), Some(openraft::Vote::new(3, 1)));
    let read = log.try_get_log_entries(1..53).await.unwrap();
    assert_eq!(read, entries(50));
}

#[tokio::test]
async fn a_snapshot_reloads_to_the_same_state_and_the_log_replays_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let all = entries(100);
    let digest_at_end;
    {
        let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
        let outcomes = sm.apply(all[..60].to_vec()).await.unwrap();
        assert_eq!(outcomes.len(), 60, "one outcome per entry, membership included");
        assert_eq!(outcomes[1].outcomes, [Outcome::Done]);
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(60)));
        sm.apply(all[60..].to_vec()).await.unwrap();
        digest_at_end = sm.applied().digest();
    }
    // After a restart the state is the snapshot's; re-applying the rest of the
    // log gives the same digest as before.
    let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
    let (last_applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(60)));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    // History already holds entries 61 to 100: they are applied again
    // against history as of each entry, and their records, the same, are
    // not written twice.
    let records = sm.history().records();
    sm.apply(all[60..].to_vec()).await.unwrap();
    assert_eq!(sm.history().records(), records);
    assert_eq!(sm.applied().digest(), digest_at_end);
    let position = sm.applied().state.position(&PartnerId::new("paypal-us").unwrap()).unwrap();
    let expected: u64 = (3..103).sum();
    assert_eq!(position.posted.units(), i128::from(expected));
}

#[tokio::test]
async fn an_installed_snapshot_is_read_from_its_start_and_checked() {
    let source_dir = tempfile::tempdir().unwrap();
    let mut source = StateMachineStore::open(source_dir.path(), region()).unwrap();
    source.apply(entries(20)).await.unwrap();
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let bytes = snapshot.snapshot.into_inner();

    // As after a real transfer, the receiving buffer's position is at its end.
    let target_dir = tempfile::tempdir().unwrap();
    let mut target = StateMachineStore::open(target_dir.path(), region()).unwrap();
    // A snapshot carries history's digest, not history: refused until the
    // node holds history through the snapshot's index.
    let refused = target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes.clone()))).await;
    assert!(refused.unwrap_err().to_string().contains("history reaches index 0 only"));
    let at = snapshot.meta.last_log_id.unwrap().index;
    // History with another record at the same indexes is not the region's.
    let forged_dir = tempfile::tempdir().unwrap();
    let mut forged = StateMachineStore::open(forged_dir.path(), region()).unwrap();
    for (index, mut records) in source.history().journal_after(0, usize::MAX).unwrap() {
        records.pop();
        forged.history().write(index, &records).unwrap();
    }
    forged.history().write(at, &[]).unwrap();
    let refused = forged.install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes.clone()))).await;
    assert!(refused.unwrap_err().to_string().contains(&format!("digest at index {at} differs")));
    target.history().append(&source.history().journal_after(0, usize::MAX).unwrap(), at).unwrap();
    let mut received = Cursor::new(bytes.clone());
    received.seek(SeekFrom::End(0)).unwrap();
    target.install_snapshot(&snapshot.meta, Box::new(received)).await.unwrap();
    assert_eq!(target.applied().digest(), source.applied().digest());
    let current = target.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // Damaged bytes, or bytes of another region, are refused and change nothing.
    let before = state_digest(&target.applied().state);
    let mut damaged = bytes.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0xff;
    assert!(target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(damaged))).await.is_err());
    let mut other_meta = snapshot.meta.clone();
    other_meta.last_log_id = Some(log_id(999));
    assert!(target.install_snapshot(&other_meta, Box::new(Cursor::new(bytes.clone()))).await.is_err());
    let elsewhere_dir = tempfile::tempdir().unwrap();
    let mut elsewhere = StateMachineStore::open(elsewhere_dir.path(), RegionId::new("cn-east").unwrap()).unwrap();
    assert!(elsewhere.install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes))).await.is_err());
    assert_eq!(state_digest(&target.applied().state), before);
}

#[tokio::test]
async fn replicas_applying_the_same_entries_have_equal_digests() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = StateMachineStore::open(a.path(), region()).unwrap();
    let mut second = StateMachineStore::open(b.path(), region()).unwrap();
    first.apply(entries(30)).await.unwrap();
    for chunk in entries(30).chunks(7) {
        second.apply(chunk.to_vec()).await.unwrap();
    }
    assert_eq!(state_digest(&first.applied().state), state_digest(&second.applied().state));
    second.apply(entries(31)[32..].to_vec()).await.unwrap();
    assert_ne!(state_digest(&first.applied().state), state_digest(&second.applied().state));
}

/// A membership entry at `index` of the nodes `ids`, all voters.
fn membership_entry(index: u64, ids: &[u64]) -> Entry {
    let nodes: std::collections::BTreeMap<u64, NodeAddr> = ids.iter().map(|id| (*id, NodeAddr::default())).collect();
    let voters: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    Entry { log_id: log_id(index), payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)) }
}

#[tokio::test]
async fn removed_nodes_are_retired_until_added_back_and_the_set_survives_snapshots_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let retired = |sm: &StateMachineStore| sm.applied().retired.iter().copied().collect::<Vec<u64>>();
    {
        let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
        sm.apply(vec![membership_entry(1, &[1, 2, 3])]).await.unwrap();
        assert_eq!(retired(&sm), [] as [u64; 0]);
        sm.apply(vec![membership_entry(2, &[1, 2])]).await.unwrap();
        assert_eq!(retired(&sm), [3], "a removed node is retired");
        sm.apply(vec![membership_entry(3, &[1, 2, 4])]).await.unwrap();
        assert_eq!(retired(&sm), [3], "adding another node retires no one");
        sm.apply(vec![membership_entry(4, &[2, 3, 4])]).await.unwrap();
        assert_eq!(retired(&sm), [1], "a node added back is no longer retired");
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    // The checkpoint carries the set across a restart, and a snapshot to
    // another node.
    let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
    assert_eq!(retired(&sm), [1]);
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let mut target = StateMachineStore::open(target_dir.path(), region()).unwrap();
    target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(snapshot.snapshot.into_inner()))).await.unwrap();
    assert_eq!(retired(&target), [1]);
}

/// A backup taken while entries are still applied holds the state and
/// history at one index; restored into a new directory for a new
/// membership, the state is the backup's (with the numbers partners hold
/// skipped and the new members), history reaches the index with the same
/// digest, and a second restore from the same file is identical. A
/// flipped byte or a file cut short is refused.
#[tokio::test]
async fn a_backup_restores_to_the_state_and_history_at_its_index() {
    use paymesh_store::backup::{self, RestoreTarget};

    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(&dir.path().join("node"), region()).unwrap();
    let all = entries(40);
    sm.apply(all[..30].to_vec()).await.unwrap();
    let at_backup = sm.applied();
    let file = dir.path().join("us-west.pmbackup");
    let written =
        backup::write_file(&file, |out| backup::write(&at_backup, sm.history(), 2, 1_700_000_000_000, out).map(drop));
    written.unwrap();
    // The node goes on: what it applies after the backup is not in it.
    sm.apply(all[30..].to_vec()).await.unwrap();

    let header = backup::check(&file).unwrap();
    assert_eq!((header.index, header.term, header.node_id), (30, 1, 2));
    assert_eq!(header.region_digest, hex::encode(at_backup.digest()));
    let members: Vec<(u64, NodeAddr)> = (1..=3)
        .map(|id| (id, NodeAddr { raft_addr: format!("10.0.0.{id}:7000"), api_addr: format!("10.0.0.{id}:8000") }))
        .collect();
    let target = RestoreTarget { region: region(), members: members.clone(), gap: 1_000, reconcile_with: Vec::new() };
    let first = backup::restore(&file, &dir.path().join("restored-1"), &target).unwrap();
    let second = backup::restore(&file, &dir.path().join("restored-2"), &target).unwrap();
    assert_eq!(first.region_digest, second.region_digest);
    assert!(first.history_batches > 0);
    let restored = StateMachineStore::open(&dir.path().join("restored-1"), region()).unwrap();
    let applied = restored.applied();
    assert_eq!(applied.last_applied, at_backup.last_applied);
    assert_eq!(applied.history_digest, at_backup.history_digest);
    assert_eq!(restored.history().last_index(), 30);
    assert_eq!(applied.membership.membership().nodes().map(|(id, a)| (*id, a.clone())).collect::<Vec<_>>(), members);
    assert_eq!(applied.state.transfers_created(), at_backup.state.transfers_created() + 1_000);
    let partner = PartnerId::new("paypal-us").unwrap();
    assert_eq!(applied.state.position(&partner), at_backup.state.position(&partner));
    assert_eq!(applied.state.last_cursor(&partner), at_backup.state.last_cursor(&partner) + 1_000);
    // Events written before the backup are read back from the restored
    // history.
    let events = restored.history().events_after(&partner, 0, 1_000).unwrap();
    assert_eq!(events.len() as u64, at_backup.state.last_cursor(&partner));
    // Not into a directory that holds a state already, nor for another
    // region.
    let again = backup::restore(&file, &dir.path().join("restored-1"), &target).unwrap_err();
    assert!(again.to_string().contains("already holds a state"), "{again}");
    let elsewhere = RestoreTarget { region: RegionId::new("cn-east").unwrap(), ..target.clone() };
    let refused = backup::restore(&file, &dir.path().join("restored-3"), &elsewhere).unwrap_err();
    assert!(refused.to_string().contains("not cn-east"), "{refused}");

    // Damage is found before anything is trusted.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let damaged = dir.path().join("flipped.pmbackup");
    std::fs::write(&damaged, &flipped).unwrap();
    assert!(backup::check(&damaged).is_err());
    assert!(backup::restore(&damaged, &dir.path().join("restored-4"), &target).is_err());
    let cut = dir.path().join("cut.pmbackup");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let error = backup::check(&cut).unwrap_err().to_string();
    assert!(error.contains("ends early"), "{error}");
}

/// A region moved to a newer protocol: a replica of a release that supports
/// it applies the raise and its snapshot carries the protocol across a
/// restart; one that does not stops before applying it (a storage error,
/// which openraft takes as fatal) and applies nothing of its entry.
#[tokio::test]
async fn a_raised_protocol_survives_a_snapshot_and_a_release_without_it_stops_before_applying() {
    use paymesh_core::version::{Protocol, PROTOCOL};
    let next = Protocol::new(PROTOCOL + 1).unwrap();
    let raise = |index, to| {
        let batch = Batch::new(
            Timestamp::from_unix_ms(1_700_000_000_000),
            vec![command(index, CommandBody::RaiseProtocol { to })],
        )
        .unwrap();
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(batch.into()) }
    };

    // Beyond this release: refused, the state as before the entry.
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
    sm.apply(entries(3)).await.unwrap();
    let before = sm.applied();
    let refused = sm.apply(vec![raise(6, next)]).await.expect_err("a protocol this release lacks stops the node");
    assert!(refused.to_string().contains("protocol"), "{refused}");
    assert_eq!(sm.applied().last_applied, before.last_applied);
    assert_eq!(sm.applied().digest(), before.digest());

    // Within it (the newest it supports; a region at protocol 1 on a release
    // of protocol 1 raising to 1 is refused by the state instead).
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
        sm.apply(entries(3)).await.unwrap();
        let outcomes = sm.apply(vec![raise(6, Protocol::SUPPORTED)]).await.unwrap();
        let raised = Protocol::SUPPORTED > Protocol::FIRST;
        let expected =
            if raised { Outcome::Done } else { Outcome::Rejected(paymesh_core::RejectCode::ProtocolViolation) };
        assert_eq!(outcomes[0].outcomes, [expected]);
        assert_eq!(sm.applied().state.protocol(), Protocol::SUPPORTED);
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        digest = sm.applied().digest();
    }
    let sm = StateMachineStore::open(dir.path(), region()).unwrap();
    assert_eq!(sm.applied().state.protocol(), Protocol::SUPPORTED);
    assert_eq!(sm.applied().digest(), digest);
}

/// A reader of the applied state (a partner's request, a status page) is
/// never held up by an apply in progress, however long its batch takes: it
/// reads the state as the last apply left it, and the next apply's result
/// once that apply is done.
#[tokio::test]
async fn a_reader_does_not_wait_for_an_apply_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path(), region()).unwrap();
    let all = entries(5); // indexes 1 to 7
    sm.apply(all[..3].to_vec()).await.unwrap();
    // While entry 5 applies (the observer runs inside the apply), another
    // thread reads the applied state; the apply waits (a bounded time) for
    // its answer.
    let (answer, answers) = mpsc::channel();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = sm.clone();
    let seen = answered.clone();
    sm.observe_applies(std::sync::Arc::new(move |log_id: LogId, _| {
        if log_id.index != 5 {
            return;
        }
        let (reader, answer, (done, waited)) = (reader.clone(), answer.clone(), mpsc::channel());
        std::thread::spawn(move || {
            answer.send(reader.applied().last_applied.map(|l| l.index)).unwrap();
            let _ = done.send(());
        });
        let in_time = waited.recv_timeout(Duration::from_secs(2)).is_ok();
        seen.store(in_time, std::sync::atomic::Ordering::SeqCst);
    }));
    sm.apply(all[3..].to_vec()).await.unwrap();
    let during = answers.recv_timeout(Duration::from_secs(10)).expect("the reader answers");
    assert!(answered.load(std::sync::atomic::Ordering::SeqCst), "the reader answered while the apply ran");
    assert_eq!(during, Some(3), "the reader sees the state the last apply left");
    assert_eq!(sm.applied().last_applied.map(|l| l.index), Some(7), "then the finished apply's");
}
