//! Domain identifiers as validated newtypes.
//!
//! Every identifier that crosses a trust boundary is checked once, when it is
//! constructed or deserialised; code holding a `PartnerId` never re-validates it.
//! Names come from the payment domain and are never reused for Raft concepts.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use crate::currency::truncate_for_error;
use crate::limits::{
    IDEMPOTENCY_KEY_BYTES_MAX, MERCHANT_ID_BYTES_MAX, OPERATOR_NAME_BYTES_MAX, PARTNER_ID_BYTES_MAX,
    QR_PAYLOAD_BYTES_MAX, REFERENCE_BYTES_MAX, REGION_ID_BYTES_MAX,
};
use crate::serde_text::{deserialize_from_text, serialize_as_text};

/// Why an identifier was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which identifier.
        what: &'static str,
    },
    /// The identifier was too long.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// Which identifier.
        what: &'static str,
        /// The limit, in bytes.
        max: usize,
    },
    /// A character outside the identifier's alphabet.
    #[error("{what} contains {character:?} at byte {index}; allowed: {allowed}")]
    InvalidCharacter {
        /// Which identifier.
        what: &'static str,
        /// The offending character.
        character: char,
        /// Its byte offset.
        index: usize,
        /// A description of the allowed alphabet.
        allowed: &'static str,
    },
    /// A slug that starts or ends with `-`.
    #[error("{what} must not start or end with '-'")]
    EdgeHyphen {
        /// Which identifier.
        what: &'static str,
    },
    /// A structured identifier not of its documented form.
    #[error("{what} {text:?} is not of the form {form}")]
    Malformed {
        /// Which identifier.
        what: &'static str,
        /// The input, shortened.
        text: String,
        /// The expected form.
        form: &'static str,
    },
}

/// Which characters an identifier may hold.
#[derive(Clone, Copy)]
enum Alphabet {
    /// Lowercase ASCII letters, digits and inner hyphens: `us-west`, `paypal-us`.
    Slug,
    /// Printable ASCII without space (0x21–0x7E).
    Printable,
}

impl Alphabet {
    fn allows(self, c: char) -> bool {
        match self {
            Alphabet::Slug => c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
            Alphabet::Printable => c.is_ascii_graphic(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Alphabet::Slug => "lowercase ASCII letters, digits and '-'",
            Alphabet::Printable => "printable ASCII without spaces",
        }
    }
}

fn validate(text: &str, what: &'static str, max: usize, alphabet: Alphabet) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { what });
    }
    if text.len() > max {
        return Err(IdError::TooLong { what, max });
    }
    if let Some((index, character)) = text.char_indices().find(|&(_, c)| !alphabet.allows(c)) {
        return Err(IdError::InvalidCharacter { what, character, index, allowed: alphabet.describe() });
    }
    if matches!(alphabet, Alphabet::Slug) && (text.starts_with('-') || text.ends_with('-')) {
        return Err(IdError::EdgeHyphen { what });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $alphabet:expr) => {
        $(#[$doc])*
        ///
        /// Shared, immutable text: a clone (and the state clones ids into
        /// many indexes) is a reference count, not an allocation, and two
        /// clones of one id compare equal without reading their text.
        #[derive(Clone, Debug)]
        pub struct $name(Arc<str>);

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        /// The text's hash, as equal ids have equal text.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        impl Eq for $name {}

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        /// The text's order (a clone of the same id is equal at once).
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if Arc::ptr_eq(&self.0, &other.0) {
                    std::cmp::Ordering::Equal
                } else {
                    self.0.cmp(&other.0)
                }
            }
        }

        serialize_as_text!($name, as_str);
        deserialize_from_text!($name, $name::new, concat!("a ", $what));

        impl $name {
            /// Validate and wrap an identifier.
            pub fn new(text: impl AsRef<str>) -> Result<Self, IdError> {
                let text = text.as_ref();
                validate(text, $what, $max, $alphabet)?;
                Ok($name(Arc::from(text)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                $name::new(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }
    };
}

string_id!(
    /// A region of the mesh, e.g. `us-west`, `cn-east`. Each region is one Raft group.
    RegionId, "region id", REGION_ID_BYTES_MAX, Alphabet::Slug
);
string_id!(
    /// A partner (wallet, acquirer or domestic network), e.g. `paypal-us`.
    PartnerId, "partner id", PARTNER_ID_BYTES_MAX, Alphabet::Slug
);
string_id!(
    /// An operator of a region, by the name in its certificate
    /// (`operator-<name>`), e.g. `ops-alice`: who issued an operator command.
    OperatorId, "operator name", OPERATOR_NAME_BYTES_MAX, Alphabet::Slug
);
string_id!(
    /// A merchant as known to its payee partner; taken from the QR payload.
    MerchantId, "merchant id", MERCHANT_ID_BYTES_MAX, Alphabet::Printable
);
string_id!(
    /// A partner's idempotency key: unique per partner; a retry with the same key
    /// and body returns the original outcome.
    IdempotencyKey, "idempotency key", IDEMPOTENCY_KEY_BYTES_MAX, Alphabet::Printable
);
string_id!(
    /// An operator's reference for a position top-up (e.g. the bank wire
    /// reference); it makes the top-up idempotent.
    TopUpRef, "top-up reference", REFERENCE_BYTES_MAX, Alphabet::Printable
);
string_id!(
    /// The text encoded in a merchant's QR code, e.g. `wxp://f2f0…` or
    /// `https://qr.alipay.com/…`.
    QrPayload, "QR payload", QR_PAYLOAD_BYTES_MAX, Alphabet::Printable
);

macro_rules! sequenced_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $marker:literal, $form:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name {
            origin: RegionId,
            sequence: u64,
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::serde_text::serialize_joined(&self.text_parts(&mut itoa::Buffer::new()), serializer)
            }
        }
        deserialize_from_text!($name, $name::parse, concat!("a ", $what));

        impl $name {
            /// The identifier of the `sequence`-th one created in region `origin`.
            pub fn new(origin: RegionId, sequence: u64) -> Self {
                $name { origin, sequence }
            }

            /// The region that created it.
            pub fn origin(&self) -> &RegionId {
                &self.origin
            }

            /// Its sequence number within the origin region.
            pub fn sequence(&self) -> u64 {
                self.sequence
            }

            /// Parse the text form.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let malformed = || IdError::Malformed { what: $what, text: truncate_for_error(text), form: $form };
                let (origin, sequence) = text.rsplit_once(':').ok_or_else(malformed)?;
                let sequence = sequence.strip_prefix($marker).ok_or_else(malformed)?;
                if sequence.is_empty()
                    || !sequence.bytes().all(|b| b.is_ascii_digit())
                    || (sequence.len() > 1 && sequence.starts_with('0'))
                {
                    return Err(malformed());
                }
                let sequence = sequence.parse::<u64>().map_err(|_| malformed())?;
                Ok($name { origin: RegionId::new(origin)?, sequence })
            }
        }

        impl $name {
            /// Its text form in parts, the sequence number's digits in `digits`.
            fn text_parts<'a>(&'a self, digits: &'a mut itoa::Buffer) -> [&'a str; 4] {
                [self.origin.as_str(), ":", $marker, digits.format(self.sequence)]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.text_parts(&mut itoa::Buffer::new()).into_iter().try_for_each(|part| f.write_str(part))
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                $name::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }
    };
}

sequenced_id!(
    /// A transfer, named by the region that coordinates it and a sequence number
    /// that region assigns: `us-west:42`. Unique across the mesh.
    TransferId, "transfer id", "", "<region>:<sequence>"
);
sequenced_id!(
    /// A quote, named like a transfer but marked with `q`: `us-west:q7`.
    QuoteId, "quote id", "q", "<region>:q<sequence>"
);

/// The opaque token that stands for the payer outside the payer's region.
///
/// The payee region receives this token, never the payer's name, account or
/// reference. It is derived from the transfer id alone, so it carries no
/// personal data; only the payer region can map it back to the payer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct PayerToken(Arc<str>);

serialize_as_text!(PayerToken, as_str);

impl PayerToken {
    /// The token's prefix.
    pub const PREFIX: &'static str = "pt_";
    const HEX_CHARS: usize = 32;

    /// The token for a transfer: `pt_` and the first 128 bits of SHA-256 of the
    /// transfer id, in lowercase hex.
    ///
    /// Computed for every transfer on every replica: the id's text is
    /// formatted straight into the hash.
    pub fn for_transfer(transfer: &TransferId) -> PayerToken {
        use sha2::{Digest, Sha256};
        use std::io::Write as _;
        let mut hash = Sha256::new();
        write!(hash, "paymesh/payer-token/v1/{transfer}").expect("a hash takes every byte written to it");
        // Put together on the stack: one allocation, the token's own.
        let mut token = [0u8; Self::PREFIX.len() + Self::HEX_CHARS];
        token[..Self::PREFIX.len()].copy_from_slice(Self::PREFIX.as_bytes());
        hex::encode_to_slice(&hash.finalize()[..Self::HEX_CHARS / 2], &mut token[Self::PREFIX.len()..])
            .expect("32 hex digits fill the rest");
        PayerToken(Arc::from(std::str::from_utf8(&token).expect("ASCII")))
    }

    /// Parse a token received from another region.
    pub fn parse(text: &str) -> Result<PayerToken, IdError> {
        let hex = text.strip_prefix(Self::PREFIX);
        match hex {
            Some(hex)
                if hex.len() == Self::HEX_CHARS && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(PayerToken(Arc::from(text)))
            }
            _ => Err(IdError::Malformed {
                what: "payer token",
                text: truncate_for_error(text),
                form: "pt_ and 32 lowercase hex digits",
            }),
        }
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PayerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PayerToken {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        PayerToken::parse(&text)
    }
}

impl From<PayerToken> for String {
    fn from(token: PayerToken) -> String {
        token.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Ids compare as their text does, whether built apart (their
        /// text read) or cloned from one another (equal at once).
        #[test]
        fn ids_order_as_their_text(a in "[a-z0-9]{1,3}(-[a-z0-9]{1,3}){0,2}", b in "[a-z0-9]{1,3}(-[a-z0-9]{1,3}){0,2}") {
            let (x, y) = (PartnerId::new(&a).unwrap(), PartnerId::new(&b).unwrap());
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            proptest::prop_assert_eq!(x == y, a == b);
            proptest::prop_assert_eq!(x.cmp(&x.clone()), std::cmp::Ordering::Equal);
            proptest::prop_assert_eq!(x.clone(), PartnerId::new(&a).unwrap());
            let (s, t) = (TransferId::new(RegionId::new(&a).unwrap(), 7), TransferId::new(RegionId::new(&b).unwrap(), 3));
            proptest::prop_assert_eq!(s.cmp(&t), (a.as_str(), 7).cmp(&(b.as_str(), 3)));
        }
    }

    #[test]
    fn slugs_accept_lowercase_digits_and_inner_hyphens() {
        assert_eq!(RegionId::new("us-west").unwrap().as_str(), "us-west");
        assert!(PartnerId::new("gcash-ph2").is_ok());
        assert_eq!(RegionId::new(""), Err(IdError::Empty { what: "region id" }));
        assert_eq!(RegionId::new("-us"), Err(IdError::EdgeHyphen { what: "region id" }));
        assert_eq!(RegionId::new("us-"), Err(IdError::EdgeHyphen { what: "region id" }));
        assert!(matches!(RegionId::new("US-west"), Err(IdError::InvalidCharacter { character: 'U', index: 0, .. })));
        assert!(matches!(PartnerId::new("a b"), Err(IdError::InvalidCharacter { character: ' ', index: 1, .. })));
        assert_eq!(PartnerId::new("p".repeat(33)), Err(IdError::TooLong { what: "partner id", max: 32 }));
    }

    #[test]
    fn printable_ids_refuse_spaces_and_control_characters() {
        assert!(IdempotencyKey::new("order-2026-11-21/0001").is_ok());
        assert!(QrPayload::new("https://qr.alipay.com/fkx12345").is_ok());
        for bad in ["with space", "tab\t", "nul\0", "é"] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::new("k".repeat(129)).is_err());
        assert!(QrPayload::new("q".repeat(513)).is_err());
    }

    #[test]
    fn sequenced_ids_round_trip_and_parse_strictly() {
        let id = TransferId::new(RegionId::new("us-west").unwrap(), 42);
        assert_eq!(id.to_string(), "us-west:42");
        assert_eq!(TransferId::parse("us-west:42").unwrap(), id);
        let quote = QuoteId::new(RegionId::new("cn-east").unwrap(), 7);
        assert_eq!(quote.to_string(), "cn-east:q7");
        assert_eq!(QuoteId::parse("cn-east:q7").unwrap(), quote);
        for bad in ["us-west", "us-west:", ":1", "us-west:q1", "us-west:01", "us-west:+1", "us-west:1x", "US:1"] {
            assert!(TransferId::parse(bad).is_err(), "{bad}");
        }
        assert!(QuoteId::parse("us-west:7").is_err());
        assert!(TransferId::parse("us-west:18446744073709551616").is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"us-west:42\"");
        assert_eq!(serde_json::from_str::<TransferId>(&json).unwrap(), id);
    }

    #[test]
    fn payer_tokens_are_deterministic_opaque_and_validated() {
        let a = TransferId::parse("us-west:1").unwrap();
        let b = TransferId::parse("us-west:2").unwrap();
        let token = PayerToken::for_transfer(&a);
        assert_eq!(token, PayerToken::for_transfer(&a));
        assert_ne!(token, PayerToken::for_transfer(&b));
        assert_eq!(token.as_str().len(), 35);
        assert_eq!(PayerToken::parse(token.as_str()).unwrap(), token);
        assert!(PayerToken::parse("pt_XYZ").is_err());
        assert!(PayerToken::parse("alice@example.com").is_err());
    }

    /// Tokens cross regions and are kept in history: a token is the
    /// definition's (`pt_` and SHA-256 of `paymesh/payer-token/v1/<id>`,
    /// its first 16 bytes in lowercase hex) for every shape of sequence.
    #[test]
    fn a_payer_token_is_the_hash_of_its_transfer_ids_text() {
        use sha2::{Digest, Sha256};
        for sequence in [0, 1, 9, 10, 42, 1_000_000, u64::MAX] {
            let id = TransferId::new(RegionId::new("cn-east").unwrap(), sequence);
            let digest = Sha256::digest(format!("paymesh/payer-token/v1/{id}").as_bytes());
            let hex: String = digest[..16].iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(PayerToken::for_transfer(&id).as_str(), format!("pt_{hex}"), "{id}");
        }
        // The token of us-west:1 as the releases before wrote it.
        assert_eq!(
            PayerToken::for_transfer(&TransferId::parse("us-west:1").unwrap()).as_str(),
            "pt_4884a4c1751dd4f6d2375a3618bc0b0a"
        );
    }
}
