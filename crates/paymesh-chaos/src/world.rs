//! The world a chaos run pays in: three regions, each both an origin and a
//! payee region, several wallets (one of them funded thinly, so refusals for
//! an insufficient position happen too) and merchant networks.

use paymesh_harness::world::{Merchant, Rate, Wallet};
use paymesh_node::identity::Identity;

/// The regions, in the order the nemeses name them.
pub const REGIONS: [&str; 3] = ["ap-southeast", "cn-east", "us-west"];

/// The wallets: (region, partner, currency, prefunding in minor units).
pub const WALLETS: [Wallet; 5] = [
    ("us-west", "wallet-us-a", "USD", 10_000_000_000),
    ("us-west", "wallet-us-b", "USD", 5_000_000),
    ("ap-southeast", "wallet-ph-a", "PHP", 500_000_000_000),
    ("ap-southeast", "wallet-ph-b", "PHP", 500_000_000_000),
    ("cn-east", "wallet-cn-a", "CNY", 70_000_000_000),
];

/// The merchant networks: (region, partner, currency, QR prefix).
pub const MERCHANTS: [Merchant; 4] = [
    ("cn-east", "wechat-cn", "CNY", "wxp://"),
    ("cn-east", "alipay-cn", "CNY", "alipay://"),
    ("us-west", "shop-us", "USD", "usqr://shop/"),
    ("ap-southeast", "sari-ph", "PHP", "phqr://sari/"),
];

/// Mid rates; a wallet gets a corridor to every merchant its currency has a
/// rate to.
pub const RATES: [Rate; 7] = [
    ("USD", "CNY", "7.1000"),
    ("PHP", "CNY", "0.1250"),
    ("USD", "PHP", "56.0000"),
    ("CNY", "USD", "0.1400"),
    ("USD", "USD", "1"),
    ("PHP", "PHP", "1"),
    ("CNY", "CNY", "1"),
];

/// The merchants a wallet can pay (those with a rate from its currency).
pub fn payees_of(wallet: &Wallet) -> Vec<Merchant> {
    MERCHANTS.iter().copied().filter(|m| RATES.iter().any(|(s, d, _)| *s == wallet.2 && *d == m.2)).collect()
}

/// The regions and the partners each certifies.
pub fn regions() -> anyhow::Result<Vec<(&'static str, Vec<Identity>)>> {
    let mut out = Vec::new();
    for region in REGIONS {
        let mut holders = Vec::new();
        for partner in WALLETS.iter().map(|w| (w.0, w.1)).chain(MERCHANTS.iter().map(|m| (m.0, m.1))) {
            if partner.0 == region {
                holders.push(Identity::Partner(partner.1.parse()?));
            }
        }
        out.push((region, holders));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wallet_pays_abroad_and_at_home_and_every_region_is_a_payee_region() {
        for wallet in &WALLETS {
            let payees = payees_of(wallet);
            assert!(payees.iter().any(|m| m.0 == wallet.0), "{} has no domestic payee", wallet.1);
            assert!(payees.iter().any(|m| m.0 != wallet.0), "{} has no payee abroad", wallet.1);
        }
        for region in REGIONS {
            let paid_from_abroad = WALLETS.iter().any(|w| w.0 != region && payees_of(w).iter().any(|m| m.0 == region));
            assert!(paid_from_abroad, "nobody abroad pays into {region}");
        }
    }
}
