//! Time as a value.
//!
//! The core never reads a clock. Every operation that depends on time takes a
//! [`Timestamp`] argument; in a region that value is stamped by the Raft leader
//! into the log entry, so every replica applies the same time.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

/// Length of one UTC day, in milliseconds.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_unix_ms(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> u64 {
        self.0
    }

    /// The time as RFC 3339 in UTC, to the millisecond
    /// (`2024-01-01T00:00:00.250Z`): what files and operators read.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0;
        let seconds = i64::try_from(ms / 1_000).unwrap_or(i64::MAX);
        let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        // Days since 1970-01-01 to a proleptic Gregorian date.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rest / 3_600,
            rest % 3_600 / 60,
            rest % 60,
            ms % 1_000
        )
    }

    /// This time plus `ms` milliseconds, saturating at the end of representable time.
    #[must_use]
    pub const fn plus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// This time minus `ms` milliseconds, saturating at the epoch.
    #[must_use]
    pub const fn minus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }

    /// The UTC day number (days since the epoch) this time falls in; used for
    /// daily limits.
    pub const fn utc_day(self) -> u64 {
        self.0 / DAY_MS
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Timestamp::from_unix_ms(u64::MAX - 1).plus_ms(10).unix_ms(), u64::MAX);
        assert_eq!(Timestamp::from_unix_ms(5).minus_ms(10), Timestamp::EPOCH);
        assert_eq!(Timestamp::from_unix_ms(1_704_067_200_250).to_rfc3339(), "2024-01-01T00:00:00.250Z");
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_unix_ms(951_782_400_000).to_rfc3339(), "2000-02-29T00:00:00.000Z");
        assert_eq!(Timestamp::from_unix_ms(5).plus_ms(10).unix_ms(), 15);
    }

    #[test]
    fn utc_day_changes_exactly_at_midnight() {
        assert_eq!(Timestamp::from_unix_ms(DAY_MS - 1).utc_day(), 0);
        assert_eq!(Timestamp::from_unix_ms(DAY_MS).utc_day(), 1);
    }
}
