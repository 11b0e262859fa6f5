//! Partners: the wallets, acquirers and domestic networks connected to a region.

use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::id::{PartnerId, RegionId};
use crate::money::Money;
use crate::time::Timestamp;

/// What a partner may do in transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartnerRole {
    /// Pays (a foreign wallet such as a PayPal- or GCash-like partner).
    Payer,
    /// Receives (a merchant network such as a WeChat Pay- or Alipay-like partner).
    Payee,
    /// Both.
    Both,
}

impl PartnerRole {
    /// Whether the partner may pay.
    pub fn can_pay(self) -> bool {
        matches!(self, PartnerRole::Payer | PartnerRole::Both)
    }

    /// Whether the partner may receive.
    pub fn can_receive(self) -> bool {
        matches!(self, PartnerRole::Payee | PartnerRole::Both)
    }
}

/// Whether a partner or corridor takes new business.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BusinessStatus {
    /// Open for new quotes and transfers.
    Active,
    /// New quotes and transfers are refused; in-flight transfers still finish.
    Suspended,
}

/// An operator's definition of a partner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerConfig {
    /// The partner's id, as in its TLS certificate.
    pub id: PartnerId,
    /// The region the partner connects to; its data lives there.
    pub region: RegionId,
    /// Payer, payee or both.
    pub role: PartnerRole,
    /// The currency its position is kept in. Fixed once the partner exists.
    pub currency: Currency,
    /// How far its position may go below zero.
    pub net_debit_cap: Money,
}

/// A partner as the region knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// The operator's definition.
    pub config: PartnerConfig,
    /// Active or suspended.
    pub status: BusinessStatus,
    /// When the configuration or status last changed.
    pub updated_at: Timestamp,
}

/// The bounds an operator sets on one partner's use of the region
/// (`CommandBody::SetPartnerLimits`); a partner with none set has
/// [`PartnerLimits::DEFAULT`]. Replicated, so every leader enforces the same.
///
/// The request rate is enforced by the leader's partner actor (a token
/// bucket); the two caps by the state machine, deterministically, and checked
/// first on the leader so a request over a cap is refused without a Raft
/// round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerLimits {
    /// Requests per second the partner may make to the leader, sustained
    /// (quotes, transfers and event subscriptions; reads are not counted).
    pub requests_per_second: u32,
    /// Requests the partner may make in a burst above the sustained rate.
    pub requests_burst: u32,
    /// Quotes the partner may hold unused at once: a quote counts from its
    /// creation until it is used by a transfer or purged (its expiry plus
    /// `QUOTE_RETENTION_AFTER_EXPIRY_MS`).
    pub quotes_outstanding_max: u32,
    /// Transfers of the partner not yet final at once (reserved cross-border
    /// transfers waiting for the payee region).
    pub transfers_in_flight_max: u32,
}

impl PartnerLimits {
    /// A partner's limits until an operator sets others; see
    /// `crate::limits` for how they were sized.
    pub const DEFAULT: PartnerLimits = PartnerLimits {
        requests_per_second: crate::limits::PARTNER_REQUESTS_PER_SECOND_DEFAULT,
        requests_burst: crate::limits::PARTNER_REQUESTS_BURST_DEFAULT,
        quotes_outstanding_max: crate::limits::PARTNER_QUOTES_OUTSTANDING_DEFAULT,
        transfers_in_flight_max: crate::limits::PARTNER_TRANSFERS_IN_FLIGHT_DEFAULT,
    };

    /// Whether every field is within its bounds (1 to its `*_MAX` in
    /// `crate::limits`); the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{
            PARTNER_QUOTES_OUTSTANDING_MAX, PARTNER_REQUESTS_BURST_MAX, PARTNER_REQUESTS_PER_SECOND_MAX,
            PARTNER_TRANSFERS_IN_FLIGHT_MAX,
        };
        for (name, value, max) in [
            ("requests_per_second", self.requests_per_second, PARTNER_REQUESTS_PER_SECOND_MAX),
            ("requests_burst", self.requests_burst, PARTNER_REQUESTS_BURST_MAX),
            ("quotes_outstanding_max", self.quotes_outstanding_max, PARTNER_QUOTES_OUTSTANDING_MAX),
            ("transfers_in_flight_max", self.transfers_in_flight_max, PARTNER_TRANSFERS_IN_FLIGHT_MAX),
        ] {
            if value == 0 || value > max {
                return Err(format!("{name} must be 1 to {max}, not {value}"));
            }
        }
        Ok(())
    }
}

impl Default for PartnerLimits {
    fn default() -> PartnerLimits {
        PartnerLimits::DEFAULT
    }
}
