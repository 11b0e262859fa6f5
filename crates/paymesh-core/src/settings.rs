//! Region-wide settings an operator changes with a replicated command
//! ([`CommandBody::SetRegionSetting`](crate::command::CommandBody::SetRegionSetting)),
//! so that every replica decides with the same value from the same log
//! index on. A setting that only one node's configuration file held would
//! let replicas decide differently.

use serde::{Deserialize, Serialize};

use crate::limits::{
    CANCEL_WINDOW_MS, DAY_MS, HISTORY_RETENTION_MIN_MS, IDEMPOTENCY_RETENTION_MS, MINUTE_MS, REFUND_WINDOW_MS,
};

/// The longest idempotency window an operator may set, in days: history
/// keeps at least [`HISTORY_RETENTION_MIN_MS`], so every key inside the
/// window is still there to be consulted.
pub const IDEMPOTENCY_RETENTION_DAYS_MAX: u32 = (HISTORY_RETENTION_MIN_MS / DAY_MS) as u32;

/// The shortest idempotency window an operator may set, in days.
pub const IDEMPOTENCY_RETENTION_DAYS_MIN: u32 = 1;

/// The longest refund window an operator may set, in days: history keeps
/// every payment at least [`HISTORY_RETENTION_MIN_MS`], so a payment inside
/// the window is still there to be refunded.
pub const REFUND_WINDOW_DAYS_MAX: u32 = (HISTORY_RETENTION_MIN_MS / DAY_MS) as u32;

/// The longest cancel window an operator may set, in minutes: a week. A
/// cancel is the payer's quick way back; later, the payee refunds.
pub const CANCEL_WINDOW_MINUTES_MAX: u32 = 7 * 24 * 60;

/// The region's settings. New ones are appended (the state's encoding
/// changes with them: a new snapshot image format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSettings {
    /// How long a partner's idempotency key is remembered, in days: a
    /// retry within it gets the first answer; after it, the key is new.
    idempotency_retention_days: u32,
    /// How long after a payment committed its payee may refund it, in
    /// days (0: refunds are refused).
    refund_window_days: u32,
    /// How long after a payment committed its payer may cancel it, in
    /// minutes (0: cancels are refused).
    cancel_window_minutes: u32,
}

/// The settings as snapshot images of formats 6 and 7 hold them, before
/// the cancel window: read with the default window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSettingsV2 {
    idempotency_retention_days: u32,
    refund_window_days: u32,
}

impl From<RegionSettingsV2> for RegionSettings {
    fn from(old: RegionSettingsV2) -> RegionSettings {
        RegionSettings {
            idempotency_retention_days: old.idempotency_retention_days,
            refund_window_days: old.refund_window_days,
            ..RegionSettings::default()
        }
    }
}

impl From<RegionSettings> for RegionSettingsV2 {
    /// The settings as an older image holds them (for tests that write one).
    fn from(new: RegionSettings) -> RegionSettingsV2 {
        RegionSettingsV2 {
            idempotency_retention_days: new.idempotency_retention_days,
            refund_window_days: new.refund_window_days,
        }
    }
}

/// The settings as snapshot images of format 5 and older hold them, before
/// the refund window: read with the default window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSettingsV1 {
    idempotency_retention_days: u32,
}

impl From<RegionSettingsV1> for RegionSettings {
    fn from(old: RegionSettingsV1) -> RegionSettings {
        RegionSettings { idempotency_retention_days: old.idempotency_retention_days, ..RegionSettings::default() }
    }
}

impl Default for RegionSettings {
    fn default() -> RegionSettings {
        RegionSettings {
            idempotency_retention_days: (IDEMPOTENCY_RETENTION_MS / DAY_MS) as u32,
            refund_window_days: (REFUND_WINDOW_MS / DAY_MS) as u32,
            cancel_window_minutes: (CANCEL_WINDOW_MS / MINUTE_MS) as u32,
        }
    }
}

impl RegionSettings {
    /// The idempotency window, in days.
    pub fn idempotency_retention_days(&self) -> u32 {
        self.idempotency_retention_days
    }

    /// The idempotency window, in milliseconds.
    pub fn idempotency_retention_ms(&self) -> u64 {
        u64::from(self.idempotency_retention_days) * DAY_MS
    }

    /// The refund window, in days.
    pub fn refund_window_days(&self) -> u32 {
        self.refund_window_days
    }

    /// The refund window, in milliseconds.
    pub fn refund_window_ms(&self) -> u64 {
        u64::from(self.refund_window_days) * DAY_MS
    }

    /// The cancel window, in minutes.
    pub fn cancel_window_minutes(&self) -> u32 {
        self.cancel_window_minutes
    }

    /// The cancel window, in milliseconds.
    pub fn cancel_window_ms(&self) -> u64 {
        u64::from(self.cancel_window_minutes) * MINUTE_MS
    }

    /// Change one setting, if its value is within bounds; `false` (and no
    /// change) otherwise.
    pub fn set(&mut self, setting: RegionSetting) -> bool {
        match setting {
            RegionSetting::IdempotencyRetentionDays(days) => {
                if !(IDEMPOTENCY_RETENTION_DAYS_MIN..=IDEMPOTENCY_RETENTION_DAYS_MAX).contains(&days) {
                    return false;
                }
                self.idempotency_retention_days = days;
            }
            RegionSetting::RefundWindowDays(days) => {
                if days > REFUND_WINDOW_DAYS_MAX {
                    return false;
                }
                self.refund_window_days = days;
            }
            RegionSetting::CancelWindowMinutes(minutes) => {
                if minutes > CANCEL_WINDOW_MINUTES_MAX {
                    return false;
                }
                self.cancel_window_minutes = minutes;
            }
        }
        true
    }
}

/// One setting and its new value. Variants are appended, never reordered
/// (the log's encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionSetting {
    /// [`RegionSettings::idempotency_retention_days`]: from
    /// [`IDEMPOTENCY_RETENTION_DAYS_MIN`] to [`IDEMPOTENCY_RETENTION_DAYS_MAX`].
    /// Lengthening it brings back keys still in history; shortening it
    /// forgets keys at once.
    IdempotencyRetentionDays(u32),
    /// [`RegionSettings::refund_window_days`]: from 0 (no refunds) to
    /// [`REFUND_WINDOW_DAYS_MAX`]. Applies to every refund asked for after
    /// the change, whenever its payment was made.
    RefundWindowDays(u32),
    /// [`RegionSettings::cancel_window_minutes`]: from 0 (no cancels) to
    /// [`CANCEL_WINDOW_MINUTES_MAX`]. Applies to every cancel asked for
    /// after the change.
    CancelWindowMinutes(u32),
}
