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
pub enum Status {
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
    pub status: Status,
    /// When the configuration or status last changed.
    pub updated_at: Timestamp,
}
