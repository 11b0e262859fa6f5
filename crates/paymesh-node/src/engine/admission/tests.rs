//! Admission's rules against a small world applied to a real `State`: the
//! bound, the record's answer, the join, refusals from the applied state.

use paymesh_core::command::{
    Batch, Command, CommandId, Decision, PayerDetails, PayerField, PrepareMessage, RefundRequest,
};
use paymesh_core::corridor::{CorridorId, CorridorTerms, QuoteAmount};
use paymesh_core::directory::{PayeeRoute, QrPrefix};
use paymesh_core::fx::{BasisPoints, FeeSchedule};
use paymesh_core::history::MemoryHistory;
use paymesh_core::id::{IdempotencyKey, PartnerId, QrPayload, QuoteId, RegionId, TopUpRef, TransferId};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money, RejectCode};

use super::*;

const T0: u64 = 1_700_000_000_000;

fn cny(units: u64) -> Money {
    Money::from_units(units, Currency::CNY).unwrap()
}

fn wallet() -> PartnerId {
    PartnerId::new("wallet").unwrap()
}

/// A region with a paying wallet, a shop's route and a corridor, as a
/// replica holds it, applying commands in entries.
struct World {
    state: State,
    history: MemoryHistory,
    index: u64,
}

impl World {
    fn new() -> World {
        let home = RegionId::new("home").unwrap();
        let mut world = World { state: State::new(home.clone()), history: MemoryHistory::new(), index: 0 };
        let shop = PartnerId::new("shop").unwrap();
        let partner = |id: &PartnerId, role| {
            let config = PartnerConfig {
                id: id.clone(),
                region: home.clone(),
                role,
                currency: Currency::CNY,
                net_debit_cap: cny(0),
            };
            CommandBody::UpsertPartner(config)
        };
        let fees = FeeSchedule::new(cny(0), BasisPoints::new(30).unwrap(), cny(0), cny(100)).unwrap();
        let terms = CorridorTerms::new(BasisPoints::ZERO, fees, cny(1), cny(50_000), cny(1_000_000)).unwrap();
        let prefix = QrPrefix::new("wxp://shop/").unwrap();
        let setup = vec![
            partner(&wallet(), PartnerRole::Payer),
            partner(&shop, PartnerRole::Payee),
            CommandBody::TopUp {
                partner: wallet(),
                amount: cny(1_000_000),
                reference: TopUpRef::new("prefund").unwrap(),
            },
            CommandBody::UpsertPayeeRoute(PayeeRoute { prefix, partner: shop, region: home, currency: Currency::CNY }),
            CommandBody::UpsertCorridor { corridor: CorridorId::parse("CNY:home->CNY:home").unwrap(), terms },
        ];
        for outcome in world.apply(setup) {
            assert_eq!(outcome, Outcome::Done);
        }
        world
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(T0 + self.index)
    }

    fn apply(&mut self, bodies: Vec<CommandBody>) -> Vec<Outcome> {
        self.index += 1;
        let commands = bodies
            .into_iter()
            .enumerate()
            .map(|(n, body)| Command { id: CommandId { session: 1, sequence: self.index * 1_000 + n as u64 }, body })
            .collect();
        let batch = Batch::new(self.now(), commands).unwrap();
        let applied = self.state.apply_batch(self.index, &batch, &self.history.at(self.index));
        self.history.write(self.index, applied.history);
        applied.outcomes
    }

    fn quote(&mut self) -> QuoteId {
        let body = CommandBody::CreateQuote {
            partner: wallet(),
            payee: QrPayload::new("wxp://shop/till-1").unwrap(),
            amount: QuoteAmount::Source(cny(10)),
        };
        match self.apply(vec![body]).remove(0) {
            Outcome::Quote(quote) => quote.id.clone(),
            other => panic!("no quote: {other:?}"),
        }
    }
}

fn request(key: &str, quote: QuoteId, reference: &str) -> TransferRequest {
    TransferRequest {
        partner: wallet(),
        idempotency_key: IdempotencyKey::new(key).unwrap(),
        quote,
        payee: QrPayload::new("wxp://shop/till-1").unwrap(),
        payer: PayerDetails {
            name: PayerField::new("Payer One").unwrap(),
            account: PayerField::new("account-1").unwrap(),
            reference: PayerField::new(reference).unwrap(),
        },
    }
}

#[test]
fn a_retry_joins_the_request_in_flight_and_is_answered_with_it() {
    let mut world = World::new();
    let quote = world.quote();
    let mut admission: Admission<u32> = Admission::default();
    let (state, recall, now) = ((&world.state.clone(), world.index), &world.history.at(world.index + 1), world.now());

    let Step::Propose { body, waiter: 1, ticket } =
        admission.transfer(request("k1", quote.clone(), "r"), 1, state, recall, now)
    else {
        panic!("the first request is proposed")
    };
    assert!(matches!(admission.transfer(request("k1", quote.clone(), "r"), 2, state, recall, now), Step::Joined));
    // Another body under the same key: proposed on its own, owning nothing.
    let Step::Propose { waiter: 3, ticket: other, .. } =
        admission.transfer(request("k1", quote.clone(), "other"), 3, state, recall, now)
    else {
        panic!("a different body is proposed")
    };
    assert_eq!(admission.in_flight(), 2);
    assert_eq!(admission.completed(other), Vec::<u32>::new());
    assert_eq!(admission.completed(ticket), vec![2], "the joined retry is answered with the first");
    assert_eq!(admission.in_flight(), 0);

    // Applied: a retry is answered from the record, without a proposal.
    let outcome = world.apply(vec![body]).remove(0);
    assert!(matches!(outcome, Outcome::Transfer(_)), "{outcome:?}");
    let recall = world.history.at(world.index + 1);
    match admission.transfer(request("k1", quote, "r"), 4, (&world.state, world.index), &recall, world.now()) {
        Step::Answer(4, answered) => assert_eq!(answered, outcome),
        other => panic!("not answered from the record: {other:?}"),
    }
    assert_eq!(admission.in_flight(), 0);
}

#[test]
fn what_the_state_would_refuse_is_answered_at_once_and_leaves_nothing_behind() {
    let world = World::new();
    let mut admission: Admission<u32> = Admission::default();
    let recall = world.history.at(world.index + 1);
    let unknown = QuoteId::new(RegionId::new("home").unwrap(), 999);
    match admission.transfer(request("k2", unknown.clone(), "r"), 1, (&world.state, world.index), &recall, world.now())
    {
        Step::Answer(1, Outcome::Rejected(code)) => assert_eq!(code, RejectCode::QuoteNotFound),
        other => panic!("not refused: {other:?}"),
    }
    // Nothing is pending under the key: the same request is checked again.
    assert!(matches!(
        admission.transfer(request("k2", unknown, "r"), 2, (&world.state, world.index), &recall, world.now()),
        Step::Answer(2, Outcome::Rejected(_))
    ));
    let foreign = CommandBody::CreateQuote {
        partner: wallet(),
        payee: QrPayload::new("wxp://nobody/till").unwrap(),
        amount: QuoteAmount::Source(cny(10)),
    };
    assert!(matches!(admission.quote(foreign, 3, &world.state, world.now()), Step::Answer(3, Outcome::Rejected(_))));
    assert_eq!(admission.in_flight(), 0);
}

#[test]
fn requests_in_flight_are_bounded() {
    let mut admission: Admission<u32> = Admission::new(2);
    for waiter in 0..2 {
        assert!(admission.admit().is_ok());
        assert!(matches!(admission.other(CommandBody::Tick, waiter), Step::Propose { .. }));
    }
    assert_eq!(admission.admit(), Err("too many of this partner's requests are in flight"));
    let Step::Propose { ticket, .. } = admission.other(CommandBody::Tick, 9) else { panic!("proposed") };
    admission.completed(ticket.clone());
    admission.completed(ticket);
    assert!(admission.admit().is_ok());
}

#[test]
fn a_new_request_to_a_refused_region_is_refused_and_a_request_made_before_is_let_through() {
    let mut world = World::new();
    let away = RegionId::new("away").unwrap();
    let fees = FeeSchedule::new(cny(0), BasisPoints::new(30).unwrap(), cny(0), cny(100)).unwrap();
    let terms = CorridorTerms::new(BasisPoints::ZERO, fees, cny(1), cny(50_000), cny(1_000_000)).unwrap();
    let route = PayeeRoute {
        prefix: QrPrefix::new("wxp://far/").unwrap(),
        partner: PartnerId::new("far-shop").unwrap(),
        region: away.clone(),
        currency: Currency::CNY,
    };
    let corridor = CorridorId::parse("CNY:home->CNY:away").unwrap();
    for outcome in
        world.apply(vec![CommandBody::UpsertPayeeRoute(route), CommandBody::UpsertCorridor { corridor, terms }])
    {
        assert_eq!(outcome, Outcome::Done);
    }
    let quote_to = |payee: &str| CommandBody::CreateQuote {
        partner: wallet(),
        payee: QrPayload::new(payee).unwrap(),
        amount: QuoteAmount::Source(cny(10)),
    };
    let (all, none) = (|region: &RegionId| Some(region.clone()), |_: &RegionId| None::<RegionId>);
    let recall = world.history.at(world.index + 1);
    assert_eq!(link_refuses(&quote_to("wxp://far/till"), &world.state, &recall, all), Some(away.clone()));
    assert_eq!(link_refuses(&quote_to("wxp://far/till"), &world.state, &recall, none), None);
    assert_eq!(link_refuses(&quote_to("wxp://shop/till-1"), &world.state, &recall, all), None, "this region");

    let quote = match world.apply(vec![quote_to("wxp://far/till")]).remove(0) {
        Outcome::Quote(quote) => quote.id.clone(),
        other => panic!("no quote: {other:?}"),
    };
    let mut far = request("k-far", quote, "r");
    far.payee = QrPayload::new("wxp://far/till").unwrap();
    let transfer = CommandBody::CreateTransfer(far);
    let recall = world.history.at(world.index + 1);
    assert_eq!(link_refuses(&transfer, &world.state, &recall, all), Some(away.clone()), "a new request");
    assert!(matches!(world.apply(vec![transfer.clone()]).remove(0), Outcome::Transfer(_)));
    let recall = world.history.at(world.index + 1);
    assert_eq!(link_refuses(&transfer, &world.state, &recall, all), None, "made before: its answer is given");

    // A refund of a payment from the refused region goes back there: a new
    // one is refused, one asked for before gets its answer.
    let paid = TransferId::new(away.clone(), 7);
    let prepare = PrepareMessage {
        transfer: paid.clone(),
        corridor: CorridorId::parse("CNY:away->CNY:home").unwrap(),
        source: cny(1_000),
        destination: cny(1_000),
        rate: paymesh_core::fx::Rate::ONE,
        payee: PartnerId::new("shop").unwrap(),
        merchant: paymesh_core::id::MerchantId::new("till").unwrap(),
        payer_token: paymesh_core::id::PayerToken::for_transfer(&paid),
        deadline: Timestamp::from_unix_ms(T0 + 5_000),
    };
    let decide = CommandBody::Decide { transfer: paid.clone(), decision: Decision::Commit };
    world.apply(vec![CommandBody::Prepare(prepare), decide]);
    let refund = CommandBody::CreateRefund(RefundRequest {
        partner: PartnerId::new("shop").unwrap(),
        idempotency_key: IdempotencyKey::new("refund-1").unwrap(),
        transfer: paid,
        amount: cny(500),
    });
    let recall = world.history.at(world.index + 1);
    assert_eq!(link_refuses(&refund, &world.state, &recall, all), Some(away.clone()), "a new refund");
    assert_eq!(link_refuses(&refund, &world.state, &recall, none), None);
    assert!(matches!(world.apply(vec![refund.clone()]).remove(0), Outcome::Refund(_)));
    let recall = world.history.at(world.index + 1);
    assert_eq!(link_refuses(&refund, &world.state, &recall, all), None, "asked for before: its answer is given");
}
