//! Every limit of the core in one place.
//!
//! A payment switch that accepts input from partners, operators and other regions
//! must bound everything it stores or loops over. Each limit is a named constant
//! with its unit last, so a reader can find and reason about all of them together
//! (TigerBeetle's `constants.zig` is the model).

/// Most integer digits an amount may have: amounts stay below 10^15 major units.
///
/// With at most 3 minor-unit digits this keeps every amount below 10^18 minor
/// units, so it fits an `i64` and products with a rate fit an `i128` exactly.
pub const AMOUNT_INTEGER_DIGITS_MAX: u32 = 15;

/// Longest decimal string accepted for an amount (sign, 15 digits, point, 3 digits).
pub const AMOUNT_TEXT_BYTES_MAX: usize = 20;

/// Largest absolute value of any ledger balance, in minor units.
///
/// Balances accumulate many amounts, so they get far more room than a single
/// amount, while still fitting a `rust_decimal::Decimal` (about 7.9 × 10^28) at
/// any scale up to 3.
pub const BALANCE_UNITS_MAX: u128 = 10u128.pow(27);

/// Most fractional digits an FX rate may carry.
pub const RATE_FRACTION_DIGITS_MAX: u32 = 12;

/// Most integer digits an FX rate may carry (rates stay below 10^7, enough for
/// KWD→IDR at about 52,000).
pub const RATE_INTEGER_DIGITS_MAX: u32 = 7;

/// Longest decimal string accepted for a rate.
pub const RATE_TEXT_BYTES_MAX: usize = 24;

/// Longest time an FX rate may be valid, in milliseconds (one day).
pub const RATE_VALIDITY_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// Most FX rates a corridor holds at once (the current one and scheduled ones).
pub const RATES_PER_CORRIDOR_MAX: usize = 16;

/// Most unexpired quotes a region holds.
pub const QUOTES_OUTSTANDING_MAX: usize = 1_000_000;

/// A partner's sustained request rate unless an operator sets another, per
/// second: 500 payments/s (a quote and a transfer each). A 3-node region on
/// the benchmark machine serves about 12,000 to 15,000 requests/s at its
/// peak, so one partner at this rate uses at most about a fifteenth of it:
/// measured with `paymesh bench --flood`, a partner flooding at this rate
/// costs the others about a fifth of a saturated region's throughput, and
/// one flooding at 4,000/s (the earlier default) a third to a half
/// (docs/BENCHMARKS.md, "Fairness"). A partner that needs more is given it
/// by an operator (`paymesh partner limits`).
pub const PARTNER_REQUESTS_PER_SECOND_DEFAULT: u32 = 1_000;

/// A partner's burst above its sustained rate unless an operator sets
/// another, in requests.
pub const PARTNER_REQUESTS_BURST_DEFAULT: u32 = 2_000;

/// Highest sustained request rate an operator may give a partner, per second.
pub const PARTNER_REQUESTS_PER_SECOND_MAX: u32 = 50_000;

/// Highest burst an operator may give a partner, in requests.
pub const PARTNER_REQUESTS_BURST_MAX: u32 = 100_000;

/// Unused quotes a partner may hold unless an operator sets another number.
/// A partner that quotes and then pays at 2,000/s holds a few hundred; one
/// that quotes and never pays reaches this in seconds and is refused.
pub const PARTNER_QUOTES_OUTSTANDING_DEFAULT: u32 = 10_000;

/// Most unused quotes an operator may let a partner hold (a tenth of
/// [`QUOTES_OUTSTANDING_MAX`], so ten partners at their cap cannot fill it).
pub const PARTNER_QUOTES_OUTSTANDING_MAX: u32 = 100_000;

/// Transfers of one partner not yet final (reserved, waiting for the payee
/// region) unless an operator sets another number.
pub const PARTNER_TRANSFERS_IN_FLIGHT_DEFAULT: u32 = 10_000;

/// Most transfers not yet final an operator may let one partner hold.
pub const PARTNER_TRANSFERS_IN_FLIGHT_MAX: u32 = 100_000;

/// Largest spread or fee rate, in basis points (20 %).
pub const BASIS_POINTS_MAX: u32 = 2_000;

/// How long a quote stays valid after it is created, in milliseconds.
pub const QUOTE_TTL_MS: u64 = 60 * 1000;

/// How long an expired quote is remembered, in milliseconds, so that a
/// transfer arriving just late hears QUOTE_EXPIRED rather than
/// QUOTE_NOT_FOUND. Short, because remembered quotes count towards
/// [`QUOTES_OUTSTANDING_MAX`].
pub const QUOTE_RETENTION_AFTER_EXPIRY_MS: u64 = 10 * 1000;

/// How long the participant region has to prepare a cross-border transfer, in
/// milliseconds from its reservation. A transfer still unprepared at its
/// deadline is aborted by the coordinator.
pub const TRANSFER_PREPARE_DEADLINE_MS: u64 = 10 * 1000;

/// How far ahead of the participant's clock a Prepare's deadline may be, in
/// milliseconds: six times [`TRANSFER_PREPARE_DEADLINE_MS`], which leaves
/// the regions' clocks 50 s to disagree. A Prepare beyond it is refused
/// (PROTOCOL_VIOLATION) and reserves nothing, so another region cannot make
/// this one hold a pending credit for longer than that.
pub const PREPARE_DEADLINE_AHEAD_MAX_MS: u64 = 6 * TRANSFER_PREPARE_DEADLINE_MS;

/// How long an idempotency key is remembered by default, in milliseconds
/// (30 days; an operator changes it for the region, see
/// [`crate::settings`]). A retry after this window is a new request. Keys
/// live in history, not in memory, so the window costs disk, not memory.
pub const IDEMPOTENCY_RETENTION_MS: u64 = 30 * DAY_MS;

/// How long a finished transfer (committed or aborted, on either side) still
/// answers late inter-region messages about it, in milliseconds (a day,
/// thousands of times the prepare deadline). It is read from history; a
/// message later than this is judged as one about an unknown transfer (a
/// Prepare that late is refused by its deadline anyway).
pub const FINISHED_TRANSFER_RECALL_MS: u64 = DAY_MS;

/// How long a top-up reference is remembered, in milliseconds (400 days: longer
/// than a year of bank statements). Repeating a funding within this window never
/// credits twice.
pub const TOP_UP_RETENTION_MS: u64 = 400 * DAY_MS;

/// The shortest history retention a node accepts, in milliseconds: the
/// longest window in which applying a command consults history
/// ([`TOP_UP_RETENTION_MS`]). Every replica must still hold what any of them
/// may consult, or they would decide differently.
pub const HISTORY_RETENTION_MIN_MS: u64 = TOP_UP_RETENTION_MS;

/// How long after a payment committed its payee may refund it, by
/// default (the region's setting changes it): 365 days.
pub const REFUND_WINDOW_MS: u64 = 365 * DAY_MS;

/// A day, in milliseconds.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60 * 1000;

/// How long after a payment committed its payer may cancel it, by
/// default: a day (schemes allow until shortly after midnight of the next
/// day; a day is that, with no calendar in the core).
pub const CANCEL_WINDOW_MS: u64 = DAY_MS;

/// How many command outcomes each proposer session keeps for dedupe.
pub const SESSION_OUTCOMES_MAX: usize = 4_096;

/// How long a proposer session may stay idle before it is forgotten, in milliseconds.
pub const SESSION_IDLE_EXPIRY_MS: u64 = 60 * 60 * 1000;

/// Most records one `Tick` expires or purges, so a tick's work is bounded.
pub const TICK_WORK_MAX: usize = 10_000;

/// Most commands in one batch (one Raft entry).
pub const BATCH_COMMANDS_MAX: usize = 1_024;

/// Most items in one `CreateTransfers` request (well within one Raft entry
/// and a partner's default burst of requests).
pub const TRANSFERS_PER_REQUEST_MAX: usize = 500;

/// Identifier lengths, in bytes.
pub const REGION_ID_BYTES_MAX: usize = 32;
/// See [`REGION_ID_BYTES_MAX`].
pub const PARTNER_ID_BYTES_MAX: usize = 32;
/// See [`REGION_ID_BYTES_MAX`]; an operator's name (from its certificate).
pub const OPERATOR_NAME_BYTES_MAX: usize = 32;
/// See [`REGION_ID_BYTES_MAX`].
pub const MERCHANT_ID_BYTES_MAX: usize = 128;
/// See [`REGION_ID_BYTES_MAX`].
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// See [`REGION_ID_BYTES_MAX`].
pub const REFERENCE_BYTES_MAX: usize = 128;
/// See [`REGION_ID_BYTES_MAX`].
pub const QR_PAYLOAD_BYTES_MAX: usize = 512;
/// Shortest QR payload prefix a payee route may use, so no route captures everything.
pub const QR_PREFIX_BYTES_MIN: usize = 4;
/// Payer personal data fields (name, account, reference), in bytes each.
pub const PAYER_FIELD_BYTES_MAX: usize = 256;
/// Most payee routes a region's directory holds.
pub const PAYEE_ROUTES_MAX: usize = 10_000;
