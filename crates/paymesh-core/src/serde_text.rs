//! Serialise a value as its text form without allocating.
//!
//! Identifiers, amounts and rates are encoded as their text (the wire's
//! form, and what the log, snapshots and history hold). serde's
//! `into = "String"` made a `String` for each of them, copied from the value
//! and dropped after: several allocations per field and thousands per log
//! entry, on every replica. These write the text straight to the
//! serializer, through a buffer on the stack when it has to be formatted.
//! The encoded bytes are the same either way.

use std::fmt::{self, Write as _};

use arrayvec::ArrayString;
use serde::ser::SerializeStruct as _;
use serde::Serializer;

/// Text up to this long is formatted on the stack; longer text (none of the
/// types here has any) goes through the serializer's own `collect_str`.
const TEXT_ON_STACK_BYTES: usize = 256;

/// Serialise `value` as the string its `Display` writes.
pub(crate) fn serialize_display<S: Serializer>(value: &dyn fmt::Display, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = ArrayString::<TEXT_ON_STACK_BYTES>::new();
    match write!(text, "{value}") {
        Ok(()) => serializer.serialize_str(&text),
        Err(fmt::Error) => serializer.collect_str(value),
    }
}

/// Serialise an amount as the struct `{ amount, currency }` of two strings
/// that the money types are decoded from.
pub(crate) fn serialize_amount<S: Serializer>(
    amount: &dyn fmt::Display,
    currency: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut text = ArrayString::<TEXT_ON_STACK_BYTES>::new();
    write!(text, "{amount}").map_err(|fmt::Error| serde::ser::Error::custom("an amount too long to encode"))?;
    let mut repr = serializer.serialize_struct("MoneyRepr", 2)?;
    repr.serialize_field("amount", text.as_str())?;
    repr.serialize_field("currency", currency)?;
    repr.end()
}

/// `impl Serialize` writing a type's text: `as_str` for one holding it,
/// `display` for one formatting it.
macro_rules! serialize_as_text {
    ($name:ty, as_str) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
    ($name:ty, display) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::serde_text::serialize_display(self, serializer)
            }
        }
    };
}
pub(crate) use serialize_as_text;

/// `impl Deserialize` reading a type from a string through `parse`, which
/// takes a `&str`: the text borrowed from the input where the format allows
/// it (postcard does), never an intermediate `String`.
macro_rules! deserialize_from_text {
    ($name:ident, $parse:path, $what:expr) => {
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        $parse(text).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Text)
            }
        }
    };
}
pub(crate) use deserialize_from_text;

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::command::PayerField;
    use crate::corridor::CorridorId;
    use crate::currency::Currency;
    use crate::directory::QrPrefix;
    use crate::fx::Rate;
    use crate::id::{PartnerId, PayerToken, QuoteId, RegionId, TransferId};
    use crate::money::{Money, SignedMoney};

    /// Postcard's and JSON's bytes of `value`, and of `text` as a string.
    fn both<T: Serialize + ?Sized, U: Serialize + ?Sized>(value: &T, text: &U) {
        assert_eq!(postcard::to_stdvec(value).unwrap(), postcard::to_stdvec(text).unwrap());
        assert_eq!(serde_json::to_string(value).unwrap(), serde_json::to_string(text).unwrap());
    }

    // The log, snapshots, history and archives written before hold these
    // bytes: they must read the same, and digests over them must not move.
    #[test]
    fn text_forms_encode_to_the_bytes_of_their_strings() {
        let region = RegionId::new("us-west").unwrap();
        let transfer = TransferId::new(region.clone(), 42);
        both(&transfer, "us-west:42");
        both(&QuoteId::new(region.clone(), 7), "us-west:q7");
        both(&PartnerId::new("paypal-us").unwrap(), "paypal-us");
        both(&PayerToken::for_transfer(&transfer), PayerToken::for_transfer(&transfer).as_str());
        both(&PayerField::new("Zoë Example").unwrap(), "Zoë Example");
        both(&QrPrefix::new("wxp://").unwrap(), "wxp://");
        both(&CorridorId::parse("USD:us-west->CNY:cn-east").unwrap(), "USD:us-west->CNY:cn-east");
        both(&Rate::parse("7.123456789012").unwrap(), "7.123456789012");
        // An amount is the struct of its two strings (postcard writes a
        // struct's fields one after the other, as it writes a tuple's).
        let money = Money::parse("12.5", Currency::USD).unwrap();
        assert_eq!(postcard::to_stdvec(&money).unwrap(), postcard::to_stdvec(&("12.50", "USD")).unwrap());
        assert_eq!(serde_json::to_string(&money).unwrap(), r#"{"amount":"12.50","currency":"USD"}"#);
        let debt = SignedMoney::parse("-3", Currency::CNY).unwrap();
        assert_eq!(postcard::to_stdvec(&debt).unwrap(), postcard::to_stdvec(&("-3.00", "CNY")).unwrap());
        assert_eq!(serde_json::to_string(&debt).unwrap(), r#"{"amount":"-3.00","currency":"CNY"}"#);
    }

    #[test]
    fn text_longer_than_the_stack_buffer_is_still_written_whole() {
        struct Long;
        impl fmt::Display for Long {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (0..100).try_for_each(|n| write!(f, "{n:04}"))
            }
        }
        let text = Long.to_string();
        assert!(text.len() > TEXT_ON_STACK_BYTES);
        let mut bytes = Vec::new();
        serialize_display(&Long, &mut serde_json::Serializer::new(&mut bytes)).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&text).unwrap());
        assert_eq!(postcard::to_stdvec(&text).unwrap(), {
            let mut out = postcard::Serializer { output: postcard::ser_flavors::StdVec::new() };
            serialize_display(&Long, &mut out).unwrap();
            postcard::ser_flavors::Flavor::finalize(out.output).unwrap()
        });
    }
}
