//! What the hot state holds per transfer in flight: a measurement, run by
//! hand (`cargo test --release -p paymesh-core --test hot_state_memory --
//! --ignored --nocapture`): the growth of the test process's resident
//! memory while transfers are added and none finishes, divided by them (the
//! allocator's own slack included, as a node's would be).

#![allow(clippy::unwrap_used)]

use paymesh_core::command::{Batch, Command, CommandBody, CommandId, PayerDetails, PayerField, TransferRequest};
use paymesh_core::corridor::{CorridorId, CorridorTerms, QuoteAmount};
use paymesh_core::directory::{PayeeRoute, QrPrefix};
use paymesh_core::fx::{BasisPoints, FeeSchedule, FxRate, Rate};
use paymesh_core::history::NoHistory;
use paymesh_core::id::{IdempotencyKey, PartnerId, QrPayload, RegionId, TopUpRef};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money, Outcome, State, Timestamp};

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}

struct Region {
    state: State,
    sequence: u64,
}

impl Region {
    fn apply(&mut self, bodies: Vec<CommandBody>, now: Timestamp) -> Vec<Outcome> {
        let commands = bodies
            .into_iter()
            .map(|body| {
                self.sequence += 1;
                Command { id: CommandId { session: 1, sequence: self.sequence }, body }
            })
            .collect();
        self.state.apply_batch(self.sequence, &Batch::new(now, commands).unwrap(), &NoHistory).outcomes
    }

    /// `count` cross-border payments from `payers` partners, each left in
    /// flight (prepared nowhere yet), numbered from `first`.
    fn pay(&mut self, first: u64, count: u64, payers: u64, now: Timestamp) {
        for chunk in (first..first + count).collect::<Vec<_>>().chunks(500) {
            let quotes = chunk
                .iter()
                .map(|n| CommandBody::CreateQuote {
                    partner: payer(n % payers),
                    payee: QrPayload::new(format!("wxp://shop{}", n % 1_000)).unwrap(),
                    amount: QuoteAmount::Source(Money::from_units(10 + n % 500, Currency::USD).unwrap()),
                })
                .collect();
            let quoted = self.apply(quotes, now);
            let transfers = chunk
                .iter()
                .zip(quoted)
                .map(|(n, quote)| {
                    let Outcome::Quote(quote) = quote else { panic!("a quote refused: {quote:?}") };
                    CommandBody::CreateTransfer(TransferRequest {
                        partner: payer(n % payers),
                        idempotency_key: IdempotencyKey::new(format!("order-{n:010}")).unwrap(),
                        quote: quote.id.clone(),
                        payee: QrPayload::new(format!("wxp://shop{}", n % 1_000)).unwrap(),
                        payer: PayerDetails {
                            name: PayerField::new("Alice Example").unwrap(),
                            account: PayerField::new(format!("acct-{n:08}")).unwrap(),
                            reference: PayerField::new(format!("invoice-{n}")).unwrap(),
                        },
                    })
                })
                .collect();
            for outcome in self.apply(transfers, now) {
                assert!(matches!(outcome, Outcome::Transfer(_)), "{outcome:?}");
            }
        }
    }
}

fn payer(n: u64) -> PartnerId {
    PartnerId::new(format!("wallet-{n}")).unwrap()
}

fn usd(units: u64) -> Money {
    Money::from_units(units, Currency::USD).unwrap()
}

#[test]
#[ignore = "measurement, run by hand"]
fn measure_the_hot_states_memory_per_transfer_in_flight() {
    const PAYERS: u64 = 8;
    const STEP: u64 = 8_000;
    let home = RegionId::new("us-west").unwrap();
    let away = RegionId::new("cn-east").unwrap();
    let now = Timestamp::from_unix_ms(1_700_000_000_000);
    let mut region = Region { state: State::new(home.clone()), sequence: 0 };
    let mut setup = Vec::new();
    for n in 0..PAYERS {
        let config = PartnerConfig {
            id: payer(n),
            region: home.clone(),
            role: PartnerRole::Payer,
            currency: Currency::USD,
            net_debit_cap: usd(0),
        };
        setup.push(CommandBody::UpsertPartner(config));
        let reference = TopUpRef::new(format!("prefund-{n}")).unwrap();
        setup.push(CommandBody::TopUp { partner: payer(n), amount: usd(1_000_000_000), reference });
    }
    let route = PayeeRoute {
        prefix: QrPrefix::new("wxp://").unwrap(),
        partner: PartnerId::new("wechat-cn").unwrap(),
        region: away,
        currency: Currency::CNY,
    };
    setup.push(CommandBody::UpsertPayeeRoute(route));
    let corridor = CorridorId::parse("USD:us-west->CNY:cn-east").unwrap();
    let fees = FeeSchedule::new(usd(0), BasisPoints::new(100).unwrap(), usd(0), usd(10)).unwrap();
    let terms =
        CorridorTerms::new(BasisPoints::new(50).unwrap(), fees, usd(1), usd(5_000), usd(1_000_000_000)).unwrap();
    setup.push(CommandBody::UpsertCorridor { corridor: corridor.clone(), terms });
    let rate =
        FxRate::new(Currency::USD, Currency::CNY, Rate::parse("7.2").unwrap(), now, now.plus_ms(3_600_000)).unwrap();
    setup.push(CommandBody::SetFxRate { corridor, rate });
    for outcome in region.apply(setup, now) {
        assert_eq!(outcome, Outcome::Done);
    }
    // The first step fills the command session's bounded memory of
    // outcomes, so that the steps measured add only transfers.
    region.pay(0, STEP, PAYERS, now);
    let before = resident_bytes();
    region.pay(STEP, STEP, PAYERS, now);
    let after = resident_bytes();
    let in_flight = region.state.transfers().count();
    assert_eq!(in_flight as u64, 2 * STEP, "every transfer still in flight");
    let image = postcard::to_stdvec(&region.state).unwrap().len();
    println!(
        "{in_flight} cross-border transfers in flight: {:.0} bytes resident per transfer (with its used quote and outbox \
         message), the state's image {:.0} bytes per transfer",
        (after - before) as f64 / STEP as f64,
        image as f64 / in_flight as f64,
    );
}
