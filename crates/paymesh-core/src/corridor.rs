//! Corridors: a source currency and region to a destination currency and region,
//! with the FX rate, spread, fees and limits that price transfers along it.
//!
//! A corridor lives in its source region, the one that coordinates its
//! transfers. `CNY:cn-east->CNY:cn-east` is a domestic corridor; it converts at
//! exactly 1 and applies no spread.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::currency::{truncate_for_error, Currency};
use crate::fx::{convert, source_for, BasisPoints, FeeSchedule, FxError, FxRate, Rate, Rounding};
use crate::id::{IdError, RegionId};
use crate::limits::RATES_PER_CORRIDOR_MAX;
use crate::money::Money;
use crate::outcome::RejectCode;
use crate::partner::BusinessStatus;
use crate::time::Timestamp;

/// Names a corridor: `USD:us-west->CNY:cn-east`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct CorridorId {
    /// The payer's region (the coordinator).
    pub source_region: RegionId,
    /// The currency the payer pays in.
    pub source_currency: Currency,
    /// The payee's region (the participant; may equal the source region).
    pub destination_region: RegionId,
    /// The currency the payee receives.
    pub destination_currency: Currency,
}

impl CorridorId {
    /// Whether payer and payee are in one region (one log entry completes it).
    pub fn is_same_region(&self) -> bool {
        self.source_region == self.destination_region
    }

    /// Whether the corridor converts between two currencies.
    pub fn converts(&self) -> bool {
        self.source_currency != self.destination_currency
    }

    /// Parse the text form `SRC:source-region->DST:destination-region`.
    pub fn parse(text: &str) -> Result<CorridorId, IdError> {
        let malformed = || IdError::Malformed {
            what: "corridor id",
            text: truncate_for_error(text),
            form: "SRC:source-region->DST:destination-region",
        };
        let (source, destination) = text.split_once("->").ok_or_else(malformed)?;
        let side = |part: &str| -> Result<(Currency, RegionId), IdError> {
            let (currency, region) = part.split_once(':').ok_or_else(malformed)?;
            let currency = Currency::parse(currency).map_err(|_| malformed())?;
            Ok((currency, RegionId::new(region)?))
        };
        let (source_currency, source_region) = side(source)?;
        let (destination_currency, destination_region) = side(destination)?;
        Ok(CorridorId { source_region, source_currency, destination_region, destination_currency })
    }
}

impl CorridorId {
    /// Its text form, `USD:us-west->CNY:cn-east`, in parts.
    fn text_parts(&self) -> [&str; 7] {
        [
            self.source_currency.code(),
            ":",
            self.source_region.as_str(),
            "->",
            self.destination_currency.code(),
            ":",
            self.destination_region.as_str(),
        ]
    }
}

impl Serialize for CorridorId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::serde_text::serialize_joined(&self.text_parts(), serializer)
    }
}

impl fmt::Display for CorridorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text_parts().into_iter().try_for_each(|part| f.write_str(part))
    }
}

impl FromStr for CorridorId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CorridorId::parse(s)
    }
}

impl TryFrom<String> for CorridorId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        CorridorId::parse(&text)
    }
}

impl From<CorridorId> for String {
    fn from(id: CorridorId) -> String {
        id.to_string()
    }
}

/// Why corridor terms were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    /// An amount or the fee schedule is not in the source currency.
    #[error("corridor amounts and fees must be in the source currency {expected}")]
    WrongCurrency {
        /// The corridor's source currency.
        expected: Currency,
    },
    /// The per-transfer minimum is zero or above the maximum.
    #[error("per-transfer minimum must be positive and not above the maximum")]
    BadRange,
}

/// How a corridor prices and limits transfers. All amounts are in the source currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TermsRepr", into = "TermsRepr")]
pub struct CorridorTerms {
    spread: BasisPoints,
    fees: FeeSchedule,
    min_amount: Money,
    max_amount: Money,
    daily_cap: Money,
}

#[derive(Serialize, Deserialize)]
struct TermsRepr {
    spread: BasisPoints,
    fees: FeeSchedule,
    min_amount: Money,
    max_amount: Money,
    daily_cap: Money,
}

impl CorridorTerms {
    /// Terms for a corridor whose source currency is the currency of every amount given.
    pub fn new(
        spread: BasisPoints,
        fees: FeeSchedule,
        min_amount: Money,
        max_amount: Money,
        daily_cap: Money,
    ) -> Result<CorridorTerms, TermsError> {
        let expected = min_amount.currency();
        if [max_amount.currency(), daily_cap.currency(), fees.currency()].iter().any(|c| *c != expected) {
            return Err(TermsError::WrongCurrency { expected });
        }
        if min_amount.is_zero() || min_amount.units() > max_amount.units() {
            return Err(TermsError::BadRange);
        }
        Ok(CorridorTerms { spread, fees, min_amount, max_amount, daily_cap })
    }

    /// The currency all amounts of the terms are in.
    pub fn currency(&self) -> Currency {
        self.min_amount.currency()
    }

    /// The spread taken off the mid rate.
    pub fn spread(&self) -> BasisPoints {
        self.spread
    }

    /// The fee schedule.
    pub fn fees(&self) -> &FeeSchedule {
        &self.fees
    }

    /// The smallest source amount per transfer.
    pub fn min_amount(&self) -> Money {
        self.min_amount
    }

    /// The largest source amount per transfer.
    pub fn max_amount(&self) -> Money {
        self.max_amount
    }

    /// The most source amount reserved per UTC day.
    pub fn daily_cap(&self) -> Money {
        self.daily_cap
    }
}

impl TryFrom<TermsRepr> for CorridorTerms {
    type Error = TermsError;
    fn try_from(r: TermsRepr) -> Result<Self, Self::Error> {
        CorridorTerms::new(r.spread, r.fees, r.min_amount, r.max_amount, r.daily_cap)
    }
}

impl From<CorridorTerms> for TermsRepr {
    fn from(t: CorridorTerms) -> Self {
        TermsRepr {
            spread: t.spread,
            fees: t.fees,
            min_amount: t.min_amount,
            max_amount: t.max_amount,
            daily_cap: t.daily_cap,
        }
    }
}

/// At what rate a corridor gives a payer back its share of a refunded
/// payment. Set per corridor by its operator; [`RefundRate::Original`]
/// unless set. A payer's cancel undoes the payment and always gives back
/// the principal, whatever the corridor says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RefundRate {
    /// At the payment's own rate: the payer is credited its share of the
    /// principal, and a payment refunded in full gives back the principal
    /// to the unit. Nexus' rule; the default.
    #[default]
    Original,
    /// At the corridor's mid rate when the payer's region prepares the
    /// credit, with no spread, rounded down: the payer bears or gains what
    /// the rate moved since the payment, as with card refunds. The credit
    /// over all refunds may then differ from the principal; what is taken
    /// back from the payee is still bounded by what it received.
    Current,
}

impl RefundRate {
    /// The name operators use: `original` or `current`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundRate::Original => "original",
            RefundRate::Current => "current",
        }
    }
}

impl fmt::Display for RefundRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "original" => Ok(RefundRate::Original),
            "current" => Ok(RefundRate::Current),
            other => Err(format!("refund rate {:?}: expected `original` or `current`", truncate_for_error(other))),
        }
    }
}

/// Which side of a quote the partner fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuoteAmount {
    /// The payer names what it spends (before fees); the destination is derived.
    Source(Money),
    /// The merchant's price; the source is derived.
    Destination(Money),
}

/// A priced transfer along a corridor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priced {
    /// The customer rate (mid less spread): destination units per source unit.
    pub rate: Rate,
    /// What the payer pays, before fees.
    pub source: Money,
    /// What the payee receives.
    pub destination: Money,
    /// The fee, in the source currency.
    pub fee: Money,
    /// `source + fee`: what the payer's position is debited.
    pub total_debit: Money,
}

/// How much of its daily cap a corridor has used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// The UTC day the usage counts for.
    pub day: u64,
    /// Source amount reserved or posted on that day.
    pub used: Money,
}

/// A corridor as its source region knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corridor {
    /// Its name.
    pub id: CorridorId,
    /// Pricing and limits.
    pub terms: CorridorTerms,
    /// Active or suspended.
    pub status: BusinessStatus,
    /// Mid rates by start of validity: the current one and any scheduled ones.
    #[serde(with = "crate::serde_seq")]
    pub rates: BTreeMap<Timestamp, FxRate>,
    /// Daily cap usage.
    pub usage: DailyUsage,
    /// When the terms, status or rates last changed.
    pub updated_at: Timestamp,
}

impl Corridor {
    /// A new, active corridor with no rate yet, created at `now`.
    pub fn new(id: CorridorId, terms: CorridorTerms, now: Timestamp) -> Corridor {
        let usage = DailyUsage { day: 0, used: Money::zero(id.source_currency) };
        Corridor { id, terms, status: BusinessStatus::Active, rates: BTreeMap::new(), usage, updated_at: now }
    }

    /// Add a mid rate (replacing one with the same start), dropping rates that
    /// expired by `now`. Refused if the corridor does not convert or the window
    /// has already ended (not applicable), the pair is not the corridor's, or
    /// the schedule is full.
    pub fn add_rate(&mut self, rate: FxRate, now: Timestamp) -> Result<(), RejectCode> {
        if !self.id.converts() || rate.valid_until() <= now {
            return Err(RejectCode::RateNotApplicable);
        }
        if rate.source() != self.id.source_currency || rate.destination() != self.id.destination_currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        self.rates.retain(|_, fx| fx.valid_until() > now);
        if !self.rates.contains_key(&rate.valid_from()) && self.rates.len() >= RATES_PER_CORRIDOR_MAX {
            return Err(RejectCode::CapacityExceeded);
        }
        self.rates.insert(rate.valid_from(), rate);
        self.updated_at = now;
        Ok(())
    }

    /// The mid rate in force at `now`: of the rates valid now, the one that
    /// started last.
    pub fn mid_rate(&self, now: Timestamp) -> Option<&FxRate> {
        self.rates.range(..=now).rev().map(|(_, fx)| fx).find(|fx| fx.is_valid_at(now))
    }

    /// The customer rate at `now`: exactly 1 for same-currency corridors,
    /// otherwise the valid mid rate less the spread.
    pub fn customer_rate(&self, now: Timestamp) -> Result<Rate, RejectCode> {
        if !self.id.converts() {
            return Ok(Rate::ONE);
        }
        let fx = self.mid_rate(now).ok_or(RejectCode::RateUnavailable)?;
        fx.mid().less_spread(self.terms.spread).map_err(|_| RejectCode::RateUnavailable)
    }

    /// Price a transfer at `now`. The named rounding rules are those of
    /// [`crate::fx`]: by source, the destination is rounded down; by
    /// destination, the source is rounded up.
    pub fn price(&self, amount: QuoteAmount, now: Timestamp) -> Result<Priced, RejectCode> {
        if self.status == BusinessStatus::Suspended {
            return Err(RejectCode::CorridorSuspended);
        }
        let rate = self.customer_rate(now)?;
        let overflow = |e: FxError| match e {
            FxError::Overflow => RejectCode::AmountAboveMaximum,
            _ => RejectCode::CurrencyMismatch,
        };
        let (source, destination) = match amount {
            QuoteAmount::Source(source) => {
                if source.currency() != self.id.source_currency {
                    return Err(RejectCode::CurrencyMismatch);
                }
                let destination =
                    convert(source, rate, self.id.destination_currency, Rounding::Down).map_err(overflow)?;
                (source, destination)
            }
            QuoteAmount::Destination(destination) => {
                if destination.currency() != self.id.destination_currency {
                    return Err(RejectCode::CurrencyMismatch);
                }
                let source = source_for(destination, rate, self.id.source_currency, Rounding::Up).map_err(overflow)?;
                (source, destination)
            }
        };
        if source.units() < self.terms.min_amount.units() || destination.is_zero() {
            return Err(RejectCode::AmountBelowMinimum);
        }
        if source.units() > self.terms.max_amount.units() {
            return Err(RejectCode::AmountAboveMaximum);
        }
        let fee = self.terms.fees.fee(source).map_err(overflow)?;
        let total_debit = source.checked_add(&fee).map_err(|_| RejectCode::AmountAboveMaximum)?;
        Ok(Priced { rate, source, destination, fee, total_debit })
    }

    /// What a payer is credited, in the source currency, for `taken` (in
    /// the destination currency) given back at `now`'s mid rate with no
    /// spread, rounded down: the credit of a refund under
    /// [`RefundRate::Current`]. At exactly 1 for same-currency corridors.
    pub fn refund_credit_now(&self, taken: Money, now: Timestamp) -> Result<Money, RejectCode> {
        if taken.currency() != self.id.destination_currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        let rate =
            if self.id.converts() { self.mid_rate(now).ok_or(RejectCode::RateUnavailable)?.mid() } else { Rate::ONE };
        source_for(taken, rate, self.id.source_currency, Rounding::Down).map_err(|_| RejectCode::AmountAboveMaximum)
    }

    /// Count `amount` against the daily cap of `now`'s UTC day, or refuse it.
    pub fn use_daily(&mut self, amount: Money, now: Timestamp) -> Result<(), RejectCode> {
        let day = now.utc_day();
        let used = if self.usage.day == day { self.usage.used } else { Money::zero(self.id.source_currency) };
        let after = used.checked_add(&amount).map_err(|_| RejectCode::DailyCapExceeded)?;
        if after.units() > self.terms.daily_cap.units() {
            return Err(RejectCode::DailyCapExceeded);
        }
        self.usage = DailyUsage { day, used: after };
        Ok(())
    }

    /// Give back `amount` counted on `day` (an aborted transfer), if that day's
    /// usage is still the current record.
    pub fn release_daily(&mut self, amount: Money, day: u64) {
        if self.usage.day == day {
            // Usage counted this amount on this day, so it cannot go negative.
            if let Ok(used) = self.usage.used.checked_sub(&amount) {
                self.usage.used = used;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currency::Currency::{CNY, USD};
    use crate::time::DAY_MS;

    fn usd(text: &str) -> Money {
        Money::parse(text, USD).unwrap()
    }

    fn cny(text: &str) -> Money {
        Money::parse(text, CNY).unwrap()
    }

    fn corridor() -> Corridor {
        let id = CorridorId::parse("USD:us-west->CNY:cn-east").unwrap();
        let fees = FeeSchedule::new(usd("0.30"), BasisPoints::new(100).unwrap(), usd("0"), usd("10")).unwrap();
        let terms =
            CorridorTerms::new(BasisPoints::new(50).unwrap(), fees, usd("1"), usd("1000"), usd("1500")).unwrap();
        let mut corridor = Corridor::new(id, terms, T0);
        let fx = FxRate::new(USD, CNY, Rate::parse("7.2").unwrap(), T0, T0.plus_ms(60_000)).unwrap();
        corridor.add_rate(fx, T0).unwrap();
        corridor
    }

    const T0: Timestamp = Timestamp::from_unix_ms(10 * DAY_MS);

    #[test]
    fn corridor_ids_round_trip_and_parse_strictly() {
        let id = CorridorId::parse("USD:us-west->CNY:cn-east").unwrap();
        assert_eq!(id.to_string(), "USD:us-west->CNY:cn-east");
        assert!(!id.is_same_region() && id.converts());
        assert!(CorridorId::parse("CNY:cn-east->CNY:cn-east").unwrap().is_same_region());
        for bad in
            ["USD:us-west", "USD->CNY", "usd:us-west->CNY:cn-east", "USD:US->CNY:cn-east", "USD:us-west=>CNY:cn-east"]
        {
            assert!(CorridorId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pricing_by_source_and_by_destination() {
        let c = corridor();
        // 7.2 less 0.5 % = 7.164.
        let by_source = c.price(QuoteAmount::Source(usd("100")), T0).unwrap();
        assert_eq!(by_source.rate, Rate::parse("7.164").unwrap());
        assert_eq!(by_source.destination, cny("716.40"));
        assert_eq!(by_source.fee, usd("1.30"));
        assert_eq!(by_source.total_debit, usd("101.30"));
        let by_destination = c.price(QuoteAmount::Destination(cny("100")), T0).unwrap();
        // 100 / 7.164 = 13.9586… → 13.96 (rounded up).
        assert_eq!(by_destination.source, usd("13.96"));
        assert_eq!(by_destination.destination, cny("100"));
    }

    #[test]
    fn pricing_refusals_have_specific_codes() {
        let c = corridor();
        assert_eq!(c.price(QuoteAmount::Source(usd("0.99")), T0), Err(RejectCode::AmountBelowMinimum));
        assert_eq!(c.price(QuoteAmount::Source(usd("1000.01")), T0), Err(RejectCode::AmountAboveMaximum));
        assert_eq!(c.price(QuoteAmount::Source(cny("10")), T0), Err(RejectCode::CurrencyMismatch));
        assert_eq!(c.price(QuoteAmount::Destination(usd("10")), T0), Err(RejectCode::CurrencyMismatch));
        assert_eq!(c.price(QuoteAmount::Source(usd("10")), T0.plus_ms(60_000)), Err(RejectCode::RateUnavailable));
        let mut suspended = c.clone();
        suspended.status = BusinessStatus::Suspended;
        assert_eq!(suspended.price(QuoteAmount::Source(usd("10")), T0), Err(RejectCode::CorridorSuspended));
        let mut no_rate = c;
        no_rate.rates.clear();
        assert_eq!(no_rate.price(QuoteAmount::Source(usd("10")), T0), Err(RejectCode::RateUnavailable));
    }

    #[test]
    fn the_latest_started_valid_rate_is_in_force() {
        let mut c = corridor();
        let rate = |text: &str, from: u64, until: u64| {
            FxRate::new(USD, CNY, Rate::parse(text).unwrap(), T0.plus_ms(from), T0.plus_ms(until)).unwrap()
        };
        // Scheduled: 7.3 from +30 s, overlapping the current 7.2 (until +60 s).
        c.add_rate(rate("7.3", 30_000, 90_000), T0).unwrap();
        assert_eq!(c.mid_rate(T0.plus_ms(29_999)).unwrap().mid(), Rate::parse("7.2").unwrap());
        assert_eq!(c.mid_rate(T0.plus_ms(30_000)).unwrap().mid(), Rate::parse("7.3").unwrap());
        assert!(c.mid_rate(T0.plus_ms(90_000)).is_none());
        // Expired rates are dropped when a rate is added; the schedule is bounded.
        c.add_rate(rate("7.4", 100_000, 110_000), T0.plus_ms(95_000)).unwrap();
        assert_eq!(c.rates.len(), 1);
        for i in 1..RATES_PER_CORRIDOR_MAX as u64 {
            c.add_rate(rate("7.5", 100_000 + i, 110_000), T0.plus_ms(95_000)).unwrap();
        }
        assert_eq!(c.add_rate(rate("7.6", 105_000, 110_000), T0.plus_ms(95_000)), Err(RejectCode::CapacityExceeded));
        // Replacing a scheduled rate with the same start is always allowed.
        c.add_rate(rate("7.6", 100_000, 110_000), T0.plus_ms(95_000)).unwrap();
        let eur = FxRate::new(Currency::EUR, CNY, Rate::ONE, T0, T0.plus_ms(200_000)).unwrap();
        assert_eq!(c.add_rate(eur, T0), Err(RejectCode::CurrencyMismatch));
        let ended = rate("7.7", 1_000, 2_000);
        assert_eq!(c.add_rate(ended, T0.plus_ms(95_000)), Err(RejectCode::RateNotApplicable));
    }

    #[test]
    fn a_refund_at_the_current_rate_converts_back_at_the_mid_rate_rounded_down() {
        let mut c = corridor();
        // 100 CNY at 7.2 (no spread on refunds) = 13.888… → 13.88 USD.
        assert_eq!(c.refund_credit_now(cny("100"), T0), Ok(usd("13.88")));
        let later = T0.plus_ms(30_000);
        c.add_rate(FxRate::new(USD, CNY, Rate::parse("6.4").unwrap(), later, later.plus_ms(60_000)).unwrap(), T0)
            .unwrap();
        assert_eq!(c.refund_credit_now(cny("100"), later), Ok(usd("15.62")));
        assert_eq!(c.refund_credit_now(usd("100"), later), Err(RejectCode::CurrencyMismatch));
        assert_eq!(c.refund_credit_now(cny("100"), later.plus_ms(60_000)), Err(RejectCode::RateUnavailable));
        for (text, rate) in [("original", RefundRate::Original), ("current", RefundRate::Current)] {
            assert_eq!(text.parse::<RefundRate>(), Ok(rate));
            assert_eq!(rate.to_string(), text);
        }
        assert!("mid".parse::<RefundRate>().is_err());
        assert_eq!(RefundRate::default(), RefundRate::Original);
    }

    #[test]
    fn daily_cap_resets_each_utc_day_and_releases_on_abort() {
        let mut c = corridor();
        c.use_daily(usd("1000"), T0).unwrap();
        assert_eq!(c.use_daily(usd("500.01"), T0), Err(RejectCode::DailyCapExceeded));
        c.release_daily(usd("200"), T0.utc_day());
        c.use_daily(usd("700"), T0).unwrap();
        c.use_daily(usd("1500"), T0.plus_ms(DAY_MS)).unwrap();
        // A release for a past day does not touch today's usage.
        c.release_daily(usd("700"), T0.utc_day());
        assert_eq!(c.usage.used, usd("1500"));
    }

    #[test]
    fn same_currency_corridors_convert_at_one_without_spread() {
        let id = CorridorId::parse("CNY:cn-east->CNY:cn-east").unwrap();
        let terms = CorridorTerms::new(
            BasisPoints::new(50).unwrap(),
            FeeSchedule::free(CNY),
            cny("0.01"),
            cny("50000"),
            cny("1000000"),
        )
        .unwrap();
        let priced = Corridor::new(id, terms, T0).price(QuoteAmount::Destination(cny("88.88")), T0).unwrap();
        assert_eq!((priced.source, priced.destination, priced.rate), (cny("88.88"), cny("88.88"), Rate::ONE));
    }

    #[test]
    fn terms_are_validated() {
        let fees = FeeSchedule::free(USD);
        assert_eq!(
            CorridorTerms::new(BasisPoints::ZERO, fees.clone(), usd("0"), usd("1"), usd("1")),
            Err(TermsError::BadRange)
        );
        assert_eq!(
            CorridorTerms::new(BasisPoints::ZERO, fees.clone(), usd("2"), usd("1"), usd("1")),
            Err(TermsError::BadRange)
        );
        assert_eq!(
            CorridorTerms::new(BasisPoints::ZERO, fees, usd("1"), usd("2"), cny("1")),
            Err(TermsError::WrongCurrency { expected: USD })
        );
    }
}
