//! ISO 4217 currencies.
//!
//! A [`Currency`] is a small `Copy` value naming one entry of a fixed table: its
//! alphabetic code, numeric code and number of minor-unit digits. The table is
//! the only source of minor units in paymesh; an amount's scale is checked
//! against it everywhere (see [`crate::money`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a currency code was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// The code was empty.
    #[error("currency code is empty")]
    Empty,
    /// The code was not exactly three uppercase ASCII letters.
    #[error("currency code {0:?} is not three uppercase ASCII letters")]
    Malformed(String),
    /// The code is well formed but not in paymesh's ISO 4217 table.
    #[error("currency code {0:?} is not a supported ISO 4217 currency")]
    Unknown(String),
}

macro_rules! currencies {
    ($( $code:ident = $numeric:literal, $minor:literal, $name:literal; )+) => {
        /// An ISO 4217 currency supported by paymesh.
        ///
        /// Ordered by alphabetic code, so maps keyed by currency iterate in a
        /// stable, human-friendly order on every replica.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Currency {
            $(
                #[doc = $name]
                $code,
            )+
        }

        impl Currency {
            /// Every supported currency, in alphabetic-code order.
            pub const ALL: &'static [Currency] = &[$(Currency::$code,)+];

            /// The three-letter alphabetic code, e.g. `"USD"`.
            pub const fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code),)+ }
            }

            /// The ISO 4217 numeric code, e.g. 840 for USD.
            pub const fn numeric(self) -> u16 {
                match self { $(Currency::$code => $numeric,)+ }
            }

            /// Number of digits after the decimal point in the minor unit
            /// (USD 2, JPY 0, KWD 3).
            pub const fn minor_units(self) -> u32 {
                match self { $(Currency::$code => $minor,)+ }
            }

            /// The currency's English name.
            pub const fn name(self) -> &'static str {
                match self { $(Currency::$code => $name,)+ }
            }

            fn from_known_code(code: &str) -> Option<Currency> {
                match code {
                    $(stringify!($code) => Some(Currency::$code),)+
                    _ => None,
                }
            }
        }
    };
}

currencies! {
    AED = 784, 2, "UAE dirham";
    AUD = 36, 2, "Australian dollar";
    BHD = 48, 3, "Bahraini dinar";
    BRL = 986, 2, "Brazilian real";
    CAD = 124, 2, "Canadian dollar";
    CHF = 756, 2, "Swiss franc";
    CLP = 152, 0, "Chilean peso";
    CNY = 156, 2, "Renminbi (yuan)";
    CZK = 203, 2, "Czech koruna";
    DKK = 208, 2, "Danish krone";
    EUR = 978, 2, "Euro";
    GBP = 826, 2, "Pound sterling";
    HKD = 344, 2, "Hong Kong dollar";
    IDR = 360, 2, "Indonesian rupiah";
    ILS = 376, 2, "Israeli new shekel";
    INR = 356, 2, "Indian rupee";
    ISK = 352, 0, "Icelandic króna";
    JOD = 400, 3, "Jordanian dinar";
    JPY = 392, 0, "Japanese yen";
    KRW = 410, 0, "South Korean won";
    KWD = 414, 3, "Kuwaiti dinar";
    KZT = 398, 2, "Kazakhstani tenge";
    LKR = 144, 2, "Sri Lankan rupee";
    MOP = 446, 2, "Macanese pataca";
    MXN = 484, 2, "Mexican peso";
    MYR = 458, 2, "Malaysian ringgit";
    NOK = 578, 2, "Norwegian krone";
    NZD = 554, 2, "New Zealand dollar";
    OMR = 512, 3, "Omani rial";
    PHP = 608, 2, "Philippine peso";
    PKR = 586, 2, "Pakistani rupee";
    PLN = 985, 2, "Polish złoty";
    QAR = 634, 2, "Qatari riyal";
    SAR = 682, 2, "Saudi riyal";
    SEK = 752, 2, "Swedish krona";
    SGD = 702, 2, "Singapore dollar";
    THB = 764, 2, "Thai baht";
    TND = 788, 3, "Tunisian dinar";
    TRY = 949, 2, "Turkish lira";
    TWD = 901, 2, "New Taiwan dollar";
    USD = 840, 2, "United States dollar";
    UZS = 860, 2, "Uzbekistani sum";
    VND = 704, 0, "Vietnamese đồng";
    ZAR = 710, 2, "South African rand";
}

impl Currency {
    /// Parse a currency code strictly: exactly three uppercase ASCII letters
    /// naming a currency in the table. Lowercase, padding and unknown codes are
    /// refused with distinct errors.
    pub fn parse(code: &str) -> Result<Currency, CurrencyError> {
        if code.is_empty() {
            return Err(CurrencyError::Empty);
        }
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CurrencyError::Malformed(truncate_for_error(code)));
        }
        Currency::from_known_code(code).ok_or_else(|| CurrencyError::Unknown(code.to_owned()))
    }

    /// The currency with this ISO 4217 numeric code, if supported.
    pub fn from_numeric(numeric: u16) -> Option<Currency> {
        Currency::ALL.iter().copied().find(|c| c.numeric() == numeric)
    }
}

/// Error messages quote the offending input, but never more than a few bytes of it.
pub(crate) fn truncate_for_error(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 16;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        text.to_owned()
    } else {
        let mut shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        shown.push('…');
        shown
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn table_is_sorted_and_codes_are_unique() {
        let codes: Vec<&str> = Currency::ALL.iter().map(|c| c.code()).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted, "the table must be sorted by code with no duplicates");
        let numerics: BTreeSet<u16> = Currency::ALL.iter().map(|c| c.numeric()).collect();
        assert_eq!(numerics.len(), Currency::ALL.len(), "numeric codes must be unique");
        // Ord of the enum agrees with the alphabetic code order.
        assert!(Currency::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn required_currencies_have_their_iso_minor_units() {
        let expected = [
            ("CNY", 156, 2),
            ("USD", 840, 2),
            ("EUR", 978, 2),
            ("GBP", 826, 2),
            ("JPY", 392, 0),
            ("KRW", 410, 0),
            ("PHP", 608, 2),
            ("THB", 764, 2),
            ("IDR", 360, 2),
            ("UZS", 860, 2),
            ("MYR", 458, 2),
            ("SGD", 702, 2),
            ("HKD", 344, 2),
            ("AUD", 36, 2),
            ("CAD", 124, 2),
            ("CHF", 756, 2),
            ("INR", 356, 2),
            ("VND", 704, 0),
            ("KWD", 414, 3),
            ("BHD", 48, 3),
        ];
        for (code, numeric, minor) in expected {
            let currency = Currency::parse(code).unwrap();
            assert_eq!(currency.code(), code);
            assert_eq!(currency.numeric(), numeric, "{code}");
            assert_eq!(currency.minor_units(), minor, "{code}");
            assert_eq!(Currency::from_numeric(numeric), Some(currency));
        }
    }

    #[test]
    fn every_code_round_trips_through_text_and_serde() {
        for &currency in Currency::ALL {
            assert_eq!(Currency::parse(currency.code()), Ok(currency));
            let json = serde_json::to_string(&currency).unwrap();
            assert_eq!(json, format!("\"{}\"", currency.code()));
            assert_eq!(serde_json::from_str::<Currency>(&json).unwrap(), currency);
        }
    }

    #[test]
    fn bad_codes_are_refused_with_specific_errors() {
        assert_eq!(Currency::parse(""), Err(CurrencyError::Empty));
        for malformed in ["usd", "US", "USDT", " USD", "US1", "ÜSD", "U$D"] {
            assert!(matches!(Currency::parse(malformed), Err(CurrencyError::Malformed(_))), "{malformed:?}");
        }
        assert_eq!(Currency::parse("XYZ"), Err(CurrencyError::Unknown("XYZ".into())));
        assert!(serde_json::from_str::<Currency>("\"XYZ\"").is_err());
        assert_eq!(Currency::from_numeric(999), None);
    }
}
