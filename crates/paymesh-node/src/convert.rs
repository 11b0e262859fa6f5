//! Conversions between the wire contract and the core's types.
//!
//! Inbound, every field is parsed into its validated core type; a field that
//! breaks its rule is refused with INVALID_ARGUMENT naming the field and the
//! rule ("quote_id: quote id "x" is not of the form <region>:q<sequence>"),
//! before anything is proposed, so bad input changes nothing. Outbound, core
//! values become wire messages; amounts are always decimal strings at their
//! currency's scale.

use std::fmt::Display;

use paymesh_core::command::{PayerDetails, PayerField};
use paymesh_core::corridor::{Corridor, CorridorId, CorridorTerms, RefundRate};
use paymesh_core::directory::{Payee, PayeeRoute, QrPrefix};
use paymesh_core::fx::{BasisPoints, FeeSchedule, FxRate, Rate};
use paymesh_core::history::{ListToken, Movement, MovementKind};
use paymesh_core::id::{IdempotencyKey, PartnerId, QrPayload, QuoteId, RegionId, TopUpRef, TransferId};
use paymesh_core::ledger::{AccountId, AccountOwner, EntryId, Leg};
use paymesh_core::outcome::{CancelState, CancelView, Position, Quote, RefundView, TransferView};
use paymesh_core::partner::{BusinessStatus, Partner, PartnerLimits, PartnerRole};
use paymesh_core::settlement::{self, SettlementWindow, Tallies};
use paymesh_core::state::{Event, EventKind, Participation, PartnerRefund, PartnerTransfer};
use paymesh_core::transfer::{CoordinatorState, ParticipantState};
use paymesh_core::{Currency, Money, RejectCode, SignedMoney, Timestamp};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as partner;
use paymesh_store::History;
use tonic::Status;

/// INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, error: impl Display) -> Status {
    Status::invalid_argument(format!("{field}: {error}"))
}

/// A required message field.
pub fn required<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T, Status> {
    value.ok_or_else(|| invalid(field, "is required"))
}

/// A non-negative amount.
pub fn money(field: &str, value: Option<&common::Money>) -> Result<Money, Status> {
    let value = required(field, value)?;
    Money::from_wire(&value.amount, &value.currency).map_err(|e| invalid(field, e))
}

/// An amount the contract says is positive: zero is malformed
/// (INVALID_ARGUMENT), not a business refusal.
pub fn positive_money(field: &str, value: Option<&common::Money>) -> Result<Money, Status> {
    let amount = money(field, value)?;
    if amount.is_zero() {
        return Err(invalid(field, "must be positive"));
    }
    Ok(amount)
}

/// A currency code.
pub fn currency(field: &str, code: &str) -> Result<Currency, Status> {
    Currency::parse(code).map_err(|e| invalid(field, e))
}

macro_rules! parse_id {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $parse:path) => {
        $(#[$doc])*
        pub fn $name(field: &str, text: &str) -> Result<$ty, Status> {
            $parse(text).map_err(|e| invalid(field, e))
        }
    };
}

parse_id!(
    /// A partner id.
    partner_id, PartnerId, PartnerId::new
);
parse_id!(
    /// A region id.
    region_id, RegionId, RegionId::new
);
parse_id!(
    /// A QR payload.
    qr_payload, QrPayload, QrPayload::new
);
parse_id!(
    /// An idempotency key.
    idempotency_key, IdempotencyKey, IdempotencyKey::new
);
parse_id!(
    /// A quote id; sequences start at 1.
    quote_id, QuoteId, first_sequence_quote
);
parse_id!(
    /// A transfer id; sequences start at 1.
    transfer_id, TransferId, first_sequence_transfer
);

/// Why a sequenced id from outside is malformed.
#[derive(Debug, thiserror::Error)]
enum SequencedIdError {
    #[error(transparent)]
    Id(#[from] paymesh_core::id::IdError),
    #[error("{0:?}: sequences start at 1")]
    Zero(String),
}

fn first_sequence_quote(text: &str) -> Result<QuoteId, SequencedIdError> {
    let id = QuoteId::parse(text)?;
    if id.sequence() == 0 {
        return Err(SequencedIdError::Zero(text.to_owned()));
    }
    Ok(id)
}

fn first_sequence_transfer(text: &str) -> Result<TransferId, SequencedIdError> {
    let id = TransferId::parse(text)?;
    if id.sequence() == 0 {
        return Err(SequencedIdError::Zero(text.to_owned()));
    }
    Ok(id)
}
parse_id!(
    /// A top-up reference.
    top_up_ref, TopUpRef, TopUpRef::new
);
parse_id!(
    /// A QR prefix of a payee route.
    qr_prefix, QrPrefix, QrPrefix::new
);
parse_id!(
    /// An FX rate.
    rate, Rate, Rate::parse
);

/// A payer's personal data: all three fields required.
pub fn payer_details(field: &str, value: Option<&partner::PayerDetails>) -> Result<PayerDetails, Status> {
    let value = required(field, value)?;
    let part = |name: &str, text: &str| PayerField::new(text).map_err(|e| invalid(&format!("{field}.{name}"), e));
    Ok(PayerDetails {
        name: part("name", &value.name)?,
        account: part("account", &value.account)?,
        reference: part("reference", &value.reference)?,
    })
}

/// A corridor id message.
pub fn corridor_id(field: &str, value: Option<&common::CorridorId>) -> Result<CorridorId, Status> {
    let value = required(field, value)?;
    Ok(CorridorId {
        source_currency: currency(&format!("{field}.source_currency"), &value.source_currency)?,
        source_region: region_id(&format!("{field}.source_region"), &value.source_region)?,
        destination_currency: currency(&format!("{field}.destination_currency"), &value.destination_currency)?,
        destination_region: region_id(&format!("{field}.destination_region"), &value.destination_region)?,
    })
}

/// Basis points (0 to 2,000).
pub fn basis_points(field: &str, value: u32) -> Result<BasisPoints, Status> {
    BasisPoints::new(value).map_err(|e| invalid(field, e))
}

/// A fee schedule.
pub fn fee_schedule(field: &str, value: Option<&admin::FeeSchedule>) -> Result<FeeSchedule, Status> {
    let value = required(field, value)?;
    FeeSchedule::new(
        money(&format!("{field}.fixed"), value.fixed.as_ref())?,
        basis_points(&format!("{field}.rate_bps"), value.rate_bps)?,
        money(&format!("{field}.min"), value.min.as_ref())?,
        money(&format!("{field}.max"), value.max.as_ref())?,
    )
    .map_err(|e| invalid(field, e))
}

/// A time in Unix milliseconds; negative is refused.
pub fn timestamp(field: &str, unix_ms: i64) -> Result<Timestamp, Status> {
    u64::try_from(unix_ms).map(Timestamp::from_unix_ms).map_err(|_| invalid(field, "must not be negative"))
}

/// A partner role; UNSPECIFIED is refused.
pub fn partner_role(field: &str, value: i32) -> Result<PartnerRole, Status> {
    match admin::PartnerRole::try_from(value) {
        Ok(admin::PartnerRole::Payer) => Ok(PartnerRole::Payer),
        Ok(admin::PartnerRole::Payee) => Ok(PartnerRole::Payee),
        Ok(admin::PartnerRole::Both) => Ok(PartnerRole::Both),
        _ => Err(invalid(field, "must be PAYER, PAYEE or BOTH")),
    }
}

/// A partner status; UNSPECIFIED is refused.
pub fn partner_status(field: &str, value: i32) -> Result<BusinessStatus, Status> {
    match admin::PartnerStatus::try_from(value) {
        Ok(admin::PartnerStatus::Active) => Ok(BusinessStatus::Active),
        Ok(admin::PartnerStatus::Suspended) => Ok(BusinessStatus::Suspended),
        _ => Err(invalid(field, "must be ACTIVE or SUSPENDED")),
    }
}

/// A corridor status; UNSPECIFIED is refused.
pub fn corridor_status(field: &str, value: i32) -> Result<BusinessStatus, Status> {
    match admin::CorridorStatus::try_from(value) {
        Ok(admin::CorridorStatus::Active) => Ok(BusinessStatus::Active),
        Ok(admin::CorridorStatus::Suspended) => Ok(BusinessStatus::Suspended),
        _ => Err(invalid(field, "must be ACTIVE or SUSPENDED")),
    }
}

/// Corridor terms from an upsert request.
pub fn corridor_terms(request: &admin::UpsertCorridorRequest) -> Result<CorridorTerms, Status> {
    CorridorTerms::new(
        basis_points("spread_bps", request.spread_bps)?,
        fee_schedule("fee", request.fee.as_ref())?,
        money("min_amount", request.min_amount.as_ref())?,
        money("max_amount", request.max_amount.as_ref())?,
        money("daily_cap", request.daily_cap.as_ref())?,
    )
    .map_err(|e| invalid("corridor terms", e))
}

// ---- outbound ----------------------------------------------------------------

/// The wire form of an amount.
pub fn money_out(value: &Money) -> common::Money {
    common::Money { amount: value.to_wire(), currency: value.currency().code().to_owned() }
}

/// The wire form of a signed amount.
pub fn signed_out(value: &SignedMoney) -> common::Money {
    common::Money { amount: value.to_wire(), currency: value.currency().code().to_owned() }
}

/// Minor units of `currency` on the wire, for sums that may pass what
/// [`SignedMoney`] holds.
fn units_out(units: i128, currency: Currency) -> common::Money {
    common::Money { amount: settlement::units_to_wire(units, currency), currency: currency.code().to_owned() }
}

/// The wire form of cross-border tallies.
pub fn tallies_out(tallies: &Tallies) -> Vec<admin::Tally> {
    let total = |units: u128, currency| units_out(i128::try_from(units).unwrap_or(i128::MAX), currency);
    tallies
        .iter()
        .map(|(key, tally)| admin::Tally {
            flow: key.flow.as_str().to_owned(),
            source_currency: key.source.code().to_owned(),
            destination_currency: key.destination.code().to_owned(),
            count: tally.count,
            source_amount: Some(total(tally.source, key.source)),
            destination_amount: Some(total(tally.destination, key.destination)),
        })
        .collect()
}

/// The wire form of a settlement window, with the commit decisions of each
/// remote region still on their way.
pub fn settlement_window_out(
    window: &SettlementWindow,
    decisions_in_flight: impl Fn(&RegionId) -> u64,
) -> admin::SettlementWindow {
    let positions = window
        .positions
        .iter()
        .map(|position| admin::WindowPosition {
            account: position.account.to_string(),
            net: Some(units_out(position.net, position.account.currency)),
            settled: position.settled.is_some(),
            settlement_reference: position.settled.as_ref().map(|s| s.reference.to_string()).unwrap_or_default(),
            settled_unix_ms: position.settled.as_ref().map_or(0, |s| unix_ms(s.at)),
        })
        .collect();
    let sent = window
        .sent
        .iter()
        .map(|(region, tallies)| admin::RegionTallies {
            region: region.to_string(),
            window: window.number,
            tallies: tallies_out(tallies),
            decisions_in_flight: decisions_in_flight(region),
        })
        .collect();
    let received = window
        .received
        .iter()
        .map(|((region, number), tallies)| admin::RegionTallies {
            region: region.to_string(),
            window: *number,
            tallies: tallies_out(tallies),
            decisions_in_flight: 0,
        })
        .collect();
    admin::SettlementWindow {
        number: window.number,
        opened_unix_ms: unix_ms(window.opened_at),
        closed_unix_ms: window.closed_at.map_or(0, unix_ms),
        positions,
        sent,
        received,
    }
}

/// The wire number of a reject code: its position in the core's list plus one
/// (0 is UNSPECIFIED). `tests/wire_agreement.rs` pins the two lists together.
pub fn reject_code(code: RejectCode) -> i32 {
    RejectCode::ALL.iter().position(|c| *c == code).map_or(0, |i| i as i32 + 1)
}

/// The reject code a wire number stands for; `None` for UNSPECIFIED or a
/// number this version does not know.
pub fn reject_code_in(number: i32) -> Option<RejectCode> {
    let index = usize::try_from(number).ok()?.checked_sub(1)?;
    RejectCode::ALL.get(index).copied()
}

/// The wire number of an optional reject code (UNSPECIFIED for none).
pub fn reject_code_opt(code: Option<RejectCode>) -> i32 {
    code.map_or(0, reject_code)
}

/// A time as the wire's Unix milliseconds (`i64`; a time past its range,
/// which no clock reaches, as its largest value).
pub fn unix_ms(at: Timestamp) -> i64 {
    i64::try_from(at.unix_ms()).unwrap_or(i64::MAX)
}

/// The wire form of a corridor id.
pub fn corridor_id_out(id: &CorridorId) -> common::CorridorId {
    common::CorridorId {
        source_currency: id.source_currency.code().to_owned(),
        source_region: id.source_region.to_string(),
        destination_currency: id.destination_currency.code().to_owned(),
        destination_region: id.destination_region.to_string(),
    }
}

/// The wire form of a payee.
pub fn payee_out(payee: &Payee) -> partner::Payee {
    partner::Payee {
        partner_id: payee.partner.to_string(),
        merchant_id: payee.merchant.to_string(),
        region: payee.region.to_string(),
        currency: payee.currency.code().to_owned(),
    }
}

/// The wire form of a quote.
pub fn quote_out(quote: &Quote) -> partner::Quote {
    partner::Quote {
        quote_id: quote.id.to_string(),
        corridor: Some(corridor_id_out(&quote.corridor)),
        payee: Some(payee_out(&quote.payee)),
        rate: quote.priced.rate.to_string(),
        source_amount: Some(money_out(&quote.priced.source)),
        destination_amount: Some(money_out(&quote.priced.destination)),
        fee: Some(money_out(&quote.priced.fee)),
        total_debit: Some(money_out(&quote.priced.total_debit)),
        created_unix_ms: unix_ms(quote.created_at),
        expires_unix_ms: unix_ms(quote.expires_at),
    }
}

fn coordinator_state(state: CoordinatorState) -> partner::TransferState {
    match state {
        CoordinatorState::Received => partner::TransferState::Received,
        CoordinatorState::Reserved => partner::TransferState::Reserved,
        CoordinatorState::Prepared => partner::TransferState::Prepared,
        CoordinatorState::Committed => partner::TransferState::Committed,
        CoordinatorState::Aborted => partner::TransferState::Aborted,
    }
}

/// The wire form of a transfer as the payer sees it (or, for a same-region
/// transfer, as its payee does, without the payer's key, quote and fee).
pub fn transfer_view_out(view: &TransferView, viewer_is_payer: bool) -> partner::Transfer {
    partner::Transfer {
        transfer_id: view.id.to_string(),
        idempotency_key: if viewer_is_payer { view.idempotency_key.to_string() } else { String::new() },
        quote_id: if viewer_is_payer { view.quote.to_string() } else { String::new() },
        corridor: Some(corridor_id_out(&view.corridor)),
        state: coordinator_state(view.state) as i32,
        abort_reason: reject_code_opt(view.reason),
        source_amount: Some(money_out(&view.priced.source)),
        fee: viewer_is_payer.then(|| money_out(&view.priced.fee)),
        destination_amount: Some(money_out(&view.priced.destination)),
        rate: view.priced.rate.to_string(),
        payee: Some(payee_out(&view.payee)),
        payer_token: view.payer_token.to_string(),
        created_unix_ms: unix_ms(view.created_at),
        updated_unix_ms: unix_ms(view.updated_at),
        deadline_unix_ms: view.deadline.map_or(0, unix_ms),
    }
}

/// The wire form of a refund as a partner sees it: the one that asked, or
/// the payer credited back.
pub fn partner_refund_out(refund: &PartnerRefund) -> partner::Refund {
    match refund {
        PartnerRefund::Asked(refund) => refund_out(&refund.view),
        PartnerRefund::CreditedHere(refund) => {
            partner::Refund { idempotency_key: String::new(), payer_view: true, ..refund_out(&refund.view) }
        }
        PartnerRefund::Credited(credited) => {
            let prepare = &credited.prepare;
            let state = match credited.state {
                ParticipantState::Prepared => partner::TransferState::Prepared,
                ParticipantState::Committed => partner::TransferState::Committed,
                ParticipantState::Aborted | ParticipantState::Tombstone => partner::TransferState::Aborted,
            };
            partner::Refund {
                refund_id: prepare.refund.to_string(),
                idempotency_key: String::new(),
                transfer_id: prepare.original.to_string(),
                state: state as i32,
                abort_reason: reject_code_opt(credited.reason),
                debited_amount: Some(money_out(&prepare.debited)),
                credited_amount: Some(money_out(&prepare.credited)),
                created_unix_ms: unix_ms(credited.created_at),
                updated_unix_ms: unix_ms(credited.updated_at),
                deadline_unix_ms: unix_ms(prepare.deadline),
                payer_view: true,
            }
        }
    }
}

/// The wire form of a refund, for the partner that asked for it.
pub fn refund_out(view: &RefundView) -> partner::Refund {
    partner::Refund {
        refund_id: view.id.to_string(),
        idempotency_key: view.idempotency_key.to_string(),
        transfer_id: view.original.to_string(),
        state: coordinator_state(view.state) as i32,
        abort_reason: reject_code_opt(view.reason),
        debited_amount: Some(money_out(&view.debited)),
        credited_amount: Some(money_out(&view.credited)),
        created_unix_ms: unix_ms(view.created_at),
        updated_unix_ms: unix_ms(view.updated_at),
        deadline_unix_ms: view.deadline.map_or(0, unix_ms),
        payer_view: false,
    }
}

/// The wire form of a cancel, for the payer that asked for it.
pub fn cancel_out(view: &CancelView) -> partner::Cancel {
    partner::Cancel {
        cancel_id: view.id.to_string(),
        transfer_id: view.original.to_string(),
        state: match view.state {
            CancelState::Requested => partner::CancelState::Requested,
            CancelState::Refunded => partner::CancelState::Refunded,
            CancelState::Refused => partner::CancelState::Refused,
        } as i32,
        credited_amount: view.credited.as_ref().map(money_out),
        reason: reject_code_opt(view.reason),
        requested_unix_ms: unix_ms(view.requested_at),
    }
}

/// The wire form of the payee region's record of a cross-border transfer.
/// `None` for a tombstone, which names no payee.
pub fn participation_out(participation: &Participation) -> Option<partner::Transfer> {
    let prepare = participation.prepare.as_ref()?;
    let state = match participation.state {
        ParticipantState::Prepared => partner::TransferState::Prepared,
        ParticipantState::Committed => partner::TransferState::Committed,
        ParticipantState::Aborted | ParticipantState::Tombstone => partner::TransferState::Aborted,
    };
    Some(partner::Transfer {
        transfer_id: prepare.transfer.to_string(),
        idempotency_key: String::new(),
        quote_id: String::new(),
        corridor: Some(corridor_id_out(&prepare.corridor)),
        state: state as i32,
        abort_reason: reject_code_opt(participation.reason),
        source_amount: Some(money_out(&prepare.source)),
        fee: None,
        destination_amount: Some(money_out(&prepare.destination)),
        rate: prepare.rate.to_string(),
        payee: Some(partner::Payee {
            partner_id: prepare.payee.to_string(),
            merchant_id: prepare.merchant.to_string(),
            region: prepare.corridor.destination_region.to_string(),
            currency: prepare.corridor.destination_currency.code().to_owned(),
        }),
        payer_token: prepare.payer_token.to_string(),
        created_unix_ms: unix_ms(participation.created_at),
        updated_unix_ms: unix_ms(participation.updated_at),
        deadline_unix_ms: unix_ms(prepare.deadline),
    })
}

/// The wire form of a transfer as `viewer` sees it.
pub fn transfer_out(transfer: &PartnerTransfer, viewer: &PartnerId) -> Option<partner::Transfer> {
    match transfer {
        PartnerTransfer::Coordinated(t) => Some(transfer_view_out(&t.view, &t.view.partner == viewer)),
        PartnerTransfer::Participated(p) => participation_out(p),
    }
}

/// The wire form of a position.
pub fn position_out(position: &Position) -> common::Position {
    common::Position {
        currency: position.currency.code().to_owned(),
        posted_balance: Some(signed_out(&position.posted)),
        pending_debits: Some(signed_out(&position.pending_debits)),
        pending_credits: Some(signed_out(&position.pending_credits)),
        net_debit_cap: Some(money_out(&position.net_debit_cap)),
        available: Some(signed_out(&position.available)),
    }
}

/// The wire form of an event.
pub fn event_out(event: &Event) -> partner::Event {
    let (kind, state) = match event.kind {
        EventKind::Reserved => (partner::EventKind::Reserved, partner::TransferState::Reserved),
        EventKind::Committed => (partner::EventKind::Committed, partner::TransferState::Committed),
        EventKind::Aborted => (partner::EventKind::Aborted, partner::TransferState::Aborted),
        EventKind::Credited => (partner::EventKind::Credited, partner::TransferState::Committed),
        EventKind::Refunded => (partner::EventKind::Refunded, partner::TransferState::Committed),
        EventKind::RefundDebited => (partner::EventKind::RefundDebited, partner::TransferState::Committed),
        EventKind::RefundAborted => (partner::EventKind::RefundAborted, partner::TransferState::Aborted),
        EventKind::CancelRefused => (partner::EventKind::CancelRefused, partner::TransferState::Committed),
    };
    partner::Event {
        cursor: event.cursor,
        transfer_id: event.transfer.to_string(),
        kind: kind as i32,
        state: state as i32,
        amount: Some(money_out(&event.amount)),
        reason: reject_code_opt(event.reason),
        at_unix_ms: unix_ms(event.at),
    }
}

/// The wire form of the region's settings.
pub fn region_settings(settings: &paymesh_core::settings::RegionSettings) -> admin::RegionSettings {
    admin::RegionSettings {
        idempotency_retention_days: settings.idempotency_retention_days(),
        refund_window_days: settings.refund_window_days(),
        cancel_window_minutes: settings.cancel_window_minutes(),
    }
}

/// The wire form of a partner.
pub fn partner_out(state: &paymesh_core::State, partner: &Partner) -> admin::Partner {
    let config = &partner.config;
    let limits = state.partner_limits(&config.id);
    admin::Partner {
        partner_id: config.id.to_string(),
        home_region: config.region.to_string(),
        role: match config.role {
            PartnerRole::Payer => admin::PartnerRole::Payer,
            PartnerRole::Payee => admin::PartnerRole::Payee,
            PartnerRole::Both => admin::PartnerRole::Both,
        } as i32,
        settlement_currency: config.currency.code().to_owned(),
        net_debit_cap: Some(money_out(&config.net_debit_cap)),
        status: match partner.status {
            BusinessStatus::Active => admin::PartnerStatus::Active,
            BusinessStatus::Suspended => admin::PartnerStatus::Suspended,
        } as i32,
        updated_unix_ms: unix_ms(partner.updated_at),
        limits: Some(admin::PartnerLimits {
            requests_per_second: limits.requests_per_second,
            requests_burst: limits.requests_burst,
            quotes_outstanding_max: limits.quotes_outstanding_max,
            transfers_in_flight_max: limits.transfers_in_flight_max,
        }),
    }
}

/// Partner limits from the wire, validated: INVALID_ARGUMENT naming the
/// field out of bounds.
pub fn partner_limits(field: &str, limits: Option<&admin::PartnerLimits>) -> Result<PartnerLimits, Status> {
    let limits = required(field, limits)?;
    let limits = PartnerLimits {
        requests_per_second: limits.requests_per_second,
        requests_burst: limits.requests_burst,
        quotes_outstanding_max: limits.quotes_outstanding_max,
        transfers_in_flight_max: limits.transfers_in_flight_max,
    };
    limits.validate().map_err(|why| invalid(field, why))?;
    Ok(limits)
}

/// The wire form of a corridor.
pub fn corridor_out(corridor: &Corridor, refund_rate: RefundRate) -> admin::Corridor {
    let terms = &corridor.terms;
    admin::Corridor {
        corridor: Some(corridor_id_out(&corridor.id)),
        spread_bps: terms.spread().get(),
        fee: Some(admin::FeeSchedule {
            fixed: Some(money_out(&terms.fees().fixed())),
            rate_bps: terms.fees().rate().get(),
            min: Some(money_out(&terms.fees().min())),
            max: Some(money_out(&terms.fees().max())),
        }),
        min_amount: Some(money_out(&terms.min_amount())),
        max_amount: Some(money_out(&terms.max_amount())),
        daily_cap: Some(money_out(&terms.daily_cap())),
        status: match corridor.status {
            BusinessStatus::Active => admin::CorridorStatus::Active,
            BusinessStatus::Suspended => admin::CorridorStatus::Suspended,
        } as i32,
        updated_unix_ms: unix_ms(corridor.updated_at),
        refund_rate: refund_rate_out(refund_rate) as i32,
    }
}

/// The wire form of a corridor's refund rate.
pub fn refund_rate_out(rate: RefundRate) -> admin::RefundRate {
    match rate {
        RefundRate::Original => admin::RefundRate::Original,
        RefundRate::Current => admin::RefundRate::Current,
    }
}

/// A corridor's refund rate from the wire; `field` names it in the error.
pub fn refund_rate_in(field: &str, value: i32) -> Result<RefundRate, Status> {
    match admin::RefundRate::try_from(value) {
        Ok(admin::RefundRate::Original) => Ok(RefundRate::Original),
        Ok(admin::RefundRate::Current) => Ok(RefundRate::Current),
        _ => Err(Status::invalid_argument(format!("{field}: ORIGINAL or CURRENT required"))),
    }
}

/// The wire form of an FX rate of a corridor.
pub fn fx_rate_out(corridor: &CorridorId, rate: &FxRate) -> admin::FxRate {
    admin::FxRate {
        corridor: Some(corridor_id_out(corridor)),
        mid_rate: rate.mid().to_string(),
        valid_from_unix_ms: unix_ms(rate.valid_from()),
        valid_until_unix_ms: unix_ms(rate.valid_until()),
    }
}

/// The wire form of a payee route.
pub fn route_out(route: &PayeeRoute) -> admin::PayeeRoute {
    admin::PayeeRoute {
        qr_prefix: route.prefix.as_str().to_owned(),
        payee_partner_id: route.partner.to_string(),
        region: route.region.to_string(),
        currency: route.currency.code().to_owned(),
    }
}

/// The prefix of the page tokens of lists read from history.
const PAGE_TOKEN_PREFIX: &str = "at:";

/// A page token naming a position in a list read from history.
pub fn list_token_out(token: &ListToken) -> String {
    format!("{PAGE_TOKEN_PREFIX}{}.{}.{}", token.at.unix_ms(), token.index, token.seq)
}

/// The position a page token this service issued names.
pub fn list_token(field: &str, token: &str) -> Result<ListToken, Status> {
    let parse = || {
        let mut parts = token.strip_prefix(PAGE_TOKEN_PREFIX)?.split('.');
        let at = Timestamp::from_unix_ms(parts.next()?.parse().ok()?);
        let index = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(ListToken { at, index, seq })
    };
    parse().ok_or_else(|| invalid(field, "not a token this service issued"))
}

/// An account named as `partner:<id>:<currency>`, `clearing:<region>:<currency>`,
/// `fees:<currency>` or `settlement:<currency>` (as ledger accounts print).
pub fn account_id(field: &str, text: &str) -> Result<AccountId, Status> {
    let bad = |why: String| invalid(field, format!("{text:?}: {why}"));
    let mut parts = text.split(':');
    let kind = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let code = |c: &str| Currency::parse(c).map_err(|e| bad(e.to_string()));
    let owner_and_currency = match (kind, rest.as_slice()) {
        ("partner", [id, c]) => (AccountOwner::Partner(PartnerId::new(*id).map_err(|e| bad(e.to_string()))?), code(c)?),
        ("clearing", [region, c]) => {
            (AccountOwner::Clearing(RegionId::new(*region).map_err(|e| bad(e.to_string()))?), code(c)?)
        }
        ("fees", [c]) => (AccountOwner::Fees, code(c)?),
        ("settlement", [c]) => (AccountOwner::Settlement, code(c)?),
        _ => {
            return Err(bad(
                "not partner:<id>:<currency>, clearing:<region>:<currency>, fees:<currency> or settlement:<currency>"
                    .into(),
            ))
        }
    };
    Ok(AccountId::new(owner_and_currency.0, owner_and_currency.1))
}

/// An entry's id as statements print it.
pub fn entry_id_out(id: &EntryId) -> String {
    match id {
        EntryId::Transfer { transfer, leg } => {
            let leg = match leg {
                Leg::Principal => "principal",
                Leg::Fee => "fee",
                Leg::Payout => "payout",
                Leg::Refund => "refund",
                Leg::RefundPayout => "refund-payout",
            };
            format!("{transfer}/{leg}")
        }
        EntryId::TopUp(reference) => format!("top-up/{reference}"),
        EntryId::FundOut(reference) => format!("fund-out/{reference}"),
        EntryId::Settled { window, account } => format!("settlement/{window}/{account}"),
    }
}

/// A movement as a line of `account`'s statement.
pub fn statement_line_out(account: &AccountId, movement: &Movement) -> common::StatementLine {
    let debit = &movement.debit == account;
    let (after, counterparty) =
        if debit { (movement.debit_after, &movement.credit) } else { (movement.credit_after, &movement.debit) };
    let currency = account.currency;
    let signed = |units: i128| SignedMoney::from_units(units, currency).ok().map(|m| signed_out(&m));
    let kind = match movement.kind {
        MovementKind::Post => common::MovementKind::Posted,
        MovementKind::Reserve => common::MovementKind::Reserved,
        MovementKind::PostPending => common::MovementKind::ReservationPosted,
        MovementKind::VoidPending => common::MovementKind::ReservationVoided,
    };
    common::StatementLine {
        entry_id: entry_id_out(&movement.entry),
        kind: kind as i32,
        debit,
        amount: Some(money_out(&movement.amount)),
        counterparty: counterparty.to_string(),
        at_unix_ms: movement.at.unix_ms() as i64,
        posted_balance: signed(after.net_posted()),
        pending_debits: signed(after.debits_pending as i128),
        pending_credits: signed(after.credits_pending as i128),
    }
}

/// The largest statement page.
pub const STATEMENT_PAGE_MAX: u32 = 500;
/// A statement page unless the caller asks for another size.
const STATEMENT_PAGE_DEFAULT: u32 = 100;

/// One page of `account`'s statement from `history`: movements with
/// `from <= at < to` (`to_unix_ms` 0: no end), after the page token, and the
/// token of the next page (empty at the end).
pub fn statement_page(
    history: &History,
    account: &AccountId,
    from_unix_ms: i64,
    to_unix_ms: i64,
    page_size: u32,
    page_token: &str,
) -> Result<(Vec<common::StatementLine>, String), Status> {
    let from = timestamp("from_unix_ms", from_unix_ms)?;
    let to = if to_unix_ms == 0 { Timestamp::from_unix_ms(u64::MAX) } else { timestamp("to_unix_ms", to_unix_ms)? };
    if to_unix_ms != 0 && from_unix_ms >= to_unix_ms {
        return Err(invalid("to_unix_ms", "must be after from_unix_ms"));
    }
    let size = match page_size {
        0 => STATEMENT_PAGE_DEFAULT,
        n => n.min(STATEMENT_PAGE_MAX),
    } as usize;
    let after = match page_token {
        "" => None,
        token => Some(list_token("page_token", token)?),
    };
    // One more than the page, to know whether another follows.
    let mut found = history
        .statement(account, from, to, after, size + 1)
        .map_err(|e| Status::internal(format!("reading history: {e}")))?;
    let more = found.len() > size;
    found.truncate(size);
    let next = match found.last() {
        Some((token, _)) if more => list_token_out(token),
        _ => String::new(),
    };
    Ok((found.iter().map(|(_, m)| statement_line_out(account, m)).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_money(amount: &str, currency: &str) -> common::Money {
        common::Money { amount: amount.into(), currency: currency.into() }
    }

    #[test]
    fn inbound_fields_are_named_in_errors() {
        let error = money("source_amount", Some(&wire_money("1.005", "USD"))).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().starts_with("source_amount: USD allows at most 2"), "{}", error.message());
        assert_eq!(money("fee", None).unwrap_err().message(), "fee: is required");
        let error = payer_details("payer", Some(&partner::PayerDetails::default())).unwrap_err();
        assert!(error.message().starts_with("payer.name: payer field is empty"), "{}", error.message());
        let error = corridor_id("corridor", Some(&common::CorridorId::default())).unwrap_err();
        assert!(error.message().starts_with("corridor.source_currency:"), "{}", error.message());
        assert!(quote_id("quote_id", "us-west:7").unwrap_err().message().contains("<region>:q<sequence>"));
        assert!(partner_role("role", 0).is_err());
        assert!(timestamp("valid_from_unix_ms", -1).is_err());
    }

    #[test]
    fn reject_codes_number_from_one() {
        assert_eq!(reject_code(RejectCode::PartnerNotFound), 1);
        assert_eq!(reject_code(RejectCode::WebhookNotFound), RejectCode::ALL.len() as i32);
        assert_eq!(
            common::RejectCode::try_from(reject_code(RejectCode::WebhookNotFound)).unwrap(),
            common::RejectCode::WebhookNotFound
        );
        for code in RejectCode::ALL {
            assert_eq!(reject_code_in(reject_code(code)), Some(code));
            assert!(common::RejectCode::try_from(reject_code(code)).is_ok(), "{code:?} has no wire value");
        }
        assert_eq!(reject_code_opt(None), 0);
        assert_eq!(
            common::RejectCode::try_from(reject_code(RejectCode::InsufficientPosition)).unwrap(),
            common::RejectCode::InsufficientPosition
        );
    }
}
