//! Tests of command application: scenarios of both sides of the protocol, every
//! reject code, retention, and property tests that run two regions over a
//! network that drops, duplicates, delays and reorders messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::command::{PayerField, TransferRequest};
use crate::corridor::CorridorTerms;
use crate::currency::Currency::{CNY, EUR, PHP, USD};
use crate::directory::QrPrefix;
use crate::fx::{BasisPoints, FeeSchedule, FxRate, Rate};
use crate::history::{MemoryHistory, Movement, MovementKind};
use crate::id::{MerchantId, OperatorId};
use crate::limits::{IDEMPOTENCY_RETENTION_MS, TOP_UP_RETENTION_MS};
use crate::partner::PartnerRole;
use crate::settings::{RegionSetting, IDEMPOTENCY_RETENTION_DAYS_MAX};
use crate::time::DAY_MS;

const T0: Timestamp = Timestamp::from_unix_ms(1_000 * DAY_MS);

fn region(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

fn pid(name: &str) -> PartnerId {
    PartnerId::new(name).unwrap()
}

fn usd(text: &str) -> Money {
    Money::parse(text, USD).unwrap()
}

fn cny(text: &str) -> Money {
    Money::parse(text, CNY).unwrap()
}

fn qr(text: &str) -> QrPayload {
    QrPayload::new(text).unwrap()
}

/// One region's state driven by a test: numbers commands, checks every
/// invariant after every command.
#[derive(Clone)]
struct Region {
    state: State,
    /// The region's history, written batch by batch as a replica does.
    history: MemoryHistory,
    /// The log index of the last batch applied.
    index: u64,
    session: u64,
    sequence: u64,
    /// Every command `run` applied, with its time, for replay tests.
    log: Vec<(Command, Timestamp)>,
}

impl Region {
    fn new(name: &str, session: u64) -> Region {
        Region {
            state: State::new(region(name)),
            history: MemoryHistory::new(),
            index: 0,
            session,
            sequence: 0,
            log: Vec::new(),
        }
    }

    /// Apply `command` as a batch of its own at the next log index.
    fn apply(&mut self, command: &Command, now: Timestamp) -> Outcome {
        self.apply_batch(&Batch::new(now, vec![command.clone()]).unwrap()).pop().unwrap()
    }

    /// Apply a batch at the next log index and write its history.
    fn apply_batch(&mut self, batch: &Batch) -> Vec<Outcome> {
        self.index += 1;
        let applied = self.state.apply_batch(self.index, batch, &self.history.at(self.index));
        self.history.write(self.index, applied.history);
        applied.outcomes
    }

    fn next_id(&mut self) -> CommandId {
        self.sequence += 1;
        CommandId { session: self.session, sequence: self.sequence }
    }

    fn run(&mut self, body: CommandBody, now: Timestamp) -> Outcome {
        let command = Command { id: self.next_id(), body };
        let outcome = self.apply(&command, now);
        if let Err(broken) = self.state.verify() {
            panic!("invariant broken after {command:?}: {broken}");
        }
        self.log.push((command, now));
        outcome
    }

    fn ok(&mut self, body: CommandBody, now: Timestamp) {
        let outcome = self.run(body.clone(), now);
        assert_eq!(outcome, Outcome::Done, "{body:?}");
    }

    fn partner(&mut self, name: &str, role: PartnerRole, cap: Money) {
        let config = PartnerConfig {
            id: pid(name),
            region: self.state.region().clone(),
            role,
            currency: cap.currency(),
            net_debit_cap: cap,
        };
        self.ok(CommandBody::UpsertPartner(config), T0);
    }

    fn top_up(&mut self, name: &str, amount: Money, reference: &str) {
        let reference = TopUpRef::new(reference).unwrap();
        self.ok(CommandBody::TopUp { partner: pid(name), amount, reference }, T0);
    }

    fn routes(&mut self) {
        for (prefix, partner) in [("wxp://", "wechat-cn"), ("https://qr.alipay.com/", "alipay-cn")] {
            let route = PayeeRoute {
                prefix: QrPrefix::new(prefix).unwrap(),
                partner: pid(partner),
                region: region("cn-east"),
                currency: CNY,
            };
            self.ok(CommandBody::UpsertPayeeRoute(route), T0);
        }
    }

    fn quote(&mut self, partner: &str, payee: &str, amount: QuoteAmount, now: Timestamp) -> Outcome {
        self.run(CommandBody::CreateQuote { partner: pid(partner), payee: qr(payee), amount }, now)
    }

    /// A transfer coordinated here, in flight or finished.
    fn transfer(&self, id: &TransferId) -> Option<Transfer> {
        self.state.transfer(id).cloned().or_else(|| self.history.transfer(id))
    }

    /// This region's side of a transfer, in flight or finished.
    fn participation(&self, id: &TransferId) -> Option<Participation> {
        self.state.participation(id).cloned().or_else(|| self.history.participation(id))
    }

    fn position(&self, partner: &str) -> Position {
        self.state.position(&pid(partner)).unwrap()
    }
}

fn corridor_id(text: &str) -> CorridorId {
    CorridorId::parse(text).unwrap()
}

fn usd_cny_terms() -> CorridorTerms {
    let fees = FeeSchedule::new(usd("0.30"), BasisPoints::new(100).unwrap(), usd("0"), usd("10")).unwrap();
    CorridorTerms::new(BasisPoints::new(50).unwrap(), fees, usd("1"), usd("5000"), usd("1000000")).unwrap()
}

/// us-west: a PayPal-like USD payer with 10,000.00 USD prefunded and a corridor
/// to cn-east at 7.2 (7.164 after spread). cn-east: a WeChat Pay-like payee and
/// an Alipay-like partner that can also pay, with a domestic CNY corridor.
fn mesh() -> (Region, Region) {
    let mut west = Region::new("us-west", 1);
    west.partner("paypal-us", PartnerRole::Payer, usd("0"));
    west.top_up("paypal-us", usd("10000"), "wire-1");
    west.routes();
    let corridor = corridor_id("USD:us-west->CNY:cn-east");
    west.ok(CommandBody::UpsertCorridor { corridor: corridor.clone(), terms: usd_cny_terms() }, T0);
    let rate = FxRate::new(USD, CNY, Rate::parse("7.2").unwrap(), T0, T0.plus_ms(DAY_MS)).unwrap();
    west.ok(CommandBody::SetFxRate { corridor, rate }, T0);

    let mut east = Region::new("cn-east", 2);
    east.partner("wechat-cn", PartnerRole::Payee, cny("0"));
    east.partner("alipay-cn", PartnerRole::Both, cny("100"));
    east.top_up("alipay-cn", cny("50000"), "wire-1");
    east.routes();
    let terms =
        CorridorTerms::new(BasisPoints::ZERO, FeeSchedule::free(CNY), cny("0.01"), cny("50000"), cny("1000000"))
            .unwrap();
    east.ok(CommandBody::UpsertCorridor { corridor: corridor_id("CNY:cn-east->CNY:cn-east"), terms }, T0);
    (west, east)
}

fn payer(name: &str) -> PayerDetails {
    PayerDetails {
        name: PayerField::new(name).unwrap(),
        account: PayerField::new(format!("{name}-account-0042")).unwrap(),
        reference: PayerField::new(format!("{name}-invoice-7")).unwrap(),
    }
}

fn request(partner: &str, key: &str, quote: &QuoteId, payee: &str, who: &str) -> TransferRequest {
    TransferRequest {
        partner: pid(partner),
        idempotency_key: IdempotencyKey::new(key).unwrap(),
        quote: quote.clone(),
        payee: qr(payee),
        payer: payer(who),
    }
}

fn quote_id(outcome: &Outcome) -> QuoteId {
    match outcome {
        Outcome::Quote(q) => q.id.clone(),
        other => panic!("expected a quote, got {other:?}"),
    }
}

fn transfer_view(outcome: &Outcome) -> TransferView {
    match outcome {
        Outcome::Transfer(t) => (**t).clone(),
        other => panic!("expected a transfer, got {other:?}"),
    }
}

/// Quote and create a cross-border transfer of `amount` from paypal-us.
fn pay(west: &mut Region, key: &str, amount: Money, now: Timestamp) -> Outcome {
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(amount), now));
    west.run(CommandBody::CreateTransfer(request("paypal-us", key, &quote, "wxp://f2f0shop1", "Alice Example")), now)
}

/// A cross-border payment of 100.00 USD from paypal-us (716.40 CNY to
/// wechat-cn, 1.30 USD fee), committed on both sides.
fn paid(west: &mut Region, east: &mut Region, key: &str, now: Timestamp) -> TransferView {
    let view = transfer_view(&pay(west, key, usd("100"), now));
    deliver_all(west, east, now);
    deliver_all(west, east, now);
    assert_eq!(west.transfer(&view.id).unwrap().view.state, CoordinatorState::Committed);
    view
}

/// Ship every outbox message of `from` to `to` and bring the answers back.
fn deliver_all(from: &mut Region, to: &mut Region, now: Timestamp) {
    let messages: Vec<OutboxMessage> = from.state.outbox_for(to.state.region()).cloned().collect();
    for message in messages {
        match message {
            OutboxMessage::Prepare(prepare) => {
                let transfer = prepare.transfer.clone();
                let Outcome::PrepareReply(reply) = to.run(CommandBody::Prepare(prepare), now) else {
                    panic!("prepare must be answered")
                };
                from.run(CommandBody::PrepareReplied { transfer, reply }, now);
            }
            OutboxMessage::Decision { transfer, decision, window } => {
                let decide = CommandBody::DecideInWindow { transfer: transfer.clone(), decision, window };
                assert_eq!(to.run(decide, now), Outcome::Acked);
                from.run(CommandBody::DecisionAcked { region: to.state.region().clone(), transfer }, now);
            }
            OutboxMessage::PrepareRefund(prepare) => {
                let transfer = prepare.refund.clone();
                let Outcome::PrepareReply(reply) = to.run(CommandBody::PrepareRefund(prepare), now) else {
                    panic!("a refund's prepare must be answered")
                };
                from.run(CommandBody::PrepareReplied { transfer, reply }, now);
            }
            OutboxMessage::RequestCancel(request) => {
                let transfer = request.cancel.clone();
                let Outcome::PrepareReply(reply) = to.run(CommandBody::RequestCancel(request), now) else {
                    panic!("a cancel must be answered")
                };
                from.run(CommandBody::PrepareReplied { transfer, reply }, now);
            }
        }
    }
}

// ---- scenarios --------------------------------------------------------------------------------

#[test]
fn a_cross_border_transfer_commits_on_both_sides_exactly_once() {
    let (mut west, mut east) = mesh();
    let created = transfer_view(&pay(&mut west, "order-1", usd("100"), T0));
    assert_eq!(created.state, CoordinatorState::Reserved);
    assert_eq!(created.priced.destination, cny("716.40"));
    assert_eq!(created.priced.total_debit, usd("101.30"));
    let available = west.position("paypal-us").available;
    assert_eq!(available.to_wire(), "9898.70");

    // Prepare, then the decision, each delivered twice: no second effect.
    deliver_all(&mut west, &mut east, T0.plus_ms(50));
    let after_prepare = east.state.clone();
    let Some(OutboxMessage::Decision { decision: Decision::Commit, .. }) = west.state.outbox().next().map(|(_, m)| m)
    else {
        panic!("a commit decision must be queued")
    };
    let prepare = east.participation(&created.id).unwrap().prepare.clone().unwrap();
    assert_eq!(
        east.run(CommandBody::Prepare(prepare.clone()), T0.plus_ms(60)),
        Outcome::PrepareReply(PrepareReply::Prepared)
    );
    assert_eq!(east.state.ledger(), after_prepare.ledger());
    deliver_all(&mut west, &mut east, T0.plus_ms(100));
    assert_eq!(west.state.outbox().count(), 0);
    let decide = CommandBody::Decide { transfer: created.id.clone(), decision: Decision::Commit };
    assert_eq!(east.run(decide, T0.plus_ms(110)), Outcome::Acked);
    assert_eq!(east.run(CommandBody::Prepare(prepare), T0.plus_ms(120)), Outcome::PrepareReply(PrepareReply::Prepared));

    let transfer = west.transfer(&created.id).unwrap();
    assert_eq!(transfer.view.state, CoordinatorState::Committed);
    assert_eq!(east.participation(&created.id).unwrap().state, ParticipantState::Committed);
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9898.70");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "716.40");
    // Both regions' clearing accounts mirror each other.
    let west_clearing = AccountId::new(AccountOwner::Clearing(region("cn-east")), USD);
    let east_clearing = AccountId::new(AccountOwner::Clearing(region("us-west")), CNY);
    assert_eq!(west.state.ledger().net_posted(&west_clearing).unwrap().to_wire(), "100.00");
    assert_eq!(east.state.ledger().net_posted(&east_clearing).unwrap().to_wire(), "-716.40");

    // Events: the payer saw reserved then committed; the payee was credited once.
    let kinds = |r: &Region, p: &str| -> Vec<EventKind> {
        r.state.events_after(&pid(p), 0, 100, &r.history).unwrap().into_iter().map(|e| e.kind).collect()
    };
    assert_eq!(kinds(&west, "paypal-us"), [EventKind::Reserved, EventKind::Committed]);
    assert_eq!(kinds(&east, "wechat-cn"), [EventKind::Credited]);
}

#[test]
fn the_payee_region_never_stores_payer_personal_data() {
    let (mut west, mut east) = mesh();
    pay(&mut west, "order-1", usd("25"), T0);
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    let both_tiers = |r: &Region| {
        let history: Vec<_> = r.history.records().map(|(_, record)| record).collect();
        format!("{}\n{}", serde_json::to_string(&r.state).unwrap(), serde_json::to_string(&history).unwrap())
    };
    let (west_bytes, east_bytes) = (both_tiers(&west), both_tiers(&east));
    for pii in ["Alice Example", "Alice Example-account-0042", "Alice Example-invoice-7"] {
        assert!(west_bytes.contains(pii), "the payer region keeps {pii:?}");
        assert!(!east_bytes.contains(pii), "the payee region must not hold {pii:?}");
    }
}

#[test]
fn a_same_region_transfer_completes_in_one_command() {
    let (_, mut east) = mesh();
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Destination(cny("88.88")), T0));
    let body = CommandBody::CreateTransfer(request("alipay-cn", "k1", &quote, "wxp://f2f0shop9", "Bo"));
    let view = transfer_view(&east.run(body, T0));
    assert_eq!(view.state, CoordinatorState::Committed);
    assert_eq!(view.deadline, None);
    assert_eq!(east.position("alipay-cn").posted.to_wire(), "49911.12");
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "88.88");
    assert_eq!(east.state.outbox().count(), 0);
    let credited = east.state.events_after(&pid("wechat-cn"), 0, 10, &east.history).unwrap();
    assert_eq!(credited.len(), 1);
    assert_eq!(credited[0].amount, cny("88.88"));
}

/// History as of a batch, counting the idempotency lookups it answers.
struct Counted<'a> {
    inner: &'a dyn Recall,
    lookups: std::cell::Cell<usize>,
    told: std::cell::Cell<usize>,
}

impl Recall for Counted<'_> {
    fn idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Option<IdempotencyRecord> {
        self.lookups.set(self.lookups.get() + 1);
        self.inner.idempotency(partner, key)
    }
    fn transfer(&self, id: &TransferId) -> Option<Transfer> {
        self.inner.transfer(id)
    }
    fn participation(&self, id: &TransferId) -> Option<Participation> {
        self.inner.participation(id)
    }
    fn top_up(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        self.inner.top_up(reference)
    }
    fn fund_out(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        self.inner.fund_out(reference)
    }
    fn refund(&self, id: &TransferId) -> Option<Refund> {
        self.inner.refund(id)
    }
    fn refund_participation(&self, id: &TransferId) -> Option<RefundParticipation> {
        self.inner.refund_participation(id)
    }
    fn window(&self, number: u64) -> Option<SettlementWindow> {
        self.inner.window(number)
    }
    fn refunded(&self, transfer: &TransferId) -> Option<RefundTotals> {
        self.inner.refunded(transfer)
    }
    fn unrecorded(&self, _partner: &PartnerId, _key: &IdempotencyKey) {
        // Told instead of asked: counted apart, as a negative lookup.
        self.told.set(self.told.get() + 1);
    }
}

impl Region {
    /// Apply `bodies` as one batch at the next log index; their outcomes,
    /// how many idempotency keys were looked up in history, and of how
    /// many history was told that they have no record.
    fn run_counted(&mut self, bodies: Vec<CommandBody>, now: Timestamp) -> (Vec<Outcome>, (usize, usize)) {
        let commands: Vec<Command> = bodies.into_iter().map(|body| Command { id: self.next_id(), body }).collect();
        let batch = Batch::new(now, commands).unwrap();
        self.index += 1;
        let (applied, lookups) = {
            let at = self.history.at(self.index);
            let counted = Counted { inner: &at, lookups: Default::default(), told: Default::default() };
            let applied = self.state.apply_batch(self.index, &batch, &counted);
            (applied, (counted.lookups.get(), counted.told.get()))
        };
        self.history.write(self.index, applied.history);
        if let Err(broken) = self.state.verify() {
            panic!("invariant broken after {batch:?}: {broken}");
        }
        (applied.outcomes, lookups)
    }
}

/// A request under `key` from paypal-us's payer Alice to shop 1, at a
/// 10 USD quote made for it in `west` at `T0`.
fn quoted_for_alice(west: &mut Region, key: &str) -> TransferRequest {
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("10")), T0));
    request("paypal-us", key, &quote, "wxp://f2f0shop1", "Alice Example")
}

fn fresh(request: TransferRequest, fresh_through: u64) -> CommandBody {
    CommandBody::CreateFreshTransfer { request, fresh_through }
}

#[test]
fn a_fresh_key_is_not_looked_up_in_history_and_still_never_used_twice() {
    let (mut west, _) = mesh();
    let first = quoted_for_alice(&mut west, "fresh-1");
    // The leader looked the key up as of the last batch applied: no record.
    let looked = west.index;

    let (outcomes, lookups) = west.run_counted(vec![fresh(first.clone(), looked)], T0);
    let created = transfer_view(&outcomes[0]);
    assert_eq!(lookups, (0, 1), "a vouched fresh key needs no lookup in history, which is told so");

    // The same claim again (the leader looked before the first was
    // applied): the key is among the recent ones, so history answers.
    let (outcomes, lookups) = west.run_counted(vec![fresh(first.clone(), looked)], T0);
    assert_eq!(transfer_view(&outcomes[0]).id, created.id, "replayed, not a second transfer");
    assert_eq!(lookups, (1, 0));

    // A replica that restarted since holds none of the recent batches: it
    // cannot vouch for the claim and looks in history, with the same answer.
    // Its state comes back from an image, which does not carry the cache.
    let mut restarted = west.clone();
    restarted.state = serde_json::from_slice(&serde_json::to_vec(&west.state).unwrap()).unwrap();
    assert_eq!(restarted.state, west.state, "equal in all it decides with");
    let short = recent::short(&first.partner, &first.idempotency_key);
    assert!(!restarted.state.recent.holds(short), "the image carried the cache");
    let (outcomes, lookups) = restarted.run_counted(vec![fresh(first.clone(), looked)], T0);
    assert_eq!(transfer_view(&outcomes[0]).id, created.id);
    assert_eq!(lookups, (1, 0));
    // ... and so does one given a claim about a batch not applied before it.
    let (outcomes, lookups) = west.run_counted(vec![fresh(first.clone(), west.index + 1)], T0);
    assert_eq!(transfer_view(&outcomes[0]).id, created.id);
    assert_eq!(lookups, (1, 0));

    // Two fresh requests under one key in one batch: the second is the
    // first's retry, answered from the batch's own record.
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("10")), T0));
    let second = request("paypal-us", "fresh-2", &quote, "wxp://f2f0shop1", "Alice Example");
    let other = request("paypal-us", "fresh-2", &quote, "wxp://f2f0shop1", "Bob Example");
    let batch = vec![fresh(second.clone(), west.index), fresh(second, west.index), fresh(other, west.index)];
    let (outcomes, lookups) = west.run_counted(batch, T0);
    assert_eq!(lookups, (0, 1), "the first is told, the others answered by the batch's own record");
    assert_eq!(transfer_view(&outcomes[0]).id, transfer_view(&outcomes[1]).id);
    assert_eq!(outcomes[2], Outcome::Rejected(RejectCode::IdempotencyConflict));
    assert_eq!(west.state.partner_usage(&pid("paypal-us")).transfers_in_flight, 2, "two transfers, not four");

    // A plain request is looked up, as before.
    let plain = quoted_for_alice(&mut west, "plain-1");
    let (_, lookups) = west.run_counted(vec![CommandBody::CreateTransfer(plain)], T0);
    assert_eq!(lookups, (1, 0));
}

/// A copy of the state (the one published to readers, a checkpoint's)
/// starts without the recent keys: were it to apply, it would look a fresh
/// key up in history where the original takes the leader's word, and
/// decide the same.
#[test]
fn a_copy_of_the_state_looks_a_fresh_key_up_and_decides_alike() {
    let (mut west, _) = mesh();
    let first = quoted_for_alice(&mut west, "copied-1");
    // Claims about the batches before this one: commands the leader looked
    // up then and proposed later.
    let looked = west.index;
    west.run_counted(vec![fresh(first.clone(), looked)], T0);
    let short = recent::short(&first.partner, &first.idempotency_key);
    let mut copy = west.clone();
    assert!(west.state.recent.holds(short));
    assert!(!copy.state.recent.holds(short), "a copy starts with no recent keys");
    assert_eq!(copy.state, west.state, "equal in all it decides with");

    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("10")), T0));
    copy.run(
        CommandBody::CreateQuote {
            partner: pid("paypal-us"),
            payee: qr("wxp://f2f0shop1"),
            amount: QuoteAmount::Source(usd("10")),
        },
        T0,
    );
    let second = request("paypal-us", "copied-2", &quote, "wxp://f2f0shop1", "Alice Example");
    let (original, vouched) = west.run_counted(vec![fresh(second.clone(), looked), fresh(first.clone(), looked)], T0);
    let (copied, looked_up) = copy.run_counted(vec![fresh(second, looked), fresh(first, looked)], T0);
    assert_eq!(vouched, (1, 1), "the original takes the claim for the new key, and looks up the one it recorded since");
    assert_eq!(looked_up, (2, 0), "the copy holds none of the batches since the claim: it looks both up");
    assert_eq!(copied, original);
    assert_eq!(copy.state, west.state);
}

/// A one-call payment's key, vouched fresh by the leader, is not looked up
/// in history either, and is still answered once.
#[test]
fn a_fresh_payment_key_is_not_looked_up_in_history_and_still_never_used_twice() {
    let (mut west, _) = mesh();
    let payment = |key: &str, name: &str| crate::command::PaymentRequest {
        partner: pid("paypal-us"),
        idempotency_key: IdempotencyKey::new(key).unwrap(),
        payee: qr("wxp://f2f0shop1"),
        amount: QuoteAmount::Source(usd("10")),
        max_total_debit: None,
        payer: payer(name),
    };
    let fresh = |request, fresh_through| CommandBody::CreateFreshPayment { request, fresh_through };
    let looked = west.index;
    let (outcomes, lookups) = west.run_counted(vec![fresh(payment("pay-1", "Alice"), looked)], T0);
    let created = transfer_view(&outcomes[0]);
    assert_eq!(lookups, (0, 1), "a vouched fresh key needs no lookup in history, which is told so");
    // Claimed fresh again: the key is among the recent ones, so history answers.
    let (outcomes, lookups) = west.run_counted(vec![fresh(payment("pay-1", "Alice"), looked)], T0);
    assert_eq!((transfer_view(&outcomes[0]).id, lookups), (created.id.clone(), (1, 0)));
    // Two under one key in one batch: one payment; another body conflicts.
    let batch = vec![
        fresh(payment("pay-2", "Alice"), west.index),
        fresh(payment("pay-2", "Alice"), west.index),
        fresh(payment("pay-2", "Bob"), west.index),
    ];
    let (outcomes, lookups) = west.run_counted(batch, T0);
    assert_eq!(lookups, (0, 1));
    assert_eq!(transfer_view(&outcomes[0]).id, transfer_view(&outcomes[1]).id);
    assert_eq!(outcomes[2], Outcome::Rejected(RejectCode::IdempotencyConflict));
    // A plain payment is looked up, as before.
    let (_, lookups) = west.run_counted(vec![CommandBody::CreatePayment(payment("pay-3", "Alice"))], T0);
    assert_eq!(lookups, (1, 0));
}

#[test]
fn idempotency_keys_return_the_original_outcome_or_conflict() {
    let (mut west, mut east) = mesh();
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("10")), T0));
    let body = |who: &str| CommandBody::CreateTransfer(request("paypal-us", "order-7", &quote, "wxp://f2f0shop1", who));
    let first = west.run(body("Alice"), T0);
    transfer_view(&first);
    // The transfer moves on; a retry still gets the original outcome, and no second transfer.
    deliver_all(&mut west, &mut east, T0);
    let ledger = west.state.ledger().clone();
    assert_eq!(west.run(body("Alice"), T0.plus_ms(1_000)), first);
    assert_eq!(west.state.ledger(), &ledger);
    assert_eq!(west.state.transfers().count() + west.history.transfers().count(), 1);
    assert_eq!(west.run(body("Mallory"), T0), Outcome::Rejected(RejectCode::IdempotencyConflict));
    // The read-only replay agrees with applying the request again.
    let CommandBody::CreateTransfer(original) = body("Alice") else { unreachable!() };
    assert_eq!(west.state.replay_transfer_request(&original, &west.history), Some(first.clone()));
    let CommandBody::CreateTransfer(other) = body("Mallory") else { unreachable!() };
    assert_eq!(
        west.state.replay_transfer_request(&other, &west.history),
        Some(Outcome::Rejected(RejectCode::IdempotencyConflict))
    );
    let mut unseen = original.clone();
    unseen.idempotency_key = IdempotencyKey::new("never-used").unwrap();
    assert_eq!(west.state.replay_transfer_request(&unseen, &west.history), None);
    // Another partner may use the same key string.
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop2", QuoteAmount::Source(cny("5")), T0));
    let other = CommandBody::CreateTransfer(request("alipay-cn", "order-7", &quote, "wxp://f2f0shop2", "Bo"));
    transfer_view(&east.run(other, T0));
}

#[test]
fn a_key_used_again_after_its_window_answers_its_new_payment_when_retried() {
    let (_, mut east) = mesh();
    let pay = |east: &mut Region, now: Timestamp| {
        let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Source(cny("1")), now));
        let body = request("alipay-cn", "order-1", &quote, "wxp://f2f0shop9", "Bo");
        (east.run(CommandBody::CreateTransfer(body.clone()), now), body)
    };
    let (first, _) = pay(&mut east, T0);
    // A month and a day later, outside the window, the partner uses the key
    // for a new payment: a new transfer.
    let later = T0.plus_ms(IDEMPOTENCY_RETENTION_MS + DAY_MS);
    // As the leader looks then: a record past the window, so the key is not
    // proposed as never recorded (its record stays in history).
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Source(cny("1")), later));
    let look = |key: &str| {
        let probe = request("alipay-cn", key, &quote, "wxp://f2f0shop9", "Bo");
        east.state.look_up_transfer_request(&probe, &east.history)
    };
    assert_eq!(look("order-1"), KeyLookup::Expired);
    assert_eq!(look("order-2"), KeyLookup::Unrecorded);
    let (second, body) = pay(&mut east, later);
    assert_eq!(transfer_view(&second).state, CoordinatorState::Committed);
    assert_ne!(transfer_view(&second).id, transfer_view(&first).id);
    // Its retry is answered with that payment, not refused and not paid again.
    let ledger = east.state.ledger().clone();
    assert_eq!(east.state.replay_transfer_request(&body, &east.history), Some(second.clone()));
    assert_eq!(east.run(CommandBody::CreateTransfer(body), later.plus_ms(1_000)), second);
    assert_eq!(east.state.ledger(), &ledger);
}

#[test]
fn a_top_up_reference_used_again_after_its_window_is_credited_once_however_often_retried() {
    let (_, mut east) = mesh();
    let top_up = |amount: &str| CommandBody::TopUp {
        partner: pid("alipay-cn"),
        amount: cny(amount),
        reference: TopUpRef::new("wire-9").unwrap(),
    };
    east.ok(top_up("100"), T0);
    // Past the window a reference names a new top-up; its retries repeat it.
    let later = T0.plus_ms(TOP_UP_RETENTION_MS + DAY_MS);
    east.ok(top_up("200"), later);
    let ledger = east.state.ledger().clone();
    east.ok(top_up("200"), later.plus_ms(1_000));
    assert_eq!(east.state.ledger(), &ledger, "the retry credited the partner again");
    assert_eq!(east.run(top_up("300"), later.plus_ms(2_000)), Outcome::Rejected(RejectCode::IdempotencyConflict));
}

#[test]
fn a_repeated_command_id_is_applied_once() {
    let (mut west, _) = mesh();
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("10")), T0));
    let command = Command {
        id: west.next_id(),
        body: CommandBody::CreateTransfer(request("paypal-us", "k", &quote, "wxp://f2f0shop1", "A")),
    };
    let first = west.apply(&command, T0);
    let after = west.state.clone();
    assert_eq!(west.apply(&command, T0), first);
    assert_eq!(west.state, after, "a duplicate command must change nothing");
    // A quote command repeated does not make a second quote.
    let quote_command = Command {
        id: west.next_id(),
        body: CommandBody::CreateQuote {
            partner: pid("paypal-us"),
            payee: qr("wxp://x1x1"),
            amount: QuoteAmount::Source(usd("3")),
        },
    };
    let quoted = west.apply(&quote_command, T0);
    assert_eq!(west.apply(&quote_command, T0), quoted);
    assert_eq!(west.state.next_quote, 3);
}

#[test]
fn a_session_forgets_old_outcomes_and_refuses_their_ids() {
    let mut region = Region::new("us-west", 9);
    let first = Command { id: region.next_id(), body: CommandBody::Tick };
    region.apply(&first, T0);
    for _ in 0..SESSION_OUTCOMES_MAX {
        region.run(CommandBody::Tick, T0);
    }
    assert_eq!(region.apply(&first, T0), Outcome::Rejected(RejectCode::StaleCommand));
    // Another session is unaffected.
    let other = Command { id: CommandId { session: 10, sequence: 1 }, body: CommandBody::Tick };
    assert!(matches!(region.apply(&other, T0), Outcome::Ticked(_)));
}

#[test]
fn a_transfer_not_prepared_by_its_deadline_aborts_and_releases_the_payer() {
    let (mut west, mut east) = mesh();
    let view = transfer_view(&pay(&mut west, "k", usd("100"), T0));
    let deadline = view.deadline.unwrap();
    let Some((_, OutboxMessage::Prepare(late_prepare))) =
        west.state.outbox().next().map(|(r, m)| (r.clone(), m.clone()))
    else {
        panic!("prepare queued")
    };
    // A tick before the deadline does nothing; at the deadline it aborts.
    assert_eq!(west.run(CommandBody::Tick, deadline.minus_ms(1)), Outcome::Ticked(TickReport::default()));
    assert!(matches!(west.run(CommandBody::Tick, deadline), Outcome::Ticked(TickReport { aborted: 1, .. })));
    let transfer = west.transfer(&view.id).unwrap();
    assert_eq!(transfer.view.state, CoordinatorState::Aborted);
    assert_eq!(transfer.view.reason, Some(RejectCode::DeadlineExceeded));
    assert_eq!(west.position("paypal-us").available.to_wire(), "10000.00");
    // The abort overtakes the prepare: a tombstone refuses the late prepare.
    deliver_all(&mut west, &mut east, deadline);
    assert_eq!(east.participation(&view.id).unwrap().state, ParticipantState::Tombstone);
    let reply = east.run(CommandBody::Prepare(late_prepare), deadline.plus_ms(5));
    assert_eq!(reply, Outcome::PrepareReply(PrepareReply::Rejected(RejectCode::AbortedBeforePrepare)));
    let late = CommandBody::PrepareReplied {
        transfer: view.id.clone(),
        reply: PrepareReply::Rejected(RejectCode::AbortedBeforePrepare),
    };
    assert_eq!(west.run(late, deadline.plus_ms(6)), Outcome::Done);
    assert_eq!(east.position("wechat-cn").pending_credits.to_wire(), "0.00");
    let kinds: Vec<EventKind> =
        west.state.events_after(&pid("paypal-us"), 0, 10, &west.history).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Reserved, EventKind::Aborted]);
}

#[test]
fn a_prepared_reply_after_the_deadline_is_aborted_on_both_sides() {
    let (mut west, mut east) = mesh();
    let view = transfer_view(&pay(&mut west, "k", usd("100"), T0));
    let deadline = view.deadline.unwrap();
    let Some(OutboxMessage::Prepare(prepare)) = west.state.outbox().next().map(|(_, m)| m.clone()) else {
        panic!("prepare queued")
    };
    // Prepared just in time, but the reply reaches the coordinator at the deadline.
    let reply = east.run(CommandBody::Prepare(prepare), deadline.minus_ms(1));
    assert_eq!(reply, Outcome::PrepareReply(PrepareReply::Prepared));
    let late_reply = CommandBody::PrepareReplied { transfer: view.id.clone(), reply: PrepareReply::Prepared };
    assert_eq!(west.run(late_reply, deadline), Outcome::Done);
    let transfer = west.transfer(&view.id).unwrap();
    assert_eq!(
        (transfer.view.state, transfer.view.reason),
        (CoordinatorState::Aborted, Some(RejectCode::DeadlineExceeded))
    );
    deliver_all(&mut west, &mut east, deadline.plus_ms(1));
    assert_eq!(east.participation(&view.id).unwrap().state, ParticipantState::Aborted);
    assert_eq!(east.position("wechat-cn").posted.to_wire(), "0.00");
    assert_eq!(east.position("wechat-cn").pending_credits.to_wire(), "0.00");
    assert_eq!(west.position("paypal-us").posted.to_wire(), "10000.00");
}

#[test]
fn a_first_prepare_after_its_deadline_is_refused() {
    let (mut west, mut east) = mesh();
    let view = transfer_view(&pay(&mut west, "k", usd("100"), T0));
    let deadline = view.deadline.unwrap();
    // Delivered at the deadline (or a day later, after any tombstone is gone).
    deliver_all(&mut west, &mut east, deadline);
    let participation = east.participation(&view.id).unwrap();
    assert_eq!(
        (participation.state, participation.reason),
        (ParticipantState::Aborted, Some(RejectCode::DeadlineExceeded))
    );
    let transfer = west.transfer(&view.id).unwrap();
    assert_eq!(
        (transfer.view.state, transfer.view.reason),
        (CoordinatorState::Aborted, Some(RejectCode::DeadlineExceeded))
    );
    assert_eq!(east.position("wechat-cn").pending_credits.to_wire(), "0.00");
}

#[test]
fn a_refused_prepare_aborts_the_transfer_with_the_payee_regions_reason() {
    let (mut west, mut east) = mesh();
    east.ok(CommandBody::SetPartnerStatus { partner: pid("wechat-cn"), status: BusinessStatus::Suspended }, T0);
    let view = transfer_view(&pay(&mut west, "k", usd("100"), T0));
    deliver_all(&mut west, &mut east, T0);
    let transfer = west.transfer(&view.id).unwrap();
    assert_eq!(
        (transfer.view.state, transfer.view.reason),
        (CoordinatorState::Aborted, Some(RejectCode::PartnerSuspended))
    );
    assert_eq!(west.state.outbox().count(), 0, "a refused prepare needs no decision message");
    assert_eq!(west.position("paypal-us").available.to_wire(), "10000.00");
    assert_eq!(east.participation(&view.id).unwrap().state, ParticipantState::Aborted);
}

#[test]
fn insufficient_position_records_an_aborted_transfer() {
    let (mut west, _) = mesh();
    let view = transfer_view(&pay(&mut west, "k", usd("5000"), T0));
    assert_eq!(view.state, CoordinatorState::Reserved);
    let view = transfer_view(&pay(&mut west, "k2", usd("5000"), T0));
    assert_eq!((view.state, view.reason), (CoordinatorState::Aborted, Some(RejectCode::InsufficientPosition)));
    assert_eq!(west.position("paypal-us").available.to_wire(), "4990.00");
    // The corridor's daily usage counts only the reserved transfer.
    let corridor = west.state.corridor(&corridor_id("USD:us-west->CNY:cn-east")).unwrap();
    assert_eq!(corridor.usage.used, usd("5000"));
}

#[test]
fn protocol_violations_are_refused_without_effect() {
    let (mut west, mut east) = mesh();
    let ghost = TransferId::new(region("us-west"), 999);
    let before = east.state.ledger().clone();
    let commit = CommandBody::Decide { transfer: ghost.clone(), decision: Decision::Commit };
    assert_eq!(east.run(commit, T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    assert_eq!(east.state.ledger(), &before);
    let view = transfer_view(&pay(&mut west, "k", usd("10"), T0));
    deliver_all(&mut west, &mut east, T0);
    // Committed on the coordinator; a contradicting refusal now is a violation.
    let contradiction = CommandBody::PrepareReplied {
        transfer: view.id.clone(),
        reply: PrepareReply::Rejected(RejectCode::PayeeNotFound),
    };
    assert_eq!(west.run(contradiction, T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    let abort_after_commit = CommandBody::Decide { transfer: view.id.clone(), decision: Decision::Abort };
    deliver_all(&mut west, &mut east, T0);
    assert_eq!(east.run(abort_after_commit, T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    let unknown = CommandBody::PrepareReplied { transfer: ghost, reply: PrepareReply::Prepared };
    assert_eq!(west.run(unknown, T0), Outcome::Rejected(RejectCode::TransferNotFound));
    // The same transfer id with other content is refused and changes nothing.
    let mut forged = east.participation(&view.id).unwrap().prepare.clone().unwrap();
    forged.destination = cny("9999");
    let ledger = east.state.ledger().clone();
    let reply = east.run(CommandBody::Prepare(forged), T0);
    assert_eq!(reply, Outcome::PrepareReply(PrepareReply::Rejected(RejectCode::ProtocolViolation)));
    assert_eq!(east.state.ledger(), &ledger);
}

#[test]
fn tick_purges_expired_and_retained_records_within_its_budget() {
    let (mut west, mut east) = mesh();
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("10")), T0));
    pay(&mut west, "k", usd("10"), T0);
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    assert!(west.state.quote(&quote).is_some());
    assert!(!west.state.tick_due(T0), "nothing is due yet");
    let expired = T0.plus_ms(QUOTE_TTL_MS);
    assert!(!west.state.tick_due(expired), "an expired quote is remembered a while");
    west.run(CommandBody::Tick, expired);
    assert!(west.state.quote(&quote).is_some(), "an expired quote is remembered a while");
    let forgotten = expired.plus_ms(QUOTE_RETENTION_AFTER_EXPIRY_MS);
    assert!(west.state.tick_due(forgotten));
    west.run(CommandBody::Tick, forgotten);
    assert!(west.state.quote(&quote).is_none(), "expired quotes are purged");
    // Finished work left memory when it finished; history holds it.
    assert_eq!(west.state.transfers().count(), 0);
    assert_eq!(east.state.participations().count(), 0);
    assert_eq!((west.history.transfers().count(), east.history.participations().count()), (1, 1));
    assert!(west.state.ledger().entries().next().is_none(), "no resolved entry is held");
    // Balances stay.
    // 10.00 plus a fee of 0.30 + 1 %.
    assert_eq!(west.position("paypal-us").posted.to_wire(), "9989.60");
    // A decision outlives the window in which history answers for its
    // transfer while the payee region is unreachable; the late ack still
    // clears it from the outbox.
    let later = T0.plus_ms(2 * DAY_MS);
    let rate = FxRate::new(USD, CNY, Rate::parse("7.2").unwrap(), later, later.plus_ms(DAY_MS)).unwrap();
    west.ok(CommandBody::SetFxRate { corridor: corridor_id("USD:us-west->CNY:cn-east"), rate }, later);
    let view = transfer_view(&pay(&mut west, "k-late", usd("10"), later));
    west.run(CommandBody::Tick, view.deadline.unwrap());
    assert_eq!(west.state.outbox().count(), 1);
    assert!(west.state.transfer(&view.id).is_none(), "the aborted transfer left memory");
    let much_later = view.deadline.unwrap().plus_ms(FINISHED_TRANSFER_RECALL_MS + 1);
    assert_eq!(west.state.outbox().count(), 1, "its decision still waits");
    deliver_all(&mut west, &mut east, much_later);
    assert_eq!(west.state.outbox().count(), 0, "the late ack cleared it");
    assert_eq!(east.history.participation(&view.id).unwrap().state, ParticipantState::Tombstone);
    east.state.verify().unwrap();

    // The work of one tick is bounded.
    let mut busy = Region::new("us-west", 77);
    for n in 0..(TICK_WORK_MAX as u64 + 10) {
        busy.state.sessions.insert(1_000 + n, Session::default());
    }
    let Outcome::Ticked(report) = busy.run(CommandBody::Tick, later) else { panic!("tick") };
    assert_eq!(report.purged as usize, TICK_WORK_MAX);
    assert!(busy.state.tick_due(later), "the rest waits for the next tick");
    busy.run(CommandBody::Tick, later);
    assert!(!busy.state.tick_due(later));
}

/// `count` same-region payments of 1.00 CNY from alipay-cn to wechat-cn in
/// east at `now`, quoted and paid in batches of up to 500 commands.
fn pay_domestic(east: &mut Region, count: usize, now: Timestamp, key_prefix: &str) {
    let mut done = 0;
    while done < count {
        let n = (count - done).min(500);
        let quotes: Vec<Command> = (0..n)
            .map(|_| {
                let body = CommandBody::CreateQuote {
                    partner: pid("alipay-cn"),
                    payee: qr("wxp://f2f0shop9"),
                    amount: QuoteAmount::Source(cny("1")),
                };
                Command { id: east.next_id(), body }
            })
            .collect();
        let quoted = east.apply_batch(&Batch::new(now, quotes).unwrap());
        let payments: Vec<Command> = quoted
            .iter()
            .enumerate()
            .map(|(i, quote)| {
                let key = format!("{key_prefix}-{}", done + i);
                let body =
                    CommandBody::CreateTransfer(request("alipay-cn", &key, &quote_id(quote), "wxp://f2f0shop9", "Bo"));
                Command { id: east.next_id(), body }
            })
            .collect();
        for outcome in east.apply_batch(&Batch::new(now, payments).unwrap()) {
            assert_eq!(transfer_view(&outcome).state, CoordinatorState::Committed);
        }
        done += n;
    }
    east.state.verify().unwrap();
}

#[test]
fn a_transfer_stays_readable_and_its_key_answered_long_after_memory_let_it_go() {
    let (mut west, mut east) = mesh();
    let old = pay(&mut west, "old-order", usd("10"), T0);
    let old_view = transfer_view(&old);
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    let hot_after_one = postcard::to_stdvec(&west.state).unwrap().len();
    // Two days and 600 transfers later (a day's retention in memory would
    // have forgotten it), with housekeeping run on the way.
    for day in 1..=2u64 {
        let now = T0.plus_ms(day * DAY_MS);
        let rate = FxRate::new(USD, CNY, Rate::parse("7.2").unwrap(), now, now.plus_ms(DAY_MS)).unwrap();
        west.ok(CommandBody::SetFxRate { corridor: corridor_id("USD:us-west->CNY:cn-east"), rate }, now);
        for n in 0..300 {
            pay(&mut west, &format!("day-{day}-{n}"), usd("1"), now);
        }
        deliver_all(&mut west, &mut east, now);
        deliver_all(&mut west, &mut east, now);
        west.run(CommandBody::Tick, now.plus_ms(QUOTE_TTL_MS + QUOTE_RETENTION_AFTER_EXPIRY_MS));
    }
    // Memory holds no finished work: the hot state is no larger than after
    // one transfer (its sessions' remembered outcomes aside).
    assert_eq!(west.state.transfers().count(), 0);
    let mut hot = west.state.clone();
    hot.sessions = west.state.sessions.clone().into_iter().map(|(id, _)| (id, Session::default())).collect();
    assert!(postcard::to_stdvec(&hot).unwrap().len() <= hot_after_one + 64, "the hot state grew with finished work");
    // The old transfer is read, listed first, and its key still answers.
    let found = west.state.transfer_for(&pid("paypal-us"), &old_view.id, &west.history).expect("still readable");
    let PartnerTransfer::Coordinated(found) = found else { panic!("coordinated here") };
    assert_eq!(found.view.state, CoordinatorState::Committed);
    let first = west.state.transfers_of(&pid("paypal-us"), None, 1, &west.history);
    assert!(matches!(&first[0].1, PartnerTransfer::Coordinated(t) if t.view.id == old_view.id));
    let listed = west.state.transfers_of(&pid("paypal-us"), None, 1_000, &west.history);
    assert_eq!(listed.len(), 601);
    let retry = request("paypal-us", "old-order", &old_view.quote, "wxp://f2f0shop1", "Alice Example");
    let later = T0.plus_ms(2 * DAY_MS + 1_000);
    assert_eq!(west.run(CommandBody::CreateTransfer(retry.clone()), later), old);
    assert_eq!(west.state.replay_transfer_request(&retry, &west.history), Some(old.clone()));
    // Past the idempotency window the key is a new request (here refused:
    // its quote is long gone).
    let past = T0.plus_ms(IDEMPOTENCY_RETENTION_MS + 1);
    assert_eq!(
        west.run(CommandBody::CreateTransfer(retry.clone()), past),
        Outcome::Rejected(RejectCode::QuoteNotFound)
    );
    // An operator lengthens the region's window to 90 days: the key, still
    // in history, answers again with the first outcome; at 91 days it is new.
    let set = |days| CommandBody::SetRegionSetting(RegionSetting::IdempotencyRetentionDays(days));
    for refused in [0, IDEMPOTENCY_RETENTION_DAYS_MAX + 1] {
        assert_eq!(west.run(set(refused), past), Outcome::Rejected(RejectCode::ProtocolViolation));
    }
    assert_eq!(west.state.settings().idempotency_retention_days(), 30);
    west.ok(set(90), past);
    assert_eq!(west.state.settings().idempotency_retention_ms(), 90 * DAY_MS);
    assert_eq!(west.run(CommandBody::CreateTransfer(retry.clone()), past), old);
    // Shortened to one day, the 30-day-old key is forgotten at once.
    let mut short = west.clone();
    short.ok(set(1), past);
    assert_eq!(short.state.settings().idempotency_retention_days(), 1);
    assert_eq!(
        short.run(CommandBody::CreateTransfer(retry.clone()), past),
        Outcome::Rejected(RejectCode::QuoteNotFound)
    );
    let after = T0.plus_ms(91 * DAY_MS);
    assert_eq!(west.run(CommandBody::CreateTransfer(retry), after), Outcome::Rejected(RejectCode::QuoteNotFound));
}

#[test]
fn an_event_stream_resumes_gap_free_from_a_cursor_older_than_100_000_events() {
    let (_, mut east) = mesh();
    east.top_up("alipay-cn", cny("150000"), "wire-2");
    pay_domestic(&mut east, 100_050, T0, "k");
    assert_eq!(east.state.last_cursor(&pid("wechat-cn")), 100_050);
    let mut cursor = 0;
    let mut read = 0;
    loop {
        let events = east.state.events_after(&pid("wechat-cn"), cursor, 7_000, &east.history).unwrap();
        let Some(last) = events.last() else { break };
        for event in &events {
            assert_eq!(event.cursor, cursor + 1, "no gap");
            cursor = event.cursor;
        }
        read += events.len();
        assert_eq!(cursor, last.cursor);
    }
    assert_eq!(read, 100_050);
}

#[test]
fn an_account_statement_sums_to_the_balance_change_with_running_balances() {
    let (mut west, mut east) = mesh();
    let account = AccountId::new(AccountOwner::Partner(pid("paypal-us")), USD);
    let before = west.state.ledger().account(&account).unwrap().balances();
    let from_index = west.index;
    for n in 0..5 {
        pay(&mut west, &format!("s-{n}"), usd("10"), T0);
    }
    deliver_all(&mut west, &mut east, T0);
    deliver_all(&mut west, &mut east, T0);
    west.top_up("paypal-us", usd("50"), "wire-2");
    // A payment refused at creation moves nothing.
    let quote = quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("5000")), T0));
    let poor = request("paypal-us", "s-big", &quote, "wxp://f2f0shop1", "Al");
    let poor_2 = request(
        "paypal-us",
        "s-big-2",
        &quote_id(&west.quote("paypal-us", "wxp://f2f0shop1", QuoteAmount::Source(usd("5000")), T0)),
        "wxp://f2f0shop1",
        "Al",
    );
    west.run(CommandBody::CreateTransfer(poor), T0);
    west.run(CommandBody::CreateTransfer(poor_2), T0);
    let after = west.state.ledger().account(&account).unwrap().balances();
    let statement: Vec<Movement> = west
        .history
        .records()
        .filter(|(index, _)| *index > from_index)
        .filter_map(|(_, record)| match record {
            Record::Movement(m) if m.debit == account || m.credit == account => Some((**m).clone()),
            _ => None,
        })
        .collect();
    // Five payments reserved and posted (principal and fee), the top-up,
    // and the first large payment's two reservations; the second large one
    // was refused and moved nothing.
    assert_eq!(statement.len(), 5 * 4 + 1 + 2);
    let mut running = before;
    for movement in &statement {
        let units = u128::from(movement.amount.units());
        let debit = movement.debit == account;
        let (pending, posted) = if debit {
            (&mut running.debits_pending, &mut running.debits_posted)
        } else {
            (&mut running.credits_pending, &mut running.credits_posted)
        };
        match movement.kind {
            MovementKind::Post => *posted += units,
            MovementKind::Reserve => *pending += units,
            MovementKind::PostPending => {
                *pending -= units;
                *posted += units;
            }
            MovementKind::VoidPending => *pending -= units,
        }
        let shown = if debit { movement.debit_after } else { movement.credit_after };
        assert_eq!(shown, running, "the balances after {:?}", movement.entry);
    }
    assert_eq!(running, after, "the statement's movements sum to the balance change");
}

#[test]
fn event_streams_resume_from_any_cursor_history_holds_and_report_deleted_ones() {
    // A partner with 1,005 events whose first five were deleted by retention.
    let mut state = State::new(region("us-west"));
    let mut history = MemoryHistory::new();
    let transfer = TransferId::new(region("us-west"), 1);
    let events: Vec<Record> = (6..=1_005)
        .map(|cursor| Record::Event {
            partner: pid("p"),
            event: Event {
                cursor,
                at: T0,
                transfer: transfer.clone(),
                kind: EventKind::Committed,
                amount: usd("1"),
                reason: None,
            },
        })
        .collect();
    history.write(1, events);
    state.event_cursors.insert(pid("p"), 1_006);
    state.verify().unwrap();
    assert_eq!(state.last_cursor(&pid("p")), 1_005);
    assert_eq!(state.events_after(&pid("p"), 3, 10, &history), Err(CursorExpired { requested: 3, oldest: 6 }));
    assert_eq!(state.events_after(&pid("p"), 3, 0, &history), Err(CursorExpired { requested: 3, oldest: 6 }));
    let resumed = state.events_after(&pid("p"), 5, 3, &history).unwrap();
    assert_eq!(resumed.iter().map(|e| e.cursor).collect::<Vec<_>>(), [6, 7, 8]);
    assert_eq!(state.events_after(&pid("p"), 999, 100, &history).unwrap().len(), 6);
    assert!(state.events_after(&pid("p"), u64::MAX - 1, 3, &history).unwrap().is_empty());
    assert!(state.events_after(&pid("nobody"), 0, 3, &history).unwrap().is_empty());
}

#[test]
fn partners_list_and_see_only_their_own_transfers() {
    let (mut west, mut east) = mesh();
    let first = transfer_view(&pay(&mut west, "k1", usd("10"), T0));
    let second = transfer_view(&pay(&mut west, "k2", usd("20"), T0));
    deliver_all(&mut west, &mut east, T0);
    let quote = quote_id(&east.quote("alipay-cn", "wxp://f2f0shop9", QuoteAmount::Source(cny("5")), T0));
    let domestic = transfer_view(
        &east.run(CommandBody::CreateTransfer(request("alipay-cn", "k3", &quote, "wxp://f2f0shop9", "Bo")), T0),
    );
    let listed = |r: &Region, partner: &str, after: Option<&ListToken>, max: usize| -> Vec<(ListToken, String)> {
        r.state
            .transfers_of(&pid(partner), after, max, &r.history)
            .into_iter()
            .map(|(token, t)| match t {
                PartnerTransfer::Coordinated(t) => (token, t.view.id.to_string()),
                PartnerTransfer::Participated(p) => (token, p.prepare.as_ref().unwrap().transfer.to_string()),
            })
            .collect()
    };
    let ids = |page: Vec<(ListToken, String)>| page.into_iter().map(|(_, id)| id).collect::<Vec<_>>();
    assert_eq!(ids(listed(&west, "paypal-us", None, 10)), [first.id.to_string(), second.id.to_string()]);
    let page = listed(&west, "paypal-us", None, 1);
    assert_eq!(ids(page.clone()), [first.id.to_string()]);
    assert_eq!(ids(listed(&west, "paypal-us", Some(&page[0].0), 10)), [second.id.to_string()]);
    // wechat-cn is credited by both cross-border transfers and the domestic one.
    assert_eq!(listed(&east, "wechat-cn", None, 10).len(), 3);
    assert_eq!(ids(listed(&east, "alipay-cn", None, 10)), [domestic.id.to_string()]);
    // Nobody sees another partner's transfer.
    assert!(west.state.transfer_for(&pid("paypal-us-2"), &first.id, &west.history).is_none());
    assert!(east.state.transfer_for(&pid("alipay-cn"), &first.id, &east.history).is_none());
    assert!(east.state.transfer_for(&pid("wechat-cn"), &first.id, &east.history).is_some());
}

#[test]
fn transfers_of_regions_with_the_smallest_ids_are_listed() {
    for name in ["0", "1-east", "9"] {
        let mut region = Region::new(name, 9);
        region.partner("alipay-cn", PartnerRole::Both, cny("0"));
        region.partner("wechat-cn", PartnerRole::Payee, cny("0"));
        region.top_up("alipay-cn", cny("100"), "wire-1");
        let route = PayeeRoute {
            prefix: QrPrefix::new("wxp://").unwrap(),
            partner: pid("wechat-cn"),
            region: region.state.region().clone(),
            currency: CNY,
        };
        region.ok(CommandBody::UpsertPayeeRoute(route), T0);
        let terms =
            CorridorTerms::new(BasisPoints::ZERO, FeeSchedule::free(CNY), cny("0.01"), cny("50"), cny("1000")).unwrap();
        let corridor = corridor_id(&format!("CNY:{name}->CNY:{name}"));
        region.ok(CommandBody::UpsertCorridor { corridor, terms }, T0);
        let quote = quote_id(&region.quote("alipay-cn", "wxp://shop", QuoteAmount::Source(cny("5")), T0));
        let paid = CommandBody::CreateTransfer(request("alipay-cn", "k", &quote, "wxp://shop", "Bo"));
        let view = transfer_view(&region.run(paid, T0));
        for partner in ["alipay-cn", "wechat-cn"] {
            let listed: Vec<TransferId> = region
                .state
                .transfers_of(&pid(partner), None, 10, &region.history)
                .into_iter()
                .map(|(_, t)| match t {
                    PartnerTransfer::Coordinated(t) => t.view.id.clone(),
                    PartnerTransfer::Participated(p) => p.prepare.as_ref().unwrap().transfer.clone(),
                })
                .collect();
            assert_eq!(listed, std::slice::from_ref(&view.id), "{partner} in region {name}");
        }
    }
}

#[test]
fn a_loaded_state_equals_the_saved_one() {
    let (mut west, mut east) = mesh();
    pay(&mut west, "k1", usd("10"), T0);
    pay(&mut west, "k2", usd("20"), T0);
    deliver_all(&mut west, &mut east, T0);
    for region in [&west, &east] {
        let json = serde_json::to_string(&region.state).unwrap();
        let loaded: State = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded, region.state);
        loaded.verify().unwrap();
    }
}

#[test]
fn operator_commands_validate_against_the_state() {
    let (mut west, mut east) = mesh();
    let foreign = PartnerConfig {
        id: pid("gcash-ph"),
        region: region("ap-southeast"),
        role: PartnerRole::Payer,
        currency: USD,
        net_debit_cap: usd("0"),
    };
    assert_eq!(west.run(CommandBody::UpsertPartner(foreign), T0), Outcome::Rejected(RejectCode::PartnerNotInRegion));
    // Lowering a cap below what the position already uses is refused.
    let mut config = west.state.partner(&pid("paypal-us")).unwrap().config.clone();
    config.net_debit_cap = usd("500");
    west.ok(CommandBody::UpsertPartner(config.clone()), T0);
    pay(&mut west, "k", usd("4000"), T0);
    pay(&mut west, "k2", usd("4000"), T0);
    pay(&mut west, "k3", usd("2400"), T0);
    config.net_debit_cap = usd("0");
    assert_eq!(
        west.run(CommandBody::UpsertPartner(config.clone()), T0),
        Outcome::Rejected(RejectCode::InsufficientPosition)
    );
    config.currency = CNY;
    config.net_debit_cap = cny("0");
    assert_eq!(west.run(CommandBody::UpsertPartner(config), T0), Outcome::Rejected(RejectCode::CurrencyMismatch));
    // Top-ups are idempotent by reference.
    east.top_up("alipay-cn", cny("50000"), "wire-1");
    assert_eq!(east.position("alipay-cn").posted.to_wire(), "50000.00");
    let conflicting =
        CommandBody::TopUp { partner: pid("alipay-cn"), amount: cny("1"), reference: TopUpRef::new("wire-1").unwrap() };
    assert_eq!(east.run(conflicting, T0), Outcome::Rejected(RejectCode::IdempotencyConflict));
}

/// Every reject code is produced by some command. Each scenario is named by the
/// code it must produce; the set of codes seen must be all of them.
#[test]
fn every_reject_code_is_reachable() {
    let mut seen = BTreeSet::new();
    let mut expect = |code: RejectCode, outcome: Outcome| {
        let actual = match &outcome {
            Outcome::Rejected(code) => Some(*code),
            Outcome::Transfer(view) => view.reason,
            Outcome::Refund(view) => view.reason,
            Outcome::PrepareReply(PrepareReply::Rejected(code)) => Some(*code),
            _ => None,
        };
        assert_eq!(actual, Some(code), "{outcome:?}");
        seen.insert(code);
    };
    let (mut west, mut east) = mesh();
    let wxp = "wxp://f2f0shop1";
    let src = |units| QuoteAmount::Source(usd(units));
    let at = T0;

    expect(RejectCode::PartnerNotFound, west.quote("nobody", wxp, src("10"), at));
    west.partner("payee-only", PartnerRole::Payee, usd("0"));
    expect(RejectCode::PartnerRoleNotAllowed, west.quote("payee-only", wxp, src("10"), at));
    let foreign = PartnerConfig {
        id: pid("x"),
        region: region("eu-west"),
        role: PartnerRole::Payer,
        currency: USD,
        net_debit_cap: usd("0"),
    };
    expect(RejectCode::PartnerNotInRegion, west.run(CommandBody::UpsertPartner(foreign), at));
    expect(RejectCode::PayeeNotFound, west.quote("paypal-us", "upi://nothing", src("10"), at));
    west.partner("eur-wallet", PartnerRole::Payer, Money::parse("0", EUR).unwrap());
    expect(
        RejectCode::CorridorNotFound,
        west.quote("eur-wallet", wxp, QuoteAmount::Source(Money::parse("1", EUR).unwrap()), at),
    );
    expect(RejectCode::AmountBelowMinimum, west.quote("paypal-us", wxp, src("0.50"), at));
    expect(RejectCode::AmountAboveMaximum, west.quote("paypal-us", wxp, src("5000.01"), at));
    expect(RejectCode::CurrencyMismatch, west.quote("paypal-us", wxp, QuoteAmount::Source(cny("10")), at));
    let usd_cny = corridor_id("USD:us-west->CNY:cn-east");
    let same = corridor_id("CNY:cn-east->CNY:cn-east");
    let one = FxRate::new(CNY, USD, Rate::ONE, T0, T0.plus_ms(1)).unwrap();
    expect(RejectCode::RateNotApplicable, east.run(CommandBody::SetFxRate { corridor: same, rate: one }, at));
    let inbound = corridor_id("CNY:cn-east->USD:us-west");
    expect(
        RejectCode::RegionMismatch,
        west.run(CommandBody::UpsertCorridor { corridor: inbound, terms: usd_cny_terms() }, at),
    );

    let quote = quote_id(&west.quote("paypal-us", wxp, src("10"), at));
    let create = |key: &str, quote: &QuoteId, payee: &str| {
        CommandBody::CreateTransfer(request("paypal-us", key, quote, payee, "A"))
    };
    expect(RejectCode::PayeeMismatch, west.run(create("a", &quote, "https://qr.alipay.com/fkx1"), at));
    let ghost = QuoteId::new(region("us-west"), 999);
    expect(RejectCode::QuoteNotFound, west.run(create("c", &ghost, wxp), at));
    transfer_view(&west.run(create("d", &quote, wxp), at));
    expect(RejectCode::QuoteAlreadyUsed, west.run(create("e", &quote, wxp), at));
    expect(RejectCode::IdempotencyConflict, west.run(create("d", &ghost, wxp), at));
    let quote = quote_id(&west.quote("paypal-us", wxp, src("10"), at));
    west.ok(CommandBody::SetCorridorStatus { corridor: usd_cny.clone(), status: BusinessStatus::Suspended }, at);
    expect(RejectCode::CorridorSuspended, west.run(create("f", &quote, wxp), at));
    west.ok(CommandBody::SetCorridorStatus { corridor: usd_cny.clone(), status: BusinessStatus::Active }, at);
    let mut terms_small_cap = usd_cny_terms();
    terms_small_cap = CorridorTerms::new(
        terms_small_cap.spread(),
        terms_small_cap.fees().clone(),
        terms_small_cap.min_amount(),
        terms_small_cap.max_amount(),
        usd("15"),
    )
    .unwrap();
    west.ok(CommandBody::UpsertCorridor { corridor: usd_cny.clone(), terms: terms_small_cap }, at);
    expect(RejectCode::DailyCapExceeded, west.run(create("g", &quote, wxp), at));
    west.ok(CommandBody::UpsertCorridor { corridor: usd_cny, terms: usd_cny_terms() }, at);
    transfer_view(&pay(&mut west, "h", usd("5000"), at));
    expect(RejectCode::InsufficientPosition, pay(&mut west, "i", usd("5000"), at));

    // The partner's caps: "d" and "h" are reserved (cn-east never answers
    // here), "g" and "i" aborted; no quote is left unused.
    let paypal = pid("paypal-us");
    let usage = west.state.partner_usage(&paypal);
    assert_eq!(usage, PartnerUsage { quotes_outstanding: 0, transfers_in_flight: 2 });
    let capped = |quotes, transfers| CommandBody::SetPartnerLimits {
        partner: pid("paypal-us"),
        limits: PartnerLimits {
            quotes_outstanding_max: quotes,
            transfers_in_flight_max: transfers,
            ..PartnerLimits::DEFAULT
        },
    };
    west.ok(capped(1, 2), at);
    let unused = quote_id(&west.quote("paypal-us", wxp, src("10"), at));
    expect(RejectCode::PartnerQuotesExhausted, west.quote("paypal-us", wxp, src("10"), at));
    let blocked = request("paypal-us", "j", &unused, wxp, "A");
    assert_eq!(west.state.check_transfer_request(&blocked, at), Err(RejectCode::PartnerTransfersExhausted));
    expect(RejectCode::PartnerTransfersExhausted, west.run(CommandBody::CreateTransfer(blocked.clone()), at));
    assert_eq!(
        west.state.replay_transfer_request(&blocked, &west.history),
        None,
        "a refusal records no idempotency key"
    );
    // With room again, the same key and body go through: nothing was remembered.
    west.ok(capped(1, 3), at);
    transfer_view(&west.run(CommandBody::CreateTransfer(blocked), at));
    assert_eq!(west.state.partner_usage(&paypal), PartnerUsage { quotes_outstanding: 0, transfers_in_flight: 3 });
    let nobody = CommandBody::SetPartnerLimits { partner: pid("nobody"), limits: PartnerLimits::DEFAULT };
    expect(RejectCode::PartnerNotFound, west.run(nobody, at));
    west.ok(CommandBody::SetPartnerLimits { partner: paypal.clone(), limits: PartnerLimits::DEFAULT }, at);
    assert_eq!(west.state.partner_limits(&paypal), PartnerLimits::DEFAULT);

    west.ok(CommandBody::SetPartnerStatus { partner: pid("paypal-us"), status: BusinessStatus::Suspended }, at);
    expect(RejectCode::PartnerSuspended, west.quote("paypal-us", wxp, src("10"), at));

    // Balance overflow: reaching a balance's bound through transfers would take
    // 10^9 maximal ones, so set the payee's sums next to it directly (balanced,
    // so every invariant still holds), then prepare one more payout.
    let east_clearing = AccountId::new(AccountOwner::Clearing(region("us-west")), CNY);
    let wechat = AccountId::new(AccountOwner::Partner(pid("wechat-cn")), CNY);
    let nearly = SignedMoney::units_max(CNY) - 10;
    east.state.ledger.ensure_account(&east_clearing, AccountPolicy::Unrestricted);
    east.state.ledger.force_posted(&east_clearing, &wechat, nearly);
    let payout = |n: u64| PrepareMessage {
        transfer: TransferId::new(region("us-west"), n),
        corridor: corridor_id("USD:us-west->CNY:cn-east"),
        source: usd("1"),
        destination: cny("1"),
        rate: Rate::ONE,
        payee: pid("wechat-cn"),
        merchant: MerchantId::new("m").unwrap(),
        payer_token: PayerToken::for_transfer(&TransferId::new(region("us-west"), n)),
        deadline: at.plus_ms(TRANSFER_PREPARE_DEADLINE_MS),
    };
    expect(RejectCode::BalanceOverflow, east.run(CommandBody::Prepare(payout(10_000)), at));

    // Participant-side and protocol codes.
    let misrouted = PrepareMessage {
        transfer: TransferId::new(region("ap-southeast"), 1),
        corridor: corridor_id("PHP:ap-southeast->CNY:eu-west"),
        source: Money::parse("1", PHP).unwrap(),
        destination: cny("1"),
        rate: Rate::ONE,
        payee: pid("wechat-cn"),
        merchant: MerchantId::new("m").unwrap(),
        payer_token: PayerToken::for_transfer(&TransferId::new(region("ap-southeast"), 1)),
        deadline: at.plus_ms(TRANSFER_PREPARE_DEADLINE_MS),
    };
    expect(RejectCode::RegionMismatch, east.run(CommandBody::Prepare(misrouted), at));
    let ghost_transfer = TransferId::new(region("us-west"), 424242);
    expect(
        RejectCode::TransferNotFound,
        west.run(CommandBody::PrepareReplied { transfer: ghost_transfer.clone(), reply: PrepareReply::Prepared }, at),
    );
    expect(
        RejectCode::ProtocolViolation,
        east.run(CommandBody::Decide { transfer: ghost_transfer.clone(), decision: Decision::Commit }, at),
    );
    east.run(CommandBody::Decide { transfer: ghost_transfer.clone(), decision: Decision::Abort }, at);
    let late = PrepareMessage {
        transfer: ghost_transfer.clone(),
        corridor: corridor_id("USD:us-west->CNY:cn-east"),
        source: usd("1"),
        destination: cny("7"),
        rate: Rate::parse("7").unwrap(),
        payee: pid("wechat-cn"),
        merchant: MerchantId::new("m").unwrap(),
        payer_token: PayerToken::for_transfer(&ghost_transfer),
        deadline: at,
    };
    expect(RejectCode::AbortedBeforePrepare, east.run(CommandBody::Prepare(late), at));
    west.ok(CommandBody::SetPartnerStatus { partner: pid("paypal-us"), status: BusinessStatus::Active }, at);
    let view = transfer_view(&pay(&mut west, "deadline", usd("10"), at));
    west.run(CommandBody::Tick, view.deadline.unwrap());
    let reason = west.transfer(&view.id).unwrap().view.reason;
    expect(RejectCode::DeadlineExceeded, Outcome::Rejected(reason.expect("aborted with a reason")));

    let mut busy = Region::new("us-west", 5);
    let stale = Command { id: busy.next_id(), body: CommandBody::Tick };
    busy.apply(&stale, at);
    for _ in 0..SESSION_OUTCOMES_MAX {
        busy.run(CommandBody::Tick, at);
    }
    expect(RejectCode::StaleCommand, busy.apply(&stale, at));
    for n in 0..PAYEE_ROUTES_MAX {
        let route = PayeeRoute {
            prefix: QrPrefix::new(format!("test://{n}/")).unwrap(),
            partner: pid("p"),
            region: region("cn-east"),
            currency: CNY,
        };
        busy.state.directory.upsert(route);
    }
    let one_more = PayeeRoute {
        prefix: QrPrefix::new("test://more/").unwrap(),
        partner: pid("p"),
        region: region("cn-east"),
        currency: CNY,
    };
    expect(RejectCode::CapacityExceeded, busy.run(CommandBody::UpsertPayeeRoute(one_more), at));

    // Refunds, in a mesh of their own: more than was paid, a payment that
    // aborted, a payment older than the window.
    let (mut w, mut e) = mesh();
    let payment = transfer_view(&pay(&mut w, "to-refund", usd("10"), T0));
    deliver_all(&mut w, &mut e, T0);
    deliver_all(&mut w, &mut e, T0);
    let refund = |key: &str, transfer: &TransferId, amount: Money| {
        CommandBody::CreateRefund(RefundRequest {
            partner: pid("wechat-cn"),
            idempotency_key: IdempotencyKey::new(key).unwrap(),
            transfer: transfer.clone(),
            amount,
        })
    };
    expect(RejectCode::RefundExceedsOriginal, e.run(refund("r1", &payment.id, cny("71.65")), T0));
    // Prepared in the payee's region, not yet decided.
    let pending = transfer_view(&pay(&mut w, "in-flight", usd("10"), T0));
    let Some((_, OutboxMessage::Prepare(prepare))) = w.state.outbox().next() else { panic!("no prepare") };
    let prepare = prepare.clone();
    e.run(CommandBody::Prepare(prepare), T0);
    expect(RejectCode::TransferNotCommitted, e.run(refund("r2", &pending.id, cny("1")), T0));
    e.ok(CommandBody::SetRegionSetting(RegionSetting::RefundWindowDays(0)), T0);
    expect(RejectCode::RefundWindowClosed, e.run(refund("r3", &payment.id, cny("1")), T0));
    // Cancels: one the window no longer allows, one of a payment refunded.
    let cancel =
        |transfer: &TransferId| CommandBody::CancelTransfer { partner: pid("paypal-us"), transfer: transfer.clone() };
    w.ok(CommandBody::SetRegionSetting(RegionSetting::CancelWindowMinutes(0)), T0);
    expect(RejectCode::CancelWindowClosed, w.run(cancel(&payment.id), T0));
    w.ok(CommandBody::SetRegionSetting(RegionSetting::CancelWindowMinutes(60)), T0);
    e.ok(CommandBody::SetRegionSetting(RegionSetting::RefundWindowDays(1)), T0);
    e.run(refund("r4", &payment.id, cny("1")), T0);
    deliver_all(&mut e, &mut w, T0);
    deliver_all(&mut e, &mut w, T0);
    expect(RejectCode::AlreadyRefunded, w.run(cancel(&payment.id), T0));
    let bounded = CommandBody::CreatePayment(crate::command::PaymentRequest {
        partner: pid("paypal-us"),
        idempotency_key: IdempotencyKey::new("bounded").unwrap(),
        payee: qr("wxp://f2f0shop1"),
        amount: QuoteAmount::Source(usd("10")),
        max_total_debit: Some(usd("10")),
        payer: payer("Bo"),
    });
    expect(RejectCode::PriceAboveLimit, w.run(bounded, T0));

    // Last, because the state's clock never goes back: a minute later the quote
    // has expired, a day later the rate.
    let now = west.state.clock();
    let quote = quote_id(&west.quote("paypal-us", wxp, src("10"), now));
    expect(RejectCode::QuoteExpired, west.run(create("b", &quote, wxp), now.plus_ms(QUOTE_TTL_MS)));
    expect(RejectCode::RateUnavailable, west.quote("paypal-us", wxp, src("10"), T0.plus_ms(DAY_MS)));

    // Settlement: a window still open, one that does not exist, an account
    // that did not move, one that is not settled, one settled already.
    let settle = |window: u64, owner: AccountOwner, reference: &str| CommandBody::RecordSettlement {
        window,
        account: AccountId::new(owner, CNY),
        reference: TopUpRef::new(reference).unwrap(),
    };
    let wechat = || AccountOwner::Partner(pid("wechat-cn"));
    expect(RejectCode::WindowNotClosed, e.run(settle(1, wechat(), "b1"), T0));
    expect(RejectCode::WindowNotFound, e.run(settle(2, wechat(), "b1"), T0));
    e.run(CommandBody::CloseSettlementWindow, T0);
    expect(RejectCode::NothingToSettle, e.run(settle(1, AccountOwner::Partner(pid("alipay-cn")), "b1"), T0));
    expect(RejectCode::NotSettleable, e.run(settle(1, AccountOwner::Fees, "b1"), T0));
    e.ok(settle(1, wechat(), "b1"), T0);
    expect(RejectCode::AlreadySettled, e.run(settle(1, wechat(), "b2"), T0));
    expect(RejectCode::WebhookNotFound, e.run(CommandBody::RemoveWebhook { partner: pid("wechat-cn") }, T0));

    let all: BTreeSet<RejectCode> = RejectCode::ALL.into_iter().collect();
    assert_eq!(seen, all, "not reached: {:?}", all.difference(&seen).collect::<Vec<_>>());
}

/// A transfer request refused before its transfer would exist changes
/// nothing, not even the idempotency table, and the leader's check gives the
/// answer applying it gives: a later retry under the same key with a valid
/// quote is a new request.
#[test]
fn refusals_before_a_transfer_exists_change_nothing_and_the_check_agrees() {
    let (mut west, _) = mesh();
    let wxp = "wxp://f2f0shop1";
    let src = |units| QuoteAmount::Source(usd(units));
    let at = T0;
    let quote = quote_id(&west.quote("paypal-us", wxp, src("10"), at));
    let ghost = QuoteId::new(region("us-west"), 999);
    let refused = [
        request("paypal-us", "k", &ghost, wxp, "A"),
        request("paypal-us", "k", &quote, "https://qr.alipay.com/fkx1", "A"),
        request("nobody", "k", &quote, wxp, "A"),
    ];
    for request in &refused {
        let before = west.state.clone();
        let checked = west.state.check_transfer_request(request, at).expect_err("refused");
        let applied = west.run(CommandBody::CreateTransfer(request.clone()), at);
        assert_eq!(applied, Outcome::Rejected(checked), "{request:?}");
        // Only the clock and the proposer session's dedupe record moved.
        let mut unchanged = west.state.clone();
        unchanged.sessions = before.sessions.clone();
        assert_eq!(unchanged, before, "{request:?} changed the state");
        assert_eq!(west.state.replay_transfer_request(request, &west.history), None);
    }
    // Another partner's quote is not found either.
    west.partner("other-us", PartnerRole::Payer, usd("0"));
    let theirs = request("other-us", "k", &quote, wxp, "A");
    assert_eq!(west.state.check_transfer_request(&theirs, at), Err(RejectCode::QuoteNotFound));
    // An expired quote.
    let late = at.plus_ms(QUOTE_TTL_MS);
    let stale = request("paypal-us", "k", &quote, wxp, "A");
    assert_eq!(west.state.check_transfer_request(&stale, late), Err(RejectCode::QuoteExpired));

    // The same key, now with a valid request: a transfer.
    let valid = request("paypal-us", "k", &quote, wxp, "A");
    assert_eq!(west.state.check_transfer_request(&valid, at), Ok(()));
    let view = transfer_view(&west.run(CommandBody::CreateTransfer(valid.clone()), at));
    // Retried: its record answers, whatever the check would say now (the
    // quote is used).
    assert_eq!(west.state.replay_transfer_request(&valid, &west.history), Some(Outcome::Transfer(Arc::new(view))));
    assert_eq!(west.state.check_transfer_request(&valid, at), Err(RejectCode::QuoteAlreadyUsed));

    // Quotes: the check names the refusal and changes nothing; a passing
    // check is the quote applying gives.
    let checked = west.state.check_quote(&pid("paypal-us"), &qr("upi://nothing"), src("10"), at);
    assert_eq!(checked, Err(RejectCode::PayeeNotFound));
    let checked = west.state.check_quote(&pid("paypal-us"), &qr(wxp), src("10"), at).unwrap();
    assert_eq!(west.quote("paypal-us", wxp, src("10"), at), Outcome::Quote(Arc::new(checked)));
}

#[test]
fn partner_limits_are_validated_and_old_states_convert_with_their_usage_counted() {
    assert_eq!(PartnerLimits::DEFAULT.validate(), Ok(()));
    let zero = PartnerLimits { requests_per_second: 0, ..PartnerLimits::DEFAULT };
    assert!(zero.validate().unwrap_err().contains("requests_per_second"));
    let huge = PartnerLimits { quotes_outstanding_max: u32::MAX, ..PartnerLimits::DEFAULT };
    assert!(huge.validate().unwrap_err().contains("quotes_outstanding_max"));
    let (mut west, _) = mesh();
    let body = CommandBody::SetPartnerLimits { partner: pid("paypal-us"), limits: zero };
    assert_eq!(west.run(body, T0), Outcome::Rejected(RejectCode::ProtocolViolation));

    // A state of format 3 (finished work in memory) splits into today's
    // hot state and the records of what it retained; one of format 2
    // (before limits and usage) also has its usage counted.
    let wxp = "wxp://f2f0shop1";
    quote_id(&west.quote("paypal-us", wxp, QuoteAmount::Source(usd("10")), T0));
    let in_flight = transfer_view(&pay(&mut west, "x", usd("10"), T0));
    let large = transfer_view(&pay(&mut west, "large", usd("5000"), T0));
    let quote = quote_id(&west.quote("paypal-us", wxp, QuoteAmount::Source(usd("5000")), T0));
    let refused = west.run(CommandBody::CreateTransfer(request("paypal-us", "poor", &quote, wxp, "Al")), T0);
    let refused = transfer_view(&refused);
    let finished = west.history.transfer(&refused.id).expect("an aborted transfer is history");
    let old = StateV3 {
        region: west.state.region.clone(),
        clock: west.state.clock,
        next_transfer: west.state.next_transfer,
        next_quote: west.state.next_quote,
        partners: west.state.partners.clone(),
        corridors: west.state.corridors.clone(),
        directory: west.state.directory.clone(),
        quotes: west.state.quotes.clone(),
        quote_expiry: west.state.quote_expiry.clone(),
        transfers: west.state.transfers.update(finished.view.id.clone(), finished.clone()),
        deadlines: west.state.deadlines.clone(),
        transfers_finished: OrdSet::unit((T0, finished.view.id.clone())),
        participations: OrdMap::new(),
        partner_transfers: [in_flight.id.clone(), large.id.clone(), refused.id.clone()]
            .into_iter()
            .map(|id| (pid("paypal-us"), id))
            .collect(),
        participations_finished: OrdSet::new(),
        idempotency: OrdMap::new(),
        idempotency_expiry: OrdSet::new(),
        outbox: west
            .state
            .outbox
            .iter()
            .map(|(key, message)| {
                let old = match message.clone() {
                    OutboxMessage::Prepare(p) => OutboxMessageV1::Prepare(p),
                    OutboxMessage::PrepareRefund(p) => OutboxMessageV1::PrepareRefund(p),
                    OutboxMessage::Decision { transfer, decision, .. } => {
                        OutboxMessageV1::Decision { transfer, decision }
                    }
                    OutboxMessage::RequestCancel(_) => unreachable!("no cancel in this state"),
                };
                (key.clone(), old)
            })
            .collect(),
        events: OrdMap::unit(pid("paypal-us"), EventLog { next_cursor: 4, events: Vector::new() }),
        sessions: west.state.sessions.clone(),
        top_ups: OrdMap::new(),
        top_up_expiry: OrdSet::new(),
        ledger: west.state.ledger.clone(),
        partner_limits: OrdMap::new(),
        partner_usage: west.state.partner_usage.clone(),
    };
    let mut bytes = postcard::to_stdvec(&old).unwrap();
    let (converted, records) = State::from_v3(postcard::from_bytes(&bytes).unwrap());
    assert_eq!(converted.event_cursors, OrdMap::unit(pid("paypal-us"), 4));
    let mut expected = west.state.clone();
    expected.event_cursors = converted.event_cursors.clone();
    // Settlement windows measure from the conversion: what came before is
    // no window's.
    assert!(converted.open_window().positions.is_empty());
    assert_eq!(converted.open_window().opened_at, converted.clock);
    expected.settlement = converted.settlement.clone();
    assert_eq!(converted, expected);
    assert!(records.contains(&Record::Transfer(Box::new(finished))));
    assert!(records.iter().any(|r| matches!(r, Record::Listed { transfer, .. } if transfer == &in_flight.id)));
    let usage = postcard::to_stdvec(&old.partner_usage).unwrap();
    let limits = postcard::to_stdvec(&old.partner_limits).unwrap();
    bytes.truncate(bytes.len() - usage.len() - limits.len());
    let v2: StateV2 = postcard::from_bytes(&bytes).unwrap();
    let (converted, _) = State::from_v3(v2.into());
    assert_eq!(converted, expected);
    assert_eq!(
        converted.partner_usage(&pid("paypal-us")),
        PartnerUsage { quotes_outstanding: 1, transfers_in_flight: 2 }
    );
}

// ---- property tests ---------------------------------------------------------------------------

/// What the simulated partners and network do at one step.
#[derive(Clone, Debug)]
enum Action {
    /// A payer partner pays a payee; `key` may repeat an earlier key.
    Pay { payer: usize, payee: usize, cents: u64, key: u8, by_destination: bool },
    /// Resubmit an earlier request exactly (a retry after a timeout).
    Retry { index: usize },
    /// The coordinator's shipper sends one outbox message into the network.
    Send { index: usize },
    /// The network delivers one message in flight to the payee region, keeping a
    /// copy (a duplicate) or not; the reply enters the network or is lost.
    Deliver { index: usize, duplicate: bool, lose_reply: bool },
    /// The network delivers one reply in flight, keeping a copy or not.
    DeliverReply { index: usize, duplicate: bool },
    /// Time passes and the coordinator ticks.
    Tick { ms: u64 },
    /// An operator closes a region's settlement window (the payee's, or the
    /// payer's), whatever is in flight.
    CloseWindow { payee_region: bool },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0usize..2, 0usize..4, 1u64..400_000, 0u8..12, any::<bool>())
            .prop_map(|(payer, payee, cents, key, by_destination)| Action::Pay { payer, payee, cents, key, by_destination }),
        1 => (0usize..64).prop_map(|index| Action::Retry { index }),
        3 => (0usize..64).prop_map(|index| Action::Send { index }),
        3 => (0usize..64, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(index, duplicate, lose_reply)| Action::Deliver { index, duplicate, lose_reply }),
        3 => (0usize..64, any::<bool>()).prop_map(|(index, duplicate)| Action::DeliverReply { index, duplicate }),
        1 => (0u64..6_000).prop_map(|ms| Action::Tick { ms }),
        1 => any::<bool>().prop_map(|payee_region| Action::CloseWindow { payee_region }),
    ]
}

/// A reply in flight back to the coordinator.
#[derive(Clone, Debug)]
enum Reply {
    Prepare(TransferId, PrepareReply),
    Ack(TransferId),
}

/// Two regions and a hostile network between them: messages in flight are
/// delivered in any order, any number of times, or never; replies likewise.
struct Sim {
    west: Region,
    east: Region,
    now: Timestamp,
    requests: Vec<CommandBody>,
    in_flight: Vec<CommandBody>,
    replies: Vec<Reply>,
    /// How often each interesting path was taken, for the coverage test.
    paths: BTreeMap<&'static str, u32>,
}

fn pick<T>(items: &[T], index: usize) -> Option<usize> {
    (!items.is_empty()).then(|| index % items.len())
}

impl Sim {
    /// The payer region of the simulations: the mesh's, plus a second payer
    /// with a net debit cap and a route to a payee the payee region does not
    /// know (its prepares are refused). Its command log starts empty.
    fn payer_region() -> Region {
        let (mut west, _) = mesh();
        west.partner("paypal-us-2", PartnerRole::Payer, usd("250"));
        west.top_up("paypal-us-2", usd("300"), "wire-2");
        let ghost = PayeeRoute {
            prefix: QrPrefix::new("https://pay.ghost.example/").unwrap(),
            partner: pid("ghost-cn"),
            region: region("cn-east"),
            currency: CNY,
        };
        west.ok(CommandBody::UpsertPayeeRoute(ghost), T0);
        west.log.clear();
        west
    }

    fn new() -> Sim {
        Sim {
            west: Sim::payer_region(),
            east: mesh().1,
            now: T0,
            requests: Vec::new(),
            in_flight: Vec::new(),
            replies: Vec::new(),
            paths: BTreeMap::new(),
        }
    }

    fn took(&mut self, path: &'static str) {
        *self.paths.entry(path).or_default() += 1;
    }

    /// Apply a transfer request and note which path it took.
    fn create(&mut self, body: CommandBody, retry: bool) {
        match self.west.run(body, self.now) {
            Outcome::Rejected(RejectCode::IdempotencyConflict) => self.took("idempotency conflict"),
            Outcome::Transfer(view) if view.reason == Some(RejectCode::InsufficientPosition) => {
                self.took("insufficient position")
            }
            Outcome::Transfer(_) if retry => self.took("retry answered from the idempotency record"),
            _ => {}
        }
    }

    fn step(&mut self, action: &Action) {
        match action {
            Action::Pay { payer, payee, cents, key, by_destination } => {
                let payer = ["paypal-us", "paypal-us-2"][*payer];
                let payee = [
                    "wxp://f2f0shop1",
                    "https://qr.alipay.com/fkx9",
                    "wxp://f2f0shop2",
                    "https://pay.ghost.example/m1",
                ][*payee];
                let amount = if *by_destination {
                    QuoteAmount::Destination(Money::from_units(*cents * 7, CNY).unwrap())
                } else {
                    QuoteAmount::Source(Money::from_units(*cents, USD).unwrap())
                };
                if let Outcome::Quote(quote) = self.west.quote(payer, payee, amount, self.now) {
                    let body =
                        CommandBody::CreateTransfer(request(payer, &format!("key-{key}"), &quote.id, payee, payer));
                    self.create(body.clone(), false);
                    self.requests.push(body);
                }
            }
            Action::Retry { index } => {
                if let Some(i) = pick(&self.requests, *index) {
                    self.create(self.requests[i].clone(), true);
                }
            }
            Action::Send { index } => {
                let messages: Vec<OutboxMessage> = self.west.state.outbox_for(&region("cn-east")).cloned().collect();
                if let Some(i) = pick(&messages, *index) {
                    self.in_flight.push(match &messages[i] {
                        OutboxMessage::Prepare(p) => CommandBody::Prepare(p.clone()),
                        OutboxMessage::PrepareRefund(p) => CommandBody::PrepareRefund(p.clone()),
                        OutboxMessage::RequestCancel(r) => CommandBody::RequestCancel(r.clone()),
                        OutboxMessage::Decision { transfer, decision, window } => CommandBody::DecideInWindow {
                            transfer: transfer.clone(),
                            decision: *decision,
                            window: *window,
                        },
                    });
                }
            }
            Action::Deliver { index, duplicate, lose_reply } => {
                if let Some(i) = pick(&self.in_flight, *index) {
                    let body = if *duplicate { self.in_flight[i].clone() } else { self.in_flight.swap_remove(i) };
                    let reply = self.deliver(body);
                    if !lose_reply {
                        self.replies.push(reply);
                    }
                }
            }
            Action::DeliverReply { index, duplicate } => {
                if let Some(i) = pick(&self.replies, *index) {
                    let reply = if *duplicate { self.replies[i].clone() } else { self.replies.swap_remove(i) };
                    self.apply_reply(reply);
                }
            }
            Action::Tick { ms } => {
                self.now = self.now.plus_ms(*ms);
                self.west.run(CommandBody::Tick, self.now);
            }
            Action::CloseWindow { payee_region } => {
                let region = if *payee_region { &mut self.east } else { &mut self.west };
                assert!(matches!(
                    region.run(CommandBody::CloseSettlementWindow, self.now),
                    Outcome::WindowClosed { .. }
                ));
            }
        }
    }

    /// Once healed: close both regions' windows a last time, then every
    /// window balances, the payers' nets over all of the payer region's
    /// windows are what they committed, and for every window of the payer
    /// region, what it sent equals what the payee region received for it,
    /// over all of its windows, however the messages were lost, doubled,
    /// reordered, and whenever the windows closed.
    fn check_windows(&mut self) {
        let mut all = Vec::new();
        for region in [&mut self.west, &mut self.east] {
            region.run(CommandBody::CloseSettlementWindow, self.now);
            let last = region.state.settlement_window() - 1;
            let windows: Vec<SettlementWindow> = (1..=last).map(|n| region.history.window(n).unwrap()).collect();
            for window in &windows {
                assert_eq!(window.imbalance(), None, "window {} does not balance", window.number);
            }
            all.push(windows);
        }
        let (west, east) = (&all[0], &all[1]);
        let mut paid: BTreeMap<PartnerId, i128> = BTreeMap::new();
        for transfer in self.west.state.transfers().chain(self.west.history.transfers()) {
            if transfer.view.state == CoordinatorState::Committed {
                *paid.entry(transfer.view.partner.clone()).or_default() -=
                    i128::from(transfer.view.priced.total_debit.units());
            }
        }
        for (partner, total) in &paid {
            let account = AccountId::new(AccountOwner::Partner(partner.clone()), USD);
            let nets: i128 = west.iter().filter_map(|w| w.position(&account)).map(|p| p.net).sum();
            assert_eq!(nets, *total, "{partner}'s windows against its committed payments");
        }
        for window in west {
            let sent = window.sent.get(&region("cn-east")).cloned().unwrap_or_default();
            let mut received = crate::settlement::Tallies::default();
            for theirs in east {
                for (key, tally) in
                    theirs.received.get(&(region("us-west"), window.number)).map(|t| t.iter()).into_iter().flatten()
                {
                    received.entry(*key).or_default().merge(tally);
                }
            }
            assert_eq!(
                crate::settlement::cross_check(&sent, &received, 0),
                crate::settlement::CrossCheck::Agree,
                "us-west's window {}",
                window.number
            );
        }
    }

    /// The payee region applies a message and answers.
    fn deliver(&mut self, body: CommandBody) -> Reply {
        let known = match &body {
            CommandBody::Prepare(p) => self.east.participation(&p.transfer).map(|p| p.state),
            CommandBody::Decide { transfer, .. } | CommandBody::DecideInWindow { transfer, .. } => {
                self.east.participation(transfer).map(|p| p.state)
            }
            _ => None,
        };
        match (&body, known) {
            (
                CommandBody::Decide { decision: Decision::Abort, .. }
                | CommandBody::DecideInWindow { decision: Decision::Abort, .. },
                None,
            ) => self.took("abort before prepare: tombstone"),
            (CommandBody::Prepare(_), Some(ParticipantState::Tombstone)) => {
                self.took("late prepare refused by tombstone")
            }
            (CommandBody::Prepare(_), Some(_)) => self.took("prepare delivered again"),
            (CommandBody::Decide { .. } | CommandBody::DecideInWindow { .. }, Some(state)) if state.is_final() => {
                self.took("decision delivered again")
            }
            _ => {}
        }
        match (&body, self.east.run(body.clone(), self.now)) {
            (CommandBody::Prepare(p), Outcome::PrepareReply(reply)) => Reply::Prepare(p.transfer.clone(), reply),
            (CommandBody::Decide { transfer, .. } | CommandBody::DecideInWindow { transfer, .. }, Outcome::Acked) => {
                Reply::Ack(transfer.clone())
            }
            (body, outcome) => panic!("{body:?} gave {outcome:?}"),
        }
    }

    fn apply_reply(&mut self, reply: Reply) {
        let body = match reply {
            Reply::Prepare(transfer, reply) => CommandBody::PrepareReplied { transfer, reply },
            Reply::Ack(transfer) => CommandBody::DecisionAcked { region: region("cn-east"), transfer },
        };
        let outcome = self.west.run(body, self.now);
        assert_ne!(
            outcome,
            Outcome::Rejected(RejectCode::ProtocolViolation),
            "a faithful payee region never violates the protocol"
        );
    }

    /// Note how every transfer ended.
    fn tally_endings(&mut self) {
        let endings: Vec<&'static str> = self
            .west
            .state
            .transfers()
            .chain(self.west.history.transfers())
            .map(|t| match (t.view.state, t.view.reason) {
                (CoordinatorState::Committed, _) => "committed on both sides",
                (_, Some(RejectCode::DeadlineExceeded)) => "aborted at the deadline",
                (_, Some(RejectCode::PayeeNotFound)) => "aborted: payee region refused the prepare",
                _ => "aborted otherwise",
            })
            .collect();
        for ending in endings {
            self.took(ending);
        }
    }

    /// Heal: ship everything reliably and let deadlines pass until both
    /// outboxes are empty. Bounded: each round either finishes a transfer or
    /// aborts it at its deadline.
    fn heal(&mut self) {
        // Whatever is still in flight arrives late, in order, after which the
        // network is reliable.
        for body in std::mem::take(&mut self.in_flight) {
            let reply = self.deliver(body);
            self.apply_reply(reply);
        }
        for reply in std::mem::take(&mut self.replies) {
            self.apply_reply(reply);
        }
        for _ in 0..10 {
            self.now = self.now.plus_ms(TRANSFER_PREPARE_DEADLINE_MS);
            self.west.run(CommandBody::Tick, self.now);
            deliver_all(&mut self.west, &mut self.east, self.now);
            if self.west.state.outbox().count() == 0 {
                return;
            }
        }
        panic!("the outbox did not drain: {:?}", self.west.state.outbox().collect::<Vec<_>>());
    }

    /// The mesh-wide invariants after healing.
    fn check_settled(&self) {
        let (west, east) = (&self.west, &self.east);
        west.state.verify().unwrap();
        east.state.verify().unwrap();
        let mut committed_total: BTreeMap<PartnerId, u64> = BTreeMap::new();
        for transfer in west.state.transfers().chain(west.history.transfers()) {
            let view = &transfer.view;
            assert!(view.state.is_final(), "{} unresolved after healing", view.id);
            if view.state == CoordinatorState::Committed {
                *committed_total.entry(view.partner.clone()).or_default() += view.priced.total_debit.units();
            }
            if view.corridor.is_same_region() {
                continue;
            }
            let participation = east.participation(&view.id);
            match view.state {
                CoordinatorState::Committed => {
                    let p = participation.expect("a committed transfer is known to the payee region");
                    assert_eq!(p.state, ParticipantState::Committed, "{}: source committed, destination not", view.id);
                    let prepare = p.prepare.as_ref().unwrap();
                    assert_eq!(prepare.destination, view.priced.destination, "{}: amounts disagree", view.id);
                    assert_eq!(prepare.source, view.priced.source);
                }
                _ => assert!(
                    participation.is_none_or(|p| p.state != ParticipantState::Committed),
                    "{}: destination committed, source aborted",
                    view.id
                ),
            }
        }
        for (id, participation) in east.state.participations().chain(east.history.participations()) {
            assert!(participation.state.is_final(), "participation {id} unresolved after healing");
            if participation.state == ParticipantState::Committed {
                let source = west.transfer(id).expect("the coordinator knows every transfer");
                assert_eq!(source.view.state, CoordinatorState::Committed);
            }
        }
        // Each payer's position equals its top-ups minus what it committed.
        for (partner, funded) in [("paypal-us", 1_000_000u64), ("paypal-us-2", 30_000)] {
            let spent = committed_total.get(&pid(partner)).copied().unwrap_or(0);
            let position = west.state.position(&pid(partner)).unwrap();
            assert_eq!(position.posted.units(), i128::from(funded) - i128::from(spent), "{partner}");
            assert_eq!(position.pending_debits.units(), 0);
        }
        // Every acknowledged transfer is still there: one per distinct idempotency key outcome.
        for (region, state) in [("us-west", west), ("cn-east", east)] {
            for totals in state.state.ledger().totals().values() {
                assert!(totals.balanced(), "{region} does not sum to zero");
                assert_eq!(totals.debits_pending, 0, "{region} has money stuck in pending");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Two regions, partners paying at random, and a network that loses replies,
    /// duplicates and delays messages and delivers them out of order, while time
    /// passes and deadlines fire. Every command keeps every invariant; after
    /// healing every transfer is final, both sides agree (source committed ⇔
    /// destination committed, equal amounts), positions equal top-ups minus
    /// committed debits, and nothing is left pending.
    #[test]
    fn the_protocol_is_atomic_under_a_hostile_network(actions in proptest::collection::vec(action(), 1..120)) {
        let mut sim = Sim::new();
        for action in &actions {
            sim.step(action);
        }
        sim.heal();
        sim.check_settled();
        sim.check_windows();
    }

    /// Applying any command sequence with arbitrary duplicates of command ids
    /// (a proposer retrying) gives the same outcomes and the same state as
    /// applying it once.
    #[test]
    fn duplicate_command_ids_change_nothing(actions in proptest::collection::vec(action(), 1..60), dupes in proptest::collection::vec(any::<bool>(), 60)) {
        let mut sim = Sim::new();
        for action in &actions {
            sim.step(action);
        }
        // Re-run the coordinator's whole command history into a fresh state,
        // repeating commands at random, and compare.
        let mut clean = Sim::payer_region();
        let mut replayed = clean.clone();
        let history = sim.west.log.clone();
        for (i, (command, now)) in history.iter().enumerate() {
            let first = clean.apply(command, *now);
            let again = replayed.apply(command, *now);
            prop_assert_eq!(&first, &again);
            if dupes[i % dupes.len()] {
                prop_assert_eq!(replayed.apply(command, *now), first);
            }
        }
        prop_assert_eq!(&clean.state, &replayed.state);
        prop_assert_eq!(&clean.state, &sim.west.state);
    }

    /// A batch applies exactly as its commands one by one.
    #[test]
    fn a_batch_equals_its_commands_in_order(actions in proptest::collection::vec(action(), 1..40)) {
        let mut sim = Sim::new();
        for action in &actions {
            sim.step(action);
        }
        let history = sim.west.log.clone();
        let mut one_by_one = Sim::payer_region();
        let mut batched = one_by_one.clone();
        let mut outcomes = Vec::new();
        for (command, now) in &history {
            outcomes.push(one_by_one.apply(command, *now));
        }
        // Group consecutive commands with the same time into batches.
        let mut batch_outcomes = Vec::new();
        let mut start = 0;
        while start < history.len() {
            let now = history[start].1;
            let end = (start..history.len()).find(|&i| history[i].1 != now).unwrap_or(history.len());
            for chunk in history[start..end].chunks(crate::limits::BATCH_COMMANDS_MAX) {
                let batch = Batch::new(now, chunk.iter().map(|(c, _)| c.clone()).collect()).unwrap();
                batch_outcomes.extend(batched.apply_batch(&batch));
            }
            start = end;
        }
        prop_assert_eq!(outcomes, batch_outcomes);
        prop_assert_eq!(one_by_one.state, batched.state);
    }
}

/// The simulation's generator reaches every path of the protocol that the
/// property test above is meant to exercise; without this, a weak generator
/// could let that test pass while checking little.
#[test]
fn the_simulation_reaches_every_protocol_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut paths: BTreeMap<&'static str, u32> = BTreeMap::new();
    for _ in 0..100 {
        let actions = proptest::collection::vec(action(), 1..120).new_tree(&mut runner).unwrap().current();
        let mut sim = Sim::new();
        for action in &actions {
            sim.step(action);
        }
        sim.heal();
        sim.check_settled();
        sim.tally_endings();
        for (path, count) in sim.paths {
            *paths.entry(path).or_default() += count;
        }
    }
    let expected = [
        "committed on both sides",
        "aborted at the deadline",
        "aborted: payee region refused the prepare",
        "insufficient position",
        "idempotency conflict",
        "retry answered from the idempotency record",
        "abort before prepare: tombstone",
        "late prepare refused by tombstone",
        "prepare delivered again",
        "decision delivered again",
    ];
    for path in expected {
        assert!(paths.get(path).copied().unwrap_or(0) > 0, "never reached: {path}; reached: {paths:?}");
    }
}

#[test]
fn a_prepare_whose_deadline_is_too_far_ahead_is_refused_and_holds_nothing() {
    use crate::limits::PREPARE_DEADLINE_AHEAD_MAX_MS;
    let (mut west, mut east) = mesh();
    pay(&mut west, "k", usd("100"), T0);
    let Some(OutboxMessage::Prepare(prepare)) = west.state.outbox().next().map(|(_, m)| m.clone()) else {
        panic!("a prepare is queued")
    };
    // A remote region asking this one to hold the credit for years.
    let mut forged = prepare.clone();
    forged.deadline = T0.plus_ms(3 * 365 * 24 * 60 * 60 * 1000);
    let reply = east.run(CommandBody::Prepare(forged), T0);
    assert_eq!(reply, Outcome::PrepareReply(PrepareReply::Rejected(RejectCode::ProtocolViolation)));
    assert_eq!(east.position("wechat-cn").pending_credits.to_wire(), "0.00", "no credit is held");
    // Just beyond the bound is refused too; at the bound it is accepted.
    let mut beyond = prepare.clone();
    beyond.deadline = T0.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS + 1);
    let (_, mut fresh) = mesh();
    assert_eq!(
        fresh.run(CommandBody::Prepare(beyond), T0),
        Outcome::PrepareReply(PrepareReply::Rejected(RejectCode::ProtocolViolation))
    );
    let mut at_bound = prepare;
    at_bound.deadline = T0.plus_ms(PREPARE_DEADLINE_AHEAD_MAX_MS);
    let (_, mut fresh) = mesh();
    assert_eq!(fresh.run(CommandBody::Prepare(at_bound), T0), Outcome::PrepareReply(PrepareReply::Prepared));
}

/// An operator command carries who issued it into the audit trail; only an
/// operator command may be wrapped, once; a command of before operators
/// were named is still applied and audited without a name.
#[test]
fn operator_commands_are_audited_with_who_issued_them() {
    let mut west = Region::new("us-west", 1);
    let alice = OperatorId::new("ops-alice").unwrap();
    let by = |command: CommandBody| CommandBody::ByOperator { operator: alice.clone(), command: Box::new(command) };
    let config = PartnerConfig {
        id: pid("paypal-us"),
        region: region("us-west"),
        role: PartnerRole::Payer,
        currency: USD,
        net_debit_cap: usd("0"),
    };
    west.ok(by(CommandBody::UpsertPartner(config)), T0);
    let top_up =
        CommandBody::TopUp { partner: pid("paypal-us"), amount: usd("10"), reference: TopUpRef::new("w-1").unwrap() };
    west.ok(by(top_up.clone()), T0.plus_ms(5));
    assert_eq!(west.state.position(&pid("paypal-us")).unwrap().available, SignedMoney::parse("10", USD).unwrap());
    // Not an operator's command, or wrapped twice: refused.
    let quote = CommandBody::CreateQuote {
        partner: pid("paypal-us"),
        payee: qr("wxp://x"),
        amount: QuoteAmount::Source(usd("1")),
    };
    assert_eq!(west.run(by(quote), T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    assert_eq!(west.run(by(by(top_up.clone())), T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    // The form of before.
    west.ok(CommandBody::SetPartnerStatus { partner: pid("paypal-us"), status: BusinessStatus::Active }, T0.plus_ms(9));

    let audit: Vec<(Option<&str>, Timestamp, &CommandBody, &Outcome)> = west
        .history
        .records()
        .filter_map(|(_, record)| match record {
            Record::Audited { at, operator, command, outcome } => {
                Some((Some(operator.as_str()), *at, &**command, &**outcome))
            }
            Record::Operator { at, command, outcome } => Some((None, *at, &**command, &**outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(audit.len(), 5, "{audit:?}");
    assert!(matches!(audit[0], (Some("ops-alice"), T0, CommandBody::UpsertPartner(_), Outcome::Done)));
    assert_eq!(audit[1], (Some("ops-alice"), T0.plus_ms(5), &top_up, &Outcome::Done));
    assert!(matches!(audit[2], (Some("ops-alice"), _, CommandBody::CreateQuote { .. }, Outcome::Rejected(_))));
    assert!(matches!(audit[3], (Some("ops-alice"), _, CommandBody::ByOperator { .. }, Outcome::Rejected(_))));
    assert!(matches!(audit[4], (None, _, CommandBody::SetPartnerStatus { .. }, Outcome::Done)));
}

/// The ledger refusals a valid command can meet have business codes (each
/// is met by a command in `operator_commands_validate_against_the_state` and
/// `every_business_reject_code_is_reachable`); every other one panics, in
/// release builds too, rather than be answered as if it were the caller's
/// fault. The fuzzing target `apply_batches` and the simulation apply
/// arbitrary and adversarial commands with this rule in force.
#[test]
fn a_ledger_refusal_the_state_checked_for_stops_the_replica() {
    let reachable = [
        (LedgerReject::ExceedsCredits, RejectCode::InsufficientPosition),
        (LedgerReject::PolicyViolatedByBalances, RejectCode::InsufficientPosition),
        (LedgerReject::BalanceOverflow, RejectCode::BalanceOverflow),
    ];
    for &reason in LedgerReject::ALL {
        let answered = std::panic::catch_unwind(|| ledger_code(reason));
        match reachable.iter().find(|(r, _)| *r == reason) {
            Some((_, code)) => assert_eq!(answered.ok(), Some(*code), "{reason:?}"),
            None => assert!(answered.is_err(), "{reason:?} is answered as {answered:?}, not a stop"),
        }
    }
}

/// The participant's table decides a first Prepare's state, and a Prepare
/// again leaves the recorded state as it is.
#[test]
fn the_participants_table_drives_its_prepare() {
    let id = TransferId::new(region("us-west"), 1);
    assert_eq!(step_participant(&id, None, ParticipantEvent::Prepare), Step::Move(ParticipantState::Prepared));
    assert_eq!(step_participant(&id, None, ParticipantEvent::PrepareRefused), Step::Move(ParticipantState::Aborted));
    for state in ParticipantState::ALL {
        assert_eq!(step_participant(&id, Some(state), ParticipantEvent::Prepare), Step::Unchanged);
    }
    let illegal = std::panic::catch_unwind(|| step_participant(&id, None, ParticipantEvent::Commit));
    assert!(illegal.is_err(), "a local event the table forbids is a bug, not an answer");
}

/// A fund-out withdraws prefunding: never the cap's credit, never what is
/// reserved for transfers in flight; idempotent by its reference (its own
/// space, apart from top-ups'), across batches through history too.
#[test]
fn a_fund_out_withdraws_what_the_position_holds_beyond_its_reservations() {
    let (mut west, _east) = mesh();
    let refused = |code: RejectCode, outcome: Outcome| assert_eq!(outcome, Outcome::Rejected(code));
    let fund_out = |reference: &str, amount: Money| CommandBody::FundOut {
        partner: pid("paypal-us"),
        amount,
        reference: TopUpRef::new(reference).unwrap(),
    };
    // A cap of 500: credit for payments, not money to withdraw.
    let mut config = west.state.partner(&pid("paypal-us")).unwrap().config.clone();
    config.net_debit_cap = usd("500");
    west.ok(CommandBody::UpsertPartner(config), T0);
    // 4,000.00 (and its fee) reserved for a transfer cn-east has not answered.
    transfer_view(&pay(&mut west, "k", usd("4000"), T0));
    let before = west.position("paypal-us");
    let withdrawable = before.posted.units() - before.pending_debits.units();
    assert!(withdrawable > 0 && withdrawable < 600_000, "less than 6,000.00 USD: {before:?}");
    let all = Money::from_units(u64::try_from(withdrawable).unwrap(), USD).unwrap();
    let one_cent_more = Money::from_units(u64::try_from(withdrawable + 1).unwrap(), USD).unwrap();

    refused(RejectCode::InsufficientPosition, west.run(fund_out("out-1", one_cent_more), T0));
    assert_eq!(west.position("paypal-us"), before, "a refused fund-out moves nothing");
    west.ok(fund_out("out-1", all), T0);
    let after = west.position("paypal-us");
    assert_eq!(after.posted.units(), before.posted.units() - withdrawable);
    assert_eq!(after.pending_debits, before.pending_debits, "the reservation stands");
    // A repeat, in a later batch (answered from history), debits nothing more;
    // the same reference for anything else is a conflict.
    west.ok(fund_out("out-1", all), T0.plus_ms(1));
    assert_eq!(west.position("paypal-us"), after);
    refused(RejectCode::IdempotencyConflict, west.run(fund_out("out-1", usd("1")), T0.plus_ms(2)));
    // Nothing is left to withdraw; top-ups keep their own references.
    refused(RejectCode::InsufficientPosition, west.run(fund_out("out-2", usd("0.01")), T0));
    west.top_up("paypal-us", usd("10"), "out-2");
    west.ok(fund_out("out-2", usd("10")), T0);
    // Malformed for this partner, or no partner at all.
    refused(RejectCode::CurrencyMismatch, west.run(fund_out("out-3", cny("1")), T0));
    refused(RejectCode::AmountBelowMinimum, west.run(fund_out("out-3", usd("0")), T0));
    let nobody =
        CommandBody::FundOut { partner: pid("nobody"), amount: usd("1"), reference: TopUpRef::new("out-3").unwrap() };
    refused(RejectCode::PartnerNotFound, west.run(nobody, T0));
    // The money went to the settlement account: the books still balance.
    west.state.verify().unwrap();
}

mod cancels;
mod payments;
mod refunds;
mod restores;
mod settlement;
mod webhooks;

/// A quote under an idempotency key: a retry (even after the quote is used,
/// and after the rate moved) gets the first quote and makes no other; the
/// key is in the partner's one key space; a refusal records nothing.
#[test]
fn a_keyed_quote_is_made_once_per_key() {
    let (mut west, _) = mesh();
    let wxp = "wxp://f2f0shop1";
    let keyed = |key: &str, units: &str| {
        CommandBody::CreateKeyedQuote(crate::command::QuoteRequest {
            partner: pid("paypal-us"),
            idempotency_key: IdempotencyKey::new(key).unwrap(),
            payee: qr(wxp),
            amount: QuoteAmount::Source(usd(units)),
        })
    };
    let first = west.run(keyed("q-1", "10"), T0);
    let Outcome::Quote(quote) = &first else { panic!("not a quote: {first:?}") };
    let outstanding = west.state.partner_usage(&pid("paypal-us")).quotes_outstanding;
    assert_eq!(west.run(keyed("q-1", "10"), T0.plus_ms(1)), first, "the retry gets the same quote");
    assert_eq!(west.state.partner_usage(&pid("paypal-us")).quotes_outstanding, outstanding, "and no second one");
    // Used, then asked again: still the same quote (the key's answer).
    let paid = west.run(CommandBody::CreateTransfer(request("paypal-us", "t-1", &quote.id, wxp, "A")), T0.plus_ms(2));
    assert!(matches!(paid, Outcome::Transfer(_)), "{paid:?}");
    assert_eq!(west.run(keyed("q-1", "10"), T0.plus_ms(3)), first);
    // Another amount under the key, or a transfer under it: a conflict.
    let conflict = Outcome::Rejected(RejectCode::IdempotencyConflict);
    assert_eq!(west.run(keyed("q-1", "11"), T0.plus_ms(4)), conflict);
    let transfer = CommandBody::CreateTransfer(request("paypal-us", "q-1", &quote.id, wxp, "A"));
    assert_eq!(west.run(transfer, T0.plus_ms(5)), conflict);
    // Refused (below the corridor's minimum): nothing recorded, the key free.
    let before = west.state.clone();
    assert_eq!(west.run(keyed("q-2", "0.50"), T0.plus_ms(6)), Outcome::Rejected(RejectCode::AmountBelowMinimum));
    let mut unchanged = west.state.clone();
    // Only the clock and the proposer session's dedupe record moved.
    (unchanged.sessions, unchanged.clock) = (before.sessions.clone(), before.clock);
    assert_eq!(unchanged, before, "the refusal changed the state");
    assert!(matches!(west.run(keyed("q-2", "10"), T0.plus_ms(7)), Outcome::Quote(_)));
}

#[test]
fn a_region_moves_to_a_newer_protocol_only_upwards_and_audited() {
    use crate::version::Protocol;
    let (_, mut east) = mesh();
    assert_eq!(east.state.protocol(), Protocol::FIRST);
    let raise = |n| CommandBody::RaiseProtocol { to: Protocol::new(n).unwrap() };
    let operator = OperatorId::new("ops-1").unwrap();
    let audited = |n| CommandBody::ByOperator { operator: operator.clone(), command: Box::new(raise(n)) };
    // Not above the region's protocol: refused, nothing changes.
    assert_eq!(east.run(audited(1), T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    let before = east.state.clone();
    east.ok(audited(2), T0);
    assert_eq!(east.state.protocol(), Protocol::new(2).unwrap());
    assert_ne!(east.state, before, "the protocol is part of the state replicas compare");
    for n in [1, 2] {
        assert_eq!(east.run(audited(n), T0), Outcome::Rejected(RejectCode::ProtocolViolation));
    }
    assert_eq!(east.state.protocol(), Protocol::new(2).unwrap());
    // The raise is in the audit trail, with its operator.
    let raised = east.history.records().any(|(_, r)| {
        matches!(r, Record::Audited { command, outcome, .. }
            if **command == raise(2) && **outcome == Outcome::Done)
    });
    assert!(raised, "the raise is in the audit trail");
    // A batch names the newest protocol it raises to, wrapped or not.
    let batch = Batch::new(
        T0,
        vec![Command { id: east.next_id(), body: raise(3) }, Command { id: east.next_id(), body: audited(4) }],
    )
    .unwrap();
    assert_eq!(batch.raises_protocol_to(), Protocol::new(4));
}
