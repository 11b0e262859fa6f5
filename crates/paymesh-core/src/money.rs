//! Money: a decimal amount that always carries its currency.
//!
//! Two types, so that the sign is part of the type:
//!
//! * [`Money`] is never negative. Every amount a partner or operator sends
//!   (transfer amounts, fees, limits, top-ups) is a `Money`, bounded to fewer than
//!   10^15 major units ([`AMOUNT_INTEGER_DIGITS_MAX`]).
//! * [`SignedMoney`] may be negative. Only balances and net positions use it; its
//!   bound is the ledger's ([`BALANCE_INTEGER_DIGITS_MAX`]).
//!
//! Both hold a `rust_decimal::Decimal` whose scale is exactly the currency's
//! minor units, so `12.5 USD` is stored and printed as `12.50`. Arithmetic is
//! checked: mixing currencies or leaving the bound is an error, never a silent
//! result. There is no float anywhere on this path.
//!
//! The wire form is a decimal string plus a currency code, parsed by
//! [`parse_amount`] under strict rules documented on [`AmountError`].

use std::cmp::Ordering;
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, Serializer};

use crate::currency::{Currency, CurrencyError};
use crate::limits::AMOUNT_INTEGER_DIGITS_MAX;

/// Most integer digits of a balance or net position (below 10^24 major units).
///
/// At 3 minor-unit digits this is 10^27 minor units, which a `Decimal` holds
/// exactly.
pub const BALANCE_INTEGER_DIGITS_MAX: u32 = 24;

/// Longest amount text even looked at; longer input is refused before scanning.
const AMOUNT_TEXT_BYTES_MAX: usize = 64;

/// Why an amount's decimal string was refused. Each rule has its own variant so
/// a partner gets a precise message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The string was empty.
    #[error("amount is empty")]
    Empty,
    /// The string was longer than any valid amount could be.
    #[error("amount is longer than {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The string contained whitespace (leading, trailing or inside).
    #[error("amount contains whitespace")]
    Whitespace,
    /// The string began with `+`; only a bare number is accepted.
    #[error("amount has a leading '+'")]
    LeadingPlus,
    /// A negative amount where the field does not allow one.
    #[error("amount is negative, which this field does not allow")]
    NegativeNotAllowed,
    /// `-0`, `-0.00` and the like: zero has no sign.
    #[error("amount is a negative zero")]
    NegativeZero,
    /// Scientific notation such as `1e3`.
    #[error("amount uses an exponent; write the plain decimal")]
    Exponent,
    /// A character that is not an ASCII digit, one leading `-` or one `.`.
    #[error("amount contains {character:?} at byte {index}; only ASCII digits and one '.' are allowed")]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset in the string.
        index: usize,
    },
    /// More than one decimal point.
    #[error("amount has more than one decimal point")]
    MultipleDecimalPoints,
    /// No digit before the point, as in `.5`.
    #[error("amount has no digit before the decimal point")]
    MissingIntegerPart,
    /// No digit after the point, as in `5.`.
    #[error("amount has a decimal point with no digit after it")]
    MissingFractionPart,
    /// A zero before other integer digits, as in `007` or `00.5`.
    #[error("amount has a leading zero")]
    LeadingZero,
    /// More integer digits than the field's bound.
    #[error("amount has more than {max} integer digits")]
    TooManyIntegerDigits {
        /// The most integer digits allowed.
        max: u32,
    },
    /// More fractional digits than the currency's minor units, e.g. `1.005` USD
    /// or `10.0` JPY.
    #[error("{currency} allows at most {max} fractional digits, found {found}")]
    TooManyFractionDigits {
        /// The currency whose minor units were exceeded.
        currency: Currency,
        /// The currency's minor units.
        max: u32,
        /// How many fractional digits the string had.
        found: usize,
    },
}

/// Why a wire amount (decimal string plus currency code) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyParseError {
    /// The currency code was refused.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
    /// The amount string was refused.
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// Why checked money arithmetic failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The operands were in different currencies.
    #[error("currency mismatch: {left} and {right}")]
    CurrencyMismatch {
        /// The left operand's currency.
        left: Currency,
        /// The right operand's currency.
        right: Currency,
    },
    /// The result left the type's bound.
    #[error("{currency} amount out of range")]
    Overflow {
        /// The currency of the result.
        currency: Currency,
    },
    /// The result would be negative in a type that does not allow it.
    #[error("{currency} amount would be negative")]
    Negative {
        /// The currency of the result.
        currency: Currency,
    },
}

/// Whether a parsed amount may be negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// Only zero or positive amounts.
    NonNegative,
    /// Any sign (balances, net positions).
    Any,
}

/// Parse a wire decimal string into a `Decimal` scaled to the currency's minor
/// units, under the strict rules of [`AmountError`].
///
/// The grammar is `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most
/// `integer_digits_max` integer digits and at most `currency.minor_units()`
/// fractional digits. The value is built from the digits directly, never through
/// a float or a locale-aware parser.
pub fn parse_amount(
    text: &str,
    currency: Currency,
    sign: Sign,
    integer_digits_max: u32,
) -> Result<Decimal, AmountError> {
    let plain = parse_plain_decimal(text, sign, integer_digits_max)?;
    let minor = currency.minor_units();
    if plain.fraction.len() > minor as usize {
        return Err(AmountError::TooManyFractionDigits { currency, max: minor, found: plain.fraction.len() });
    }
    Ok(Decimal::from_i128_with_scale(plain.mantissa_at_scale(minor), minor))
}

/// A decimal read from text, as validated digit strings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlainDecimal<'a> {
    /// Whether a `-` preceded the digits (never for zero).
    pub(crate) negative: bool,
    /// The integer digits: no leading zero, at most the caller's bound.
    pub(crate) integer: &'a str,
    /// The fractional digits, possibly empty.
    pub(crate) fraction: &'a str,
}

impl PlainDecimal<'_> {
    /// The value as an integer count of `10^-scale` units.
    ///
    /// The caller guarantees `fraction.len() <= scale` and that integer digits
    /// plus `scale` stay within 38 digits, so this cannot overflow an `i128`.
    pub(crate) fn mantissa_at_scale(&self, scale: u32) -> i128 {
        let mut mantissa: i128 = 0;
        for digit in self.integer.bytes().chain(self.fraction.bytes()) {
            mantissa = mantissa * 10 + i128::from(digit - b'0');
        }
        mantissa *= 10i128.pow(scale - self.fraction.len() as u32);
        if self.negative {
            -mantissa
        } else {
            mantissa
        }
    }
}

/// The grammar shared by amounts and rates, without the fractional-digit limit
/// (which depends on what is being parsed).
pub(crate) fn parse_plain_decimal(
    text: &str,
    sign: Sign,
    integer_digits_max: u32,
) -> Result<PlainDecimal<'_>, AmountError> {
    if text.is_empty() {
        return Err(AmountError::Empty);
    }
    if text.len() > AMOUNT_TEXT_BYTES_MAX {
        return Err(AmountError::TooLong { max: AMOUNT_TEXT_BYTES_MAX });
    }
    if text.chars().any(char::is_whitespace) {
        return Err(AmountError::Whitespace);
    }
    if text.starts_with('+') {
        return Err(AmountError::LeadingPlus);
    }
    let (negative, unsigned, offset) = match text.strip_prefix('-') {
        Some(rest) => (true, rest, 1),
        None => (false, text, 0),
    };
    if negative && sign == Sign::NonNegative {
        return Err(AmountError::NegativeNotAllowed);
    }
    if unsigned.contains(['e', 'E']) {
        return Err(AmountError::Exponent);
    }
    let mut parts = unsigned.splitn(3, '.');
    let integer = parts.next().unwrap_or_default();
    let fraction = parts.next();
    if parts.next().is_some() {
        return Err(AmountError::MultipleDecimalPoints);
    }
    if let Some((index, character)) = unsigned.char_indices().find(|&(_, c)| !(c.is_ascii_digit() || c == '.')) {
        return Err(AmountError::InvalidCharacter { character, index: index + offset });
    }
    if integer.is_empty() {
        return Err(AmountError::MissingIntegerPart);
    }
    if fraction == Some("") {
        return Err(AmountError::MissingFractionPart);
    }
    if integer.len() > 1 && integer.starts_with('0') {
        return Err(AmountError::LeadingZero);
    }
    if integer.len() > integer_digits_max as usize {
        return Err(AmountError::TooManyIntegerDigits { max: integer_digits_max });
    }
    let fraction = fraction.unwrap_or_default();
    if negative && integer.bytes().chain(fraction.bytes()).all(|b| b == b'0') {
        return Err(AmountError::NegativeZero);
    }
    Ok(PlainDecimal { negative, integer, fraction })
}

/// A non-negative amount of one currency, below 10^15 major units.
///
/// The scale of the amount always equals the currency's minor units.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "MoneyRepr")]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

/// A possibly negative amount of one currency: a balance or a net position.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "MoneyRepr")]
pub struct SignedMoney {
    amount: Decimal,
    currency: Currency,
}

/// The serialised form of both money types: the wire's decimal string and
/// code (written without building one: `serde_text::serialize_amount`).
#[derive(Deserialize)]
struct MoneyRepr {
    amount: String,
    currency: String,
}

fn pow10(exponent: u32) -> u128 {
    10u128.pow(exponent)
}

impl Money {
    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Money {
        Money { amount: Decimal::new(0, currency.minor_units()), currency }
    }

    /// Parse a wire amount in a known currency; negative amounts are refused.
    pub fn parse(text: &str, currency: Currency) -> Result<Money, AmountError> {
        let amount = parse_amount(text, currency, Sign::NonNegative, AMOUNT_INTEGER_DIGITS_MAX)?;
        Ok(Money { amount, currency })
    }

    /// Parse a wire amount: decimal string and currency code.
    pub fn from_wire(amount: &str, currency: &str) -> Result<Money, MoneyParseError> {
        let currency = Currency::parse(currency)?;
        Ok(Money::parse(amount, currency)?)
    }

    /// The largest minor-unit count a `Money` of `currency` may hold.
    pub fn units_max(currency: Currency) -> u64 {
        // 10^(15 + 3) - 1 < 2^63, so this cannot truncate.
        (pow10(AMOUNT_INTEGER_DIGITS_MAX + currency.minor_units()) - 1) as u64
    }

    /// An amount from a count of minor units (cents for USD, yen for JPY).
    pub fn from_units(units: u64, currency: Currency) -> Result<Money, MoneyError> {
        if units > Money::units_max(currency) {
            return Err(MoneyError::Overflow { currency });
        }
        Ok(Money { amount: Decimal::from_i128_with_scale(i128::from(units), currency.minor_units()), currency })
    }

    /// The amount as a count of minor units. Exact, because the scale equals the
    /// currency's minor units.
    pub fn units(&self) -> u64 {
        // The mantissa is non-negative and below `units_max`, both checked on
        // construction.
        u64::try_from(self.amount.mantissa()).expect("Money holds a non-negative mantissa below 10^18")
    }

    /// The decimal amount, scaled to the currency's minor units.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// The wire string: exactly the currency's minor-unit digits, e.g. `"12.50"`.
    pub fn to_wire(&self) -> String {
        self.amount.to_string()
    }

    fn same_currency(&self, other: &Money) -> Result<Currency, MoneyError> {
        if self.currency == other.currency {
            Ok(self.currency)
        } else {
            Err(MoneyError::CurrencyMismatch { left: self.currency, right: other.currency })
        }
    }

    /// `self + other`; an error if the currencies differ or the sum leaves the bound.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        let currency = self.same_currency(other)?;
        let units = self.units().checked_add(other.units()).ok_or(MoneyError::Overflow { currency })?;
        Money::from_units(units, currency)
    }

    /// `self - other`; an error if the currencies differ or the result is negative.
    pub fn checked_sub(&self, other: &Money) -> Result<Money, MoneyError> {
        let currency = self.same_currency(other)?;
        let units = self.units().checked_sub(other.units()).ok_or(MoneyError::Negative { currency })?;
        Money::from_units(units, currency)
    }

    /// Compare two amounts of the same currency; an error if the currencies differ.
    /// `Money` deliberately has no `PartialOrd`, so no comparison across
    /// currencies can compile by accident.
    pub fn checked_cmp(&self, other: &Money) -> Result<Ordering, MoneyError> {
        self.same_currency(other)?;
        Ok(self.units().cmp(&other.units()))
    }

    /// The smaller of two amounts of the same currency.
    pub fn checked_min(&self, other: &Money) -> Result<Money, MoneyError> {
        Ok(if self.checked_cmp(other)? == Ordering::Greater { *other } else { *self })
    }

    /// The same amount as a [`SignedMoney`].
    pub fn to_signed(&self) -> SignedMoney {
        SignedMoney { amount: self.amount, currency: self.currency }
    }
}

impl SignedMoney {
    /// The largest absolute minor-unit count a balance of `currency` may hold.
    pub fn units_max(currency: Currency) -> u128 {
        pow10(BALANCE_INTEGER_DIGITS_MAX + currency.minor_units()) - 1
    }

    /// A balance from a signed count of minor units.
    pub fn from_units(units: i128, currency: Currency) -> Result<SignedMoney, MoneyError> {
        if units.unsigned_abs() > SignedMoney::units_max(currency) {
            return Err(MoneyError::Overflow { currency });
        }
        Ok(SignedMoney { amount: Decimal::from_i128_with_scale(units, currency.minor_units()), currency })
    }

    /// Parse a wire amount that may be negative.
    pub fn parse(text: &str, currency: Currency) -> Result<SignedMoney, AmountError> {
        let amount = parse_amount(text, currency, Sign::Any, BALANCE_INTEGER_DIGITS_MAX)?;
        Ok(SignedMoney { amount, currency })
    }

    /// The amount as a signed count of minor units.
    pub fn units(&self) -> i128 {
        self.amount.mantissa()
    }

    /// The decimal amount, scaled to the currency's minor units.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The wire string, e.g. `"-12.50"`.
    pub fn to_wire(&self) -> String {
        self.amount.to_string()
    }

    /// `self + other`; an error if the currencies differ or the sum leaves the bound.
    pub fn checked_add(&self, other: &SignedMoney) -> Result<SignedMoney, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch { left: self.currency, right: other.currency });
        }
        let units = self.units().checked_add(other.units()).ok_or(MoneyError::Overflow { currency: self.currency })?;
        SignedMoney::from_units(units, self.currency)
    }

    /// The amount as [`Money`] if it is not negative and within `Money`'s bound.
    pub fn to_money(&self) -> Result<Money, MoneyError> {
        let units = u64::try_from(self.units()).map_err(|_| {
            if self.units() < 0 {
                MoneyError::Negative { currency: self.currency }
            } else {
                MoneyError::Overflow { currency: self.currency }
            }
        })?;
        Money::from_units(units, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({} {})", self.amount, self.currency)
    }
}

impl fmt::Display for SignedMoney {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl fmt::Debug for SignedMoney {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignedMoney({} {})", self.amount, self.currency)
    }
}

impl TryFrom<MoneyRepr> for Money {
    type Error = MoneyParseError;
    fn try_from(repr: MoneyRepr) -> Result<Self, Self::Error> {
        Money::from_wire(&repr.amount, &repr.currency)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::serde_text::serialize_amount(&self.amount, self.currency.code(), serializer)
    }
}

impl TryFrom<MoneyRepr> for SignedMoney {
    type Error = MoneyParseError;
    fn try_from(repr: MoneyRepr) -> Result<Self, Self::Error> {
        let currency = Currency::parse(&repr.currency)?;
        Ok(SignedMoney::parse(&repr.amount, currency)?)
    }
}

impl Serialize for SignedMoney {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::serde_text::serialize_amount(&self.amount, self.currency.code(), serializer)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use Currency::*;

    fn usd(text: &str) -> Money {
        Money::parse(text, USD).unwrap()
    }

    #[test]
    fn valid_amounts_parse_and_print_at_the_currency_scale() {
        let cases = [
            ("0", USD, "0.00"),
            ("12.5", USD, "12.50"),
            ("12.50", USD, "12.50"),
            ("0.01", USD, "0.01"),
            ("1000", JPY, "1000"),
            ("0.001", KWD, "0.001"),
            ("1.5", BHD, "1.500"),
            ("999999999999999.99", USD, "999999999999999.99"),
            ("999999999999999.999", KWD, "999999999999999.999"),
            ("0", VND, "0"),
        ];
        for (text, currency, wire) in cases {
            let money = Money::parse(text, currency).unwrap();
            assert_eq!(money.to_wire(), wire, "{text}");
            assert_eq!(money.amount().scale(), currency.minor_units());
        }
        assert_eq!(SignedMoney::parse("-12.5", USD).unwrap().to_wire(), "-12.50");
        assert_eq!(usd("12.34").units(), 1234);
    }

    /// The issue asks for at least 25 malformed amounts and currencies, each
    /// rejected with a specific error. These are 40.
    #[test]
    fn malformed_wire_amounts_are_rejected_with_specific_errors() {
        use AmountError as A;
        let amount = |e: AmountError| MoneyParseError::Amount(e);
        let currency = |e: CurrencyError| MoneyParseError::Currency(e);
        let long = "1".repeat(65);
        let cases: Vec<(&str, &str, MoneyParseError)> = vec![
            ("", "USD", amount(A::Empty)),
            ("1", "", currency(CurrencyError::Empty)),
            ("1", "usd", currency(CurrencyError::Malformed("usd".into()))),
            ("1", "US", currency(CurrencyError::Malformed("US".into()))),
            ("1", "USDX", currency(CurrencyError::Malformed("USDX".into()))),
            ("1", " USD", currency(CurrencyError::Malformed(" USD".into()))),
            ("1", "XYZ", currency(CurrencyError::Unknown("XYZ".into()))),
            ("1", "BTC", currency(CurrencyError::Unknown("BTC".into()))),
            (" 1", "USD", amount(A::Whitespace)),
            ("1 ", "USD", amount(A::Whitespace)),
            ("1 000", "USD", amount(A::Whitespace)),
            ("1\u{a0}000", "USD", amount(A::Whitespace)),
            ("+1", "USD", amount(A::LeadingPlus)),
            ("-1", "USD", amount(A::NegativeNotAllowed)),
            ("1e3", "USD", amount(A::Exponent)),
            ("1E3", "USD", amount(A::Exponent)),
            ("1.5e-2", "USD", amount(A::Exponent)),
            ("1,000.00", "USD", amount(A::InvalidCharacter { character: ',', index: 1 })),
            ("1_000", "USD", amount(A::InvalidCharacter { character: '_', index: 1 })),
            ("0x10", "USD", amount(A::InvalidCharacter { character: 'x', index: 1 })),
            ("NaN", "USD", amount(A::InvalidCharacter { character: 'N', index: 0 })),
            ("inf", "USD", amount(A::InvalidCharacter { character: 'i', index: 0 })),
            ("١٢", "USD", amount(A::InvalidCharacter { character: '١', index: 0 })),
            ("12$", "USD", amount(A::InvalidCharacter { character: '$', index: 2 })),
            ("--1", "USD", amount(A::NegativeNotAllowed)),
            ("1.2.3", "USD", amount(A::MultipleDecimalPoints)),
            (".5", "USD", amount(A::MissingIntegerPart)),
            ("5.", "USD", amount(A::MissingFractionPart)),
            ("007", "USD", amount(A::LeadingZero)),
            ("00.5", "USD", amount(A::LeadingZero)),
            ("1.005", "USD", amount(A::TooManyFractionDigits { currency: USD, max: 2, found: 3 })),
            ("10.0", "JPY", amount(A::TooManyFractionDigits { currency: JPY, max: 0, found: 1 })),
            ("1.0001", "KWD", amount(A::TooManyFractionDigits { currency: KWD, max: 3, found: 4 })),
            ("0.5", "KRW", amount(A::TooManyFractionDigits { currency: KRW, max: 0, found: 1 })),
            ("1000000000000000", "USD", amount(A::TooManyIntegerDigits { max: 15 })),
            ("99999999999999999999", "JPY", amount(A::TooManyIntegerDigits { max: 15 })),
            (&long, "USD", amount(A::TooLong { max: 64 })),
            ("-", "USD", amount(A::NegativeNotAllowed)),
            ("1.", "JPY", amount(A::MissingFractionPart)),
            ("٣", "JPY", amount(A::InvalidCharacter { character: '٣', index: 0 })),
        ];
        assert!(cases.len() >= 25);
        for (text, code, expected) in cases {
            assert_eq!(Money::from_wire(text, code), Err(expected), "amount {text:?} currency {code:?}");
        }
    }

    #[test]
    fn signed_amounts_have_their_own_rules() {
        use AmountError as A;
        assert_eq!(SignedMoney::parse("-0", USD), Err(A::NegativeZero));
        assert_eq!(SignedMoney::parse("-0.00", USD), Err(A::NegativeZero));
        assert_eq!(SignedMoney::parse("--1", USD), Err(A::InvalidCharacter { character: '-', index: 1 }));
        assert_eq!(SignedMoney::parse("-", USD), Err(A::MissingIntegerPart));
        assert_eq!(SignedMoney::parse("-.5", USD), Err(A::MissingIntegerPart));
        assert_eq!(SignedMoney::parse("-01", USD), Err(A::LeadingZero));
        assert_eq!(SignedMoney::parse(&"9".repeat(25), USD), Err(A::TooManyIntegerDigits { max: 24 }));
        assert!(SignedMoney::parse(&format!("-{}.99", "9".repeat(24)), USD).is_ok());
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(usd("1.10").checked_add(&usd("2.05")).unwrap(), usd("3.15"));
        assert_eq!(usd("3.15").checked_sub(&usd("2.05")).unwrap(), usd("1.10"));
        assert_eq!(usd("1").checked_sub(&usd("1.01")), Err(MoneyError::Negative { currency: USD }));
        let cny = Money::parse("1", CNY).unwrap();
        assert_eq!(usd("1").checked_add(&cny), Err(MoneyError::CurrencyMismatch { left: USD, right: CNY }));
        assert_eq!(usd("1").checked_cmp(&cny), Err(MoneyError::CurrencyMismatch { left: USD, right: CNY }));
        let max = Money::from_units(Money::units_max(USD), USD).unwrap();
        assert_eq!(max.to_wire(), "999999999999999.99");
        assert_eq!(max.checked_add(&usd("0.01")), Err(MoneyError::Overflow { currency: USD }));
        assert_eq!(Money::from_units(Money::units_max(USD) + 1, USD), Err(MoneyError::Overflow { currency: USD }));
        assert_eq!(usd("2").checked_min(&usd("1.5")).unwrap(), usd("1.5"));
    }

    #[test]
    fn signed_conversions_respect_sign_and_bounds() {
        let negative = SignedMoney::from_units(-150, USD).unwrap();
        assert_eq!(negative.to_wire(), "-1.50");
        assert_eq!(negative.to_money(), Err(MoneyError::Negative { currency: USD }));
        assert_eq!(SignedMoney::from_units(150, USD).unwrap().to_money().unwrap(), usd("1.50"));
        let big = SignedMoney::from_units(i128::from(Money::units_max(USD)) + 1, USD).unwrap();
        assert_eq!(big.to_money(), Err(MoneyError::Overflow { currency: USD }));
        let too_big = i128::try_from(SignedMoney::units_max(KWD)).unwrap() + 1;
        assert_eq!(SignedMoney::from_units(too_big, KWD), Err(MoneyError::Overflow { currency: KWD }));
        assert!(SignedMoney::from_units(-too_big + 1, KWD).is_ok());
    }

    #[test]
    fn serde_uses_the_wire_form_and_validates_on_the_way_in() {
        let json = serde_json::to_string(&usd("12.5")).unwrap();
        assert_eq!(json, r#"{"amount":"12.50","currency":"USD"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), usd("12.50"));
        for bad in [
            r#"{"amount":"-1","currency":"USD"}"#,
            r#"{"amount":"1.001","currency":"USD"}"#,
            r#"{"amount":"1","currency":"usd"}"#,
            r#"{"amount":1,"currency":"USD"}"#,
        ] {
            assert!(serde_json::from_str::<Money>(bad).is_err(), "{bad}");
        }
        let signed: SignedMoney = serde_json::from_str(r#"{"amount":"-3.10","currency":"EUR"}"#).unwrap();
        assert_eq!(signed.units(), -310);
    }

    proptest! {
        #[test]
        fn wire_form_round_trips(units in 0..=Money::units_max(KWD), index in 0..Currency::ALL.len()) {
            let currency = Currency::ALL[index];
            let units = units % (Money::units_max(currency) + 1);
            let money = Money::from_units(units, currency).unwrap();
            let parsed = Money::parse(&money.to_wire(), currency).unwrap();
            prop_assert_eq!(parsed, money);
            prop_assert_eq!(parsed.units(), units);
        }

        #[test]
        fn parser_agrees_with_decimal_on_canonical_strings(integer in 0u64..1_000_000_000_000_000, cents in 0u64..100) {
            let text = format!("{integer}.{cents:02}");
            let parsed = Money::parse(&text, USD).unwrap();
            prop_assert_eq!(parsed.amount(), text.parse::<Decimal>().unwrap());
        }

        #[test]
        fn parser_never_panics(text in "\\PC{0,30}") {
            let _ = Money::parse(&text, USD);
            let _ = SignedMoney::parse(&text, KWD);
        }

        #[test]
        fn addition_then_subtraction_is_identity(a in 0u64..Money::units_max(USD) / 2, b in 0u64..Money::units_max(USD) / 2) {
            let (a, b) = (Money::from_units(a, USD).unwrap(), Money::from_units(b, USD).unwrap());
            prop_assert_eq!(a.checked_add(&b).unwrap().checked_sub(&b).unwrap(), a);
        }
    }
}
