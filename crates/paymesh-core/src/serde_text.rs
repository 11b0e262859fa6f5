//! Serialise a value as its text form without allocating.
//!
//! Identifiers, amounts and rates are encoded as their text (the wire's
//! form, and what the log, snapshots and history hold). serde's
//! `into = "String"` made a `String` for each of them, copied from the value
//! and dropped after: several allocations per field and thousands per log
//! entry, on every replica. These write the text straight to the
//! serializer. A text made of parts (an id of a region and a number, a
//! corridor) and a decimal are put together on the stack without the
//! formatting machinery (`write!` through `Display` was a quarter of a
//! replica's record encoding); the encoded bytes are those `Display` gives,
//! which the tests check.

use arrayvec::ArrayString;
use rust_decimal::Decimal;
use serde::ser::SerializeStruct as _;
use serde::Serializer;

/// Text up to this long is put together on the stack; longer text (none of
/// the types here has any) goes through the serializer's own `collect_str`.
const TEXT_ON_STACK_BYTES: usize = 256;

/// Serialise the string `parts` make one after the other.
pub(crate) fn serialize_joined<S: Serializer>(parts: &[&str], serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = ArrayString::<TEXT_ON_STACK_BYTES>::new();
    for part in parts {
        if text.try_push_str(part).is_err() {
            return serializer.collect_str(&parts.concat());
        }
    }
    serializer.serialize_str(&text)
}

/// Append `value`'s text as its `Display` writes it: `-` if it is negative
/// (a negative zero too), its integer digits (`0` if none), then `.` and
/// exactly its scale's digits if its scale is not 0. `None` if it does not
/// fit.
fn push_decimal<const N: usize>(text: &mut ArrayString<N>, value: &Decimal) -> Option<()> {
    let mut buffer = itoa::Buffer::new();
    let magnitude = value.mantissa().unsigned_abs();
    let digits = if magnitude == 0 { "" } else { buffer.format(magnitude) };
    let scale = value.scale() as usize;
    let mut push = |part: &str| text.try_push_str(part).ok();
    if value.is_sign_negative() {
        push("-")?;
    }
    if scale == 0 {
        return push(if digits.is_empty() { "0" } else { digits });
    }
    match digits.len().checked_sub(scale).filter(|&whole| whole > 0) {
        Some(whole) => {
            push(&digits[..whole])?;
            push(".")?;
            push(&digits[whole..])
        }
        None => {
            push("0.")?;
            for _ in digits.len()..scale {
                push("0")?;
            }
            push(digits)
        }
    }
}

/// Serialise a decimal as the string its `Display` writes.
pub(crate) fn serialize_decimal<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = ArrayString::<TEXT_ON_STACK_BYTES>::new();
    match push_decimal(&mut text, value) {
        Some(()) => serializer.serialize_str(&text),
        None => serializer.collect_str(value),
    }
}

/// Serialise an amount as the struct `{ amount, currency }` of two strings
/// that the money types are decoded from.
pub(crate) fn serialize_amount<S: Serializer>(
    amount: &Decimal,
    currency: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut text = ArrayString::<TEXT_ON_STACK_BYTES>::new();
    push_decimal(&mut text, amount).ok_or_else(|| serde::ser::Error::custom("an amount too long to encode"))?;
    let mut repr = serializer.serialize_struct("MoneyRepr", 2)?;
    repr.serialize_field("amount", text.as_str())?;
    repr.serialize_field("currency", currency)?;
    repr.end()
}

/// `impl Serialize` writing a type's text through `as_str`.
macro_rules! serialize_as_text {
    ($name:ty, as_str) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
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
        let parts: Vec<String> = (0..100).map(|n| format!("{n:04}")).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let text = parts.concat();
        assert!(text.len() > TEXT_ON_STACK_BYTES);
        let mut bytes = Vec::new();
        serialize_joined(&parts, &mut serde_json::Serializer::new(&mut bytes)).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&text).unwrap());
        assert_eq!(postcard::to_stdvec(&text).unwrap(), {
            let mut out = postcard::Serializer { output: postcard::ser_flavors::StdVec::new() };
            serialize_joined(&parts, &mut out).unwrap();
            postcard::ser_flavors::Flavor::finalize(out.output).unwrap()
        });
    }

    proptest::proptest! {
        /// A decimal's text is its `Display`'s, whatever its digits, scale
        /// and sign (a negative zero included); an id's is its region, `:`,
        /// its marker and its number's digits.
        #[test]
        fn decimals_and_ids_encode_as_their_display(
            mantissa in proptest::prelude::any::<i128>(),
            small in -1_000_000i64..1_000_000,
            scale in 0u32..=28,
            negative in proptest::prelude::any::<bool>(),
            sequence in proptest::prelude::any::<u64>(),
        ) {
            let mantissa = mantissa % 79_228_162_514_264_337_593_543_950_335; // within 96 bits
            for mantissa in [mantissa, i128::from(small), 0] {
                let mut value = Decimal::from_i128_with_scale(mantissa, scale);
                value.set_sign_negative(negative ^ value.is_sign_negative());
                let mut text = ArrayString::<TEXT_ON_STACK_BYTES>::new();
                proptest::prop_assert_eq!(push_decimal(&mut text, &value), Some(()));
                proptest::prop_assert_eq!(text.as_str(), value.to_string());
            }
            let region = RegionId::new("us-west").unwrap();
            let (transfer, quote) = (TransferId::new(region.clone(), sequence), QuoteId::new(region, sequence));
            let (transfer_text, quote_text) = (format!("us-west:{sequence}"), format!("us-west:q{sequence}"));
            proptest::prop_assert_eq!(serde_json::to_string(&transfer).unwrap(), serde_json::to_string(&transfer_text).unwrap());
            proptest::prop_assert_eq!(transfer.to_string(), transfer_text);
            proptest::prop_assert_eq!(serde_json::to_string(&quote).unwrap(), serde_json::to_string(&quote_text).unwrap());
            proptest::prop_assert_eq!(quote.to_string(), quote_text);
        }
    }
}
