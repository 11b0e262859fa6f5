//! What applying a command produced.
//!
//! Applying a command never fails with an `Err`: every replica must reach the
//! same result, so a refusal is an ordinary, replicated [`Outcome::Rejected`]
//! carrying a [`RejectCode`]. Malformed input never gets this far; it is refused
//! at the edge when the command's typed fields are constructed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{PrepareReply, TickReport};
use crate::corridor::{CorridorId, Priced};
use crate::currency::Currency;
use crate::directory::Payee;
use crate::id::{IdempotencyKey, PartnerId, PayerToken, QuoteId, TransferId};
use crate::money::{Money, SignedMoney};
use crate::time::Timestamp;
use crate::transfer::CoordinatorState;

/// Why a command was refused: a business outcome returned to the partner,
/// operator or region that sent it. The order matches `paymesh.common.v1.RejectCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RejectCode {
    /// No partner with that id in this region.
    PartnerNotFound,
    /// The partner is suspended.
    PartnerSuspended,
    /// The partner's role does not allow this (a payee-only partner paying).
    PartnerRoleNotAllowed,
    /// The partner belongs to another region.
    PartnerNotInRegion,
    /// No corridor from the payer's currency and region to the payee's.
    CorridorNotFound,
    /// The corridor is suspended.
    CorridorSuspended,
    /// The corridor has no rate valid now.
    RateUnavailable,
    /// A rate was set on a same-currency corridor, which converts at exactly 1.
    RateNotApplicable,
    /// An amount's currency does not match what the partner or corridor uses.
    CurrencyMismatch,
    /// The command names a region that is not this one where it must be.
    RegionMismatch,
    /// Below the corridor's per-transfer minimum, or converts to nothing.
    AmountBelowMinimum,
    /// Above the corridor's per-transfer maximum, or out of range after conversion.
    AmountAboveMaximum,
    /// The corridor's daily cap would be exceeded.
    DailyCapExceeded,
    /// No such quote for this partner.
    QuoteNotFound,
    /// The quote expired.
    QuoteExpired,
    /// The quote was already used by a transfer.
    QuoteAlreadyUsed,
    /// The QR payload matches no payee route, or the payee is unknown here.
    PayeeNotFound,
    /// The transfer's payee differs from the one the quote was made for.
    PayeeMismatch,
    /// The idempotency key was used before with a different request body.
    IdempotencyConflict,
    /// The payer's position (credits plus net debit cap) does not cover the debit,
    /// or a new cap is below what the position already uses.
    InsufficientPosition,
    /// A balance would leave its bound.
    BalanceOverflow,
    /// No such transfer.
    TransferNotFound,
    /// The payee region did not prepare before the transfer's deadline.
    DeadlineExceeded,
    /// The payee region had already received an abort for this transfer.
    AbortedBeforePrepare,
    /// A message contradicts what this region recorded (e.g. commit of a transfer
    /// that was never prepared here).
    ProtocolViolation,
    /// The command's id is older than its session's dedupe window; it was not applied.
    StaleCommand,
    /// A bounded table is full (payee routes, quotes).
    CapacityExceeded,
    /// The partner holds as many unused quotes as its limits allow
    /// (`PartnerLimits::quotes_outstanding_max`).
    PartnerQuotesExhausted,
    /// The partner has as many transfers not yet final as its limits allow
    /// (`PartnerLimits::transfers_in_flight_max`).
    PartnerTransfersExhausted,
    /// A refund would take what was given back past what the payment moved.
    RefundExceedsOriginal,
    /// The payment is older than the region's refund window.
    RefundWindowClosed,
    /// The payment is not committed (aborted, or still in flight), so there
    /// is nothing to give back.
    TransferNotCommitted,
    /// No settlement window with that number in this region.
    WindowNotFound,
    /// The settlement window is still open: close it first.
    WindowNotClosed,
    /// The account did not move in the window: there is nothing to settle.
    NothingToSettle,
    /// The account's net of the window was recorded settled already, with
    /// another reference.
    AlreadySettled,
    /// Only a partner's position or the clearing account against another
    /// region is settled.
    NotSettleable,
    /// The payment committed longer ago than the region's cancel window.
    CancelWindowClosed,
    /// The payment was refunded (in part or whole), or a refund of it is in
    /// flight: a cancel gives back a whole payment, so it is refused.
    AlreadyRefunded,
    /// A one-call payment priced above the bound its payer stated.
    PriceAboveLimit,
    /// The partner has no webhook registered.
    WebhookNotFound,
}

impl RejectCode {
    /// Every code, for exhaustive tests and wire mapping.
    pub const ALL: [RejectCode; 41] = [
        RejectCode::PartnerNotFound,
        RejectCode::PartnerSuspended,
        RejectCode::PartnerRoleNotAllowed,
        RejectCode::PartnerNotInRegion,
        RejectCode::CorridorNotFound,
        RejectCode::CorridorSuspended,
        RejectCode::RateUnavailable,
        RejectCode::RateNotApplicable,
        RejectCode::CurrencyMismatch,
        RejectCode::RegionMismatch,
        RejectCode::AmountBelowMinimum,
        RejectCode::AmountAboveMaximum,
        RejectCode::DailyCapExceeded,
        RejectCode::QuoteNotFound,
        RejectCode::QuoteExpired,
        RejectCode::QuoteAlreadyUsed,
        RejectCode::PayeeNotFound,
        RejectCode::PayeeMismatch,
        RejectCode::IdempotencyConflict,
        RejectCode::InsufficientPosition,
        RejectCode::BalanceOverflow,
        RejectCode::TransferNotFound,
        RejectCode::DeadlineExceeded,
        RejectCode::AbortedBeforePrepare,
        RejectCode::ProtocolViolation,
        RejectCode::StaleCommand,
        RejectCode::CapacityExceeded,
        RejectCode::PartnerQuotesExhausted,
        RejectCode::PartnerTransfersExhausted,
        RejectCode::RefundExceedsOriginal,
        RejectCode::RefundWindowClosed,
        RejectCode::TransferNotCommitted,
        RejectCode::WindowNotFound,
        RejectCode::WindowNotClosed,
        RejectCode::NothingToSettle,
        RejectCode::AlreadySettled,
        RejectCode::NotSettleable,
        RejectCode::CancelWindowClosed,
        RejectCode::AlreadyRefunded,
        RejectCode::PriceAboveLimit,
        RejectCode::WebhookNotFound,
    ];
}

/// A quote: a locked rate and both amounts, valid until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Its id.
    pub id: QuoteId,
    /// The paying partner it was made for.
    pub partner: PartnerId,
    /// The payee it was made for.
    pub payee: Payee,
    /// The corridor it prices.
    pub corridor: CorridorId,
    /// Rate, amounts and fee.
    pub priced: Priced,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops being usable (exclusive).
    pub expires_at: Timestamp,
}

/// A transfer as its partner sees it. It never contains the payer's personal
/// data, which stays in the payer region's state only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// Its id.
    pub id: TransferId,
    /// The paying partner.
    pub partner: PartnerId,
    /// The paying partner's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The quote it used.
    pub quote: QuoteId,
    /// Its corridor.
    pub corridor: CorridorId,
    /// Rate, amounts and fee.
    pub priced: Priced,
    /// Who is paid.
    pub payee: Payee,
    /// The token standing for the payer outside the payer region.
    pub payer_token: PayerToken,
    /// Where it stands.
    pub state: CoordinatorState,
    /// Why it aborted, if it did.
    pub reason: Option<RejectCode>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// For cross-border transfers, the time by which the payee region must prepare.
    pub deadline: Option<Timestamp>,
}

/// A refund as the payee partner who asked for it sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    /// Its id (this region's, in the sequence of its transfers).
    pub id: TransferId,
    /// The payee partner that asked.
    pub partner: PartnerId,
    /// Its idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The payment refunded.
    pub original: TransferId,
    /// What the partner gives back, in the payment's destination currency.
    pub debited: Money,
    /// What the payer is credited, in the payment's source currency: the
    /// debited share of the payment's principal, rounded down; the last
    /// refund of a payment gives back the rest of it exactly.
    pub credited: Money,
    /// Where it stands (the coordinator's states: a same-region refund
    /// commits at once, another is reserved until the payer's region
    /// answers).
    pub state: CoordinatorState,
    /// Why it aborted, if it did.
    pub reason: Option<RejectCode>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// For a refund crossing regions, the time by which the payer's region
    /// must prepare.
    pub deadline: Option<Timestamp>,
}

/// Where a payer's cancel stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelState {
    /// Sent to the payee's region, which has not answered yet (or has
    /// started the refund, which has not reached the payer yet): the
    /// outcome comes as a `Refunded` or a `CancelRefused` event.
    Requested,
    /// The payment was refunded whole (a payment within the region).
    Refunded,
    /// The payee's side could not give the payment back (a payment within
    /// the region; the reason says why).
    Refused,
}

/// A payer's cancel of a payment, as the payer partner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelView {
    /// Its id: the refund's within the region, the request's across
    /// regions (an id of the payer's region either way).
    pub id: TransferId,
    /// The payer partner that asked.
    pub partner: PartnerId,
    /// The payment cancelled.
    pub original: TransferId,
    /// Where it stands.
    pub state: CancelState,
    /// What came back to the payer (the payment's principal), once it did.
    pub credited: Option<Money>,
    /// Why it was refused, if it was.
    pub reason: Option<RejectCode>,
    /// When the payer asked.
    pub requested_at: Timestamp,
}

/// A partner's position: its prefunded balance and what is reserved against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The position's currency.
    pub currency: Currency,
    /// Posted credits minus posted debits; negative when the partner uses its cap.
    pub posted: SignedMoney,
    /// Reserved debits of in-flight transfers.
    pub pending_debits: SignedMoney,
    /// Reserved credits of in-flight incoming transfers.
    pub pending_credits: SignedMoney,
    /// How far the position may go below zero.
    pub net_debit_cap: Money,
    /// What the partner can still spend: posted − pending debits + cap.
    pub available: SignedMoney,
}

/// The result of applying one command.
///
/// The views are shared by reference count (and encoded as the views
/// themselves): an outcome is kept for its command's session and under its
/// idempotency key, in persistent maps whose nodes are copied whole, and is
/// a few words instead of a few hundred bytes there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// An operator command took effect (or repeated one that had).
    Done,
    /// A quote was made.
    Quote(Arc<Quote>),
    /// A transfer was created: reserved, committed (same region) or aborted at
    /// creation with a reason (for example insufficient position).
    Transfer(Arc<TransferView>),
    /// The payee region's answer to a Prepare.
    PrepareReply(PrepareReply),
    /// The payee region applied (or had applied) a decision.
    Acked,
    /// Housekeeping ran.
    Ticked(TickReport),
    /// The command was refused and changed nothing.
    Rejected(RejectCode),
    /// A refund was created: committed (same region), reserved, or aborted
    /// at creation with a reason (for example the payee's position).
    Refund(Arc<RefundView>),
    /// A settlement window closed; the next one is open.
    WindowClosed {
        /// The closed window's number.
        number: u64,
    },
    /// A payer's cancel was recorded (see [`CancelView::state`]).
    Cancel(Arc<CancelView>),
}

impl Outcome {
    /// The reject code, if the command was refused.
    pub fn rejection(&self) -> Option<RejectCode> {
        match self {
            Outcome::Rejected(code) => Some(*code),
            _ => None,
        }
    }
}
