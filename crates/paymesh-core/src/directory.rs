//! The payee directory: which partner, region and currency a QR code pays.
//!
//! Every region holds the whole directory, so any region can route a QR code it
//! is shown. A route maps a payload prefix (`wxp://`, `https://qr.alipay.com/`)
//! to a payee partner; the rest of the payload names the merchant. The longest
//! matching prefix wins, so a more specific route can override a general one.

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::id::{IdError, MerchantId, PartnerId, QrPayload, RegionId};
use crate::limits::QR_PREFIX_BYTES_MIN;
use crate::serde_text::serialize_as_text;

/// A QR payload prefix that a route matches: printable ASCII, at least
/// [`QR_PREFIX_BYTES_MIN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct QrPrefix(String);

serialize_as_text!(QrPrefix, as_str);

impl QrPrefix {
    /// Validate a prefix.
    pub fn new(text: impl Into<String>) -> Result<QrPrefix, IdError> {
        let text = text.into();
        // Same alphabet and length limit as a payload.
        QrPayload::new(text.clone())?;
        if text.len() < QR_PREFIX_BYTES_MIN {
            return Err(IdError::Malformed {
                what: "QR prefix",
                text,
                form: "at least 4 bytes, so no route captures every payload",
            });
        }
        Ok(QrPrefix(text))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QrPrefix {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        QrPrefix::new(text)
    }
}

/// Routes are looked up by slices of a payload ([`Directory::resolve`]):
/// a prefix orders, compares and hashes as its text does.
impl std::borrow::Borrow<str> for QrPrefix {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<QrPrefix> for String {
    fn from(prefix: QrPrefix) -> String {
        prefix.0
    }
}

/// Where a QR prefix routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayeeRoute {
    /// The payload prefix.
    pub prefix: QrPrefix,
    /// The payee partner.
    pub partner: PartnerId,
    /// The payee partner's region.
    pub region: RegionId,
    /// The currency the payee receives.
    pub currency: Currency,
}

/// A QR payload resolved to a payee.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Payee {
    /// The payee partner.
    pub partner: PartnerId,
    /// The merchant, as the payee partner knows it.
    pub merchant: MerchantId,
    /// The payee partner's region.
    pub region: RegionId,
    /// The currency the payee receives.
    pub currency: Currency,
}

/// All payee routes of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    #[serde(deserialize_with = "crate::serde_seq::collect_map")]
    routes: OrdMap<QrPrefix, PayeeRoute>,
}

impl Directory {
    /// Add or replace a route.
    pub fn upsert(&mut self, route: PayeeRoute) {
        self.routes.insert(route.prefix.clone(), route);
    }

    /// Remove a route; whether it existed.
    pub fn remove(&mut self, prefix: &QrPrefix) -> bool {
        self.routes.remove(prefix).is_some()
    }

    /// Whether a route for `prefix` exists.
    pub fn contains(&self, prefix: &QrPrefix) -> bool {
        self.routes.contains_key(prefix)
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// All routes in prefix order.
    pub fn routes(&self) -> impl Iterator<Item = &PayeeRoute> {
        self.routes.values()
    }

    /// Resolve a payload by its longest matching prefix; the remainder, which
    /// must be a valid merchant id, names the merchant (a route whose
    /// remainder is not one gives way to a shorter route).
    ///
    /// One ordered lookup a candidate, not one a length: the greatest route
    /// at or below the payload's first `bound` bytes either prefixes the
    /// payload (the longest that does) or shares a shorter beginning with
    /// it, and every route that prefixes the payload within `bound` lies
    /// within that beginning (it sorts above the route found otherwise). A
    /// payload's prefix tried at every length, each a key made and looked
    /// up, was about 4 % of a leader's CPU at the batched peak, where every
    /// payment is resolved twice on the leader and once on each replica.
    pub fn resolve(&self, payload: &QrPayload) -> Option<Payee> {
        use std::ops::Bound::{Included, Unbounded};
        let text = payload.as_str();
        // Payloads are printable ASCII, so every byte index is a char boundary.
        let mut bound = text.len();
        while bound >= QR_PREFIX_BYTES_MIN {
            let (prefix, route) = self.routes.range::<_, str>((Unbounded, Included(&text[..bound]))).next_back()?;
            let prefix = prefix.as_str();
            if let Some(rest) = text.strip_prefix(prefix) {
                if let Ok(merchant) = MerchantId::new(rest) {
                    return Some(Payee {
                        partner: route.partner.clone(),
                        merchant,
                        region: route.region.clone(),
                        currency: route.currency,
                    });
                }
                bound = prefix.len() - 1;
            } else {
                // Below `bound` (the route is not a prefix of the payload's
                // first `bound` bytes, nor are they a prefix of it).
                bound = prefix.bytes().zip(text.bytes()).take_while(|(a, b)| a == b).count();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currency::Currency::CNY;

    fn route(prefix: &str, partner: &str) -> PayeeRoute {
        PayeeRoute {
            prefix: QrPrefix::new(prefix).unwrap(),
            partner: PartnerId::new(partner).unwrap(),
            region: RegionId::new("cn-east").unwrap(),
            currency: CNY,
        }
    }

    fn payload(text: &str) -> QrPayload {
        QrPayload::new(text).unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_the_rest_names_the_merchant() {
        let mut directory = Directory::default();
        directory.upsert(route("wxp://", "wechat-cn"));
        directory.upsert(route("https://qr.alipay.com/", "alipay-cn"));
        directory.upsert(route("wxp://f2f0vip", "wechat-vip"));
        let payee = directory.resolve(&payload("wxp://f2f0abc")).unwrap();
        assert_eq!((payee.partner.as_str(), payee.merchant.as_str()), ("wechat-cn", "f2f0abc"));
        let payee = directory.resolve(&payload("wxp://f2f0vip77")).unwrap();
        assert_eq!((payee.partner.as_str(), payee.merchant.as_str()), ("wechat-vip", "77"));
        let payee = directory.resolve(&payload("https://qr.alipay.com/fkx123")).unwrap();
        assert_eq!(payee.partner.as_str(), "alipay-cn");
        assert_eq!(directory.resolve(&payload("upi://pay?pa=x")), None);
        // A payload that is only a prefix names no merchant.
        assert_eq!(directory.resolve(&payload("wxp://")), None);
        assert!(directory.remove(&QrPrefix::new("wxp://f2f0vip").unwrap()));
        assert_eq!(directory.resolve(&payload("wxp://f2f0vip77")).unwrap().partner.as_str(), "wechat-cn");
        assert_eq!(directory.len(), 2);
    }

    /// The resolution by definition: every length from the longest down.
    fn resolve_by_every_length(directory: &Directory, payload: &QrPayload) -> Option<Payee> {
        let text = payload.as_str();
        (QR_PREFIX_BYTES_MIN..=text.len()).rev().find_map(|end| {
            let route = directory.routes.get(&text[..end])?;
            let merchant = MerchantId::new(&text[end..]).ok()?;
            Some(Payee {
                partner: route.partner.clone(),
                merchant,
                region: route.region.clone(),
                currency: route.currency,
            })
        })
    }

    proptest::proptest! {
        /// Prefixes and payloads over three letters, so that routes prefix
        /// each other, share beginnings and sort between a payload's
        /// prefixes; each route is also tried as a payload, which names no
        /// merchant under it, so that a longest route gives way to a
        /// shorter.
        #[test]
        fn resolving_by_ordered_lookups_finds_what_every_length_finds(
            prefixes in proptest::collection::vec("[abc]{4,9}", 0..24),
            payloads in proptest::collection::vec("[abc]{3,12}", 1..24),
        ) {
            let mut directory = Directory::default();
            for (n, prefix) in prefixes.iter().enumerate() {
                directory.upsert(route(prefix, &format!("partner-{n}")));
            }
            for text in payloads.into_iter().chain(prefixes) {
                let payload = payload(&text);
                proptest::prop_assert_eq!(directory.resolve(&payload), resolve_by_every_length(&directory, &payload), "{}", text);
            }
        }
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(QrPrefix::new("wx:").is_err(), "too short");
        assert!(QrPrefix::new("wxp:// ").is_err(), "space");
        assert!(QrPrefix::new("wxp://").is_ok());
    }
}
