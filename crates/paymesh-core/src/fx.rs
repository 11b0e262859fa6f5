//! Foreign exchange: rates, conversion with named rounding, spreads and fees.
//!
//! All arithmetic here is exact integer arithmetic on minor units and rate
//! mantissas (`i128`), followed by exactly one rounding step whose rule is named
//! by the caller. No intermediate result is rounded, so a conversion is never off
//! by more than one minor unit of its target currency.
//!
//! The rounding rules paymesh uses, and why:
//!
//! * **Paying out by source amount** (the payer names what it spends): the
//!   destination amount is rounded [`Rounding::Down`], so the mesh never promises
//!   more than the exact converted value.
//! * **Collecting by destination amount** (the merchant's QR names the price):
//!   the source amount is rounded [`Rounding::Up`], the least source amount that
//!   covers the price, so the mesh never pays out more than it collected.
//! * **Percentage fees** are rounded [`Rounding::HalfEven`] (banker's rounding),
//!   which has no bias over many transfers.
//! * **Spread** lowers the customer rate and is rounded [`Rounding::Down`] to the
//!   rate precision, in the mesh's favour by less than one unit of the rate's
//!   last digit.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::limits::{BASIS_POINTS_MAX, RATE_FRACTION_DIGITS_MAX, RATE_INTEGER_DIGITS_MAX, RATE_VALIDITY_MAX_MS};
use crate::money::{parse_plain_decimal, AmountError, Money, MoneyError, Sign};
use crate::time::Timestamp;

/// A rounding rule, always named where it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rounding {
    /// Toward zero: the result never exceeds the exact value.
    Down,
    /// Away from zero: the result is never below the exact value.
    Up,
    /// To nearest, ties to the even neighbour (banker's rounding).
    HalfEven,
}

impl Rounding {
    /// `numerator / denominator` for non-negative operands, rounded by this rule.
    pub fn divide(self, numerator: u128, denominator: u128) -> u128 {
        assert!(denominator > 0, "division by zero in rounding");
        let quotient = numerator / denominator;
        let remainder = numerator % denominator;
        let round_up = match self {
            Rounding::Down => false,
            Rounding::Up => remainder > 0,
            Rounding::HalfEven => match (2 * remainder).cmp(&denominator) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => quotient % 2 == 1,
            },
        };
        quotient + u128::from(round_up)
    }
}

/// Why a rate, rate window, spread or fee schedule was refused, or a conversion failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FxError {
    /// The rate's decimal string broke the shared decimal grammar.
    #[error("rate: {0}")]
    Syntax(AmountError),
    /// More fractional digits than a rate may carry.
    #[error("rate has more than {max} fractional digits")]
    TooManyFractionDigits {
        /// The limit.
        max: u32,
    },
    /// A rate of zero.
    #[error("rate must be greater than zero")]
    Zero,
    /// The validity window is empty, reversed or longer than allowed.
    #[error("rate validity window must be non-empty and at most {max_ms} ms long")]
    BadWindow {
        /// The longest window allowed, in milliseconds.
        max_ms: u64,
    },
    /// A rate between a currency and itself: same-currency corridors convert at exactly 1.
    #[error("a rate needs two different currencies")]
    SameCurrency,
    /// Basis points above the limit.
    #[error("{value} basis points is above the limit of {max}")]
    BasisPointsTooHigh {
        /// The value given.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// The spread leaves no rate at the rate precision.
    #[error("the spread reduces the rate to zero")]
    SpreadConsumesRate,
    /// A fee schedule whose amounts are in different currencies or whose minimum exceeds its maximum.
    #[error("fee schedule is inconsistent: {0}")]
    BadFeeSchedule(&'static str),
    /// The converted amount does not fit the target currency's bound.
    #[error("converted amount out of range")]
    Overflow,
    /// Arithmetic across currencies.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// An exchange rate: destination units per one source unit. Strictly positive,
/// below 10^7, with at most 12 fractional digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate(Decimal);

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::serde_text::serialize_decimal(&self.0, serializer)
    }
}

impl Rate {
    /// Exactly one: the rate of every same-currency corridor.
    pub const ONE: Rate = Rate(Decimal::ONE);

    /// Parse a rate from its wire decimal string.
    pub fn parse(text: &str) -> Result<Rate, FxError> {
        let plain = parse_plain_decimal(text, Sign::NonNegative, RATE_INTEGER_DIGITS_MAX).map_err(FxError::Syntax)?;
        if plain.fraction.len() > RATE_FRACTION_DIGITS_MAX as usize {
            return Err(FxError::TooManyFractionDigits { max: RATE_FRACTION_DIGITS_MAX });
        }
        let scale = plain.fraction.len() as u32;
        Rate::from_decimal(Decimal::from_i128_with_scale(plain.mantissa_at_scale(scale), scale))
    }

    /// A rate from a decimal, checked against the same bounds as [`Rate::parse`].
    pub fn from_decimal(value: Decimal) -> Result<Rate, FxError> {
        let value = value.normalize();
        if value.is_sign_negative() && !value.is_zero() {
            return Err(FxError::Syntax(AmountError::NegativeNotAllowed));
        }
        if value.is_zero() {
            return Err(FxError::Zero);
        }
        if value.scale() > RATE_FRACTION_DIGITS_MAX {
            return Err(FxError::TooManyFractionDigits { max: RATE_FRACTION_DIGITS_MAX });
        }
        if value >= Decimal::from(10u64.pow(RATE_INTEGER_DIGITS_MAX)) {
            return Err(FxError::Syntax(AmountError::TooManyIntegerDigits { max: RATE_INTEGER_DIGITS_MAX }));
        }
        Ok(Rate(value))
    }

    /// The rate as a decimal.
    pub fn value(&self) -> Decimal {
        self.0
    }

    /// The rate as `(mantissa, scale)`: `mantissa / 10^scale`. The mantissa is
    /// positive and below 10^19.
    fn parts(&self) -> (u128, u32) {
        (self.0.mantissa().unsigned_abs(), self.0.scale())
    }

    /// The customer rate after taking `spread` off this mid rate, rounded
    /// [`Rounding::Down`] to the rate precision.
    pub fn less_spread(&self, spread: BasisPoints) -> Result<Rate, FxError> {
        let (mantissa, scale) = self.parts();
        // mantissa * (10000 - bps) at scale + 4 is exact; then drop digits past the
        // rate precision.
        let exact = mantissa * u128::from(10_000 - spread.0);
        let exact_scale = scale + 4;
        let kept_scale = exact_scale.min(RATE_FRACTION_DIGITS_MAX);
        let kept = Rounding::Down.divide(exact, 10u128.pow(exact_scale - kept_scale));
        if kept == 0 {
            return Err(FxError::SpreadConsumesRate);
        }
        let kept = i128::try_from(kept).map_err(|_| FxError::Overflow)?;
        Rate::from_decimal(Decimal::from_i128_with_scale(kept, kept_scale))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({})", self.0)
    }
}

impl TryFrom<String> for Rate {
    type Error = FxError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Rate::parse(&text)
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        rate.0.to_string()
    }
}

/// A number of basis points (hundredths of a percent), at most [`BASIS_POINTS_MAX`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct BasisPoints(u32);

impl BasisPoints {
    /// Zero basis points.
    pub const ZERO: BasisPoints = BasisPoints(0);

    /// Basis points, refused above the limit.
    pub fn new(value: u32) -> Result<BasisPoints, FxError> {
        if value > BASIS_POINTS_MAX {
            return Err(FxError::BasisPointsTooHigh { value, max: BASIS_POINTS_MAX });
        }
        Ok(BasisPoints(value))
    }

    /// The number of basis points.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for BasisPoints {
    type Error = FxError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        BasisPoints::new(value)
    }
}

impl From<BasisPoints> for u32 {
    fn from(bps: BasisPoints) -> u32 {
        bps.0
    }
}

/// Convert `amount` at `rate` into `to`, rounding the result by `rounding`.
///
/// Exact: `amount × rate` is computed on integers and rounded once to `to`'s
/// minor units.
pub fn convert(amount: Money, rate: Rate, to: Currency, rounding: Rounding) -> Result<Money, FxError> {
    let (rate_mantissa, rate_scale) = rate.parts();
    // exact destination = units_src × rate_mantissa × 10^(minor_dst) / 10^(minor_src + rate_scale)
    let numerator = u128::from(amount.units()) * rate_mantissa;
    let shift = i64::from(amount.currency().minor_units()) + i64::from(rate_scale) - i64::from(to.minor_units());
    let units = if shift >= 0 {
        rounding.divide(numerator, 10u128.pow(shift as u32))
    } else {
        numerator.checked_mul(10u128.pow((-shift) as u32)).ok_or(FxError::Overflow)?
    };
    let units = u64::try_from(units).map_err(|_| FxError::Overflow)?;
    Money::from_units(units, to).map_err(|_| FxError::Overflow)
}

/// The source amount in `from` that converts at `rate` to `target`, rounded by
/// `rounding`. With [`Rounding::Up`] it is the least source amount whose exact
/// conversion covers `target`.
pub fn source_for(target: Money, rate: Rate, from: Currency, rounding: Rounding) -> Result<Money, FxError> {
    let (rate_mantissa, rate_scale) = rate.parts();
    // exact source = units_dst × 10^(minor_src + rate_scale) / (rate_mantissa × 10^minor_dst)
    let shift = i64::from(from.minor_units()) + i64::from(rate_scale) - i64::from(target.currency().minor_units());
    let (numerator, denominator) = if shift >= 0 {
        (u128::from(target.units()) * 10u128.pow(shift as u32), rate_mantissa)
    } else {
        (u128::from(target.units()), rate_mantissa * 10u128.pow((-shift) as u32))
    };
    let units = u64::try_from(rounding.divide(numerator, denominator)).map_err(|_| FxError::Overflow)?;
    Money::from_units(units, from).map_err(|_| FxError::Overflow)
}

/// A rate between two currencies for a validity window `[valid_from, valid_until)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FxRateRepr", into = "FxRateRepr")]
pub struct FxRate {
    source: Currency,
    destination: Currency,
    mid: Rate,
    valid_from: Timestamp,
    valid_until: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct FxRateRepr {
    source: Currency,
    destination: Currency,
    mid: Rate,
    valid_from: Timestamp,
    valid_until: Timestamp,
}

impl FxRate {
    /// A mid-market rate, valid from `valid_from` (inclusive) to `valid_until`
    /// (exclusive), for at most [`RATE_VALIDITY_MAX_MS`].
    pub fn new(
        source: Currency,
        destination: Currency,
        mid: Rate,
        valid_from: Timestamp,
        valid_until: Timestamp,
    ) -> Result<FxRate, FxError> {
        if source == destination {
            return Err(FxError::SameCurrency);
        }
        if valid_until <= valid_from || valid_until.unix_ms() - valid_from.unix_ms() > RATE_VALIDITY_MAX_MS {
            return Err(FxError::BadWindow { max_ms: RATE_VALIDITY_MAX_MS });
        }
        Ok(FxRate { source, destination, mid, valid_from, valid_until })
    }

    /// The currency converted from.
    pub fn source(&self) -> Currency {
        self.source
    }

    /// The currency converted to.
    pub fn destination(&self) -> Currency {
        self.destination
    }

    /// The mid-market rate, before spread.
    pub fn mid(&self) -> Rate {
        self.mid
    }

    /// Start of validity (inclusive).
    pub fn valid_from(&self) -> Timestamp {
        self.valid_from
    }

    /// End of validity (exclusive).
    pub fn valid_until(&self) -> Timestamp {
        self.valid_until
    }

    /// Whether the rate may be used at `now`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.valid_from <= now && now < self.valid_until
    }
}

impl TryFrom<FxRateRepr> for FxRate {
    type Error = FxError;
    fn try_from(r: FxRateRepr) -> Result<Self, Self::Error> {
        FxRate::new(r.source, r.destination, r.mid, r.valid_from, r.valid_until)
    }
}

impl From<FxRate> for FxRateRepr {
    fn from(r: FxRate) -> Self {
        FxRateRepr {
            source: r.source,
            destination: r.destination,
            mid: r.mid,
            valid_from: r.valid_from,
            valid_until: r.valid_until,
        }
    }
}

/// What a transfer pays in fees: `clamp(fixed + amount × rate, min, max)`, all in
/// the source currency, never negative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FeeScheduleRepr", into = "FeeScheduleRepr")]
pub struct FeeSchedule {
    fixed: Money,
    rate: BasisPoints,
    min: Money,
    max: Money,
}

#[derive(Serialize, Deserialize)]
struct FeeScheduleRepr {
    fixed: Money,
    rate: BasisPoints,
    min: Money,
    max: Money,
}

impl FeeSchedule {
    /// A fee schedule; every amount must be in one currency and `min <= max`.
    pub fn new(fixed: Money, rate: BasisPoints, min: Money, max: Money) -> Result<FeeSchedule, FxError> {
        if fixed.currency() != min.currency() || fixed.currency() != max.currency() {
            return Err(FxError::BadFeeSchedule("amounts in different currencies"));
        }
        if min.units() > max.units() {
            return Err(FxError::BadFeeSchedule("minimum above maximum"));
        }
        Ok(FeeSchedule { fixed, rate, min, max })
    }

    /// No fee at all, in `currency`.
    pub fn free(currency: Currency) -> FeeSchedule {
        let zero = Money::zero(currency);
        FeeSchedule { fixed: zero, rate: BasisPoints::ZERO, min: zero, max: zero }
    }

    /// The currency fees are charged in.
    pub fn currency(&self) -> Currency {
        self.fixed.currency()
    }

    /// The fixed part.
    pub fn fixed(&self) -> Money {
        self.fixed
    }

    /// The percentage part, in basis points.
    pub fn rate(&self) -> BasisPoints {
        self.rate
    }

    /// The smallest fee charged.
    pub fn min(&self) -> Money {
        self.min
    }

    /// The largest fee charged.
    pub fn max(&self) -> Money {
        self.max
    }

    /// The fee on `amount`: the percentage part rounded [`Rounding::HalfEven`] to
    /// minor units, plus the fixed part, clamped to `[min, max]`.
    pub fn fee(&self, amount: Money) -> Result<Money, FxError> {
        if amount.currency() != self.currency() {
            return Err(MoneyError::CurrencyMismatch { left: amount.currency(), right: self.currency() }.into());
        }
        let variable = Rounding::HalfEven.divide(u128::from(amount.units()) * u128::from(self.rate.get()), 10_000);
        let total = u128::from(self.fixed.units()) + variable;
        let clamped = total.clamp(u128::from(self.min.units()), u128::from(self.max.units()));
        // clamped <= max.units(), which fits a u64.
        Money::from_units(clamped as u64, self.currency()).map_err(FxError::from)
    }
}

impl TryFrom<FeeScheduleRepr> for FeeSchedule {
    type Error = FxError;
    fn try_from(r: FeeScheduleRepr) -> Result<Self, Self::Error> {
        FeeSchedule::new(r.fixed, r.rate, r.min, r.max)
    }
}

impl From<FeeSchedule> for FeeScheduleRepr {
    fn from(f: FeeSchedule) -> Self {
        FeeScheduleRepr { fixed: f.fixed, rate: f.rate, min: f.min, max: f.max }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use Currency::*;

    fn money(text: &str, currency: Currency) -> Money {
        Money::parse(text, currency).unwrap()
    }

    fn rate(text: &str) -> Rate {
        Rate::parse(text).unwrap()
    }

    #[test]
    fn rounding_rules_are_what_their_names_say() {
        // 25 / 10 = 2.5; 35 / 10 = 3.5; 26 / 10 = 2.6; 24 / 10 = 2.4
        assert_eq!(Rounding::Down.divide(26, 10), 2);
        assert_eq!(Rounding::Up.divide(21, 10), 3);
        assert_eq!(Rounding::Up.divide(20, 10), 2);
        assert_eq!(Rounding::HalfEven.divide(25, 10), 2);
        assert_eq!(Rounding::HalfEven.divide(35, 10), 4);
        assert_eq!(Rounding::HalfEven.divide(26, 10), 3);
        assert_eq!(Rounding::HalfEven.divide(24, 10), 2);
    }

    #[test]
    fn rates_parse_strictly() {
        assert_eq!(rate("7.1234").value().to_string(), "7.1234");
        assert_eq!(rate("0.000019195").value().to_string(), "0.000019195");
        assert_eq!(Rate::parse("0"), Err(FxError::Zero));
        assert_eq!(Rate::parse("0.000"), Err(FxError::Zero));
        assert_eq!(Rate::parse("-1"), Err(FxError::Syntax(AmountError::NegativeNotAllowed)));
        assert_eq!(Rate::parse("1e2"), Err(FxError::Syntax(AmountError::Exponent)));
        assert_eq!(Rate::parse("0.0000000000001"), Err(FxError::TooManyFractionDigits { max: 12 }));
        assert_eq!(Rate::parse("10000000"), Err(FxError::Syntax(AmountError::TooManyIntegerDigits { max: 7 })));
        assert_eq!(serde_json::to_string(&rate("7.10")).unwrap(), "\"7.1\"");
    }

    #[test]
    fn conversions_round_by_their_named_rule() {
        // 10.00 USD at 7.1234 = 71.234 CNY.
        assert_eq!(convert(money("10", USD), rate("7.1234"), CNY, Rounding::Down).unwrap(), money("71.23", CNY));
        assert_eq!(convert(money("10", USD), rate("7.1234"), CNY, Rounding::Up).unwrap(), money("71.24", CNY));
        // 100 JPY at 0.0477 CNY = 4.77 CNY exactly.
        assert_eq!(convert(money("100", JPY), rate("0.0477"), CNY, Rounding::Up).unwrap(), money("4.77", CNY));
        // 1 KWD at 52000 IDR: 52000.00 IDR; into a 0-digit currency from a 3-digit one.
        assert_eq!(convert(money("1.234", KWD), rate("2.5"), JPY, Rounding::HalfEven).unwrap(), money("3", JPY));
        // Paying a 100.00 CNY QR from USD at 7.1234: least USD covering it.
        let source = source_for(money("100", CNY), rate("7.1234"), USD, Rounding::Up).unwrap();
        assert_eq!(source, money("14.04", USD));
        assert!(convert(source, rate("7.1234"), CNY, Rounding::Down).unwrap().units() >= 10_000);
        let less = Money::from_units(source.units() - 1, USD).unwrap();
        assert!(convert(less, rate("7.1234"), CNY, Rounding::Down).unwrap().units() < 10_000);
    }

    #[test]
    fn conversion_out_of_range_is_an_error() {
        let max_usd = Money::from_units(Money::units_max(USD), USD).unwrap();
        assert_eq!(convert(max_usd, rate("25000"), VND, Rounding::Down), Err(FxError::Overflow));
        let max_vnd = money("999999999999999", VND);
        assert_eq!(source_for(max_vnd, rate("25000"), USD, Rounding::Up).unwrap(), money("40000000000", USD));
        assert_eq!(source_for(max_vnd, rate("0.00004"), USD, Rounding::Up), Err(FxError::Overflow));
    }

    #[test]
    fn spread_lowers_the_rate_and_rounds_down() {
        assert_eq!(rate("7.2").less_spread(BasisPoints::new(50).unwrap()).unwrap(), rate("7.164"));
        assert_eq!(rate("7.2").less_spread(BasisPoints::ZERO).unwrap(), rate("7.2"));
        // 0.000000000003 × 0.8 = 0.0000000000024 → 0.000000000002 at 12 digits.
        assert_eq!(
            rate("0.000000000003").less_spread(BasisPoints::new(2_000).unwrap()).unwrap(),
            rate("0.000000000002")
        );
        assert_eq!(rate("0.000000000001").less_spread(BasisPoints::new(1).unwrap()), Err(FxError::SpreadConsumesRate));
        assert_eq!(BasisPoints::new(2_001), Err(FxError::BasisPointsTooHigh { value: 2_001, max: 2_000 }));
    }

    #[test]
    fn rate_windows_are_bounded_and_half_open() {
        let from = Timestamp::from_unix_ms(1_000);
        let until = Timestamp::from_unix_ms(2_000);
        let fx = FxRate::new(USD, CNY, rate("7.1"), from, until).unwrap();
        assert!(!fx.is_valid_at(Timestamp::from_unix_ms(999)));
        assert!(fx.is_valid_at(from));
        assert!(fx.is_valid_at(Timestamp::from_unix_ms(1_999)));
        assert!(!fx.is_valid_at(until));
        assert_eq!(FxRate::new(USD, USD, rate("1"), from, until), Err(FxError::SameCurrency));
        assert!(matches!(FxRate::new(USD, CNY, rate("7"), until, from), Err(FxError::BadWindow { .. })));
        assert!(matches!(FxRate::new(USD, CNY, rate("7"), from, from), Err(FxError::BadWindow { .. })));
        let too_long = from.plus_ms(RATE_VALIDITY_MAX_MS + 1);
        assert!(matches!(FxRate::new(USD, CNY, rate("7"), from, too_long), Err(FxError::BadWindow { .. })));
        let json = serde_json::to_string(&fx).unwrap();
        assert_eq!(serde_json::from_str::<FxRate>(&json).unwrap(), fx);
        let reversed = json.replace("\"valid_until\":2000", "\"valid_until\":500");
        assert!(serde_json::from_str::<FxRate>(&reversed).is_err());
    }

    #[test]
    fn fees_are_fixed_plus_percentage_clamped() {
        let schedule =
            FeeSchedule::new(money("0.30", USD), BasisPoints::new(150).unwrap(), money("0.50", USD), money("25", USD))
                .unwrap();
        // 10.00 × 1.5 % = 0.15; + 0.30 = 0.45 → min 0.50.
        assert_eq!(schedule.fee(money("10", USD)).unwrap(), money("0.50", USD));
        // 100.00 × 1.5 % = 1.50; + 0.30 = 1.80.
        assert_eq!(schedule.fee(money("100", USD)).unwrap(), money("1.80", USD));
        // 33.33 × 1.5 % = 0.49995 → 0.50 (half-even); + 0.30 = 0.80.
        assert_eq!(schedule.fee(money("33.33", USD)).unwrap(), money("0.80", USD));
        assert_eq!(schedule.fee(money("10000", USD)).unwrap(), money("25", USD));
        assert!(matches!(schedule.fee(money("1", CNY)), Err(FxError::Money(MoneyError::CurrencyMismatch { .. }))));
        assert_eq!(
            FeeSchedule::new(money("0", USD), BasisPoints::ZERO, money("2", USD), money("1", USD)),
            Err(FxError::BadFeeSchedule("minimum above maximum"))
        );
        assert_eq!(
            FeeSchedule::new(money("0", USD), BasisPoints::ZERO, money("0", EUR), money("1", USD)),
            Err(FxError::BadFeeSchedule("amounts in different currencies"))
        );
        assert_eq!(FeeSchedule::free(USD).fee(money("123.45", USD)).unwrap(), Money::zero(USD));
    }

    fn currency() -> impl Strategy<Value = Currency> {
        (0..Currency::ALL.len()).prop_map(|i| Currency::ALL[i])
    }

    /// Rates spanning 10^-6 to 10^6 with up to 12 fractional digits.
    fn any_rate() -> impl Strategy<Value = Rate> {
        (1u64..=1_000_000_000_000, 0u32..=12u32).prop_filter_map("rate out of bounds", |(mantissa, scale)| {
            Rate::from_decimal(Decimal::from_i128_with_scale(i128::from(mantissa), scale)).ok()
        })
    }

    proptest! {
        /// Converting then rounding is never off by more than one minor unit of the
        /// target currency, checked against the exact rational by cross-multiplication
        /// (no division involved), and the rounding direction is the one named.
        #[test]
        fn conversion_is_within_one_minor_unit(
            from in currency(), to in currency(), units in 0u64..1_000_000_000_000, r in any_rate(),
        ) {
            let amount = Money::from_units(units % Money::units_max(from), from).unwrap();
            let (m, s) = r.parts();
            // exact = numerator / denominator, in target minor units.
            let numerator = u128::from(amount.units()) * m * 10u128.pow(to.minor_units());
            let denominator = 10u128.pow(from.minor_units() + s);
            for rounding in [Rounding::Down, Rounding::Up, Rounding::HalfEven] {
                let Ok(result) = convert(amount, r, to, rounding) else { continue };
                let scaled = u128::from(result.units()) * denominator;
                // |result - exact| < 1 minor unit
                prop_assert!(scaled < numerator + denominator && numerator < scaled + denominator);
                match rounding {
                    Rounding::Down => prop_assert!(scaled <= numerator),
                    Rounding::Up => prop_assert!(scaled >= numerator),
                    // at most half a unit away
                    Rounding::HalfEven => prop_assert!(2 * scaled.abs_diff(numerator) <= denominator),
                }
            }
        }

        /// The source amount for a target, rounded up, is the least amount that covers it.
        #[test]
        fn source_for_is_the_least_covering_amount(
            from in currency(), to in currency(), units in 1u64..1_000_000_000_000, r in any_rate(),
        ) {
            let target = Money::from_units(units % Money::units_max(to) + 1, to).unwrap();
            let Ok(source) = source_for(target, r, from, Rounding::Up) else { return Ok(()) };
            let (m, s) = r.parts();
            // exact conversion of `source` in target minor units, compared by cross-multiplication
            let value = |src: u64| u128::from(src) * m * 10u128.pow(to.minor_units());
            let denominator = 10u128.pow(from.minor_units() + s);
            let wanted = u128::from(target.units()) * denominator;
            prop_assert!(value(source.units()) >= wanted);
            if source.units() > 0 {
                prop_assert!(value(source.units() - 1) < wanted);
            }
        }

        /// Agreement with rust_decimal where its 28 digits are exact.
        #[test]
        fn conversion_agrees_with_decimal_arithmetic(units in 0u64..1_000_000_000, r in any_rate()) {
            let amount = Money::from_units(units, USD).unwrap();
            let exact = amount.amount() * r.value();
            let expected = exact.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::ToZero);
            let converted = convert(amount, r, CNY, Rounding::Down).unwrap();
            prop_assert_eq!(converted.amount(), expected);
        }

        /// Fees are never negative and never outside the schedule's bounds.
        #[test]
        fn fees_stay_within_their_bounds(
            fixed in 0u64..10_000, bps in 0u32..=BASIS_POINTS_MAX, lo in 0u64..5_000, span in 0u64..100_000,
            units in 0u64..1_000_000_000_000,
        ) {
            let schedule = FeeSchedule::new(
                Money::from_units(fixed, USD).unwrap(),
                BasisPoints::new(bps).unwrap(),
                Money::from_units(lo, USD).unwrap(),
                Money::from_units(lo + span, USD).unwrap(),
            ).unwrap();
            let fee = schedule.fee(Money::from_units(units, USD).unwrap()).unwrap();
            prop_assert!(!fee.amount().is_sign_negative());
            prop_assert!(fee.units() >= lo && fee.units() <= lo + span);
        }

        /// The spread never raises the rate and takes off at most the spread plus
        /// one unit of the last rate digit.
        #[test]
        fn spread_is_bounded(r in any_rate(), bps in 0u32..=BASIS_POINTS_MAX) {
            let Ok(customer) = r.less_spread(BasisPoints::new(bps).unwrap()) else { return Ok(()) };
            prop_assert!(customer.value() <= r.value());
            let exact = r.value() * Decimal::from(10_000 - bps) / Decimal::from(10_000);
            let unit = Decimal::new(1, RATE_FRACTION_DIGITS_MAX);
            prop_assert!(exact - customer.value() < unit);
        }
    }
}
