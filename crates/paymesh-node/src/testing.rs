//! Fixtures for tests and measurements of history retention, which needs
//! work older than the 400-day window: a node's data directory seeded with
//! a Raft log whose entries carry an old time. The node applies them as it
//! would have then (the hot state's clock is the entries' time), so the
//! history records they leave are as old as those of a region that ran back
//! then, and the node's own clock moves on from there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, EntryPayload, Membership, Vote};
use paymesh_core::command::{Batch, Command, CommandBody, CommandId, PayerDetails, PayerField, TransferRequest};
use paymesh_core::corridor::{CorridorId, CorridorTerms, QuoteAmount};
use paymesh_core::directory::{PayeeRoute, QrPrefix};
use paymesh_core::fx::{BasisPoints, FeeSchedule};
use paymesh_core::id::{IdempotencyKey, PartnerId, QrPayload, QuoteId, RegionId, TopUpRef, TransferId};
use paymesh_core::partner::{PartnerConfig, PartnerRole};
use paymesh_core::{Currency, Money, Timestamp};
use paymesh_store::raft_types::{Entry, LogId};
use paymesh_store::{LogStore, NodeAddr};

/// The paying partner of the seeded transfers.
pub const SEED_PAYER: &str = "wallet-a";
/// Their payee.
pub const SEED_PAYEE: &str = "merchant-net";
/// The QR prefix routed to the payee; transfer n pays `pay://merchant/m-n`.
pub const SEED_QR_PREFIX: &str = "pay://merchant/";
/// Each seeded transfer's amount, in US dollars (no fee).
pub const SEED_AMOUNT_USD: u64 = 10;
/// Commands per seeded entry.
const SEED_BATCH: u64 = 500;

/// What [`seed_old_log`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeded {
    /// The index of the last entry.
    pub last_index: u64,
    /// The seeded transfers' ids, in order.
    pub transfers: Vec<TransferId>,
    /// The time of the last entry.
    pub last_at: Timestamp,
}

fn fixture<T, E: std::fmt::Display>(what: &str, made: Result<T, E>) -> Result<T, String> {
    made.map_err(|e| format!("{what}: {e}"))
}

/// Write a Raft log into `data_dir` (a node's data directory, empty) for a
/// region of `members` (the first the leader of term 1): the membership
/// at index 0 (as `paymesh init` writes it), then at `at` the configuration of [`SEED_PAYER`] (funded),
/// [`SEED_PAYEE`], the region's domestic USD corridor and the route of
/// [`SEED_QR_PREFIX`], then `transfers` transfers of [`SEED_AMOUNT_USD`]
/// each (quoted and created in entries of up to 500, a millisecond apart).
/// The nodes apply it once one of them is elected: no `paymesh init`.
pub async fn seed_old_log(
    data_dir: &Path,
    region: &RegionId,
    members: &[(u64, NodeAddr)],
    at: Timestamp,
    transfers: u64,
) -> Result<Seeded, String> {
    let leader = members.first().ok_or("no members")?.0;
    let log_id = |index: u64| LogId::new(CommittedLeaderId::new(1, leader), index);
    let voters: BTreeSet<u64> = members.iter().map(|(id, _)| *id).collect();
    let nodes: BTreeMap<u64, NodeAddr> = members.iter().cloned().collect();
    // Where openraft's own initialisation writes it: index 0, term 0.
    let membership = EntryPayload::Membership(Membership::new(vec![voters], nodes));
    let mut entries = vec![Entry { log_id: LogId::new(CommittedLeaderId::new(0, 0), 0), payload: membership }];
    let mut sequence = 0;
    let mut command = |body: CommandBody| {
        sequence += 1;
        Command { id: CommandId { session: 0x5eed, sequence }, body }
    };
    let usd = |units: u64| fixture("an amount", Money::from_units(units, Currency::USD));
    let payer = fixture("a partner id", PartnerId::new(SEED_PAYER))?;
    let payee = fixture("a partner id", PartnerId::new(SEED_PAYEE))?;
    let corridor = fixture("a corridor", CorridorId::parse(&format!("USD:{region}->USD:{region}")))?;
    let terms = fixture(
        "corridor terms",
        CorridorTerms::new(
            BasisPoints::ZERO,
            FeeSchedule::free(Currency::USD),
            usd(1)?,
            usd(100_000)?,
            usd(10u64.pow(14))?,
        ),
    )?;
    let partner = |id: &PartnerId, role| PartnerConfig {
        id: id.clone(),
        region: region.clone(),
        role,
        currency: Currency::USD,
        net_debit_cap: Money::zero(Currency::USD),
    };
    let funding = (transfers + 10) * SEED_AMOUNT_USD * 100;
    let configure = vec![
        command(CommandBody::UpsertPartner(partner(&payer, PartnerRole::Payer))),
        command(CommandBody::UpsertPartner(partner(&payee, PartnerRole::Payee))),
        command(CommandBody::TopUp {
            partner: payer.clone(),
            amount: usd(funding)?,
            reference: fixture("a reference", TopUpRef::new("seed-funding"))?,
        }),
        command(CommandBody::UpsertCorridor { corridor, terms }),
        command(CommandBody::UpsertPayeeRoute(PayeeRoute {
            prefix: fixture("a prefix", QrPrefix::new(SEED_QR_PREFIX))?,
            partner: payee.clone(),
            region: region.clone(),
            currency: Currency::USD,
        })),
    ];
    let mut now = at;
    let batch = |commands: Vec<Command>, now: Timestamp, entries: &mut Vec<Entry>| -> Result<(), String> {
        let batch = fixture("a batch", Batch::new(now, commands))?;
        let index = entries.len() as u64;
        entries.push(Entry { log_id: log_id(index), payload: EntryPayload::Normal(batch.into()) });
        Ok(())
    };
    batch(configure, now, &mut entries)?;
    let qr = |n: u64| fixture("a QR payload", QrPayload::new(format!("{SEED_QR_PREFIX}m-{n}")));
    let mut ids = Vec::new();
    let mut first = 1;
    while first <= transfers {
        let last = (first + SEED_BATCH - 1).min(transfers);
        let mut quotes = Vec::new();
        let mut creates = Vec::new();
        for n in first..=last {
            let amount = QuoteAmount::Source(usd(SEED_AMOUNT_USD)?);
            quotes.push(command(CommandBody::CreateQuote { partner: payer.clone(), payee: qr(n)?, amount }));
            let field = |text: String| fixture("a payer field", PayerField::new(text));
            creates.push(command(CommandBody::CreateTransfer(TransferRequest {
                partner: payer.clone(),
                idempotency_key: fixture("a key", IdempotencyKey::new(format!("seed-{n}")))?,
                quote: QuoteId::new(region.clone(), n),
                payee: qr(n)?,
                payer: PayerDetails {
                    name: field(format!("Payer {n}"))?,
                    account: field(format!("account-{n}"))?,
                    reference: field(format!("invoice-{n}"))?,
                },
            })));
            ids.push(TransferId::new(region.clone(), n));
        }
        now = now.plus_ms(1);
        batch(quotes, now, &mut entries)?;
        now = now.plus_ms(1);
        batch(creates, now, &mut entries)?;
        first = last + 1;
    }
    let last_index = entries.len() as u64 - 1;
    let mut log = fixture("the Raft log", LogStore::open(&data_dir.join(crate::node::RAFT_LOG_DIR)))?;
    fixture("the vote", log.save_vote(&Vote::new(1, leader)).await)?;
    for chunk in entries.chunks(64) {
        let (done, durable) = mpsc::channel();
        fixture(
            "an append",
            log.append_entries(chunk.to_vec(), Box::new(move |result| done.send(result).unwrap_or_default())),
        )?;
        fixture("an append", durable.recv_timeout(Duration::from_secs(30)).map_err(|e| e.to_string()))?
            .map_err(|e| format!("an append: {e}"))?;
    }
    Ok(Seeded { last_index, transfers: ids, last_at: now })
}
