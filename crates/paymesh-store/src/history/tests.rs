//! The store against `MemoryHistory`, its oracle, and against its own
//! promises: the recall as of an index, skipped re-writes, the digest,
//! reopening, paging, retention and the journal for catch-up.

use std::time::{Duration, Instant};

use paymesh_core::command::{CommandBody, PayerDetails, PayerField, RefundPrepare, TransferRequest};
use paymesh_core::corridor::{CorridorId, Priced};
use paymesh_core::directory::Payee;
use paymesh_core::fx::Rate;
use paymesh_core::history::{Balances, MemoryHistory, MovementKind};
use paymesh_core::id::{MerchantId, PayerToken, QrPayload, QuoteId, RegionId};
use paymesh_core::ledger::{AccountOwner, EntryId, Leg};
use paymesh_core::outcome::{Outcome, RefundView, RejectCode, TransferView};
use paymesh_core::partner::BusinessStatus;
use paymesh_core::settlement::WindowPosition;
use paymesh_core::state::EventKind;
use paymesh_core::transfer::{CoordinatorState, ParticipantState};
use paymesh_core::{Currency, Money};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

const CACHE_BYTES: u64 = 16 * 1024 * 1024;

// --- fixtures ---------------------------------------------------------------

fn region() -> RegionId {
    RegionId::new("us-west").unwrap()
}

pub(crate) fn pid(n: u64) -> PartnerId {
    PartnerId::new(format!("partner-{n}")).unwrap()
}

pub(crate) fn tid(n: u64) -> TransferId {
    TransferId::new(region(), n)
}

fn key(n: u64) -> IdempotencyKey {
    IdempotencyKey::new(format!("key-{n}")).unwrap()
}

fn reference(n: u64) -> TopUpRef {
    TopUpRef::new(format!("wire-{n}")).unwrap()
}

pub(crate) fn ms(at: u64) -> Timestamp {
    Timestamp::from_unix_ms(at)
}

fn usd(units: u64) -> Money {
    Money::from_units(units, Currency::USD).unwrap()
}

fn account(n: u64) -> AccountId {
    match n {
        0..=2 => AccountId::new(AccountOwner::Partner(pid(n)), Currency::USD),
        3 => AccountId::new(AccountOwner::Settlement, Currency::USD),
        _ => AccountId::new(AccountOwner::Clearing(RegionId::new("cn-east").unwrap()), Currency::USD),
    }
}

fn payer(n: u64) -> PayerDetails {
    PayerDetails {
        name: PayerField::new(format!("Payer {n}")).unwrap(),
        account: PayerField::new(format!("account-{n:04}")).unwrap(),
        reference: PayerField::new(format!("invoice-{n}")).unwrap(),
    }
}

/// A finished transfer; `at` tells versions of one id apart.
pub(crate) fn transfer(n: u64, at: u64) -> Transfer {
    let id = tid(n);
    let corridor = CorridorId::parse("USD:us-west->USD:us-west").unwrap();
    Transfer {
        view: TransferView {
            id: id.clone(),
            partner: pid(n % 3),
            idempotency_key: key(n),
            quote: QuoteId::new(region(), n),
            corridor,
            priced: Priced {
                rate: Rate::ONE,
                source: usd(1_000 + n),
                destination: usd(1_000 + n),
                fee: usd(10),
                total_debit: usd(1_010 + n),
            },
            payee: Payee {
                partner: pid((n + 1) % 3),
                merchant: MerchantId::new(format!("merchant-{n}")).unwrap(),
                region: region(),
                currency: Currency::USD,
            },
            payer_token: PayerToken::for_transfer(&id),
            state: CoordinatorState::Committed,
            reason: None,
            created_at: ms(at),
            updated_at: ms(at + 1),
            deadline: None,
        },
        payer: payer(n),
        cap_day: at / 86_400_000,
    }
}

fn participation(at: u64) -> Participation {
    Participation {
        state: ParticipantState::Tombstone,
        reason: Some(RejectCode::PartnerNotFound),
        prepare: None,
        created_at: ms(at),
        updated_at: ms(at),
    }
}

/// A finished refund coordinated here, of transfer `n`; `at` tells
/// versions of one id apart.
fn refund(n: u64, at: u64) -> Record {
    Record::Refund(Box::new(Refund {
        view: RefundView {
            id: tid(100 + n),
            partner: pid((n + 1) % 3),
            idempotency_key: key(100 + n),
            original: tid(n),
            debited: usd(500 + n),
            credited: usd(500 + n),
            state: CoordinatorState::Committed,
            reason: None,
            created_at: ms(at),
            updated_at: ms(at + 1),
            deadline: None,
        },
        payer_region: region(),
        payer: Some(pid(n % 3)),
    }))
}

/// This region's finished side of another region's refund `n`.
fn refund_participation(n: u64, at: u64) -> Record {
    let refund = TransferId::new(RegionId::new("cn-east").unwrap(), n);
    let prepare = RefundPrepare {
        refund: refund.clone(),
        original: tid(n),
        debited: usd(700 + n),
        credited: usd(100 + n),
        requested_by: pid(1),
        payer_token: PayerToken::for_transfer(&tid(n)),
        deadline: ms(at + 5),
    };
    let participation = RefundParticipation {
        state: ParticipantState::Committed,
        reason: None,
        prepare,
        payer: Some(pid(n % 3)),
        created_at: ms(at),
        updated_at: ms(at + 1),
    };
    Record::RefundParticipation { refund, participation: Box::new(participation) }
}

/// Transfer `n`'s refund totals, `parts` cents of them.
fn refunded(n: u64, parts: u64) -> Record {
    Record::Refunded { transfer: tid(n), totals: RefundTotals { debited: usd(parts), credited: usd(parts) } }
}

/// Settlement window `n`, closed at `at`, with one position: a version
/// of it, the newest of which answers.
fn window(n: u64, at: u64) -> Record {
    let account = AccountId::new(AccountOwner::Partner(pid(n % 3)), Currency::USD);
    let position = WindowPosition { account, net: i128::from(at) - 3, settled: None };
    Record::Window(Box::new(SettlementWindow {
        number: n,
        opened_at: ms(0),
        closed_at: Some(ms(at)),
        positions: vec![position],
        opening: Default::default(),
        closing: Default::default(),
        sent: Default::default(),
        received: Default::default(),
    }))
}

fn idempotency(partner: u64, n: u64, at: u64) -> Record {
    let request = TransferRequest {
        partner: pid(partner),
        idempotency_key: key(n),
        quote: QuoteId::new(region(), n),
        payee: QrPayload::new(format!("wxp://merchant-{n}")).unwrap(),
        payer: payer(n),
    };
    Record::Idempotency {
        partner: pid(partner),
        key: key(n),
        record: Box::new(IdempotencyRecord {
            fingerprint: request.fingerprint(),
            outcome: Outcome::Rejected(RejectCode::PartnerNotFound),
            at: ms(at),
        }),
    }
}

fn top_up(n: u64, at: u64) -> Record {
    Record::TopUp {
        reference: reference(n),
        record: TopUpRecord { partner: pid(n % 3), amount: usd(at + 1), at: ms(at) },
    }
}

pub(crate) fn movement(debit: u64, credit: u64, amount: u64, at: u64) -> Record {
    let sums = Balances { debits_posted: u128::from(amount), credits_posted: 7, ..Balances::default() };
    Record::Movement(Box::new(Movement {
        entry: EntryId::Transfer { transfer: tid(amount), leg: Leg::Principal },
        kind: MovementKind::Post,
        debit: account(debit),
        credit: account(credit),
        amount: usd(amount),
        at: ms(at),
        debit_after: sums,
        credit_after: sums,
    }))
}

pub(crate) fn event(partner: u64, cursor: u64, at: u64) -> Record {
    Record::Event {
        partner: pid(partner),
        event: Event {
            cursor,
            at: ms(at),
            transfer: tid(cursor),
            kind: EventKind::Committed,
            amount: usd(cursor),
            reason: None,
        },
    }
}

pub(crate) fn listed(partner: u64, transfer: u64, at: u64) -> Record {
    Record::Listed { partner: pid(partner), transfer: tid(transfer), at: ms(at) }
}

fn operator(at: u64) -> Record {
    Record::Operator {
        at: ms(at),
        command: Box::new(CommandBody::SetPartnerStatus { partner: pid(0), status: BusinessStatus::Suspended }),
        outcome: Box::new(Outcome::Done),
    }
}

/// Records of every kind, as one finished same-region transfer writes them.
pub(crate) fn finished(n: u64, at: u64) -> Vec<Record> {
    vec![
        listed(n % 3, n, at),
        Record::Transfer(Box::new(transfer(n, at))),
        idempotency(n % 3, n, at),
        movement(n % 3, 4, n, at),
        movement(4, (n + 1) % 3, n, at),
        event(n % 3, n, at),
        Record::Participation { transfer: tid(n), participation: Box::new(participation(at)) },
        top_up(n, at),
        operator(at),
    ]
}

pub(crate) fn open(dir: &Path) -> History {
    History::open(dir, CACHE_BYTES).unwrap()
}

/// Open again after a drop: the engine lets go of its directory's lock
/// from a thread of its own a moment after the database is dropped, so an
/// engine's error is retried for a bounded while.
pub(crate) fn reopen(dir: &Path) -> Result<History> {
    let mut result = History::open(dir, CACHE_BYTES);
    for _ in 0..100 {
        if !matches!(result, Err(HistoryError::Store(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        result = History::open(dir, CACHE_BYTES);
    }
    result
}

/// The engine alone, opened again as [`reopen`] does, to damage a store.
fn reopen_engine(dir: &Path) -> kv::Kv {
    (0..100)
        .find_map(|_| kv::Kv::open(dir, CACHE_BYTES).map_err(|_| std::thread::sleep(Duration::from_millis(50))).ok())
        .expect("the engine's lock is released within 5 s")
}

pub(crate) fn journal(store: &History) -> Vec<(u64, Record)> {
    let batches = store.journal_after(0, usize::MAX).unwrap();
    batches.into_iter().flat_map(|(index, records)| records.into_iter().map(move |r| (index, r))).collect()
}

/// Every record of the memory history with its list token, for movements.
fn memory_statement(memory: &MemoryHistory, account: &AccountId, from: u64, to: u64) -> Vec<(ListToken, Movement)> {
    let mut statement = Vec::new();
    let mut position = (0, 0);
    for (index, record) in memory.records() {
        position = if position.0 == index { (index, position.1 + 1) } else { (index, 0) };
        if let Record::Movement(m) = record {
            if (m.debit == *account || m.credit == *account) && ms(from) <= m.at && m.at < ms(to) {
                statement.push((ListToken { at: m.at, index, seq: position.1 }, (**m).clone()));
            }
        }
    }
    statement.sort_by_key(|(token, _)| *token);
    statement
}

/// Page through a statement `page` movements at a time.
fn paged_statement(
    store: &History,
    account: &AccountId,
    from: u64,
    to: u64,
    page: usize,
) -> Vec<(ListToken, Movement)> {
    let mut all: Vec<(ListToken, Movement)> = Vec::new();
    loop {
        let after = all.last().map(|(token, _)| *token);
        let next = store.statement(account, ms(from), ms(to), after, page).unwrap();
        assert!(next.len() <= page);
        if next.is_empty() {
            return all;
        }
        all.extend(next);
    }
}

// --- the oracle -------------------------------------------------------------

const PARTNERS: u64 = 3;
const IDS: u64 = 4;
const TIMES: u64 = 6;
const CURSORS: u64 = 5;

/// A record drawn from small pools, so that ids repeat (the newest visible
/// wins, events last wins) and times collide (tokens order by position).
#[derive(Clone, Debug)]
enum Spec {
    Listed(u64, u64, u64),
    Transfer(u64, u64),
    Participation(u64, u64),
    Idempotency(u64, u64, u64),
    TopUp(u64, u64),
    Movement(u64, u64, u64),
    Event(u64, u64, u64),
    Operator(u64),
    Refund(u64, u64),
    RefundParticipation(u64, u64),
    Refunded(u64, u64),
    Window(u64, u64),
}

impl Spec {
    fn record(&self) -> Record {
        match *self {
            Spec::Listed(partner, transfer, at) => listed(partner, transfer, at),
            Spec::Transfer(id, at) => Record::Transfer(Box::new(transfer(id, at))),
            Spec::Participation(id, at) => {
                Record::Participation { transfer: tid(id), participation: Box::new(participation(at)) }
            }
            Spec::Idempotency(partner, n, at) => idempotency(partner, n, at),
            Spec::TopUp(n, at) => top_up(n, at),
            Spec::Movement(debit, credit, at) => movement(debit, credit, at + 1, at),
            Spec::Event(partner, cursor, at) => event(partner, cursor, at),
            Spec::Operator(at) => operator(at),
            Spec::Refund(n, at) => refund(n, at),
            Spec::RefundParticipation(n, at) => refund_participation(n, at),
            Spec::Refunded(n, parts) => refunded(n, parts),
            Spec::Window(n, at) => window(n, at),
        }
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        (0..PARTNERS, 0..IDS, 0..TIMES).prop_map(|(p, t, at)| Spec::Listed(p, t, at)),
        (0..IDS, 0..TIMES).prop_map(|(t, at)| Spec::Transfer(t, at)),
        (0..IDS, 0..TIMES).prop_map(|(t, at)| Spec::Participation(t, at)),
        (0..PARTNERS, 0..IDS, 0..TIMES).prop_map(|(p, k, at)| Spec::Idempotency(p, k, at)),
        (0..IDS, 0..TIMES).prop_map(|(r, at)| Spec::TopUp(r, at)),
        (0..5u64, 0..5u64, 0..TIMES).prop_map(|(d, c, at)| Spec::Movement(d, c, at)),
        (0..PARTNERS, 1..=CURSORS, 0..TIMES).prop_map(|(p, c, at)| Spec::Event(p, c, at)),
        (0..TIMES).prop_map(Spec::Operator),
        (0..IDS, 0..TIMES).prop_map(|(n, at)| Spec::Refund(n, at)),
        (0..IDS, 0..TIMES).prop_map(|(n, at)| Spec::RefundParticipation(n, at)),
        (0..IDS, 1..TIMES).prop_map(|(n, parts)| Spec::Refunded(n, parts)),
        (1..IDS, 1..TIMES).prop_map(|(n, at)| Spec::Window(n, at)),
    ]
}

/// Every question both histories answer, compared.
fn assert_same(store: &History, memory: &MemoryHistory) {
    assert_eq!(store.last_index(), memory.last_index());
    assert_eq!(store.records(), memory.records().count() as u64);
    let expected: Vec<(u64, Record)> = memory.records().map(|(i, r)| (i, r.clone())).collect();
    assert_eq!(journal(store), expected);

    let befores = (0..=memory.last_index() + 1).chain([u64::MAX]);
    for before in befores {
        let (s, m) = (store.at(before), memory.at(before));
        for n in 0..IDS {
            assert_eq!(s.transfer(&tid(n)), m.transfer(&tid(n)), "transfer {n} before {before}");
            assert_eq!(s.participation(&tid(n)), m.participation(&tid(n)), "participation {n} before {before}");
            assert_eq!(s.top_up(&reference(n)), m.top_up(&reference(n)), "top-up {n} before {before}");
            assert_eq!(s.refund(&tid(100 + n)), m.refund(&tid(100 + n)), "refund {n} before {before}");
            let theirs = TransferId::new(RegionId::new("cn-east").unwrap(), n);
            assert_eq!(s.refund_participation(&theirs), m.refund_participation(&theirs), "refund part {n}");
            assert_eq!(s.refunded(&tid(n)), m.refunded(&tid(n)), "refunded {n} before {before}");
            assert_eq!(s.window(n), m.window(n), "window {n} before {before}");
            if before == u64::MAX {
                let first = memory.records().find(|(_, r)| matches!(r, Record::Window(w) if w.number == n));
                let at = store.window_closed_at(n).unwrap();
                assert_eq!(at.map(|(index, _)| index), first.map(|(index, _)| index), "window {n} closed at");
            }
            for p in 0..PARTNERS {
                assert_eq!(s.idempotency(&pid(p), &key(n)), m.idempotency(&pid(p), &key(n)));
            }
        }
    }
    for n in 0..IDS {
        assert_eq!(Recall::transfer(store, &tid(n)), Recall::transfer(memory, &tid(n)));
        assert_eq!(store.get_participation(&tid(n)).unwrap(), memory.participation(&tid(n)));
    }

    for p in (0..PARTNERS).map(pid) {
        for page in [1, 2, 3, usize::MAX] {
            let mut token = None;
            loop {
                let got = store.listed(&p, token.as_ref(), page);
                assert_eq!(got, memory.listed(&p, token.as_ref(), page), "{p} after {token:?}");
                let Some((last, _)) = got.last() else { break };
                token = Some(*last);
            }
        }
        for after in 0..=CURSORS + 1 {
            for max in [0, 1, 2, usize::MAX] {
                let events = store.events_after(&p, after, max).unwrap();
                assert_eq!(events, memory.events(&p, after, max), "{p} after {after}, {max}");
                assert_eq!(HistoryRead::events(store, &p, after, max), events);
            }
        }
    }

    for a in (0..5).map(account) {
        for (from, to) in [(0, TIMES), (1, 3), (2, 3), (3, 3), (4, 1)] {
            let expected = memory_statement(memory, &a, from, to);
            assert_eq!(store.statement(&a, ms(from), ms(to), None, usize::MAX).unwrap(), expected);
            assert_eq!(paged_statement(store, &a, from, to, 2), expected);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random batches, with repeated ids and indexes written again, give
    /// the store and `MemoryHistory` the same answers; a store fed the
    /// journal (catch-up) reaches the same digest.
    #[test]
    fn the_store_answers_as_memory_history_does(
        batches in prop::collection::vec((0u64..3, prop::collection::vec(spec(), 0..7)), 1..14),
        every in 1u64..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Gathered every few batches, so that groups are on disk, waiting,
        // and written into on disk for a time that went back.
        let store = open(dir.path()).gathering_every(every);
        let mut memory = MemoryHistory::new();
        let mut index = 0;
        for (gap, specs) in &batches {
            index += gap;
            let records: Vec<Record> = specs.iter().map(Spec::record).collect();
            store.write(index, &records).unwrap();
            // The store skips a batch at or below its last index; memory
            // insists it brings the same records (as re-applying does).
            if index > memory.last_index() {
                memory.write(index, records);
            }
        }
        assert_same(&store, &memory);
        // Reopened: what waited is taken again from the journal.
        drop(store);
        let store = reopen(dir.path()).unwrap().gathering_every(every);
        assert_same(&store, &memory);

        let copy_dir = tempfile::tempdir().unwrap();
        let copy = open(copy_dir.path());
        for (index, records) in store.journal_after(0, 64).unwrap() {
            copy.write(index, &records).unwrap();
        }
        let mut after = copy.last_index();
        loop {
            let batches = store.journal_after(after, 64).unwrap();
            let Some(&(last, _)) = batches.last() else { break };
            for (index, records) in batches {
                copy.write(index, &records).unwrap();
            }
            after = last;
        }
        prop_assert_eq!(copy.digest(), store.digest());
        prop_assert_eq!(journal(&copy), journal(&store));
    }
}

// --- the recall as of an index ----------------------------------------------

#[test]
fn a_recall_at_an_index_hides_what_that_batch_and_later_ones_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut memory = MemoryHistory::new();
    let first = vec![
        Record::Transfer(Box::new(transfer(1, 100))),
        idempotency(0, 1, 100),
        top_up(1, 100),
        Record::Participation { transfer: tid(2), participation: Box::new(participation(100)) },
    ];
    // A second version of transfer 1 and two of transfer 3 (the newest
    // written before a batch answers it, across batches and within one).
    let second = vec![
        Record::Transfer(Box::new(transfer(1, 200))),
        Record::Transfer(Box::new(transfer(3, 200))),
        Record::Transfer(Box::new(transfer(3, 300))),
    ];
    for (index, records) in [(5, first), (9, second)] {
        store.write(index, &records).unwrap();
        memory.write(index, records);
    }
    for before in [0, 5] {
        let at = store.at(before);
        assert_eq!(at.transfer(&tid(1)), None);
        assert_eq!(at.idempotency(&pid(0), &key(1)), None);
        assert_eq!(at.top_up(&reference(1)), None);
        assert_eq!(at.participation(&tid(2)), None);
    }
    for before in [6, 9] {
        let at = store.at(before);
        assert_eq!(at.transfer(&tid(1)), Some(transfer(1, 100)));
        assert!(at.idempotency(&pid(0), &key(1)).is_some());
        assert!(at.top_up(&reference(1)).is_some());
        assert_eq!(at.participation(&tid(2)), Some(participation(100)));
        assert_eq!(at.transfer(&tid(3)), None);
    }
    assert_eq!(store.at(9).transfer(&tid(1)), Some(transfer(1, 100)));
    assert_eq!(store.at(10).transfer(&tid(1)), Some(transfer(1, 200)));
    assert_eq!(store.at(10).transfer(&tid(3)), Some(transfer(3, 300)));
    assert_eq!(store.get_transfer(&tid(3)).unwrap(), Some(transfer(3, 300)));
    assert_eq!(store.at(10).idempotency(&pid(1), &key(1)), None, "another partner's key");
    assert_same(&store, &memory);
}

#[test]
fn a_batch_at_or_below_the_last_index_is_skipped_and_the_digest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!((store.last_index(), store.digest(), store.records()), (0, [0; 32], 0));
    store.write(0, &finished(9, 9)).unwrap();
    assert_eq!((store.last_index(), store.records()), (0, 0), "index 0 is at the last index");

    store.write(3, &finished(1, 10)).unwrap();
    let digest = store.digest();
    assert_ne!(digest, [0; 32]);
    let held = journal(&store);
    for index in [3, 2, 1] {
        store.write(index, &finished(2, 20)).unwrap();
        assert_eq!((store.last_index(), store.digest()), (3, digest));
        assert_eq!(journal(&store), held);
        assert_eq!(store.get_transfer(&tid(2)).unwrap(), None);
    }
    // A batch without records moves the last index, not the digest.
    store.write(4, &[]).unwrap();
    assert_eq!((store.last_index(), store.digest(), store.records()), (4, digest, held.len() as u64));
    store.write(4, &finished(2, 20)).unwrap();
    assert_eq!(store.get_transfer(&tid(2)).unwrap(), None);
    store.write(5, &finished(2, 20)).unwrap();
    assert_ne!(store.digest(), digest);
    assert_eq!(store.get_transfer(&tid(2)).unwrap(), Some(transfer(2, 20)));
}

#[test]
fn reopening_keeps_the_last_index_the_digest_and_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = open(twin_dir.path());
    let store = open(dir.path());
    for n in 1..=20 {
        store.write(n, &finished(n, n * 10)).unwrap();
        twin.write(n, &finished(n, n * 10)).unwrap();
    }
    store.write(21, &[]).unwrap();
    twin.write(21, &[]).unwrap();
    let (last, digest, records, held) = (store.last_index(), store.digest(), store.records(), journal(&store));
    store.durable().unwrap();
    drop(store);

    let store = reopen(dir.path()).unwrap();
    assert_eq!((store.last_index(), store.digest(), store.records()), (last, digest, records));
    assert_eq!(journal(&store), held);
    assert_eq!(store.first_index().unwrap(), 1);
    assert_eq!(store.get_transfer(&tid(7)).unwrap(), Some(transfer(7, 70)));
    assert_eq!(store.events_after(&pid(1), 0, 3).unwrap().len(), 3);
    // Re-applied entries are skipped, new ones go on the same chain.
    store.write(20, &finished(99, 0)).unwrap();
    store.write(22, &finished(22, 220)).unwrap();
    twin.write(22, &finished(22, 220)).unwrap();
    assert_eq!(store.digest(), twin.digest());
    assert_eq!(store.records(), twin.records());
}

// --- the digest -------------------------------------------------------------

#[test]
fn equal_batches_give_equal_digests_and_any_other_record_or_index_another() {
    let stores: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let [a, b, other_record, other_index] = [0, 1, 2, 3].map(|i| open(stores[i].path()));
    for n in 1..=10 {
        a.write(n, &finished(n, n)).unwrap();
        b.write(n, &finished(n, n)).unwrap();
        let mut records = finished(n, n);
        if n == 6 {
            records[3] = movement(0, 4, 6, 7);
        }
        other_record.write(n, &records).unwrap();
        other_index.write(if n >= 6 { n + 1 } else { n }, &finished(n, n)).unwrap();
    }
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), other_record.digest());
    assert_ne!(a.digest(), other_index.digest());

    // The documented formula, for one batch.
    let dir = tempfile::tempdir().unwrap();
    let one = open(dir.path());
    let records = finished(1, 1);
    one.write(42, &records).unwrap();
    let mut hasher = Sha256::new();
    hasher.update([0u8; 32]);
    hasher.update(42u64.to_be_bytes());
    for record in &records {
        let bytes = postcard::to_stdvec(record).unwrap();
        hasher.update((bytes.len() as u32).to_be_bytes());
        hasher.update(&bytes);
    }
    assert_eq!(one.digest(), <[u8; 32]>::from(hasher.finalize()));
}

// --- paging -----------------------------------------------------------------

#[test]
fn a_statement_pages_through_the_movements_within_its_time_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut memory = MemoryHistory::new();
    // Times go back and forth across batches: a statement is in time order.
    for n in 1..=40u64 {
        let at = (n * 37) % 50;
        let records =
            vec![movement(0, 4, n, at), movement(1, 0, n, at), movement(2, 3, n, at + 1), movement(0, 0, n, at)];
        store.write(n, &records).unwrap();
        memory.write(n, records);
    }
    let a = account(0);
    let all = store.statement(&a, ms(0), ms(1_000), None, usize::MAX).unwrap();
    assert_eq!(all.len(), 120, "three movements a batch touch the account, one of them twice");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(all, memory_statement(&memory, &a, 0, 1_000));
    for (from, to) in [(10, 20), (0, 1), (49, 50), (12, 13), (20, 10), (5, 5)] {
        let expected = memory_statement(&memory, &a, from, to);
        assert!(expected.iter().all(|(t, _)| ms(from) <= t.at && t.at < ms(to)));
        assert_eq!(store.statement(&a, ms(from), ms(to), None, usize::MAX).unwrap(), expected);
        for page in [1, 4, 7] {
            assert_eq!(paged_statement(&store, &a, from, to, page), expected);
        }
    }
    // A token below `from` starts at `from`; one at or past `to` ends it.
    let from_ten = store.statement(&a, ms(10), ms(20), None, usize::MAX).unwrap();
    assert_eq!(store.statement(&a, ms(10), ms(20), Some(all[0].0), usize::MAX).unwrap(), from_ten);
    let past = ListToken { at: ms(20), index: 0, seq: 0 };
    assert!(store.statement(&a, ms(10), ms(20), Some(past), usize::MAX).unwrap().is_empty());
    assert!(store.statement(&a, ms(10), ms(20), None, 0).unwrap().is_empty());
    assert_eq!(store.statement(&account(4), ms(0), ms(1_000), None, 5).unwrap().len(), 5);
}

#[test]
fn listed_transfers_page_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut memory = MemoryHistory::new();
    for n in 1..=30u64 {
        let records = vec![listed(0, n, 1_000 - n * 10), listed(1, n, 5), listed(0, n + 100, 1_000 - n * 10)];
        store.write(n, &records).unwrap();
        memory.write(n, records);
    }
    let everything = store.listed_after(&pid(0), None, usize::MAX).unwrap();
    assert_eq!(everything.len(), 60);
    assert_eq!(everything[0].1, tid(30), "the earliest recorded time first");
    assert_eq!(everything[1].1, tid(130), "then by log position");
    assert!(everything.windows(2).all(|w| w[0].0 < w[1].0));
    for page in [1, 7, 60, 100] {
        let mut token: Option<ListToken> = None;
        let mut pages = Vec::new();
        loop {
            let got = store.listed_after(&pid(0), token.as_ref(), page).unwrap();
            assert_eq!(got, memory.listed(&pid(0), token.as_ref(), page));
            let Some((last, _)) = got.last() else { break };
            token = Some(*last);
            pages.extend(got);
        }
        assert_eq!(pages, everything);
    }
    assert_eq!(store.listed_after(&pid(1), None, usize::MAX).unwrap().len(), 30);
    assert!(store.listed_after(&pid(2), None, usize::MAX).unwrap().is_empty());
    // A partner whose id extends another's sees only its own.
    let longer = PartnerId::new("partner-0-x").unwrap();
    store.write(31, &[Record::Listed { partner: longer.clone(), transfer: tid(1), at: ms(0) }]).unwrap();
    assert_eq!(store.listed_after(&longer, None, 10).unwrap().len(), 1);
    assert_eq!(store.listed_after(&pid(0), None, usize::MAX).unwrap(), everything);
}

#[test]
fn events_page_from_a_cursor_through_many_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut memory = MemoryHistory::new();
    for batch in 0..150u64 {
        let mut records: Vec<Record> = (1..=10).map(|i| event(0, batch * 10 + i, batch)).collect();
        records.push(event(1, batch + 1, batch));
        store.write(batch + 1, &records).unwrap();
        memory.write(batch + 1, records);
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.events_after(&pid(0), after, 100).unwrap();
        assert_eq!(page, memory.events(&pid(0), after, 100));
        let Some(last) = page.last() else { break };
        after = last.cursor;
        seen.extend(page);
    }
    assert_eq!(seen.len(), 1_500);
    assert!(seen.iter().zip(1..).all(|(e, cursor)| e.cursor == cursor));
    assert_eq!(store.events_after(&pid(0), 0, usize::MAX).unwrap(), seen);
    assert_eq!(store.events_after(&pid(0), 1_499, 10).unwrap(), seen[1_499..]);
    assert!(store.events_after(&pid(0), 1_500, 10).unwrap().is_empty());
    assert!(store.events_after(&pid(0), u64::MAX, 10).unwrap().is_empty());
    assert_eq!(store.events_after(&pid(1), 140, usize::MAX).unwrap().len(), 10);
    assert!(store.events_after(&pid(2), 0, 10).unwrap().is_empty());
    assert_eq!(store.oldest_event_cursor(&pid(0)).unwrap(), None, "nothing deleted");
}

// --- retention --------------------------------------------------------------

/// Every key held, with the log index each one names (its own, or the one
/// its pointer or event run points to).
fn indexes_named(store: &History) -> Vec<(Vec<u8>, u64)> {
    let mut named = Vec::new();
    for item in store.db.iter() {
        let (key, value) = item.unwrap();
        let index = match key[0] {
            space::JOURNAL => parse_journal_key(&key).unwrap().0,
            space::TRANSFER | space::PARTICIPATION if key.contains(&0) => {
                u64::from_be_bytes(key[key.len() - POSITION_BYTES..key.len() - 4].try_into().unwrap())
            }
            space::TRANSFER | space::PARTICIPATION | space::TOP_UP | space::IDEMPOTENCY => {
                for at in positions(&key, &value).unwrap() {
                    named.push((key.to_vec(), at.unwrap().0));
                }
                continue;
            }
            // Every member of a group names the batch of its record.
            space::EVENT => {
                let prefix = scope_len(&key);
                for (_, (index, _)) in Run::parse(&key, prefix, &value).unwrap().events() {
                    named.push((key.to_vec(), index));
                }
                continue;
            }
            space::LISTED | space::ACCOUNT => {
                let prefix = scope_len(&key);
                for member in gather::group_members(&key, prefix, &value, key[0] == space::LISTED).unwrap() {
                    named.push((key.to_vec(), member.token.index));
                }
                continue;
            }
            _ => continue,
        };
        named.push((key.to_vec(), index));
    }
    named
}

#[test]
fn a_key_recalled_then_written_again_keeps_both_positions_unless_retention_took_the_first_between() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Batch 1 answers key 1; batch 2's recall finds it (as the write path
    // does before the batch reuses it) and batch 2 records a new answer.
    store.write(1, &[idempotency(0, 1, 100)]).unwrap();
    assert!(store.at(2).idempotency(&pid(0), &key(1)).is_some());
    store.write(2, &[idempotency(0, 1, 200)]).unwrap();
    let positions_of = |store: &History| -> Vec<u64> {
        let key = idempotency_key(&pid(0), &key(1), true);
        indexes_named(store).into_iter().filter(|(k, _)| *k == key).map(|(_, index)| index).collect()
    };
    assert_eq!(positions_of(&store), [1, 2]);
    assert_eq!(store.at(3).idempotency(&pid(0), &key(1)).unwrap().at, ms(200));
    assert_eq!(store.at(2).idempotency(&pid(0), &key(1)).unwrap().at, ms(100));
    // Batch 4's recall reads the key; retention deletes batches 1 and 2
    // before batch 4 is written: what the recall read is not written back.
    store.write(3, &[top_up(1, 300)]).unwrap();
    assert!(store.at(4).idempotency(&pid(0), &key(1)).is_some());
    store.confirm_archived(3).unwrap();
    assert_eq!(store.delete_through(2).unwrap(), 2);
    store.write(4, &[idempotency(0, 1, 400)]).unwrap();
    assert_eq!(positions_of(&store), [4], "positions of deleted batches came back");
    assert_eq!(store.get_idempotency(&pid(0), &key(1)).unwrap().unwrap().at, ms(400));
}

#[test]
fn a_key_the_state_knows_unrecorded_gets_its_first_position_and_a_claim_for_another_batch_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let positions_of = |store: &History, n: u64| -> Vec<u64> {
        let key = idempotency_key(&pid(0), &key(n), true);
        indexes_named(store).into_iter().filter(|(k, _)| *k == key).map(|(_, index)| index).collect()
    };
    store.write(1, &[idempotency(0, 1, 100)]).unwrap();
    // The batch at 2 knows key 2 is new: its write adds the first position.
    store.at(2).unrecorded(&pid(0), &key(2));
    store.write(2, &[idempotency(0, 2, 200)]).unwrap();
    assert_eq!(positions_of(&store, 2), [2]);
    assert_eq!(store.get_idempotency(&pid(0), &key(2)).unwrap().unwrap().at, ms(200));
    // Said by a recall of a batch other than the next one, it is not kept:
    // key 1's first position stays when batch 3 uses it again.
    store.at(7).unrecorded(&pid(0), &key(1));
    store.write(3, &[idempotency(0, 1, 300)]).unwrap();
    assert_eq!(positions_of(&store, 1), [1, 3]);
    assert_eq!(store.at(3).idempotency(&pid(0), &key(1)).unwrap().at, ms(100));
}

#[test]
fn deleting_through_an_index_removes_its_records_and_their_keys_and_keeps_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 1..=20 {
        let mut records = finished(n, n * 10);
        if n == 15 {
            // A later record of transfer 3 and an event under a cursor
            // already written: each outlives the deletion of the first.
            records.push(Record::Transfer(Box::new(transfer(3, 999))));
            records.push(event(2, 5, 999));
        }
        store.write(n, &records).unwrap();
    }
    let (digest, records) = (store.digest(), store.records());
    let kept_before = journal(&store).into_iter().filter(|(i, _)| *i > 10).count();

    let deleted = store.delete_through(10).unwrap();
    assert_eq!(deleted, 10 * finished(0, 0).len());
    assert_eq!(store.records(), records - deleted as u64);
    assert_eq!(store.records() as usize, kept_before);
    assert_eq!((store.digest(), store.last_index(), store.deleted_through()), (digest, 20, 10));
    assert_eq!(store.first_index().unwrap(), 11);
    let leftovers: Vec<_> = indexes_named(&store).into_iter().filter(|(_, i)| *i <= 10).collect();
    assert!(leftovers.is_empty(), "keys naming deleted batches: {leftovers:?}");

    assert_eq!(store.get_transfer(&tid(4)).unwrap(), None);
    assert_eq!(store.get_transfer(&tid(3)).unwrap(), Some(transfer(3, 999)), "the later record stays");
    assert_eq!(store.get_transfer(&tid(12)).unwrap(), Some(transfer(12, 120)));
    assert_eq!(store.get_idempotency(&pid(1), &key(4)).unwrap(), None);
    assert_eq!(store.get_top_up(&reference(4)).unwrap(), None);
    assert_eq!(store.get_participation(&tid(4)).unwrap(), None);
    assert!(store.get_top_up(&reference(11)).unwrap().is_some());
    assert!(store.listed_after(&pid(1), None, usize::MAX).unwrap().iter().all(|(t, _)| t.index > 10));
    let statement = store.statement(&account(4), ms(0), ms(10_000), None, usize::MAX).unwrap();
    assert_eq!(statement.len(), 20, "two movements of each batch kept");

    // Partner 1's events 1, 4, 7, 10 went; 13, 16, 19 stay.
    let expired = store.events_after(&pid(1), 0, 10).unwrap_err();
    assert!(matches!(expired, HistoryError::CursorExpired(CursorExpired { requested: 0, oldest: 11 })), "{expired}");
    assert!(matches!(store.events_after(&pid(1), 9, 10), Err(HistoryError::CursorExpired(_))));
    let cursors: Vec<u64> = store.events_after(&pid(1), 10, 10).unwrap().iter().map(|e| e.cursor).collect();
    assert_eq!(cursors, [13, 16, 19]);
    assert_eq!(HistoryRead::events(&store, &pid(1), 0, 10).len(), 3, "the trait answers with what is held");
    assert_eq!(store.oldest_event_cursor(&pid(1)).unwrap(), Some(11));
    // Partner 2's cursor 5, written again at 15, is held under its new record.
    assert_eq!(store.oldest_event_cursor(&pid(2)).unwrap(), Some(9));
    assert_eq!(HistoryRead::events(&store, &pid(2), 4, 1)[0].at, ms(999));

    assert!(matches!(
        store.journal_after(0, usize::MAX),
        Err(HistoryError::Deleted { requested: 0, deleted_through: 10 })
    ));
    assert_eq!(store.journal_after(10, 0).unwrap()[0].0, 11);

    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!((store.digest(), store.deleted_through(), store.records() as usize), (digest, 10, kept_before));
    assert_eq!(store.delete_through(10).unwrap(), 0);
    // Through more than was written: everything, and no further.
    assert_eq!(store.delete_through(1_000).unwrap(), kept_before);
    assert_eq!((store.records(), store.first_index().unwrap(), store.deleted_through()), (0, 0, 20));
    assert!(indexes_named(&store).is_empty());
    store.write(21, &finished(21, 210)).unwrap();
    assert_eq!(store.journal_after(20, 0).unwrap().len(), 1);
    assert_eq!(store.get_transfer(&tid(21)).unwrap(), Some(transfer(21, 210)));
}

#[test]
fn deletion_goes_in_bounded_steps_that_never_split_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 1..=300 {
        let records: Vec<Record> = (0..7).map(|i| event(0, n * 7 + i, n)).collect();
        store.write(n, &records).unwrap();
    }
    let big: Vec<Record> = (0..1_500).map(|i| movement(0, 3, i + 1, 5)).collect();
    store.write(301, &big).unwrap();

    let (deleted, done) = store.delete_step(301).unwrap();
    assert_eq!((deleted, done), (1_001, false), "143 whole batches of 7");
    assert_eq!((store.first_index().unwrap(), store.deleted_through()), (144, 143));
    assert_eq!(store.delete_through(300).unwrap(), 157 * 7);
    assert_eq!(store.first_index().unwrap(), 301);
    let (deleted, done) = store.delete_step(301).unwrap();
    assert_eq!((deleted, done), (1_500, true), "one batch goes whole, whatever its size");
    assert_eq!(store.records(), 0);
}

// --- the journal ------------------------------------------------------------

#[test]
fn the_journal_comes_in_whole_batches_within_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut written = Vec::new();
    for n in 1..=40u64 {
        let records: Vec<Record> = finished(n, n).into_iter().take((n % 9) as usize).collect();
        store.write(n * 2, &records).unwrap();
        if !records.is_empty() {
            written.push((n * 2, records));
        }
    }
    let size = |records: &[Record]| records.iter().map(|r| postcard::to_stdvec(r).unwrap().len()).sum::<usize>();
    for max_bytes in [0, 1, 200, 1_000, 5_000, usize::MAX] {
        let mut after = 0;
        let mut all = Vec::new();
        loop {
            let batches = store.journal_after(after, max_bytes).unwrap();
            let Some(&(last, _)) = batches.last() else { break };
            let bytes: usize = batches.iter().map(|(_, records)| size(records)).sum();
            assert!(batches.len() == 1 || bytes <= max_bytes, "{bytes} bytes over {max_bytes}");
            // Nothing that fit was left out.
            let next = written.iter().find(|(index, _)| *index > last);
            if let Some((_, records)) = next {
                assert!(bytes + size(records) > max_bytes || bytes >= max_bytes);
            }
            all.extend(batches);
            after = last;
        }
        assert_eq!(all, written, "max {max_bytes}");
    }
    assert_eq!(store.journal_after(0, 0).unwrap().len(), 1);
    assert!(store.journal_after(80, usize::MAX).unwrap().is_empty());
    assert!(store.journal_after(u64::MAX, usize::MAX).unwrap().is_empty());
    assert_eq!(store.first_index().unwrap(), 2);
}

// --- keys per batch ---------------------------------------------------------

/// How many keys of each space the store holds.
/// The journal's bytes per transfer by kind of record (frames as written).
fn journal_bytes_by_record(store: &History, transfers: u64) -> BTreeMap<String, (f64, f64)> {
    let mut bytes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for item in store.db.scan_prefix([space::JOURNAL]) {
        let (key, value) = item.unwrap();
        for frame in Frames::new(&key, &value).unwrap() {
            let frame = frame.unwrap();
            let record = decode_record(&key, frame).unwrap();
            let kind = format!("{record:?}").chars().take_while(|c| c.is_alphanumeric()).collect::<String>();
            let tally = bytes.entry(kind).or_default();
            tally.0 += 1;
            tally.1 += frame.len() as u64;
        }
    }
    let per = |n: u64| n as f64 / transfers.max(1) as f64;
    bytes.into_iter().map(|(kind, (count, size))| (kind, (per(count), per(size)))).collect()
}

/// Where the batch at `index` keeps its chunks in the segments.
fn location(store: &History, index: u64) -> Location {
    let key = batch_key(index);
    parse_location(&key, &store.db.get(key).unwrap().expect("a batch key")).unwrap()
}

fn keys_by_space(store: &History) -> BTreeMap<char, usize> {
    let mut counts = BTreeMap::new();
    for item in store.db.iter() {
        let (key, _) = item.unwrap();
        *counts.entry(key[0] as char).or_default() += 1;
    }
    counts
}

#[test]
fn a_batch_of_transfers_takes_a_few_keys_and_answers_as_memory_does() {
    let dir = tempfile::tempdir().unwrap();
    // The first two batches' listings, movements and events are gathered
    // with the second; the third's wait in memory.
    let store = open(dir.path()).gathering_every(2);
    let mut memory = MemoryHistory::new();
    let (payers, payees) = (8u64, 4u64);
    let mut cursors = [0u64; 12];
    for batch in 0..3u64 {
        let mut records = Vec::new();
        for n in batch * 256 + 1..=(batch + 1) * 256 {
            let (payer, payee) = (n * 7 % payers, payers + n * 5 % payees);
            cursors[payer as usize] += 1;
            cursors[payee as usize] += 1;
            let events = [cursors[payer as usize], cursors[payee as usize]];
            records.extend(same_region_transfer(n, payer, payee, events, 1_000 + batch));
        }
        store.write(batch + 1, &records).unwrap();
        memory.write(batch + 1, records);
    }
    // Per batch: 2,304 records in 36 journal chunks of 64 in the segments
    // and a key saying where they are; a pointer for
    // each idempotency key; a transfer group for each block of 64 transfer
    // ids it finishes (a batch's 256 ids touch five blocks, the last one
    // shared with the next batch, under a key of each); the digest. For
    // the two batches gathered together: one listing group and one event
    // run for each of the 12 partners, a statement group for each of the
    // 14 accounts (12 partners', clearing, fees). And the three counters,
    // the layout and the last gathering.
    let counts = keys_by_space(&store);
    // And the first batch whose idempotency pointers are hashed.
    let expected = [('A', 14), ('E', 12), ('G', 3), ('I', 768), ('J', 3), ('L', 12), ('M', 6), ('T', 15)];
    assert_eq!(counts, BTreeMap::from(expected));
    for batch in 1..=3 {
        assert_eq!(location(&store, batch).chunks.len(), 36, "batch {batch}");
    }
    let keys: usize = counts.values().sum();
    assert!(keys as f64 / 768.0 < 1.3, "{keys} keys for 768 transfers");

    for p in (0..payers + payees).map(pid) {
        for page in [1, 5, 100, usize::MAX] {
            let mut token = None;
            loop {
                let got = store.listed_after(&p, token.as_ref(), page).unwrap();
                assert_eq!(got, memory.listed(&p, token.as_ref(), page));
                let Some((last, _)) = got.last() else { break };
                token = Some(*last);
            }
        }
        for after in [0, 1, 63, 64, 65, 150, 1_000] {
            assert_eq!(store.events_after(&p, after, 70).unwrap(), memory.events(&p, after, 70));
        }
    }
    let accounts = [AccountOwner::Partner(pid(3)), AccountOwner::Clearing(region()), AccountOwner::Fees];
    for account in accounts.map(|owner| AccountId::new(owner, Currency::USD)) {
        let expected = memory_statement(&memory, &account, 1_000, 1_003);
        assert_eq!(paged_statement(&store, &account, 1_000, 1_003, 100), expected);
        assert_eq!(
            paged_statement(&store, &account, 1_001, 1_002, 7),
            memory_statement(&memory, &account, 1_001, 1_002)
        );
    }
    for n in [1, 64, 65, 256, 257, 700, 768] {
        assert_eq!(store.get_transfer(&tid(n)).unwrap(), Recall::transfer(&memory, &tid(n)));
        assert!(store.get_transfer(&tid(n)).unwrap().is_some());
    }
}

#[test]
fn journal_chunks_take_64_records_or_32_kib_and_a_larger_record_alone() {
    let sizes = |records: &[usize]| {
        let encoded: Vec<Vec<u8>> = records.iter().map(|&n| vec![7u8; n]).collect();
        journal_chunks(&encoded).into_iter().map(|(first, value)| (first, value.len())).collect::<Vec<_>>()
    };
    assert_eq!(sizes(&[]), []);
    assert_eq!(sizes(&[10; 64]), [(0, 64 * 14)]);
    assert_eq!(sizes(&[10; 65]), [(0, 64 * 14), (64, 14)]);
    let half = CHUNK_BYTES_MAX / 2 - 4;
    assert_eq!(sizes(&[half, half, 1]), [(0, CHUNK_BYTES_MAX), (2, 5)]);
    assert_eq!(sizes(&[1, 40_000, 1]), [(0, 5), (1, 40_004), (2, 5)]);
    let encoded: Vec<Vec<u8>> = (0..100u8).map(|n| vec![n; usize::from(n)]).collect();
    let mut frames = Vec::new();
    for (first, value) in journal_chunks(&encoded) {
        assert_eq!(first as usize, frames.len());
        frames.extend(Frames::new(b"J", &value).unwrap().map(|frame| frame.unwrap().to_vec()));
    }
    assert_eq!(frames, encoded);
    assert!(Frames::new(b"J", &[]).is_err());
    assert!(Frames::new(b"J", &[0, 0, 0, 9, 1]).unwrap().next().unwrap().is_err(), "a record cut short");
    assert!(Frames::new(b"J", &[0, 0]).unwrap().next().unwrap().is_err(), "a length cut short");
    assert!(Frames::new(b"J", &[0, 0, 0, 0].repeat(65)).unwrap().any(|frame| frame.is_err()), "65 records");
}

#[test]
fn a_batch_larger_than_its_groups_is_split_across_keys_and_answers_as_memory_does() {
    let dir = tempfile::tempdir().unwrap();
    // Each batch gathered with itself.
    let store = open(dir.path()).gathering_every(1);
    let mut memory = MemoryHistory::new();
    let mut records = Vec::new();
    for n in 0..10_000u64 {
        records.push(event(0, n + 1, 5));
        records.push(movement(0, 3, n + 1, 5));
        if n % 3 == 0 {
            records.push(listed(0, n, 5));
        }
    }
    store.write(1, &records).unwrap();
    memory.write(1, records);
    store.write(2, &finished(1, 6)).unwrap();
    memory.write(2, finished(1, 6));
    let counts = keys_by_space(&store);
    // 2,730 events to a run; as many movements as fit 32 KiB to a
    // statement group (3 bytes each here: the same batch and time, the seq
    // 2 or 3 on, so all 10,000 in one); as many listings (their step, 7
    // seqs on, then their transfer id after its length) as fit 32 KiB to a
    // listing group. The second batch has one event, three accounts and
    // one listing, of other partners and accounts.
    assert_eq!(gather::EVENTS_PER_RUN_MAX, 2_730);
    assert_eq!(counts[&'E'], 10_000usize.div_ceil(2_730) + 1);
    assert_eq!(counts[&'A'], 2 + 3);
    let mut listing_groups = 0;
    let mut bytes = CHUNK_BYTES_MAX;
    for n in (0..10_000u64).filter(|n| n % 3 == 0) {
        let member = 3 + 1 + tid(n).to_string().len();
        if bytes + member > CHUNK_BYTES_MAX {
            listing_groups += 1;
            bytes = 1;
        }
        bytes += member;
    }
    assert_eq!(counts[&'L'], listing_groups + 1);
    assert_eq!(counts[&'J'], 2);
    assert_eq!(location(&store, 1).chunks.len(), 23_334usize.div_ceil(64));
    for page in [1, 1_000, 1_900, 3_000, usize::MAX] {
        let mut token = None;
        let mut all = 0;
        loop {
            let got = store.listed_after(&pid(0), token.as_ref(), page).unwrap();
            assert_eq!(got, memory.listed(&pid(0), token.as_ref(), page));
            let Some((last, _)) = got.last() else { break };
            token = Some(*last);
            all += got.len();
        }
        assert_eq!(all, 3_334);
    }
    for after in [0, 1, 8_189, 8_190, 8_191, 9_999, 10_000] {
        assert_eq!(store.events_after(&pid(0), after, 3_000).unwrap(), memory.events(&pid(0), after, 3_000));
    }
    for a in [account(0), account(3)] {
        let expected = memory_statement(&memory, &a, 0, 10);
        assert_eq!(expected.len(), 10_000);
        assert_eq!(store.statement(&a, ms(0), ms(10), None, usize::MAX).unwrap(), expected);
        assert_eq!(paged_statement(&store, &a, 0, 10, 2_999), expected);
    }
    assert_eq!(journal(&store), memory.records().map(|(i, r)| (i, r.clone())).collect::<Vec<_>>());
    assert_eq!(store.delete_through(1).unwrap(), 23_334);
    let leftovers: Vec<_> = indexes_named(&store).into_iter().filter(|(_, i)| *i <= 1).collect();
    assert!(leftovers.is_empty(), "keys naming the deleted batch: {leftovers:?}");
    assert_eq!(store.oldest_event_cursor(&pid(0)).unwrap(), Some(10_001));
    assert!(store.statement(&account(3), ms(0), ms(10), None, usize::MAX).unwrap().is_empty());
}

#[test]
fn an_event_written_again_cuts_the_run_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    // Each batch's events go to their runs on disk with it.
    let store = open(dir.path()).gathering_every(1);
    let mut memory = MemoryHistory::new();
    let batches = [
        (1, (1..=10).map(|cursor| event(0, cursor, 1)).collect::<Vec<_>>()),
        (2, vec![event(0, 12, 2), event(0, 5, 2), event(1, 1, 2), event(0, 4, 2)]),
        (3, vec![event(0, 10, 3), operator(3), event(0, 1, 3), event(0, 1, 4)]),
    ];
    let runs = |store: &History| -> Vec<(u64, u64, u64)> {
        let prefix = scope(space::EVENT, pid(0).as_str());
        let scanned = store.db.scan_prefix(&prefix).map(|item| {
            let (key, value) = item.unwrap();
            let run = Run::parse(&key, prefix.len(), &value).unwrap();
            let index = run.positions[0].0;
            assert!(run.positions.iter().all(|&(i, _)| i == index), "one batch's events: {run:?}");
            (run.first, run.last(), index)
        });
        scanned.collect()
    };
    let expected_runs = [
        vec![(1, 10, 1)],
        vec![(1, 3, 1), (4, 5, 2), (6, 10, 1), (12, 12, 2)],
        vec![(1, 1, 3), (2, 3, 1), (4, 5, 2), (6, 9, 1), (10, 10, 3), (12, 12, 2)],
    ];
    for ((index, records), expected) in batches.into_iter().zip(expected_runs) {
        store.write(index, &records).unwrap();
        memory.write(index, records);
        assert_eq!(runs(&store), expected);
        for after in 0..=12 {
            assert_eq!(store.events_after(&pid(0), after, 4).unwrap(), memory.events(&pid(0), after, 4));
        }
    }
    assert_eq!(store.events_after(&pid(0), 0, 1).unwrap()[0].at, ms(4), "the last of a batch's two wins");

    // What the first batch still held goes; its newest was 9.
    store.delete_through(1).unwrap();
    assert_eq!(runs(&store), [(1, 1, 3), (4, 5, 2), (10, 10, 3), (12, 12, 2)]);
    assert_eq!(store.oldest_event_cursor(&pid(0)).unwrap(), Some(10));
    assert!(matches!(store.events_after(&pid(0), 8, 10), Err(HistoryError::CursorExpired(_))));
    let held: Vec<u64> = HistoryRead::events(&store, &pid(0), 0, 10).iter().map(|e| e.cursor).collect();
    assert_eq!(held, [1, 4, 5, 10, 12]);
    store.delete_through(2).unwrap();
    assert_eq!(runs(&store), [(1, 1, 3), (10, 10, 3)]);
    assert_eq!(store.oldest_event_cursor(&pid(0)).unwrap(), Some(13));
    assert_eq!(store.oldest_event_cursor(&pid(1)).unwrap(), Some(2));
    assert!(store.events_after(&pid(0), 12, 10).unwrap().is_empty());
}

/// The highest cursor held is learnt from the store after a reopen, so an
/// event written again then still cuts the run that held it.
#[test]
fn an_event_written_again_after_a_reopen_cuts_the_run_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write(1, &(1..=10).map(|cursor| event(0, cursor, 1)).collect::<Vec<_>>()).unwrap();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    store.write(2, &[event(0, 5, 2), event(0, 11, 2)]).unwrap();
    let events = store.events_after(&pid(0), 0, usize::MAX).unwrap();
    let cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
    assert_eq!(cursors, (1..=11).collect::<Vec<_>>(), "one event per cursor, none twice");
    assert_eq!(events[4].at, ms(2), "the cursor written again is the later batch's");
    // And the runs of the first batch were cut around it, not overlapped.
    store.delete_through(1).unwrap();
    let held: Vec<u64> = HistoryRead::events(&store, &pid(0), 0, 20).iter().map(|e| e.cursor).collect();
    assert_eq!(held, [5, 11]);
}

// --- damage -----------------------------------------------------------------

#[test]
#[should_panic(expected = "history store unreadable")]
fn a_pointer_to_a_record_the_journal_lacks_stops_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write(10, &finished(1, 1)).unwrap();
    let pointer = named(space::TRANSFER, &tid(2).to_string());
    store.db.insert(&pointer, position(7, 0)).unwrap();
    assert!(matches!(store.get_transfer(&tid(2)), Err(HistoryError::Corrupt { .. })));
    // A pointer to a record of another kind is damage too.
    store.db.insert(&pointer, position(10, 0)).unwrap();
    assert!(matches!(store.get_transfer(&tid(2)), Err(HistoryError::Corrupt { .. })));
    store.db.insert(journal_key(10, 1), &b"\xff\xff\xff"[..]).unwrap();
    assert!(matches!(store.get_transfer(&tid(1)), Err(HistoryError::Corrupt { .. })));
    let _ = Recall::transfer(&store, &tid(1));
}

#[test]
fn damaged_counters_are_refused_at_open() {
    for (key, value) in [(META_DIGEST, &[1u8; 5][..]), (META_APPLIED, &[0u8; 8][..]), (META_RECORDS, &[0u8; 3][..])] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.write(3, &finished(1, 1)).unwrap();
        store.db.insert(key, value).unwrap();
        store.db.persist().unwrap();
        drop(store);
        let refused = reopen(dir.path()).unwrap_err();
        assert!(matches!(refused, HistoryError::Corrupt { .. }), "{refused}");
    }
}

#[test]
fn a_store_of_another_key_layout_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.db.get(META_LAYOUT).unwrap().unwrap(), LAYOUT.to_be_bytes());
    store.write(3, &finished(1, 1)).unwrap();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.get_transfer(&tid(1)).unwrap(), Some(transfer(1, 1)));
    // A store without the key is refused (every store this module wrote
    // has it), and so is a layout this build does not read.
    store.db.remove(META_LAYOUT).unwrap();
    store.db.persist().unwrap();
    drop(store);
    let refused = reopen(dir.path()).unwrap_err();
    assert!(matches!(&refused, HistoryError::Corrupt { reason, .. } if reason.contains("no key layout")), "{refused}");
    let engine = reopen_engine(dir.path());
    engine.insert(META_LAYOUT, 8u64.to_be_bytes()).unwrap();
    engine.persist().unwrap();
    drop(engine);
    let refused = reopen(dir.path()).unwrap_err();
    assert!(matches!(&refused, HistoryError::Corrupt { reason, .. } if reason.contains("layout 8")), "{refused}");
}

/// Rewrite a store's listing, statement and event groups as layout 3 wrote
/// them: one group per batch (and time), each member's seq only.
fn rewrite_groups_as_layout_3(engine: &kv::Kv) {
    for (first, key, value) in group_values(engine) {
        engine.remove(&key).unwrap();
        let prefix = &key[..scope_len(&key)];
        if first == space::EVENT {
            let run = Run::parse(&key, prefix.len(), &value).unwrap();
            // Each run: its first cursor, its batch, its value (the index, then seqs).
            let mut runs: Vec<(u64, u64, Vec<u8>)> = Vec::new();
            for (cursor, (index, seq)) in run.events() {
                let continues = runs
                    .last()
                    .is_some_and(|(start, at, value)| *at == index && start + (value.len() as u64 - 8) / 4 == cursor);
                if !continues {
                    runs.push((cursor, index, index.to_be_bytes().to_vec()));
                }
                runs.last_mut().unwrap().2.extend_from_slice(&seq.to_be_bytes());
            }
            for (start, _, value) in runs {
                engine.insert(with_u64(prefix, start), value).unwrap();
            }
        } else {
            let listing = first == space::LISTED;
            let mut groups: BTreeMap<(u64, u64), (u32, Vec<u8>)> = BTreeMap::new();
            for member in gather::group_members(&key, prefix.len(), &value, listing).unwrap() {
                let token = member.token;
                let (_, value) = groups.entry((token.at.unix_ms(), token.index)).or_insert((token.seq, Vec::new()));
                value.extend_from_slice(&token.seq.to_be_bytes());
                if let Some(id) = member.transfer {
                    let id = id.to_string();
                    value.extend_from_slice(&(id.len() as u16).to_be_bytes());
                    value.extend_from_slice(id.as_bytes());
                }
            }
            for ((at, index), (seq, value)) in groups {
                engine.insert(with_token(prefix, &ListToken { at: ms(at), index, seq }), value).unwrap();
            }
        }
    }
}

#[test]
fn a_layout_3_store_is_read_with_its_groups_of_one_batch_and_gathers_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).gathering_every(1);
    let mut memory = MemoryHistory::new();
    let batch = |n: u64| -> Vec<Record> {
        let mut records = finished(n, n * 10);
        records.extend((0..4).map(|k| event(0, 100 + n * 4 + k, n * 10)));
        records.push(movement(0, 3, 1_000 + n, n * 10));
        records
    };
    for n in 1..=4 {
        store.write(n, &batch(n)).unwrap();
        memory.write(n, batch(n));
    }
    drop(store);
    let engine = reopen_engine(dir.path());
    rewrite_groups_as_layout_3(&engine);
    for first in [space::LISTED, space::ACCOUNT, space::EVENT] {
        let values: Vec<_> = engine.scan_prefix([first]).map(|item| item.unwrap().1).collect();
        assert!(values.len() > 3 && values.iter().all(|value| value[0] != gather::GATHERED), "layout 3's groups");
    }
    plain_idempotency_pointers(&engine);
    engine.insert(META_LAYOUT, 3u64.to_be_bytes()).unwrap();
    engine.remove(META_GROUPED).unwrap();
    engine.persist().unwrap();
    drop(engine);
    let check = |store: &History, memory: &MemoryHistory| {
        for p in (0..3).map(pid) {
            for page in [1, 2, usize::MAX] {
                let mut token = None;
                loop {
                    let got = store.listed_after(&p, token.as_ref(), page).unwrap();
                    assert_eq!(got, memory.listed(&p, token.as_ref(), page), "{p} after {token:?}");
                    let Some((last, _)) = got.last() else { break };
                    token = Some(*last);
                }
            }
            for after in [0, 1, 2, 100, 105, 111, 200] {
                assert_eq!(store.events_after(&p, after, 3).unwrap(), memory.events(&p, after, 3), "{p} {after}");
            }
        }
        for a in (0..5).map(account) {
            assert_eq!(paged_statement(store, &a, 0, 1_000, 2), memory_statement(memory, &a, 0, 1_000), "{a}");
        }
    };
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.db.get(META_LAYOUT).unwrap().unwrap(), LAYOUT.to_be_bytes(), "marked as written in 4");
    check(&store, &memory);
    // Later batches gather after the groups of one batch; a deletion cuts both.
    for n in 5..=7 {
        store.write(n, &batch(n)).unwrap();
        memory.write(n, batch(n));
    }
    check(&store, &memory);
    store.confirm_archived(7).unwrap();
    store.delete_through(2).unwrap();
    let listed: Vec<TransferId> =
        store.listed_after(&pid(0), None, 100).unwrap().into_iter().map(|(_, id)| id).collect();
    assert_eq!(listed, [tid(3), tid(6)], "the listings of batches 3 and 6 of partner 0");
    let events: Vec<u64> = store.events_after(&pid(0), 112, 100).unwrap().iter().map(|e| e.cursor).collect();
    assert_eq!(events, (113..=131).collect::<Vec<_>>());
    let statement = store.statement(&account(3), ms(0), ms(1_000), None, 100).unwrap();
    assert_eq!(statement.iter().map(|(token, _)| token.index).collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
}

#[test]
fn a_layout_2_store_is_read_with_its_transfer_pointers_and_deletes_them_with_their_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.write(1, &finished(1, 10)).unwrap();
    store.write(2, &finished(2, 20)).unwrap();
    drop(store);
    // As layout 2 wrote it: a pointer per transfer, no transfer groups.
    let engine = reopen_engine(dir.path());
    let groups: Vec<_> = engine.scan_prefix([space::TRANSFER]).map(|item| item.unwrap().0).collect();
    assert_eq!(groups.len(), 2);
    for key in groups {
        engine.remove(key).unwrap();
    }
    for n in [1u64, 2] {
        let seq = finished(n, 0).iter().position(|r| matches!(r, Record::Transfer(_))).unwrap() as u32;
        engine.insert(named_display(space::TRANSFER, &tid(n)), position(n, seq)).unwrap();
    }
    plain_idempotency_pointers(&engine);
    engine.insert(META_LAYOUT, 2u64.to_be_bytes()).unwrap();
    engine.persist().unwrap();
    drop(engine);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.db.get(META_LAYOUT).unwrap().unwrap(), LAYOUT.to_be_bytes(), "marked as written in 3");
    assert_eq!(store.get_transfer(&tid(1)).unwrap(), Some(transfer(1, 10)));
    assert_eq!(store.at(2).transfer(&tid(2)), None);
    assert_eq!(store.at(3).transfer(&tid(2)), Some(transfer(2, 20)));
    store.write(3, &finished(3, 30)).unwrap();
    store.confirm_archived(3).unwrap();
    store.delete_through(1).unwrap();
    assert_eq!(store.get_transfer(&tid(1)).unwrap(), None);
    assert_eq!(store.get_transfer(&tid(2)).unwrap(), Some(transfer(2, 20)));
    assert_eq!(store.get_transfer(&tid(3)).unwrap(), Some(transfer(3, 30)));
    let leftovers: Vec<_> = indexes_named(&store).into_iter().filter(|(_, i)| *i <= 1).collect();
    assert!(leftovers.is_empty(), "keys naming deleted batches: {leftovers:?}");
}

#[test]
fn history_in_sleds_files_is_refused_at_open_not_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let sled = sled::open(dir.path()).unwrap();
    sled.insert(META_LAYOUT, &LAYOUT.to_be_bytes()).unwrap();
    sled.flush().unwrap();
    drop(sled);
    let refused = History::open(dir.path(), CACHE_BYTES).unwrap_err();
    assert!(matches!(&refused, HistoryError::OldEngine { .. }), "{refused}");
    assert!(refused.to_string().contains("paymesh history export"), "{refused}");
}

#[test]
fn durable_syncs_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history");
    let store = open(&path);
    for n in 1..=50 {
        store.write(n, &finished(n, n)).unwrap();
    }
    store.durable().unwrap();
    assert!(store.size_on_disk().unwrap() > 0);
    assert_eq!(store.dir(), path);
}

// --- measurement ------------------------------------------------------------

/// Write cost and bytes on disk for 100,000 records in batches of ten.
/// Run by hand: `cargo test --release -p paymesh-store --lib
/// history::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, run by hand"]
fn measure_write_cost_and_bytes_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = History::open(dir.path(), 64 * 1024 * 1024).unwrap();
    let batches = 10_000u64;
    let mut encoded = 0;
    let started = Instant::now();
    for n in 1..=batches {
        let mut records = finished(n, 1_700_000_000_000 + n * 100);
        records.push(event((n + 1) % 3, n, n));
        encoded += records.iter().map(|r| postcard::to_stdvec(r).unwrap().len()).sum::<usize>();
        store.write(n, &records).unwrap();
    }
    let written = started.elapsed();
    let started = Instant::now();
    store.durable().unwrap();
    let synced = started.elapsed();
    let records = store.records();
    let on_disk = store.size_on_disk().unwrap();
    let files: u64 = walk(dir.path());
    println!(
        "{records} records in {batches} batches: {:.1} µs a batch, durable() {:.1} ms; \
         postcard {:.0} B/record; size_on_disk {} B ({:.0} B/record), files {} B ({:.0} B/record)",
        written.as_secs_f64() * 1e6 / batches as f64,
        synced.as_secs_f64() * 1e3,
        encoded as f64 / records as f64,
        on_disk,
        on_disk as f64 / records as f64,
        files,
        files as f64 / records as f64,
    );
    let started = Instant::now();
    let deleted = store.delete_through(batches / 2).unwrap();
    println!("delete_through half: {deleted} records in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);

    fn walk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
    }
}

/// The records one finished same-region transfer writes, in the order the
/// state machine writes them: the payer's and the payee's listings, the
/// idempotency key's answer, the three movements (principal into clearing,
/// fee, payout out of clearing), both partners' events and the transfer.
fn same_region_transfer(n: u64, payer_partner: u64, payee_partner: u64, cursors: [u64; 2], at: u64) -> Vec<Record> {
    let id = tid(n);
    let mut finished = transfer(n, at);
    finished.view.partner = pid(payer_partner);
    finished.view.payee.partner = pid(payee_partner);
    let partner_account = |p: u64| AccountId::new(AccountOwner::Partner(pid(p)), Currency::USD);
    let clearing = AccountId::new(AccountOwner::Clearing(region()), Currency::USD);
    let fees = AccountId::new(AccountOwner::Fees, Currency::USD);
    let sums = Balances { debits_posted: u128::from(n) * 1_010, credits_posted: 1_000_000_000, ..Balances::default() };
    let moved = |leg, debit: &AccountId, credit: &AccountId, amount| {
        Record::Movement(Box::new(Movement {
            entry: EntryId::Transfer { transfer: id.clone(), leg },
            kind: MovementKind::Post,
            debit: debit.clone(),
            credit: credit.clone(),
            amount: usd(amount),
            at: ms(at),
            debit_after: sums,
            credit_after: sums,
        }))
    };
    let payer_account = partner_account(payer_partner);
    let payee_account = partner_account(payee_partner);
    let event = |partner: u64, cursor: u64, kind, amount| Record::Event {
        partner: pid(partner),
        event: Event { cursor, at: ms(at), transfer: id.clone(), kind, amount: usd(amount), reason: None },
    };
    let mut records = vec![
        Record::Listed { partner: pid(payer_partner), transfer: id.clone(), at: ms(at) },
        Record::Listed { partner: pid(payee_partner), transfer: id.clone(), at: ms(at) },
        idempotency(payer_partner, n, at),
        moved(Leg::Principal, &payer_account, &clearing, 1_000 + n),
        moved(Leg::Fee, &payer_account, &fees, 10),
        moved(Leg::Payout, &clearing, &payee_account, 1_000 + n),
        event(payer_partner, cursors[0], EventKind::Committed, 1_010 + n),
        event(payee_partner, cursors[1], EventKind::Credited, 1_000 + n),
    ];
    records.push(Record::Transfer(Box::new(finished)));
    records
}

/// CPU time from /proc (Linux): user and system ticks (USER_HZ, 100 on
/// Linux) in `/proc/<which>/stat`, whose 14th and 15th fields they are.
fn cpu_ticks(which: &str) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{which}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The calling thread's CPU time in nanoseconds (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    let schedstat = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    schedstat.split(' ').next().unwrap().parse().unwrap()
}

/// The CPU of this process's other threads (the engine's flushes and
/// compactions, for a measurement that writes from one thread), counted
/// from when it is started.
struct OtherThreadsCpu {
    process: u64,
    thread: u64,
}

impl OtherThreadsCpu {
    fn start() -> OtherThreadsCpu {
        OtherThreadsCpu { process: cpu_ticks("self"), thread: cpu_ticks("thread-self") }
    }

    /// Their CPU since [`OtherThreadsCpu::start`], in nanoseconds (whole
    /// ticks of 10 ms).
    fn ns(&self) -> u64 {
        ((cpu_ticks("self") - self.process) - (cpu_ticks("thread-self") - self.thread)) * 10_000_000
    }
}

/// This process's peak resident memory (VmHWM), in bytes.
fn peak_resident_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// This process's resident memory now (VmRSS), in bytes.
fn resident_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// A measurement's setting from the environment variable `name`, or
/// `default` when it is not set.
fn measure_setting(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

/// A measurement's progress: the process's resident memory, what
/// `history`'s engine holds of it and history's bytes on disk.
fn memory_line(history: &History) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let engine = history.engine_memory();
    format!(
        "resident {:.1} MiB (cache {:.1}, write buffers {:.1}), history {:.0} MiB on disk",
        mib(resident_bytes()),
        mib(engine.cache),
        mib(engine.write_buffers),
        mib(history.size_on_disk().unwrap())
    )
}

/// A `kB` figure of `/proc/self/status`, by its label.
fn status_kib(label: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                bytes_under(&entry.path())
            } else {
                entry.metadata().unwrap().len()
            }
        })
        .sum()
}

/// The write cost of a realistic mix: 200,192 finished same-region
/// transfers (nine records each) in 782 batches of 256, paid by 64 partners
/// to 16, every record of a batch at its time, event cursors as each
/// partner's stream gives them. Each batch is built just before it is
/// written; CPU is the writing thread's inside `write` (to the nanosecond)
/// plus every other thread's over the run (the engine's flush and compaction; to the 10 ms
/// tick). Reports keys, bytes on disk and the process's peak resident
/// memory too, then times a few reads and retention of half of it. Run by
/// hand, alone in its process (the peak is the process's):
/// `cargo test --release -p paymesh-store --lib
/// history::tests::measure_a_realistic_transfer_mix -- --ignored --nocapture --exact`.
/// Set by the environment: `PAYMESH_MEASURE_BATCHES` (default 782),
/// `PAYMESH_MEASURE_MEMORY_MIB` (the engine's memory; default the node's),
/// and `PAYMESH_MEASURE_KEEP` (any value): stop after writing and leave the
/// store allocated at exit, so that a heap profiler's "leaked" figure
/// (`heaptrack`) is what the store holds at the end.
#[test]
#[ignore = "measurement, run by hand"]
fn measure_a_realistic_transfer_mix() {
    let batches: u64 = measure_setting("PAYMESH_MEASURE_BATCHES", 782);
    const PER_BATCH: u64 = 256;
    const PAYERS: u64 = 64;
    const PAYEES: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    // The node's own cache size.
    let memory = measure_setting("PAYMESH_MEASURE_MEMORY_MIB", crate::state_machine::HISTORY_MEMORY_BYTES >> 20) << 20;
    let store = History::open(dir.path(), memory).unwrap();
    let mut cursors = vec![0u64; (PAYERS + PAYEES) as usize];
    let (mut records_written, mut encoded, mut writing_ns) = (0, 0, 0);
    let others = OtherThreadsCpu::start();
    let started = Instant::now();
    for batch in 0..batches {
        if batch % (batches / 10).max(1) == 0 {
            println!("batch {batch}: {}, {:.1} s", memory_line(&store), started.elapsed().as_secs_f64());
        }
        let at = 1_700_000_000_000 + batch * 10;
        let mut records = Vec::new();
        for n in batch * PER_BATCH + 1..=(batch + 1) * PER_BATCH {
            // A fixed scramble, so that a batch's transfers do not take the
            // partners in turn.
            let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
            let (payer, payee) = (mixed % PAYERS, PAYERS + (mixed / PAYERS) % PAYEES);
            let mut next = |partner: u64| {
                cursors[partner as usize] += 1;
                cursors[partner as usize]
            };
            let cursors = [next(payer), next(payee)];
            records.extend(same_region_transfer(n, payer, payee, cursors, at));
        }
        records_written += records.len();
        encoded += records.iter().map(|r| postcard::to_stdvec(r).unwrap().len()).sum::<usize>();
        let before = thread_cpu_ns();
        store.write(batch + 1, &records).unwrap();
        writing_ns += thread_cpu_ns() - before;
    }
    if std::env::var("PAYMESH_MEASURE_KEEP").is_ok() {
        println!("at the end: {}", memory_line(&store));
        std::mem::forget(store);
        return;
    }
    let wall = started.elapsed();
    let others_ns = others.ns();
    store.durable().unwrap();
    let transfers = (batches * PER_BATCH) as f64;
    let keys = store.db.len().unwrap();
    let (on_disk, files) = (store.size_on_disk().unwrap(), bytes_under(dir.path()));
    let per_transfer_us = |ns: u64| ns as f64 / 1e3 / transfers;
    println!(
        "{transfers} transfers ({records_written} records, postcard {:.0} B/transfer) in batches of {PER_BATCH}: \
         CPU {:.1} µs/transfer ({:.1} writing, {:.1} other threads), wall {:.1} µs/transfer with building; \
         {:.2} keys/transfer; size_on_disk {:.0} B/transfer, files {:.0} B/transfer; VmHWM {:.1} MiB",
        encoded as f64 / transfers,
        per_transfer_us(writing_ns + others_ns),
        per_transfer_us(writing_ns),
        per_transfer_us(others_ns),
        wall.as_secs_f64() * 1e6 / transfers,
        keys as f64 / transfers,
        on_disk as f64 / transfers,
        files as f64 / transfers,
        peak_resident_bytes() as f64 / (1024.0 * 1024.0),
    );
    // Readers at the end of a long history: a partner's last page of
    // events, a payee's first listings, an account statement's first page,
    // transfers and idempotency keys by id.
    let started = Instant::now();
    let events = store.events_after(&pid(0), cursors[0].saturating_sub(100), 100).unwrap();
    let listed = store.listed_after(&pid(PAYERS), None, 1_000).unwrap();
    let fees = AccountId::new(AccountOwner::Fees, Currency::USD);
    let statement = store.statement(&fees, ms(0), ms(u64::MAX), None, 1_000).unwrap();
    let found = (1..=1_000u64).filter(|n| store.get_transfer(&tid(n * 199)).unwrap().is_some()).count();
    println!(
        "reads: {} events, {} listings, {} movements, {found} transfers by id in {:.1} ms",
        events.len(),
        listed.len(),
        statement.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let (process_before, started) = (cpu_ticks("self"), Instant::now());
    let deleted = store.delete_through(batches / 2).unwrap();
    println!(
        "delete_through half: {deleted} records in {:.0} ms wall, {} ms CPU",
        started.elapsed().as_secs_f64() * 1e3,
        (cpu_ticks("self") - process_before) * 10
    );
}

/// What one replica spends applying a busy region's log, the way the state
/// machine does: each entry applied to the hot state against history as of
/// its index, then its records written. 64 payer and 16 payee partners of
/// one region; each entry carries 128 quotes and the 128 transfers of the
/// previous entry's quotes (the mix the leader proposes under a closed-loop
/// load); a tick every 64 entries. Reports CPU per transfer of applying and
/// of writing history, and the resident memory at each tenth of the run.
/// A measurement, not a test; run by hand, alone:
/// `cargo test --release -p paymesh-store --lib
/// history::tests::measure_a_replicas_apply_path -- --ignored --nocapture --exact`.
/// Set by the environment: `PAYMESH_MEASURE_ENTRIES`, the entries applied
/// (default 1,600, about 200,000 transfers); `PAYMESH_MEASURE_PER_ENTRY`,
/// transfers per entry (default 128; a region at its peak proposes
/// entries of a few dozen); `PAYMESH_MEASURE_STEP_MS`, the clock's step
/// per entry (default 10 ms: 12,800 transfers a second, which fills the
/// hot state's time windows; 128 gives 1,000 a second); `PAYMESH_MEASURE_KEYS`
/// (any value), count history's keys by space at the end; `PAYMESH_MEASURE_KEEP`
/// (any value), leave the state and history allocated at exit, so that a
/// heap profiler's "leaked" figure is what they hold at the end;
/// `PAYMESH_MEASURE_PLAIN` (any value), propose each transfer as a plain
/// `CreateTransfer`, whose key every replica looks up in history, rather
/// than as the leader does, a `CreateFreshTransfer` vouched for by the
/// applied index before its entry; `PAYMESH_MEASURE_PAYMENTS` (any value),
/// propose one-call payments instead of quotes and transfers, each a
/// `CreateFreshPayment` as the leader proposes a batched submission's items
/// (128 to an entry, each committed in its entry).
#[test]
#[ignore = "measurement, run by hand"]
fn measure_a_replicas_apply_path() {
    use paymesh_core::command::{Batch, Command, CommandId, PaymentRequest};
    use paymesh_core::corridor::{CorridorTerms, QuoteAmount};
    use paymesh_core::directory::{PayeeRoute, QrPrefix};
    use paymesh_core::fx::{BasisPoints, FeeSchedule};
    use paymesh_core::partner::{PartnerConfig, PartnerRole};
    use paymesh_core::State;

    let entries: u64 = measure_setting("PAYMESH_MEASURE_ENTRIES", 1_600);
    let plain = std::env::var_os("PAYMESH_MEASURE_PLAIN").is_some();
    let payments = std::env::var_os("PAYMESH_MEASURE_PAYMENTS").is_some();
    let per_entry: u64 = measure_setting("PAYMESH_MEASURE_PER_ENTRY", 128);
    let step_ms: u64 = measure_setting("PAYMESH_MEASURE_STEP_MS", 10);
    const PAYERS: u64 = 64;
    const PAYEES: u64 = 16;
    struct Replica {
        state: State,
        history: History,
        index: u64,
        sequence: u64,
        applying_ns: u64,
        writing_ns: u64,
    }
    impl Replica {
        fn apply(&mut self, bodies: Vec<CommandBody>, now: Timestamp) -> Vec<Outcome> {
            self.index += 1;
            let commands = bodies
                .into_iter()
                .map(|body| {
                    self.sequence += 1;
                    Command { id: CommandId { session: 1, sequence: self.sequence }, body }
                })
                .collect();
            let batch = Batch::new(now, commands).unwrap();
            let started = thread_cpu_ns();
            let applied = self.state.apply_batch(self.index, &batch, &self.history.at(self.index));
            let written = thread_cpu_ns();
            self.history.write(self.index, &applied.history).unwrap();
            self.applying_ns += written - started;
            self.writing_ns += thread_cpu_ns() - written;
            applied.outcomes
        }
    }
    let cny = |units: u64| Money::from_units(units, Currency::CNY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = RegionId::new("bench-region").unwrap();
    let mut replica = Replica {
        state: State::new(home.clone()),
        history: History::open(dir.path(), crate::state_machine::HISTORY_MEMORY_BYTES).unwrap(),
        index: 0,
        sequence: 0,
        applying_ns: 0,
        writing_ns: 0,
    };
    let start = 1_700_000_000_000;
    let partner =
        |n: u64| PartnerId::new(if n < PAYERS { format!("payer-{n}") } else { format!("payee-{n}") }).unwrap();
    let mut setup = Vec::new();
    for n in 0..PAYERS + PAYEES {
        let role = if n < PAYERS { PartnerRole::Payer } else { PartnerRole::Payee };
        let config = PartnerConfig {
            id: partner(n),
            region: home.clone(),
            role,
            currency: Currency::CNY,
            net_debit_cap: cny(0),
        };
        setup.push(CommandBody::UpsertPartner(config));
        if n < PAYERS {
            let reference = TopUpRef::new(format!("prefund-{n}")).unwrap();
            setup.push(CommandBody::TopUp { partner: partner(n), amount: cny(1_000_000_000), reference });
        } else {
            let prefix = QrPrefix::new(format!("wxp://payee{n}/")).unwrap();
            let route = PayeeRoute { prefix, partner: partner(n), region: home.clone(), currency: Currency::CNY };
            setup.push(CommandBody::UpsertPayeeRoute(route));
        }
    }
    let fees = FeeSchedule::new(cny(0), BasisPoints::new(30).unwrap(), cny(0), cny(100)).unwrap();
    // A daily cap no run reaches (a long run pays billions within its day).
    let terms = CorridorTerms::new(BasisPoints::ZERO, fees, cny(1), cny(50_000), cny(1_000_000_000_000)).unwrap();
    let corridor = CorridorId::parse("CNY:bench-region->CNY:bench-region").unwrap();
    setup.push(CommandBody::UpsertCorridor { corridor, terms });
    for outcome in replica.apply(setup, ms(start)) {
        assert_eq!(outcome, Outcome::Done);
    }
    replica.applying_ns = 0;
    replica.writing_ns = 0;
    let payee_of = |n: u64| PAYERS + (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % PAYEES;
    let mut quoted: Vec<(u64, QuoteId)> = Vec::new();
    let mut committed = 0u64;
    let started = Instant::now();
    let engine_threads = OtherThreadsCpu::start();
    for entry in 0..entries {
        if entry % (entries / 10).max(1) == 0 {
            let (line, seconds) = (memory_line(&replica.history), started.elapsed().as_secs_f64());
            println!("entry {entry}: {committed} transfers, {line}, {seconds:.1} s");
        }
        let now = ms(start + 1_000 + entry * step_ms);
        let mut bodies = Vec::new();
        for (n, quote) in quoted.drain(..) {
            let request = TransferRequest {
                partner: partner(n % PAYERS),
                idempotency_key: IdempotencyKey::new(format!("order-{n:012}")).unwrap(),
                quote,
                payee: QrPayload::new(format!("wxp://payee{}/shop{}", payee_of(n), n % 1_000)).unwrap(),
                payer: payer(n),
            };
            bodies.push(if plain {
                CommandBody::CreateTransfer(request)
            } else {
                CommandBody::CreateFreshTransfer { request, fresh_through: replica.index }
            });
        }
        let first = entry * per_entry;
        if payments {
            for n in first..first + per_entry {
                let request = PaymentRequest {
                    partner: partner(n % PAYERS),
                    idempotency_key: IdempotencyKey::new(format!("order-{n:012}")).unwrap(),
                    payee: QrPayload::new(format!("wxp://payee{}/shop{}", payee_of(n), n % 1_000)).unwrap(),
                    amount: QuoteAmount::Source(cny(10 + n % 500)),
                    max_total_debit: None,
                    payer: payer(n),
                };
                bodies.push(CommandBody::CreateFreshPayment { request, fresh_through: replica.index });
            }
        }
        let transfers = bodies.len();
        for n in (first..first + per_entry).filter(|_| !payments) {
            bodies.push(CommandBody::CreateQuote {
                partner: partner(n % PAYERS),
                payee: QrPayload::new(format!("wxp://payee{}/shop{}", payee_of(n), n % 1_000)).unwrap(),
                amount: QuoteAmount::Source(cny(10 + n % 500)),
            });
        }
        if entry % 64 == 63 {
            bodies.push(CommandBody::Tick);
        }
        let outcomes = replica.apply(bodies, now);
        for outcome in &outcomes[..transfers] {
            match outcome {
                Outcome::Transfer(view) if view.state == CoordinatorState::Committed => committed += 1,
                other => panic!("a transfer not committed: {other:?}"),
            }
        }
        let quotes = if payments { 0 } else { per_entry as usize };
        for (n, outcome) in (first..).zip(&outcomes[transfers..transfers + quotes]) {
            match outcome {
                Outcome::Quote(quote) => quoted.push((n, quote.id.clone())),
                other => panic!("a quote refused: {other:?}"),
            }
        }
    }
    let background_ns = engine_threads.ns();
    let per_transfer_us = |ns: u64| ns as f64 / 1e3 / committed as f64;
    println!(
        "{committed} transfers in {entries} entries: CPU {:.1} µs/transfer applying (hot state, with recall), \
         {:.1} µs/transfer writing history, {:.1} µs/transfer in the engine's threads, {:.1} in all; wall {:.1} s; \
         history {} records, VmHWM {:.1} MiB",
        per_transfer_us(replica.applying_ns),
        per_transfer_us(replica.writing_ns),
        per_transfer_us(background_ns),
        per_transfer_us(replica.applying_ns + replica.writing_ns + background_ns),
        started.elapsed().as_secs_f64(),
        replica.history.records(),
        peak_resident_bytes() as f64 / (1024.0 * 1024.0),
    );
    if std::env::var("PAYMESH_MEASURE_KEYS").is_ok() {
        println!("keys by space: {:?}", keys_by_space(&replica.history));
        println!("journal bytes by record: {:?}", journal_bytes_by_record(&replica.history, committed));
    }
    if std::env::var("PAYMESH_MEASURE_KEEP").is_ok() {
        println!("at the end: {}", memory_line(&replica.history));
        std::mem::forget(replica);
    }
}

/// A node wiped after its region deleted history through D cannot be sent
/// the deleted batches: it adopts the sender's start (deleted through D,
/// the digest there, where each partner's events were cut) and takes the
/// journal after D, ending with the sender's digest and answers.
/// A history in `dir` of 20 batches, deleted through batch 10, and where
/// it begins.
fn deleted_through_10(dir: &Path) -> (History, HistoryStart) {
    let source = open(dir);
    for n in 1..=20 {
        source.write(n, &finished(n, n * 10)).unwrap();
    }
    source.delete_through(10).unwrap();
    let start = source.start().unwrap();
    (source, start)
}

#[test]
fn a_history_adopts_a_replicas_deleted_start_and_continues_from_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (source, start) = deleted_through_10(&dir.path().join("source"));
    assert_eq!(start.deleted_through, 10);
    assert_eq!(Some(start.digest), source.digest_at(10).unwrap());
    assert_eq!(start.events_deleted, [(pid(1), 10), (pid(2), 8), (pid(0), 9)].into_iter().collect());

    // A replica with a stale beginning (batches 1 to 3) cannot take the
    // journal after them: it is gone.
    let target = open(&dir.path().join("target"));
    for n in 1..=3 {
        target.write(n, &finished(n, n * 10)).unwrap();
    }
    assert!(matches!(source.journal_after(target.last_index(), usize::MAX), Err(HistoryError::Deleted { .. })));

    assert_eq!(target.adopt(&start).unwrap(), 10);
    assert_eq!((target.last_index(), target.deleted_through(), target.archived_through()), (10, 10, 10));
    assert_eq!((target.digest(), target.records(), target.first_index().unwrap()), (start.digest, 0, 0));
    assert_eq!(target.get_transfer(&tid(2)).unwrap(), None, "its stale batches went");
    assert!(indexes_named(&target).is_empty());
    let through = source.last_index();
    target.append(&source.journal_after(target.last_index(), usize::MAX).unwrap(), through).unwrap();

    assert_eq!((target.digest(), target.records(), target.last_index()), (source.digest(), source.records(), 20));
    assert_eq!(target.journal_after(10, usize::MAX).unwrap(), source.journal_after(10, usize::MAX).unwrap());
    assert_eq!(target.get_transfer(&tid(12)).unwrap(), Some(transfer(12, 120)));
    for partner in 0..3 {
        assert_eq!(
            target.oldest_event_cursor(&pid(partner)).unwrap(),
            source.oldest_event_cursor(&pid(partner)).unwrap()
        );
    }
    assert!(matches!(target.events_after(&pid(1), 0, 10), Err(HistoryError::CursorExpired(_))));
    assert_eq!(target.events_after(&pid(1), 10, 10).unwrap(), source.events_after(&pid(1), 10, 10).unwrap());
    assert_eq!(target.digest_at(15).unwrap(), source.digest_at(15).unwrap());
    assert_eq!(target.start().unwrap(), start, "it can start another replica in turn");

    // Adopting a start it is past already changes nothing.
    assert_eq!(target.adopt(&start).unwrap(), 20);
    assert_eq!(target.digest(), source.digest());
    drop(target);
    let target = reopen(&dir.path().join("target")).unwrap();
    assert_eq!((target.last_index(), target.deleted_through(), target.digest()), (20, 10, source.digest()));

    // The start of a history nothing was deleted from.
    let empty = open(&dir.path().join("empty"));
    assert_eq!(
        empty.start().unwrap(),
        HistoryStart { deleted_through: 0, digest: [0; 32], events_deleted: BTreeMap::new() }
    );
}

#[test]
fn the_recent_transfers_are_the_newest_finished_ones_newest_first_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.recent_transfers(10, 100).unwrap().is_empty());
    // Two transfers in one batch, then batches of other records between.
    let mut both = finished(1, 1_000);
    both.extend(finished(2, 1_001));
    store.write(1, &both).unwrap();
    store.write(2, &[operator(1_002)]).unwrap();
    for n in 3..=7 {
        store.write(n, &finished(n, 1_000 + n)).unwrap();
    }
    let ids = |transfers: Vec<Transfer>| transfers.into_iter().map(|t| t.view.id).collect::<Vec<_>>();
    assert_eq!(ids(store.recent_transfers(3, 100).unwrap()), vec![tid(7), tid(6), tid(5)]);
    assert_eq!(
        ids(store.recent_transfers(100, 100).unwrap()),
        vec![tid(7), tid(6), tid(5), tid(4), tid(3), tid(2), tid(1)]
    );
    // Only the newest chunks are read: two batches hold two transfers.
    assert_eq!(ids(store.recent_transfers(100, 2).unwrap()), vec![tid(7), tid(6)]);
}

#[test]
fn closed_windows_are_listed_newest_first_whatever_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.closed_windows_before(10, 10).unwrap().is_empty());
    for (index, number) in [(1, 1), (2, 2), (3, 3), (4, 1_000_003)] {
        store.write(index, &[window(number, 1_000 + index)]).unwrap();
    }
    assert_eq!(store.closed_windows_before(1_000_004, 10).unwrap(), vec![1_000_003, 3, 2, 1]);
    assert_eq!(store.closed_windows_before(1_000_003, 2).unwrap(), vec![3, 2]);
    assert_eq!(store.closed_windows_before(1, 10).unwrap(), Vec::<u64>::new());
}

// --- the journal's segment files --------------------------------------------

/// The segment files of the history in `dir`, by name, with their sizes.
fn segment_files(dir: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(dir.join(segments::DIR))
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| (entry.file_name().into_string().unwrap(), entry.metadata().unwrap().len()))
        .collect()
}

/// The length of the (single) segment of the history in `dir`.
fn segment_length(dir: &Path) -> u64 {
    segment_files(dir).into_values().next().expect("a segment")
}

/// Cut the (single) segment of the history in `dir` back to `length`: a
/// power loss took the bytes written after it.
fn cut_segment(dir: &Path, length: u64) {
    let (name, _) = segment_files(dir).into_iter().next().expect("a segment");
    let file = fs::OpenOptions::new().write(true).open(dir.join(segments::DIR).join(name)).unwrap();
    file.set_len(length).unwrap();
}

/// A history and its twin written alike, for comparison.
fn twins(dir: &Path, twin: &Path, batches: std::ops::RangeInclusive<u64>) -> (History, History) {
    let (store, other) = (open(dir), open(twin));
    write_both(&store, &other, batches);
    (store, other)
}

/// Write batches `batches` (each a finished transfer) to both histories.
fn write_both(store: &History, twin: &History, batches: std::ops::RangeInclusive<u64>) {
    for n in batches {
        store.write(n, &finished(n, n * 10)).unwrap();
        twin.write(n, &finished(n, n * 10)).unwrap();
    }
}

/// [`assert_reads_alike`], and again once `store` (in `dir`) is reopened.
fn assert_reads_alike_reopened(store: History, dir: &Path, twin: &History) {
    assert_reads_alike(&store, twin);
    drop(store);
    assert_reads_alike(&reopen(dir).unwrap(), twin);
}

/// Everything a reader sees of two histories is the same.
fn assert_reads_alike(store: &History, twin: &History) {
    assert_eq!(
        (store.last_index(), store.digest(), store.records()),
        (twin.last_index(), twin.digest(), twin.records())
    );
    let held = |h: &History| h.journal_after(h.deleted_through(), usize::MAX).unwrap();
    assert_eq!(held(store), held(twin));
    for n in 0..30 {
        assert_eq!(store.get_transfer(&tid(n)).unwrap(), twin.get_transfer(&tid(n)).unwrap(), "transfer {n}");
        assert_eq!(
            store.get_idempotency(&pid(n % 3), &key(n)).unwrap(),
            twin.get_idempotency(&pid(n % 3), &key(n)).unwrap()
        );
    }
    for p in 0..3 {
        assert_eq!(
            store.listed_after(&pid(p), None, usize::MAX).unwrap(),
            twin.listed_after(&pid(p), None, usize::MAX).unwrap()
        );
        let events = |h: &History| HistoryRead::events(h, &pid(p), 0, usize::MAX);
        assert_eq!(events(store), events(twin));
    }
    let statement = |h: &History| h.statement(&account(4), ms(0), ms(100_000), None, usize::MAX).unwrap();
    assert_eq!(statement(store), statement(twin));
    assert_eq!(store.recent_transfers(100, 1_000).unwrap(), twin.recent_transfers(100, 1_000).unwrap());
}

#[test]
fn a_batch_is_written_once_to_the_segments_and_the_engine_keeps_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = segment_files(dir.path());
    assert_eq!(before.values().copied().collect::<Vec<_>>(), [segments::MAGIC.len() as u64]);
    let records = finished(1, 10);
    store.write(1, &records).unwrap();
    let framed: u64 = records.iter().map(|r| 4 + postcard::to_allocvec(r).unwrap().len() as u64).sum();
    let after = segment_files(dir.path());
    assert_eq!(after.values().copied().collect::<Vec<_>>(), [segments::MAGIC.len() as u64 + 16 + framed]);
    // In the engine, a batch key and no chunk.
    let journal_keys: Vec<usize> = store.db.scan_prefix([space::JOURNAL]).map(|item| item.unwrap().0.len()).collect();
    assert_eq!(journal_keys, [BATCH_KEY_BYTES]);
    assert_eq!(location(&store, 1).length(), framed);
    assert_eq!(journal(&store), records.into_iter().map(|r| (1, r)).collect::<Vec<_>>());
    // A chunk that fails its checksum is damage, not a record.
    let location = location(&store, 1);
    let path = dir.path().join(segments::DIR).join(after.keys().next().unwrap());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"\xff", location.offset + 7).unwrap();
    assert!(matches!(store.get_transfer(&tid(1)), Err(HistoryError::Io { .. })));
    assert!(store.journal_after(0, usize::MAX).is_err());
}

#[test]
fn chunks_a_crash_wrote_past_the_engine_are_cut_at_open_and_written_again() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store, twin) = twins(dir.path(), twin_dir.path(), 1..=3);
    let kept = segment_files(dir.path());
    // Batch 4's chunks reach the segments, its engine write never comes.
    let chunks = JournalChunks::of(4, &finished(4, 40), |_, _| {}).unwrap();
    store.segments.append(4, &chunks).unwrap();
    assert_ne!(segment_files(dir.path()), kept);
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(segment_files(dir.path()), kept, "cut back to the engine's last batch");
    assert_eq!(store.last_index(), 3);
    store.write(4, &finished(4, 40)).unwrap();
    twin.write(4, &finished(4, 40)).unwrap();
    assert_reads_alike(&store, &twin);
}

#[test]
fn chunks_a_power_loss_took_are_written_again_from_the_log_and_read_as_before() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store, twin) = twins(dir.path(), twin_dir.path(), 1..=3);
    let (store, twin) = (store.gathering_every(2), twin.gathering_every(2));
    store.durable().unwrap();
    let synced = segment_length(dir.path());
    write_both(&store, &twin, 4..=7);
    store.write(8, &[]).unwrap();
    twin.write(8, &[]).unwrap();
    let (digest, records) = (store.digest(), store.records());
    drop(store);
    // The engine kept batches 4 to 8; the segments lost what was not synced.
    cut_segment(dir.path(), synced);

    let store = reopen(dir.path()).unwrap().gathering_every(2);
    assert_eq!(store.last_index(), 3, "history reaches the last batch whose chunks it holds");
    assert_eq!(store.digest(), twin.digest_at(3).unwrap().unwrap());
    assert_eq!(store.records(), records, "the engine's count stays");
    // Readers see history through batch 3 only, and fail nowhere.
    assert_eq!(store.get_transfer(&tid(5)).unwrap(), None);
    assert_eq!(store.get_transfer(&tid(3)).unwrap(), twin.get_transfer(&tid(3)).unwrap());
    assert!(store.listed_after(&pid(1), None, usize::MAX).unwrap().iter().all(|(token, _)| token.index <= 3));
    assert!(store.events_after(&pid(1), 0, usize::MAX).unwrap().iter().all(|event| event.at <= ms(30)));
    assert_eq!(journal(&store).last().map(|(index, _)| *index), Some(3));
    // Other records than before at batch 4 are refused.
    let refused = store.write(4, &finished(40, 400)).unwrap_err();
    assert!(matches!(&refused, HistoryError::Corrupt { reason, .. } if reason.contains("other records")), "{refused}");
    assert_eq!(store.last_index(), 3);
    // So is a batch that would skip one whose chunks are still missing.
    let refused = store.write(5, &finished(5, 50)).unwrap_err();
    assert!(matches!(&refused, HistoryError::Corrupt { reason, .. } if reason.contains("before batch 4")), "{refused}");
    // The log's batches written again: everything as before.
    for n in 4..=7 {
        store.write(n, &finished(n, n * 10)).unwrap();
    }
    store.write(8, &[]).unwrap();
    assert_eq!((store.last_index(), store.digest()), (8, digest));
    store.write(9, &finished(9, 90)).unwrap();
    twin.write(9, &finished(9, 90)).unwrap();
    assert_reads_alike_reopened(store, dir.path(), &twin);
}

#[test]
fn a_durable_batch_whose_chunks_are_gone_is_damage_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 1..=3 {
        store.write(n, &finished(n, n)).unwrap();
    }
    store.durable().unwrap();
    drop(store);
    for (name, _) in segment_files(dir.path()) {
        let path = dir.path().join(segments::DIR).join(name);
        fs::OpenOptions::new().write(true).open(path).unwrap().set_len(segments::MAGIC.len() as u64).unwrap();
    }
    let refused = reopen(dir.path()).unwrap_err();
    assert!(matches!(&refused, HistoryError::Corrupt { reason, .. } if reason.contains("made durable")), "{refused}");
}

#[test]
fn retention_deletes_whole_segment_files_behind_it() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path());
    // A segment a batch.
    store.segments.set_bytes_max(1);
    let twin = open(twin_dir.path());
    write_both(&store, &twin, 1..=20);
    let names = store.segments.names();
    assert_eq!(names, (0..=20).collect::<Vec<u64>>(), "the first segment empty, then one a batch");
    assert_eq!(names.len(), segment_files(dir.path()).len());
    store.confirm_archived(10).unwrap();
    twin.confirm_archived(10).unwrap();
    store.delete_through(10).unwrap();
    twin.delete_through(10).unwrap();
    assert_eq!(store.segments.names(), (11..=20).collect::<Vec<u64>>(), "the segments of batches 1 to 10 went");
    assert_eq!(segment_files(dir.path()).len(), 10);
    assert_reads_alike_reopened(store, dir.path(), &twin);
}

#[test]
fn segments_leave_only_their_tail_in_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let segments = Segments::open(dir.path()).unwrap();
    let chunk = vec![9u8; 1024 * 1024];
    let mut located = Vec::new();
    for index in 1..=24 {
        located.push(segments.append(index, &[(0, chunk.clone())]).unwrap());
    }
    segments.sync().unwrap();
    let path = dir.path().join(format!("{:020}.hjs", 0));
    let cached = crate::durable::cached_bytes(&path);
    assert!(
        cached <= segments::CACHED_TAIL_BYTES + 4096,
        "{cached} bytes of a 24 MiB segment still cached; at most its last {} may be",
        segments::CACHED_TAIL_BYTES
    );
    // The batches dropped read back from the disk.
    assert_eq!(segments.read(&located[0], 0..1).unwrap(), vec![chunk.clone()]);
    assert_eq!(segments.read(&located[23], 0..1).unwrap(), vec![chunk]);
}

/// Move a store's batches from the segments into the engine as layout 4
/// kept them: a chunk key per chunk, no segments.
fn rewrite_as_layout_4(dir: &Path) {
    let store = reopen(dir).unwrap();
    let mut moved = Vec::new();
    for item in store.db.scan_prefix([space::JOURNAL]) {
        let (key, value) = item.unwrap();
        let (index, _) = parse_journal_key(&key).unwrap();
        let location = parse_location(&key, &value).unwrap();
        let chunks = store.segments.read(&location, 0..location.chunks.len()).unwrap();
        moved.push((key.to_vec(), index, location, chunks));
    }
    for (key, index, location, chunks) in moved {
        store.db.remove(&key).unwrap();
        for ((first, _, _), chunk) in location.chunks.iter().zip(chunks) {
            store.db.insert(journal_key(index, *first), chunk).unwrap();
        }
    }
    plain_idempotency_pointers(&store.db);
    store.db.insert(META_LAYOUT, LAYOUT_CHUNKS_IN_ENGINE.to_be_bytes()).unwrap();
    store.db.persist().unwrap();
    drop(store);
    fs::remove_dir_all(dir.join(segments::DIR)).unwrap();
}

#[test]
fn a_layout_4_store_is_read_from_the_engine_and_goes_on_in_segments() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store, twin) = twins(dir.path(), twin_dir.path(), 1..=6);
    drop(store);
    rewrite_as_layout_4(dir.path());
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.db.get(META_LAYOUT).unwrap().unwrap(), LAYOUT.to_be_bytes());
    assert_eq!(keys_by_space(&store)[&'J'], 6, "a chunk key per batch (nine records each)");
    assert_reads_alike(&store, &twin);
    write_both(&store, &twin, 7..=9);
    assert_reads_alike(&store, &twin);
    store.confirm_archived(8).unwrap();
    twin.confirm_archived(8).unwrap();
    assert_eq!(store.delete_through(8).unwrap(), twin.delete_through(8).unwrap());
    assert_eq!(keys_by_space(&store)[&'J'], 1, "batch 9's key");
    assert_reads_alike_reopened(store, dir.path(), &twin);
}

/// Rewrite an engine's idempotency pointers in the plain form the layouts
/// before 6 wrote them in.
fn plain_idempotency_pointers(engine: &kv::Kv) {
    let hashed: Vec<(Vec<u8>, Vec<u8>)> = engine
        .scan_prefix([space::IDEMPOTENCY])
        .map(|item| item.unwrap())
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect();
    assert!(!hashed.is_empty());
    for (key, value) in hashed {
        engine.remove(&key).unwrap();
        let mut plain = vec![space::IDEMPOTENCY];
        plain.extend_from_slice(&key[4..]);
        engine.insert(plain, value).unwrap();
    }
    engine.remove(META_HASHED_FROM).unwrap();
}

/// Rewrite a store as layout 5 wrote it: idempotency pointers plain.
fn rewrite_as_layout_5(dir: &Path) {
    let store = reopen(dir).unwrap();
    plain_idempotency_pointers(&store.db);
    store.db.insert(META_LAYOUT, LAYOUT_PLAIN_IDEMPOTENCY.to_be_bytes()).unwrap();
    store.db.persist().unwrap();
}

#[test]
fn a_layout_5_store_finds_its_plain_idempotency_pointers_until_retention_deletes_them() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store, twin) = twins(dir.path(), twin_dir.path(), 1..=6);
    drop(store);
    rewrite_as_layout_5(dir.path());
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.db.get(META_LAYOUT).unwrap().unwrap(), LAYOUT.to_be_bytes());
    assert_eq!(store.db.get(META_HASHED_FROM).unwrap().unwrap(), 7u64.to_be_bytes(), "hashed from the next batch");
    let plain_held = |store: &History| {
        (1..=9).filter(|n| store.db.get(idempotency_key(&pid(n % 3), &key(*n), false)).unwrap().is_some()).count()
    };
    assert_eq!(plain_held(&store), 6);
    assert_reads_alike(&store, &twin);
    // A newer answer under the key of a plain batch, in a hashed one: the
    // newest is read, and the older as of before it.
    let again = [idempotency(2, 2, 777)];
    store.write(7, &again).unwrap();
    twin.write(7, &again).unwrap();
    assert_eq!(store.get_idempotency(&pid(2), &key(2)).unwrap().unwrap().at, ms(777));
    assert_eq!(store.at(7).idempotency(&pid(2), &key(2)).unwrap().at, ms(20));
    write_both(&store, &twin, 8..=9);
    assert_reads_alike(&store, &twin);
    assert!(store.plain_idempotency_held());
    // Retention deletes the plain pointers with their batches.
    store.confirm_archived(8).unwrap();
    twin.confirm_archived(8).unwrap();
    assert_eq!(store.delete_through(6).unwrap(), twin.delete_through(6).unwrap());
    assert_eq!(plain_held(&store), 0, "the plain pointers went with their batches");
    assert!(!store.plain_idempotency_held());
    assert_eq!(store.get_idempotency(&pid(2), &key(2)).unwrap().unwrap().at, ms(777));
    assert_eq!(keys_by_space(&store), keys_by_space(&twin));
    assert_reads_alike_reopened(store, dir.path(), &twin);
}

#[test]
fn idempotency_pointers_begin_with_a_hash_of_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.db.get(META_HASHED_FROM).unwrap().unwrap(), 1u64.to_be_bytes(), "a new store hashes all");
    write_both(&store, &open(tempfile::tempdir().unwrap().path()), 1..=3);
    let keys: Vec<Vec<u8>> = store.db.scan_prefix([space::IDEMPOTENCY]).map(|item| item.unwrap().0.to_vec()).collect();
    assert_eq!(keys.len(), 3);
    for n in 1..=3 {
        let hashed = idempotency_key(&pid(n % 3), &key(n), true);
        assert!(keys.contains(&hashed));
        assert_eq!(&hashed[4..], &idempotency_key(&pid(n % 3), &key(n), false)[1..]);
    }
    // The four bytes the engine compares first differ from key to key.
    let firsts: std::collections::BTreeSet<&[u8]> = keys.iter().map(|key| &key[..4]).collect();
    assert_eq!(firsts.len(), 3);
}

#[test]
fn a_power_loss_cutting_the_segments_anywhere_past_the_sync_is_written_back_from_the_log() {
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = open(twin_dir.path());
    for n in 1..=7 {
        twin.write(n, &finished(n, n * 10)).unwrap();
    }
    // Where each batch ends in the (single) segment.
    let ends: Vec<u64> = (1..=7).map(|n| location(&twin, n).end()).collect();
    let synced = ends[2];
    let cuts = [
        synced,
        synced + 1,
        synced + 10,
        synced + 17,
        (synced + ends[3]) / 2,
        ends[3] - 1,
        ends[3],
        ends[4] + 3,
        ends[6] - 1,
    ];
    for cut in cuts {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for n in 1..=3 {
            store.write(n, &finished(n, n * 10)).unwrap();
        }
        store.durable().unwrap();
        for n in 4..=7 {
            store.write(n, &finished(n, n * 10)).unwrap();
        }
        drop(store);
        cut_segment(dir.path(), cut);
        let store = reopen(dir.path()).unwrap();
        let whole = ends.iter().filter(|end| **end <= cut).count() as u64;
        assert_eq!(store.last_index(), whole, "cut at {cut}");
        assert_eq!(Some(store.digest()), twin.digest_at(whole).unwrap(), "cut at {cut}");
        for n in 4..=7 {
            store.write(n, &finished(n, n * 10)).unwrap();
        }
        assert_reads_alike(&store, &twin);
    }
}

#[test]
fn a_history_writing_back_lost_chunks_can_still_adopt_a_replicas_start() {
    let dir = tempfile::tempdir().unwrap();
    let (source, start) = deleted_through_10(&dir.path().join("source"));
    // The target made batches 1 to 3 durable; a power loss took the chunks
    // of 4 to 6 from its segments, and the region deleted through 10 since.
    let target_dir = dir.path().join("target");
    let target = open(&target_dir);
    for n in 1..=3 {
        target.write(n, &finished(n, n * 10)).unwrap();
    }
    target.durable().unwrap();
    let synced = segment_length(&target_dir);
    for n in 4..=6 {
        target.write(n, &finished(n, n * 10)).unwrap();
    }
    drop(target);
    cut_segment(&target_dir, synced);
    let target = reopen(&target_dir).unwrap();
    assert_eq!(target.last_index(), 3);

    assert_eq!(target.adopt(&start).unwrap(), 10);
    assert_eq!((target.last_index(), target.records(), target.digest()), (10, 0, start.digest));
    let through = source.last_index();
    target.append(&source.journal_after(10, usize::MAX).unwrap(), through).unwrap();
    assert_eq!((target.last_index(), target.records(), target.digest()), (20, source.records(), source.digest()));
    let held = |h: &History| h.journal_after(10, usize::MAX).unwrap();
    assert_eq!(held(&target), held(&source));
    assert_eq!(target.get_transfer(&tid(5)).unwrap(), None, "a lost batch's transfer is not found");
    assert_eq!(target.get_transfer(&tid(15)).unwrap(), Some(transfer(15, 150)));
    drop(target);
    let target = reopen(&target_dir).unwrap();
    assert_eq!((target.last_index(), target.digest()), (20, source.digest()));
    assert_eq!(target.first_index().unwrap(), 11);
    target.delete_through(15).unwrap();
    assert_eq!(target.first_index().unwrap(), 16);
}

#[test]
fn a_segment_left_empty_by_a_crash_begins_again_and_one_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // A crash between creating the first segment and writing its magic.
    cut_segment(dir.path(), 0);
    let store = reopen(dir.path()).unwrap();
    store.write(1, &finished(1, 10)).unwrap();
    assert_eq!(store.get_transfer(&tid(1)).unwrap(), Some(transfer(1, 10)));
    drop(store);
    let (name, _) = segment_files(dir.path()).into_iter().next().unwrap();
    let file = fs::OpenOptions::new().write(true).open(dir.path().join(segments::DIR).join(name)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"PK", 0).unwrap();
    let refused = reopen(dir.path()).unwrap_err();
    assert!(refused.to_string().contains("not a history segment file"), "{refused}");
}

/// The length of a group key's scope prefix (`space | scope | 0`).
fn scope_len(key: &[u8]) -> usize {
    key.iter().position(|&b| b == 0).unwrap() + 1
}

/// Every listing, statement and event group's key and value, with its
/// space: read whole before a caller rewrites any.
fn group_values(engine: &kv::Kv) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    [space::LISTED, space::ACCOUNT, space::EVENT]
        .into_iter()
        .flat_map(|first| {
            engine.scan_prefix([first]).map(move |item| {
                let (key, value) = item.unwrap();
                (first, key.to_vec(), value.to_vec())
            })
        })
        .collect()
}

#[test]
fn gathered_members_are_packed_into_a_few_bytes_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).gathering_every(8);
    let mut memory = MemoryHistory::default();
    let mut cursors = BTreeMap::new();
    // 16 batches of 20 payments among 3 partners, a second apart.
    for index in 1..=16 {
        let mut records = Vec::new();
        for k in 0..20 {
            let n = index * 100 + k;
            let (payer, payee) = (n % 3, (n + 1) % 3);
            let mut next = |p: u64| {
                let cursor = cursors.entry(p).or_insert(0);
                *cursor += 1;
                *cursor
            };
            let at = 1_000_000 + index * 1_000;
            records.extend(same_region_transfer(n, payer, payee, [next(payer), next(payee)], at));
        }
        store.write(index, &records).unwrap();
        memory.write(index, records);
    }
    let (mut members, mut bytes) = (BTreeMap::<u8, usize>::new(), BTreeMap::<u8, usize>::new());
    for (first, key, value) in group_values(&store.db) {
        assert_eq!(value[0], gather::PACKED, "{key:?}");
        let prefix = &key[..scope_len(&key)];
        let count = if first == space::EVENT {
            Run::parse(&key, prefix.len(), &value).unwrap().positions.len()
        } else {
            gather::group_members(&key, prefix.len(), &value, first == space::LISTED).unwrap().len()
        };
        *members.entry(first).or_default() += count;
        *bytes.entry(first).or_default() += value.len() - 1;
    }
    // 320 payments: two listings, six movements (three under each of two
    // accounts), two events each.
    assert_eq!(members[&space::LISTED], 640);
    assert_eq!(members[&space::ACCOUNT], 1_920);
    assert_eq!(members[&space::EVENT], 640);
    let per = |first: u8| bytes[&first] as f64 / members[&first] as f64;
    // Whole tokens took 20 bytes a movement, 12 an event, 22 and the id a listing.
    assert!(per(space::ACCOUNT) <= 5.0, "{} bytes a movement", per(space::ACCOUNT));
    assert!(per(space::EVENT) <= 4.0, "{} bytes an event", per(space::EVENT));
    let id_bytes = tid(1_600).to_string().len() as f64;
    assert!(per(space::LISTED) <= id_bytes + 6.0, "{} bytes a listing", per(space::LISTED));
    assert_same(&store, &memory);
}

/// Rewrite a store's gathered groups as layouts 4 to 6 wrote them: each
/// member's whole token (or position) after the byte `FF`.
fn rewrite_groups_with_whole_tokens(engine: &kv::Kv) {
    for (first, key, value) in group_values(engine) {
        let prefix = &key[..scope_len(&key)];
        let mut whole = vec![gather::GATHERED];
        if first == space::EVENT {
            for (_, (index, seq)) in Run::parse(&key, prefix.len(), &value).unwrap().events() {
                whole.extend_from_slice(&position(index, seq));
            }
        } else {
            for member in gather::group_members(&key, prefix.len(), &value, first == space::LISTED).unwrap() {
                whole.extend_from_slice(&token_bytes(&member.token));
                if let Some(id) = member.transfer {
                    let id = id.to_string();
                    whole.extend_from_slice(&(id.len() as u16).to_be_bytes());
                    whole.extend_from_slice(id.as_bytes());
                }
            }
        }
        engine.insert(&key, whole).unwrap();
    }
}

#[test]
fn a_layout_6_store_reads_its_groups_of_whole_tokens_and_packs_those_it_writes_again() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path()).gathering_every(2);
    let twin = open(twin_dir.path()).gathering_every(2);
    write_both(&store, &twin, 1..=6);
    drop(store);
    {
        let store = reopen(dir.path()).unwrap();
        rewrite_groups_with_whole_tokens(&store.db);
        store.db.insert(META_LAYOUT, LAYOUT_WHOLE_TOKENS.to_be_bytes()).unwrap();
        store.db.persist().unwrap();
    }
    let store = reopen(dir.path()).unwrap().gathering_every(2);
    assert_eq!(store.db.get(META_LAYOUT).unwrap().unwrap(), LAYOUT.to_be_bytes());
    assert_eq!(store.db.get(META_HASHED_FROM).unwrap().unwrap(), 1u64.to_be_bytes(), "layout 6 hashed them all");
    let whole = |store: &History| group_values(&store.db).iter().filter(|(_, _, v)| v[0] == gather::GATHERED).count();
    assert!(whole(&store) > 3, "groups of whole tokens");
    assert_reads_alike(&store, &twin);
    // Written on and deleted from: the groups rewritten are packed, and
    // everything reads as in a store that packed from the start.
    write_both(&store, &twin, 7..=12);
    assert_reads_alike(&store, &twin);
    store.confirm_archived(12).unwrap();
    twin.confirm_archived(12).unwrap();
    assert_eq!(store.delete_through(6).unwrap(), twin.delete_through(6).unwrap());
    assert_eq!(whole(&store), 0, "the groups of the deleted batches were cut and packed");
    assert_eq!(keys_by_space(&store), keys_by_space(&twin));
    assert_reads_alike_reopened(store, dir.path(), &twin);
}

#[test]
fn damaged_packed_groups_are_errors() {
    let token = ListToken { at: ms(5_000), index: 7, seq: 3 };
    let prefix = scope(space::ACCOUNT, "fees:USD");
    let key = with_token(&prefix, &token);
    let members = |value: &[u8]| gather::group_members(&key, prefix.len(), value, false);
    let listings = |value: &[u8]| gather::group_members(&key, prefix.len(), value, true);
    // A well-formed group: the key's token, then one 2 ms later.
    assert_eq!(members(&[gather::PACKED, 0, 0, 0, 4, 0, 0]).unwrap().len(), 2);
    // Cut in a number, a number past its type, a member before the one
    // ahead of it, a first member other than the key's token, nothing.
    for value in [
        &[gather::PACKED, 0, 0][..],
        &[gather::PACKED, 0, 0, 0, 0x80][..],
        &[gather::PACKED, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0, 0][..],
        &[gather::PACKED, 0, 0, 0, 3, 0, 0][..],
        &[gather::PACKED, 2, 0, 0][..],
        &[gather::PACKED][..],
    ] {
        assert!(matches!(members(value), Err(HistoryError::Corrupt { .. })), "{value:?}");
    }
    // A listing whose id is cut short, or is not a transfer id.
    assert!(matches!(listings(&[gather::PACKED, 0, 0, 0, 9, b'x']), Err(HistoryError::Corrupt { .. })));
    assert!(matches!(listings(&[gather::PACKED, 0, 0, 0, 1, b'!']), Err(HistoryError::Corrupt { .. })));
    // Event runs: cut short, a number past its type, more events than a run holds.
    let prefix = scope(space::EVENT, "p1");
    let key = with_u64(&prefix, 1);
    let run = |value: &[u8]| Run::parse(&key, prefix.len(), value);
    assert_eq!(run(&[gather::PACKED, 14, 6, 2, 2]).unwrap().events().collect::<Vec<_>>(), [(1, (7, 3)), (2, (8, 4))]);
    let too_many: Vec<u8> =
        std::iter::once(gather::PACKED).chain([0, 0].repeat(gather::EVENTS_PER_RUN_MAX + 1)).collect();
    for value in [&[gather::PACKED, 14][..], &[gather::PACKED, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..], &too_many[..]] {
        assert!(matches!(run(value), Err(HistoryError::Corrupt { .. })), "{value:?}");
    }
}
