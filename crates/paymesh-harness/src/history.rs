//! What a chaos run records, and what the checkers read: every request the
//! workload made with its times and outcome, the faults injected, and, after
//! the faults healed, what every region holds.
//!
//! Times are milliseconds since the run started. Amounts are exact decimals
//! with their currency; money is never a float here either.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An amount and its currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// The exact amount, in major units (`12.34`).
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
}

/// How a request ended, from the client's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Answered: the request took effect (or was a read that returned).
    Ok,
    /// Answered with a definite refusal: the request took no effect (a
    /// business reject code, INVALID_ARGUMENT, FAILED_PRECONDITION, a
    /// fail-fast UNAVAILABLE from the breaker, RESOURCE_EXHAUSTED).
    Failed {
        /// The code or status, for the report.
        reason: String,
    },
    /// No answer (timeout, connection lost, an UNAVAILABLE or INTERNAL the
    /// client cannot classify): the request may or may not have taken effect.
    Unknown {
        /// What the client saw.
        reason: String,
    },
}

/// Final and intermediate transfer states, as the partner API names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Recorded, nothing reserved yet.
    Received,
    /// Payer's debit reserved; the payee region has not prepared.
    Reserved,
    /// The payee region holds the credit pending; awaiting the decision.
    Prepared,
    /// Done on this side: posted.
    Committed,
    /// Undone on this side: reservations released.
    Aborted,
}

impl TransferState {
    /// Committed or aborted.
    pub fn is_final(self) -> bool {
        matches!(self, TransferState::Committed | TransferState::Aborted)
    }
}

/// One request the workload made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The workload's client (one per concurrent worker) that made it.
    pub client: u32,
    /// When it was sent, ms since the run started.
    pub invoked_ms: u64,
    /// When its answer (or the client's giving up) came, ms since the run started.
    pub completed_ms: u64,
    /// What was asked and, where answered, what came back.
    pub request: Request,
    /// How it ended.
    pub outcome: Outcome,
}

/// What the workload asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// CreateTransfer after a quote, or CreatePayment bounded by a quote's
    /// total (the quote itself is not recorded).
    CreateTransfer {
        /// The region the payer partner called.
        region: String,
        /// The payer partner.
        partner: String,
        /// The idempotency key; the same key may be sent several times
        /// (retries after a timeout, deliberate duplicates).
        idempotency_key: String,
        /// The payee partner and its region.
        payee_partner: String,
        /// The payee's region (equal to `region` for a domestic transfer).
        payee_region: String,
        /// Debited from the payer: source amount plus fee, as quoted.
        debit: Amount,
        /// Credited to the payee, as quoted.
        credit: Amount,
        /// From the answer, when `Ok`: the transfer's id and state.
        transfer_id: Option<String>,
        /// From the answer, when `Ok`.
        state: Option<TransferState>,
    },
    /// A CreateQuote that got no quote, after which the payment was not
    /// tried: refused for good (a final answer: the payee's region known
    /// unreachable, say), or no answer within the SDK's retries (the
    /// partner's payment could not be made; the blast radius shows how
    /// long). Quotes answered are not recorded: a quote moves no money, and
    /// its payment is recorded instead.
    CreateQuote {
        /// The region the payer partner called.
        region: String,
        /// The payer partner.
        partner: String,
        /// The payee's region.
        payee_region: String,
    },
    /// GetTransfer by id.
    GetTransfer {
        /// The region called.
        region: String,
        /// The partner calling.
        partner: String,
        /// The transfer asked for.
        transfer_id: String,
        /// From the answer, when `Ok`.
        state: Option<TransferState>,
    },
    /// GetPosition of the calling partner in one currency.
    GetPosition {
        /// The region called.
        region: String,
        /// The partner calling.
        partner: String,
        /// From the answer, when `Ok`.
        position: Option<Position>,
    },
    /// One connection of StreamEvents, resumed from a cursor; the events it
    /// delivered before it ended.
    Events {
        /// The region called.
        region: String,
        /// The partner calling.
        partner: String,
        /// The cursor it resumed after (0 = from the start).
        from_cursor: u64,
        /// Each event delivered: (cursor, transfer id, state).
        events: Vec<(u64, String, TransferState)>,
    },
}

/// A partner's position in one currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The currency of every amount here.
    pub currency: String,
    /// Settled balance: top-ups minus committed debits plus committed credits.
    pub posted_balance: Decimal,
    /// Reserved debits of transfers not yet final.
    pub pending_debits: Decimal,
    /// Prepared credits of transfers not yet final.
    pub pending_credits: Decimal,
    /// How far the posted balance may go below zero.
    pub net_debit_cap: Decimal,
}

/// A fault the nemesis injected, from start to heal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Which nemesis (`kill`, `kill-leader`, `pause`, `isolate`,
    /// `cut-region`, `wan`, `restart-region`).
    pub nemesis: String,
    /// What it hit (`us-west/2`, `cn-east`, `us-west<->cn-east`).
    pub target: String,
    /// When it started, ms since the run started.
    pub start_ms: u64,
    /// When it was healed, ms since the run started.
    pub end_ms: u64,
    /// How long after the heal the mesh was live again (every region led
    /// and answering), ms; `None` if it did not recover within the bound.
    pub recovered_after_ms: Option<u64>,
    /// For a killed leader: how long after the kill another node of its
    /// region said it led, ms; `None` for other faults, or if none did
    /// before the heal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elected_after_ms: Option<u64>,
}

/// A transfer as one region holds it after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTransfer {
    /// The transfer id (the same in both regions of a cross-border transfer).
    pub transfer_id: String,
    /// The payer partner's idempotency key (known in the origin region only;
    /// empty in the payee region).
    pub idempotency_key: String,
    /// The payer partner; empty in the payee region of a cross-border
    /// transfer, which never learns who paid.
    pub payer_partner: String,
    /// The payee partner.
    pub payee_partner: String,
    /// The origin (payer's) region.
    pub source_region: String,
    /// The payee's region.
    pub destination_region: String,
    /// The state in this region.
    pub state: TransferState,
    /// Source amount plus fee, debited from the payer. The payee region of a
    /// cross-border transfer does not know the payer's fee: there it is the
    /// source amount alone.
    pub debit: Amount,
    /// Destination amount, credited to the payee.
    pub credit: Amount,
}

/// A refund as one partner of one region sees it after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRefund {
    /// The refund's id (the same in both regions of a cross-border refund).
    pub refund_id: String,
    /// The transfer it refunds.
    pub transfer_id: String,
    /// The partner whose view this is.
    pub partner: String,
    /// Whether that partner is the transfer's payer, credited back (else the
    /// payee that asked for the refund and is debited).
    pub payer_view: bool,
    /// The state on this side.
    pub state: TransferState,
    /// What the payee gives back, in the transfer's destination currency.
    pub debited: Amount,
    /// What the payer is credited, in the transfer's source currency.
    pub credited: Amount,
}

/// One replica's state after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The node id within its region.
    pub node_id: u64,
    /// Its last applied log index.
    pub applied_index: u64,
    /// The digest of its state machine at that index (hex).
    pub digest: String,
}

/// Per-currency totals of a region's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotals {
    /// Posted debits.
    pub debits_posted: Decimal,
    /// Posted credits.
    pub credits_posted: Decimal,
    /// Pending debits.
    pub debits_pending: Decimal,
    /// Pending credits.
    pub credits_pending: Decimal,
}

/// What one region holds after healing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionObservation {
    /// Every transfer this region holds (as origin or as payee).
    pub transfers: Vec<ObservedTransfer>,
    /// Ledger totals per currency.
    pub ledger: BTreeMap<String, LedgerTotals>,
    /// Every partner's positions, by partner then currency.
    pub positions: BTreeMap<String, BTreeMap<String, Position>>,
    /// Top-ups the workload's setup made, by partner then currency (the
    /// opening posted balance).
    pub top_ups: BTreeMap<String, BTreeMap<String, Decimal>>,
    /// Every replica of the region.
    pub replicas: Vec<Replica>,
    /// Every refund the region's partners take part in, once per partner
    /// view (a same-region refund is seen by its payee and its payer).
    #[serde(default)]
    pub refunds: Vec<ObservedRefund>,
    /// The region's corridors whose refunds credit payers at the current
    /// rate rather than the payment's (`USD:us-west->CNY:cn-east`): their
    /// refunds may give a payer back more than it paid.
    #[serde(default)]
    pub current_rate_corridors: Vec<String>,
}

/// What the mesh holds once the faults healed and the run waited for
/// in-flight transfers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// When the last fault healed, ms since the run started.
    pub healed_ms: u64,
    /// When every transfer had reached a final state in every region, ms
    /// since the run started; `None` if some had not by `deadline_ms`.
    pub resolved_ms: Option<u64>,
    /// How long after the heal every transfer must be final.
    pub resolve_bound_ms: u64,
    /// Each region's holdings, by region.
    pub regions: BTreeMap<String, RegionObservation>,
    /// Every region's settlement windows, read after the observation and
    /// a last close; `None` when they were not gathered.
    #[serde(default)]
    pub settlement: Option<SettlementObservation>,
}

/// The settlement windows of a mesh, every one since each region began,
/// and the cross-checks of every region pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementObservation {
    /// Each region's windows, in number order.
    pub windows: BTreeMap<String, Vec<ObservedWindow>>,
    /// The cross-check of each window of each coordinator region with each
    /// other region.
    pub pairs: Vec<ObservedPair>,
}

/// One settlement window as its region reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedWindow {
    /// Its number.
    pub number: u64,
    /// Whether it was closed.
    pub closed: bool,
    /// Each account's net over it.
    pub positions: Vec<ObservedNet>,
}

/// One account's net over a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNet {
    /// `partner:<id>:<CUR>`, `clearing:<region>:<CUR>` or `fees:<CUR>`.
    pub account: String,
    /// The net.
    pub net: Amount,
}

/// One direction of a region pair's cross-check of a window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedPair {
    /// The coordinating region.
    pub from: String,
    /// The other region.
    pub to: String,
    /// `from`'s window.
    pub window: u64,
    /// Whether both sides count the same figures.
    pub agree: bool,
    /// Commit decisions of the window still on their way.
    pub in_flight: u64,
    /// The cross-check as a line for people.
    pub line: String,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The seed the schedule and workload came from.
    pub seed: u64,
    /// `docker`, `process` or `sim`.
    pub backend: String,
    /// How long the workload ran, ms.
    pub duration_ms: u64,
    /// Every request, in completion order.
    pub ops: Vec<Op>,
    /// Every fault, in start order.
    pub faults: Vec<Fault>,
    /// What the mesh held at the end; `None` if the run could not observe it
    /// (which the checkers count as a violation).
    pub observation: Option<Observation>,
    /// The scan of every node's files for other regions' payer data, made
    /// once the mesh stopped; `None` in the simulation, which has no files
    /// (for a run of the process or container backend, its absence is a
    /// violation of the `data_locality` checker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityScan>,
    /// What each partner's webhook receiver got, for a run that registered
    /// webhooks (the process backend); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<WebhookObservation>>,
}

/// One partner's webhook over a run: what its region says it holds, and
/// what the partner's receiver accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookObservation {
    /// The partner's region.
    pub region: String,
    /// The partner.
    pub partner: String,
    /// The newest cursor when the webhook was registered: deliveries start
    /// after it.
    pub registered_after: u64,
    /// The partner's newest event cursor at the end of the run.
    pub newest: u64,
    /// The webhook's state at the end (`ACTIVE`, `DEAD_LETTERED`).
    pub state: String,
    /// The cursor of every event in every delivery the receiver accepted,
    /// in arrival order, repeats included.
    pub delivered: Vec<u64>,
    /// Deliveries whose signature did not verify with the webhook's secret.
    pub bad_signatures: usize,
    /// Requests the receiver refused on purpose (its outages).
    pub refused: usize,
}

/// The scan of a run's files for payer personal data out of its region:
/// every file of every node of every region, read as raw bytes and searched
/// for every region's payer marker (`workload::pii_marker`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalityScan {
    /// The markers searched for, by the region whose payers carry them.
    pub markers: BTreeMap<String, String>,
    /// What was read, by region.
    pub regions: BTreeMap<String, RegionScan>,
    /// Every file holding another region's marker, with that region.
    pub found: Vec<MarkerFound>,
    /// What could not be read or reached, and why: each a file or a place
    /// a node may have written to that was not scanned.
    pub not_scanned: Vec<String>,
    /// How long the scan took, ms.
    pub elapsed_ms: u64,
}

/// What the scan read of one region's files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionScan {
    /// Files and bytes read, by node id (`1`, `2`, `3`), and under
    /// [`REGION_FILES`] those of the region that belong to no one node
    /// (its certificates, say).
    pub nodes: BTreeMap<String, FilesRead>,
    /// Occurrences of the region's own marker in its files: evidence that
    /// the scan sees payer data where it belongs.
    pub own_markers: u64,
}

/// The owner of a region's files that belong to no one node.
pub const REGION_FILES: &str = "region";

/// Files and bytes read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesRead {
    /// Files read to their end.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
}

impl RegionScan {
    /// Files read in all.
    pub fn files(&self) -> u64 {
        self.nodes.values().map(|n| n.files).sum()
    }

    /// Bytes read in all.
    pub fn bytes(&self) -> u64 {
        self.nodes.values().map(|n| n.bytes).sum()
    }
}

/// Another region's marker in a file of a region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerFound {
    /// The region holding the file.
    pub region: String,
    /// The node it belongs to, or [`REGION_FILES`].
    pub node: String,
    /// The file.
    pub path: String,
    /// The region whose payers' marker it holds.
    pub marker_region: String,
    /// Occurrences of the marker in the file.
    pub count: u64,
    /// Byte offsets of the first occurrences (at most
    /// `locality::OFFSETS_KEPT`).
    pub offsets: Vec<u64>,
}

impl LocalityScan {
    /// Files read in all.
    pub fn files(&self) -> u64 {
        self.regions.values().map(RegionScan::files).sum()
    }

    /// Bytes read in all.
    pub fn bytes(&self) -> u64 {
        self.regions.values().map(RegionScan::bytes).sum()
    }

    /// Occurrences of other regions' markers in all.
    pub fn hits(&self) -> u64 {
        self.found.iter().map(|f| f.count).sum()
    }
}

impl Outcome {
    /// Whether the request was answered with success.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// Whether the request may have taken effect (answered with success, or
    /// not answered at all).
    pub fn may_have_taken_effect(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

impl Request {
    /// Every kind of request, in the order reports list them.
    pub const KINDS: [&'static str; 5] = ["create_transfer", "get_transfer", "get_position", "events", "create_quote"];

    /// The request's kind, as it is serialised (`create_transfer`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::CreateTransfer { .. } => Self::KINDS[0],
            Request::GetTransfer { .. } => Self::KINDS[1],
            Request::GetPosition { .. } => Self::KINDS[2],
            Request::Events { .. } => Self::KINDS[3],
            Request::CreateQuote { .. } => Self::KINDS[4],
        }
    }

    /// The region the request was sent to.
    pub fn region(&self) -> &str {
        match self {
            Request::CreateTransfer { region, .. }
            | Request::GetTransfer { region, .. }
            | Request::GetPosition { region, .. }
            | Request::Events { region, .. }
            | Request::CreateQuote { region, .. } => region,
        }
    }
}

impl ObservedTransfer {
    /// Whether payer and payee are in different regions.
    pub fn is_cross_border(&self) -> bool {
        self.source_region != self.destination_region
    }

    /// Whether this record, held by `region`, is the transfer's origin side
    /// (the payer's; for a domestic transfer, its only record).
    pub fn is_origin_side_in(&self, region: &str) -> bool {
        self.source_region == region
    }

    /// Whether this record, held by `region`, is the payee side of a
    /// cross-border transfer.
    pub fn is_payee_side_in(&self, region: &str) -> bool {
        self.source_region != region && self.destination_region == region
    }
}

impl Observation {
    /// Every transfer record with the region holding it.
    pub fn transfers(&self) -> impl Iterator<Item = (&str, &ObservedTransfer)> + '_ {
        self.regions.iter().flat_map(|(region, held)| held.transfers.iter().map(move |t| (region.as_str(), t)))
    }
}
