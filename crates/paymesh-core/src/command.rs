//! Commands: the only inputs that change a region's state.
//!
//! A [`Batch`] is the payload of one Raft log entry: the leader's timestamp and
//! up to [`BATCH_COMMANDS_MAX`] commands gathered by group commit. Every command
//! carries a [`CommandId`] (the proposer's session and a sequence number), so a
//! command proposed twice is applied once and its duplicate returns the original
//! outcome.
//!
//! Every field is a validated type, so a command that deserialises is well
//! formed; whether it is acceptable given the state is decided by `apply`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::corridor::{CorridorId, CorridorTerms, QuoteAmount, RefundRate};
use crate::directory::{PayeeRoute, QrPrefix};
use crate::fx::{FxRate, Rate};
use crate::id::{
    IdError, IdempotencyKey, MerchantId, OperatorId, PartnerId, PayerToken, QrPayload, QuoteId, RegionId, TopUpRef,
    TransferId,
};
use crate::ledger::AccountId;
use crate::limits::{BATCH_COMMANDS_MAX, PAYER_FIELD_BYTES_MAX};
use crate::money::Money;
use crate::outcome::RejectCode;
use crate::partner::{BusinessStatus, PartnerConfig, PartnerLimits};
use crate::reconcile::{ReconcileStep, RemoteRecord};
use crate::serde_text::serialize_as_text;
use crate::settings::RegionSetting;
use crate::time::Timestamp;
use crate::version::Protocol;
use crate::webhook::{WebhookSecret, WebhookUrl};

/// Names a command: the proposer session that created it and its sequence
/// number in that session. Applying the same id twice is a no-op that returns
/// the original outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// The proposer session (for example a node's incarnation).
    pub session: u64,
    /// Position within the session, increasing.
    pub sequence: u64,
}

/// A command and its identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Its identity, for dedupe.
    pub id: CommandId,
    /// What to do.
    pub body: CommandBody,
}

/// Everything that can change a region's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandBody {
    // --- operators -------------------------------------------------------
    /// Create or update a partner of this region.
    UpsertPartner(PartnerConfig),
    /// Suspend or reactivate a partner.
    SetPartnerStatus {
        /// The partner.
        partner: PartnerId,
        /// The new status.
        status: BusinessStatus,
    },
    /// Create or update a corridor whose source is this region.
    UpsertCorridor {
        /// The corridor.
        corridor: CorridorId,
        /// Its pricing and limits.
        terms: CorridorTerms,
    },
    /// Suspend or reactivate a corridor.
    SetCorridorStatus {
        /// The corridor.
        corridor: CorridorId,
        /// The new status.
        status: BusinessStatus,
    },
    /// Add a mid rate for a converting corridor, valid for its window.
    SetFxRate {
        /// The corridor.
        corridor: CorridorId,
        /// The rate and its validity window.
        rate: FxRate,
    },
    /// Prefund a partner's position (money arrived by bank settlement).
    TopUp {
        /// The partner.
        partner: PartnerId,
        /// How much, in the partner's currency.
        amount: Money,
        /// The operator's reference; repeating it with the same partner and
        /// amount is a no-op, with anything else a conflict.
        reference: TopUpRef,
    },
    /// Add or replace a payee route.
    UpsertPayeeRoute(PayeeRoute),
    /// Remove a payee route.
    RemovePayeeRoute {
        /// The route's prefix.
        prefix: QrPrefix,
    },

    // --- partners ----------------------------------------------------------
    /// Price a payment to the payee a QR code names.
    CreateQuote {
        /// The paying partner (from its certificate).
        partner: PartnerId,
        /// The payee's QR payload.
        payee: QrPayload,
        /// The amount fixed by the payer or by the merchant.
        amount: QuoteAmount,
    },
    /// Create a transfer from a quote.
    CreateTransfer(TransferRequest),

    // --- coordinator side: answers from the payee region --------------------
    /// The payee region answered a Prepare.
    PrepareReplied {
        /// The transfer.
        transfer: TransferId,
        /// Its answer.
        reply: PrepareReply,
    },
    /// The payee region acknowledged a decision.
    DecisionAcked {
        /// The region that acknowledged (the decision's destination). Named
        /// here because the transfer's own record may already be gone: a
        /// decision can wait longer than finished transfers are retained.
        region: RegionId,
        /// The transfer.
        transfer: TransferId,
    },

    // --- participant side: messages from the payer region -------------------
    /// Prepare the payee's side of a cross-border transfer.
    Prepare(PrepareMessage),
    /// Apply the coordinator's decision.
    Decide {
        /// The transfer.
        transfer: TransferId,
        /// Commit or abort.
        decision: Decision,
    },

    // --- the leader's housekeeping -----------------------------------------
    /// Abort transfers past their deadline and purge expired records, a bounded
    /// amount of work at a time.
    Tick,

    // --- operators (added later; variants are appended to keep the log's encoding) --
    /// Set a partner's request rate and caps (see [`PartnerLimits`]).
    SetPartnerLimits {
        /// The partner.
        partner: PartnerId,
        /// Its new limits.
        limits: PartnerLimits,
    },
    /// An operator command with who issued it: applied as `command` and
    /// audited with the operator's name ([`Record::Audited`]). Only an
    /// operator command may be wrapped, once; anything else is refused as
    /// a protocol violation.
    ///
    /// [`Record::Audited`]: crate::history::Record::Audited
    ByOperator {
        /// Who.
        operator: OperatorId,
        /// What.
        command: Box<CommandBody>,
    },
    /// Change a region-wide setting ([`crate::settings`]); a value out of
    /// its bounds is refused as a protocol violation (the admin API checks
    /// it first).
    SetRegionSetting(RegionSetting),

    // --- partners (added later) ---------------------------------------------
    /// Create a transfer from a quote, as [`CommandBody::CreateTransfer`],
    /// with the leader's word that the request's idempotency key had no
    /// record in this region through log index `fresh_through` (its applied
    /// index when it looked): a replica applying it looks for the key only
    /// among the keys recorded since, which it keeps in memory while they
    /// are recent, instead of in history (`crate::state`'s `recent` module).
    CreateFreshTransfer {
        /// The request.
        request: TransferRequest,
        /// The last index through which the key had no record.
        fresh_through: u64,
    },
    /// Withdraw prefunding from a partner's position (money leaving by bank
    /// settlement): the counterpart of [`CommandBody::TopUp`]. Never more
    /// than the position holds beyond its reserved debits: the net debit
    /// cap is credit for payments, not money to withdraw.
    FundOut {
        /// The partner.
        partner: PartnerId,
        /// How much, in the partner's currency.
        amount: Money,
        /// The operator's reference (its own space, apart from top-ups');
        /// repeating it with the same partner and amount is a no-op, with
        /// anything else a conflict.
        reference: TopUpRef,
    },

    // --- refunds (added later) ----------------------------------------------
    /// A payee partner gives back some or all of a committed payment it
    /// received ([`RefundRequest`]).
    CreateRefund(RefundRequest),
    /// Prepare the paying side's half of a refund that another region
    /// coordinates: credit the original payer back ([`RefundPrepare`]).
    PrepareRefund(RefundPrepare),
    /// An operator reverses a payment its payee received here (a dispute's
    /// outcome): a refund, on the payee's behalf, of all that earlier
    /// refunds left, whatever the refund window and the payee's status.
    /// Its refund's idempotency key is the payment's (`reversal/<id>`), so
    /// a payment is reversed once: a reversal asked again answers with the
    /// first. Audited, as every operator command, with who and `reason`.
    ReverseTransfer {
        /// The payment.
        transfer: TransferId,
        /// Why (the dispute's reference, say).
        reason: Reason,
    },

    // --- settlement (added later) -------------------------------------------
    /// Close the open settlement window and open the next
    /// ([`crate::settlement`]).
    CloseSettlementWindow,
    /// Record an account's net of a closed window as settled by a bank
    /// transfer: a partner's position or the clearing account against
    /// another region.
    RecordSettlement {
        /// The closed window.
        window: u64,
        /// The account settled.
        account: AccountId,
        /// The bank's reference.
        reference: TopUpRef,
    },
    /// Apply the coordinator's decision, as [`CommandBody::Decide`], with
    /// the coordinator's settlement window it was made in.
    DecideInWindow {
        /// The transfer.
        transfer: TransferId,
        /// Commit or abort.
        decision: Decision,
        /// The coordinator's window.
        window: u64,
    },

    // --- cancels (added later) ----------------------------------------------
    /// A payer partner cancels a committed payment it made, within the
    /// region's cancel window: the whole payment comes back as a refund
    /// under the key `cancel/<payment>` of the payee partner. Within the
    /// region it posts at once; to another region it asks the payee's
    /// region ([`CancelRequest`]), which starts the refund or refuses.
    CancelTransfer {
        /// The payer partner asking (from its certificate).
        partner: PartnerId,
        /// The payment.
        transfer: TransferId,
    },
    /// Another region's payer asks to cancel a payment paid to a payee of
    /// this region ([`CancelRequest`]): answered like a Prepare.
    RequestCancel(CancelRequest),

    // --- one-call payments (added later) ------------------------------------
    /// Price and pay in one command ([`PaymentRequest`]).
    CreatePayment(PaymentRequest),

    // --- quotes under an idempotency key (added later) ----------------------
    /// Price a payment as [`CommandBody::CreateQuote`] does, under the
    /// partner's idempotency key ([`QuoteRequest`]): a retry gets the same
    /// quote.
    CreateKeyedQuote(QuoteRequest),
    /// A one-call payment, as [`CommandBody::CreatePayment`], with the
    /// leader's word that its idempotency key had no record through log
    /// index `fresh_through`, as [`CommandBody::CreateFreshTransfer`] says
    /// of a transfer's.
    CreateFreshPayment {
        /// The request.
        request: PaymentRequest,
        /// The last index through which the key had no record.
        fresh_through: u64,
    },

    // --- webhooks (added later) ---------------------------------------------
    /// Register or change a partner's webhook ([`crate::webhook`]). A new
    /// one starts after the partner's newest event; a changed one keeps its
    /// progress, resumes if it was dead-lettered, and, when the secret
    /// changes, signs with the previous secret too for
    /// [`crate::webhook::SECRET_OVERLAP_MS`]. The audit trail keeps the
    /// secret's fingerprint, not the secret.
    SetWebhook {
        /// The partner.
        partner: PartnerId,
        /// Its endpoint.
        url: WebhookUrl,
        /// What deliveries are signed with.
        secret: WebhookSecret,
    },
    /// Stop delivering to a partner's webhook and forget it.
    RemoveWebhook {
        /// The partner.
        partner: PartnerId,
    },
    /// Deliver a partner's events again from the one after cursor `after`
    /// (at most its newest), resuming a dead-lettered webhook.
    ReplayWebhook {
        /// The partner.
        partner: PartnerId,
        /// The last cursor not to deliver again.
        after: u64,
    },
    /// The leader's word that the partner's endpoint acknowledged every
    /// event through cursor `through` (ignored for another generation).
    WebhookDelivered {
        /// The partner.
        partner: PartnerId,
        /// The webhook's generation the deliveries were made for.
        generation: u64,
        /// The last cursor acknowledged.
        through: u64,
    },
    /// The leader gave up on a partner's endpoint after failing past its
    /// limit: delivery stops until a replay or a new registration (ignored
    /// for another generation).
    WebhookDeadLettered {
        /// The partner.
        partner: PartnerId,
        /// The webhook's generation the deliveries were made for.
        generation: u64,
        /// The last cursor acknowledged.
        through: u64,
        /// What the last attempt met.
        reason: Reason,
    },
    /// Set at what rate a corridor whose source is this region gives payers
    /// back their share of refunded payments.
    SetCorridorRefundRate {
        /// The corridor.
        corridor: CorridorId,
        /// The rate refunds use from now on.
        rate: RefundRate,
    },

    // --- reconciliation after a restore (added later) -----------------------
    /// One step of a restored region's reconciliation with `region`
    /// ([`crate::reconcile`]): the records that region sent for the step
    /// that continues from `from`, and the step after it. Applied only
    /// when the reconciliation stands at `from`, so applied once.
    Reconciled {
        /// The other region.
        region: RegionId,
        /// The step this one continues from.
        from: ReconcileStep,
        /// What the other region holds.
        records: Vec<RemoteRecord>,
        /// The step after it.
        to: ReconcileStep,
    },
    /// Move the region to a newer protocol ([`crate::version`]): from this
    /// entry on every replica writes and applies that protocol's way. An
    /// operator's, proposed only once every member runs a release that
    /// supports it; a protocol not above the region's is refused as a
    /// protocol violation. A replica whose release does not support it
    /// stops before applying it (the store's check), so no replica applies
    /// rules it does not know.
    RaiseProtocol {
        /// The new protocol.
        to: Protocol,
    },
}

/// Why an operator did something: 1 to 256 bytes of UTF-8 text with no
/// control characters, kept in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Reason(String);

serialize_as_text!(Reason, as_str);

impl Reason {
    /// Validate a reason.
    pub fn new(text: impl Into<String>) -> Result<Reason, IdError> {
        free_text(text.into(), "reason").map(Reason)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reason {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Reason::new(text)
    }
}

/// A payee partner's request to refund a payment it received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The payee partner asking (from its certificate).
    pub partner: PartnerId,
    /// The partner's idempotency key (the same space as its transfers').
    pub idempotency_key: IdempotencyKey,
    /// The payment to refund.
    pub transfer: TransferId,
    /// How much to give back, in the payment's destination currency: at
    /// most what was received less what earlier refunds gave back.
    pub amount: Money,
}

impl RefundRequest {
    /// The body's fingerprint, as [`TransferRequest::fingerprint`]; its own
    /// domain, so a refund and a transfer never share one.
    pub fn fingerprint(&self) -> Fingerprint {
        let fields = [self.transfer.to_string(), self.amount.to_wire(), self.amount.currency().to_string()];
        fingerprint(b"paymesh/refund-request/v1", &fields.each_ref().map(String::as_str))
    }
}

/// The message a refund's coordinator (the region of the payee partner who
/// asked for it) sends the region that coordinated the original payment:
/// prepare to credit the original payer. Like [`PrepareMessage`] it has no
/// field for the payer's personal data; the payer region finds the payer
/// from its own record of the original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPrepare {
    /// The refund: an id of the coordinating region.
    pub refund: TransferId,
    /// The original payment, coordinated by the receiving region.
    pub original: TransferId,
    /// What the coordinator debits its payee partner, in the original's
    /// destination currency.
    pub debited: Money,
    /// What the payer is credited back, in the original's source currency.
    pub credited: Money,
    /// The payee partner that asked.
    pub requested_by: PartnerId,
    /// The original's payer token, as the coordinator recorded it: checked
    /// against the receiving region's record of the original.
    pub payer_token: PayerToken,
    /// The coordinator's deadline for preparing.
    pub deadline: Timestamp,
}

/// The payer's region asks the payee's region to cancel a committed
/// payment: to refund it whole, on the payee partner's behalf, under the key
/// `cancel/<original>`. Answered like a Prepare: PREPARED when the refund was
/// started (it then runs as any refund, the payee's region coordinating),
/// REJECTED with why not. Like every message between regions it carries no
/// personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The request's id: an id of the payer's region.
    pub cancel: TransferId,
    /// The payment, coordinated by the payer's region.
    pub original: TransferId,
    /// The payment's corridor.
    pub corridor: CorridorId,
    /// The payment's principal, in its source currency.
    pub source: Money,
    /// What the payment credited the payee, checked against the payee
    /// region's record of the payment.
    pub destination: Money,
    /// The payment's payer token, checked against the payee region's
    /// record of the payment.
    pub payer_token: PayerToken,
    /// When the payer asked, by the payer region's clock: the cancel window
    /// is judged at this instant, so a request delivered late is not
    /// refused for the delay.
    pub requested_at: Timestamp,
}

impl CancelRequest {
    /// The fingerprint a payer's cancel of `transfer` is recorded with, as
    /// [`TransferRequest::fingerprint`]; its own domain.
    pub fn fingerprint_of(transfer: &TransferId) -> Fingerprint {
        fingerprint(b"paymesh/cancel/v1", &[transfer.to_string().as_str()])
    }
}

/// A partner's request to create a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The paying partner (from its certificate).
    pub partner: PartnerId,
    /// The partner's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The quote to use.
    pub quote: QuoteId,
    /// The payee's QR payload; must resolve to the quote's payee.
    pub payee: QrPayload,
    /// The payer's personal data, kept only in the payer region.
    pub payer: PayerDetails,
}

/// A partner's one-call payment: the region prices it and creates its
/// transfer in one command, as a quote and a transfer would, honouring the
/// bound the partner states on what it pays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// The paying partner (from its certificate).
    pub partner: PartnerId,
    /// The partner's idempotency key (the same key space as its transfers).
    pub idempotency_key: IdempotencyKey,
    /// The payee's QR payload.
    pub payee: QrPayload,
    /// What to pay: the source amount, or the merchant's price.
    pub amount: QuoteAmount,
    /// The most the payer's position may be debited in all (principal and
    /// fee), in its currency; none for no bound. Priced above it, the
    /// payment is refused (`PRICE_ABOVE_LIMIT`) and nothing is recorded.
    pub max_total_debit: Option<Money>,
    /// The payer's personal data, kept only in the payer region.
    pub payer: PayerDetails,
}

impl PaymentRequest {
    /// The body's fingerprint, as [`TransferRequest::fingerprint`]; its own
    /// domain, so a payment and a transfer never share one.
    pub fn fingerprint(&self) -> Fingerprint {
        let (side, amount) = match self.amount {
            QuoteAmount::Source(money) => ("source", money),
            QuoteAmount::Destination(money) => ("destination", money),
        };
        let bound = self.max_total_debit.map(|m| format!("{} {}", m.to_wire(), m.currency())).unwrap_or_default();
        let units = amount.to_wire();
        let fields = [
            self.payee.as_str(),
            side,
            units.as_str(),
            amount.currency().code(),
            bound.as_str(),
            self.payer.name.as_str(),
            self.payer.account.as_str(),
            self.payer.reference.as_str(),
        ];
        fingerprint(b"paymesh/payment-request/v1", &fields)
    }
}

/// A partner's quote request under its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteRequest {
    /// The paying partner (from its certificate).
    pub partner: PartnerId,
    /// The partner's idempotency key (the same key space as its transfers).
    pub idempotency_key: IdempotencyKey,
    /// The payee's QR payload.
    pub payee: QrPayload,
    /// The amount fixed by the payer or by the merchant.
    pub amount: QuoteAmount,
}

impl QuoteRequest {
    /// The body's fingerprint, as [`TransferRequest::fingerprint`]; its own
    /// domain, so a quote and a transfer never share one.
    pub fn fingerprint(&self) -> Fingerprint {
        let (side, amount) = match self.amount {
            QuoteAmount::Source(money) => ("source", money),
            QuoteAmount::Destination(money) => ("destination", money),
        };
        let units = amount.to_wire();
        let fields = [self.payee.as_str(), side, units.as_str(), amount.currency().code()];
        fingerprint(b"paymesh/quote-request/v1", &fields)
    }
}

/// The fingerprint of a body in `domain` made of `fields`, each
/// length-prefixed so no two different bodies encode alike.
fn fingerprint(domain: &[u8], fields: &[&str]) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(domain);
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    Fingerprint(hasher.finalize().into())
}

/// A SHA-256 digest of a request body, compared when an idempotency key is reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

impl TransferRequest {
    /// The body's fingerprint: everything except the partner and key, which are
    /// the idempotency record's own key. Fields are length-prefixed so no two
    /// different bodies encode alike.
    pub fn fingerprint(&self) -> Fingerprint {
        let quote = self.quote.to_string();
        let fields = [
            quote.as_str(),
            self.payee.as_str(),
            self.payer.name.as_str(),
            self.payer.account.as_str(),
            self.payer.reference.as_str(),
        ];
        fingerprint(b"paymesh/transfer-request/v1", &fields)
    }
}

/// `text` if it is 1 to [`PAYER_FIELD_BYTES_MAX`] bytes with no control
/// characters (any script), else why not, naming it `what`.
fn free_text(text: String, what: &'static str) -> Result<String, IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { what });
    }
    if text.len() > PAYER_FIELD_BYTES_MAX {
        return Err(IdError::TooLong { what, max: PAYER_FIELD_BYTES_MAX });
    }
    if let Some((index, character)) = text.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdError::InvalidCharacter { what, character, index, allowed: "text without control characters" });
    }
    Ok(text)
}

/// One field of the payer's personal data: 1 to 256 bytes of UTF-8 text with
/// no control characters. Names may use any script.
///
/// Shared by reference count, as ids are: a payment's payer details are
/// copied from its request into its transfer and into the transfer's
/// record on every replica, and a copy is then a count, not an allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct PayerField(Arc<str>);

serialize_as_text!(PayerField, as_str);

impl PayerField {
    /// Validate a field.
    pub fn new(text: impl Into<String>) -> Result<PayerField, IdError> {
        free_text(text.into(), "payer field").map(|text| PayerField(Arc::from(text)))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Payer data is personal: debug output shows its length, never its content.
impl fmt::Debug for PayerField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PayerField(<{} bytes redacted>)", self.0.len())
    }
}

impl TryFrom<String> for PayerField {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        PayerField::new(text)
    }
}

impl From<PayerField> for String {
    fn from(field: PayerField) -> String {
        field.0.to_string()
    }
}

/// The payer's personal data. It is stored in the payer region and never put in
/// any message to another region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayerDetails {
    /// The payer's name.
    pub name: PayerField,
    /// The payer's account at the paying partner.
    pub account: PayerField,
    /// The partner's own reference for the payment.
    pub reference: PayerField,
}

/// The Prepare message a coordinator sends to the payee region. By construction
/// it has no field for the payer's personal data: only amounts, ids, the payee
/// and an opaque payer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareMessage {
    /// The transfer.
    pub transfer: TransferId,
    /// Its corridor.
    pub corridor: CorridorId,
    /// What the payer pays, before fees (for agreement checks).
    pub source: Money,
    /// What the payee receives.
    pub destination: Money,
    /// The customer rate.
    pub rate: Rate,
    /// The payee partner.
    pub payee: PartnerId,
    /// The merchant.
    pub merchant: MerchantId,
    /// Stands for the payer.
    pub payer_token: PayerToken,
    /// The coordinator's deadline for preparing.
    pub deadline: Timestamp,
}

/// A Prepare of either kind, as it travels between regions: a payment's
/// (to the payee's region) or a refund's (to the payer's region).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preparing {
    /// A payment's.
    Transfer(PrepareMessage),
    /// A refund's.
    Refund(RefundPrepare),
    /// A payer's cancel (to the payee's region).
    Cancel(CancelRequest),
}

impl Preparing {
    /// The transfer or refund it prepares.
    pub fn id(&self) -> &TransferId {
        match self {
            Preparing::Transfer(message) => &message.transfer,
            Preparing::Refund(message) => &message.refund,
            Preparing::Cancel(message) => &message.cancel,
        }
    }

    /// The command the receiving region applies for it.
    pub fn into_command(self) -> CommandBody {
        match self {
            Preparing::Transfer(message) => CommandBody::Prepare(message),
            Preparing::Refund(message) => CommandBody::PrepareRefund(message),
            Preparing::Cancel(message) => CommandBody::RequestCancel(message),
        }
    }
}

/// The payee region's answer to a Prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrepareReply {
    /// The payee's credit is reserved; the decision may be commit.
    Prepared,
    /// Refused; the coordinator must abort.
    Rejected(RejectCode),
    /// A refund's payer credit is reserved, at this amount rather than the
    /// one asked: the payment's corridor refunds at the current rate
    /// ([`crate::corridor::RefundRate::Current`]). The coordinator records
    /// the amount as the refund's credit; the decision may be commit.
    PreparedCredit(Money),
}

/// The coordinator's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Post.
    Commit,
    /// Void.
    Abort,
}

/// A message waiting in the coordinator's outbox for its destination region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxMessage {
    /// Sent until the payee region answers.
    Prepare(PrepareMessage),
    /// Sent until the payee region acknowledges. For a refund, the region
    /// of the original payment's payer is the one that acknowledges.
    Decision {
        /// The transfer.
        transfer: TransferId,
        /// Commit or abort.
        decision: Decision,
        /// The coordinator's settlement window the decision was made in
        /// (0: before windows), which the receiving region counts a
        /// commit under for the pair's cross-check.
        window: u64,
    },
    /// A refund's Prepare; sent to the original payment's region until it
    /// answers.
    PrepareRefund(RefundPrepare),
    /// A payer's cancel; sent to the payment's payee region until it
    /// answers.
    RequestCancel(CancelRequest),
}

/// An outbox message as snapshot images before settlement windows hold it:
/// read, and converted with decisions naming window 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxMessageV1 {
    /// A payment's Prepare.
    Prepare(PrepareMessage),
    /// A decision.
    Decision {
        /// The transfer.
        transfer: TransferId,
        /// Commit or abort.
        decision: Decision,
    },
    /// A refund's Prepare.
    PrepareRefund(RefundPrepare),
}

impl From<OutboxMessageV1> for OutboxMessage {
    fn from(old: OutboxMessageV1) -> OutboxMessage {
        match old {
            OutboxMessageV1::Prepare(message) => OutboxMessage::Prepare(message),
            OutboxMessageV1::Decision { transfer, decision } => {
                OutboxMessage::Decision { transfer, decision, window: 0 }
            }
            OutboxMessageV1::PrepareRefund(message) => OutboxMessage::PrepareRefund(message),
        }
    }
}

impl OutboxMessage {
    /// The message's Prepare, if it is one.
    pub fn preparing(&self) -> Option<Preparing> {
        match self {
            OutboxMessage::Prepare(message) => Some(Preparing::Transfer(message.clone())),
            OutboxMessage::PrepareRefund(message) => Some(Preparing::Refund(message.clone())),
            OutboxMessage::RequestCancel(message) => Some(Preparing::Cancel(message.clone())),
            OutboxMessage::Decision { .. } => None,
        }
    }
}

/// What a `Tick` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickReport {
    /// Transfers aborted at their deadline.
    pub aborted: u32,
    /// Expired or retained-too-long records removed.
    pub purged: u32,
}

/// Why a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// An empty batch: a log entry must carry at least one command.
    #[error("a batch must carry at least one command")]
    Empty,
    /// More commands than one log entry may carry.
    #[error("a batch carries at most {max} commands, not {found}")]
    TooLarge {
        /// The limit.
        max: usize,
        /// The count found.
        found: usize,
    },
}

/// The payload of one Raft log entry: the leader's clock and the commands it
/// gathered. Every replica applies the commands in order at `now`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BatchRepr", into = "BatchRepr")]
pub struct Batch {
    now: Timestamp,
    commands: Vec<Command>,
}

#[derive(Serialize, Deserialize)]
struct BatchRepr {
    now: Timestamp,
    commands: Vec<Command>,
}

impl CommandBody {
    /// The command as the audit trail keeps it: a webhook's secret replaced
    /// by its fingerprint ([`WebhookSecret::redacted`]), everything else as
    /// it is.
    pub fn for_audit(&self) -> CommandBody {
        match self {
            CommandBody::SetWebhook { partner, url, secret } => {
                CommandBody::SetWebhook { partner: partner.clone(), url: url.clone(), secret: secret.redacted() }
            }
            other => other.clone(),
        }
    }

    /// Whether an operator issues this command (it joins the audit trail):
    /// changes to partners, corridors, rates, routes, limits, and top-ups.
    pub fn is_operator(&self) -> bool {
        match self {
            CommandBody::UpsertPartner(_)
            | CommandBody::SetPartnerStatus { .. }
            | CommandBody::UpsertCorridor { .. }
            | CommandBody::SetCorridorStatus { .. }
            | CommandBody::SetFxRate { .. }
            | CommandBody::TopUp { .. }
            | CommandBody::FundOut { .. }
            | CommandBody::UpsertPayeeRoute(_)
            | CommandBody::RemovePayeeRoute { .. }
            | CommandBody::SetPartnerLimits { .. }
            | CommandBody::ByOperator { .. }
            | CommandBody::ReverseTransfer { .. }
            | CommandBody::CloseSettlementWindow
            | CommandBody::RecordSettlement { .. }
            | CommandBody::SetRegionSetting(_)
            | CommandBody::SetWebhook { .. }
            | CommandBody::RemoveWebhook { .. }
            | CommandBody::ReplayWebhook { .. }
            | CommandBody::SetCorridorRefundRate { .. }
            | CommandBody::RaiseProtocol { .. } => true,
            CommandBody::CreateQuote { .. }
            | CommandBody::CreateTransfer(_)
            | CommandBody::CreateFreshTransfer { .. }
            | CommandBody::Reconciled { .. }
            | CommandBody::PrepareReplied { .. }
            | CommandBody::DecisionAcked { .. }
            | CommandBody::Prepare(_)
            | CommandBody::Decide { .. }
            | CommandBody::DecideInWindow { .. }
            | CommandBody::CreateRefund(_)
            | CommandBody::PrepareRefund(_)
            | CommandBody::CancelTransfer { .. }
            | CommandBody::RequestCancel(_)
            | CommandBody::CreatePayment(_)
            | CommandBody::CreateKeyedQuote(_)
            | CommandBody::CreateFreshPayment { .. }
            | CommandBody::WebhookDelivered { .. }
            | CommandBody::WebhookDeadLettered { .. }
            | CommandBody::Tick => false,
        }
    }
}

impl Batch {
    /// A batch of 1 to [`BATCH_COMMANDS_MAX`] commands, stamped `now`.
    pub fn new(now: Timestamp, commands: Vec<Command>) -> Result<Batch, BatchError> {
        if commands.is_empty() {
            return Err(BatchError::Empty);
        }
        if commands.len() > BATCH_COMMANDS_MAX {
            return Err(BatchError::TooLarge { max: BATCH_COMMANDS_MAX, found: commands.len() });
        }
        Ok(Batch { now, commands })
    }

    /// The leader's timestamp.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The commands, in order.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// The newest protocol a [`CommandBody::RaiseProtocol`] of this batch
    /// raises its region to (wrapped with its operator or not), if one
    /// does: a replica checks it supports that protocol before applying.
    pub fn raises_protocol_to(&self) -> Option<Protocol> {
        fn raise(body: &CommandBody) -> Option<Protocol> {
            match body {
                CommandBody::RaiseProtocol { to } => Some(*to),
                CommandBody::ByOperator { command, .. } => raise(command),
                _ => None,
            }
        }
        self.commands.iter().filter_map(|c| raise(&c.body)).max()
    }
}

impl TryFrom<BatchRepr> for Batch {
    type Error = BatchError;
    fn try_from(r: BatchRepr) -> Result<Self, Self::Error> {
        Batch::new(r.now, r.commands)
    }
}

impl From<Batch> for BatchRepr {
    fn from(b: Batch) -> Self {
        BatchRepr { now: b.now, commands: b.commands }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> TransferRequest {
        TransferRequest {
            partner: PartnerId::new("paypal-us").unwrap(),
            idempotency_key: IdempotencyKey::new("k1").unwrap(),
            quote: QuoteId::parse("us-west:q1").unwrap(),
            payee: QrPayload::new("wxp://f2f0abc").unwrap(),
            payer: PayerDetails {
                name: PayerField::new(name).unwrap(),
                account: PayerField::new("acct-1").unwrap(),
                reference: PayerField::new("ref-1").unwrap(),
            },
        }
    }

    #[test]
    fn fingerprints_cover_the_body_but_not_the_key() {
        let a = request("Alice Example");
        let mut other_key = a.clone();
        other_key.idempotency_key = IdempotencyKey::new("k2").unwrap();
        assert_eq!(a.fingerprint(), other_key.fingerprint());
        assert_ne!(a.fingerprint(), request("Alice Exampl").fingerprint());
        // Length prefixes keep field boundaries: moving a byte between fields changes the print.
        let mut shifted = a.clone();
        shifted.payer.name = PayerField::new("Alice Exampleacct-").unwrap();
        shifted.payer.account = PayerField::new("1").unwrap();
        assert_ne!(a.fingerprint(), shifted.fingerprint());
    }

    #[test]
    fn payer_fields_are_validated_and_redacted_in_debug_output() {
        assert!(PayerField::new("王小明").is_ok());
        assert!(PayerField::new("").is_err());
        assert!(PayerField::new("a\nb").is_err());
        assert!(PayerField::new("x".repeat(257)).is_err());
        let debug = format!("{:?}", request("Alice Example"));
        assert!(!debug.contains("Alice"), "{debug}");
    }

    #[test]
    fn batches_are_bounded() {
        let command = Command { id: CommandId { session: 1, sequence: 1 }, body: CommandBody::Tick };
        assert_eq!(Batch::new(Timestamp::EPOCH, vec![]), Err(BatchError::Empty));
        let too_many = vec![command.clone(); BATCH_COMMANDS_MAX + 1];
        assert!(matches!(Batch::new(Timestamp::EPOCH, too_many), Err(BatchError::TooLarge { .. })));
        let batch = Batch::new(Timestamp::from_unix_ms(5), vec![command]).unwrap();
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), batch);
        assert!(serde_json::from_str::<Batch>(r#"{"now":5,"commands":[]}"#).is_err());
    }
}
