//! The workload every target carries out: same-region CNY payments from
//! prefunded payers to merchants, with a 0.6 % merchant discount fee. Which
//! payer pays which payee how much is a pure function of `(worker,
//! sequence)`, so every target sees the same transfers.

/// Smallest transfer, in fen (10 yuan).
pub const AMOUNT_MIN_MINOR: i64 = 1_000;
/// Transfers are spread over this many fen above the smallest (up to 1,000 yuan).
pub const AMOUNT_SPREAD_MINOR: u64 = 99_001;
/// The fee, in basis points of the amount (0.6 %).
pub const FEE_BPS: i64 = 60;
/// The currency of every account.
pub const CURRENCY: &str = "CNY";

/// One transfer of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index of the paying account, below the number of payers.
    pub payer: usize,
    /// Index of the paid merchant, below the number of payees.
    pub payee: usize,
    /// The amount, in fen.
    pub amount_minor: i64,
}

impl Pick {
    /// The transfer `(worker, sequence)` makes among `payers` and `payees`
    /// (both at least 1).
    pub fn new(worker: usize, sequence: u64, payers: usize, payees: usize) -> Pick {
        let bits = mix(mix(worker as u64) ^ sequence);
        Pick {
            payer: (bits % payers.max(1) as u64) as usize,
            payee: ((bits >> 16) % payees.max(1) as u64) as usize,
            amount_minor: AMOUNT_MIN_MINOR + ((bits >> 32) % AMOUNT_SPREAD_MINOR) as i64,
        }
    }

    /// The fee in fen, rounded half to even: what paymesh's fee schedule
    /// charges.
    // The PostgreSQL baseline books it; paymesh's own schedule charges it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn fee_minor(&self) -> i64 {
        let scaled = self.amount_minor * FEE_BPS;
        let (quotient, remainder) = (scaled / 10_000, scaled % 10_000);
        if remainder * 2 > 10_000 || (remainder * 2 == 10_000 && quotient % 2 == 1) {
            quotient + 1
        } else {
            quotient
        }
    }
}

/// A well-mixed 64-bit value from `x` (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Minor units as a decimal string with two fractional digits.
pub fn decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!("{sign}{}.{:02}", minor / 100, minor % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_deterministic_within_range_and_spread() {
        let mut payers = [0u32; 64];
        let mut payees = [0u32; 16];
        for worker in 0..8 {
            for sequence in 0..1_000 {
                let pick = Pick::new(worker, sequence, 64, 16);
                assert_eq!(pick, Pick::new(worker, sequence, 64, 16));
                assert!((AMOUNT_MIN_MINOR..AMOUNT_MIN_MINOR + AMOUNT_SPREAD_MINOR as i64).contains(&pick.amount_minor));
                payers[pick.payer] += 1;
                payees[pick.payee] += 1;
            }
        }
        assert!(payers.iter().all(|&n| n > 60), "{payers:?}");
        assert!(payees.iter().all(|&n| n > 350), "{payees:?}");
    }

    #[test]
    fn fees_round_down_and_decimals_have_two_digits() {
        let pick = Pick { payer: 0, payee: 0, amount_minor: 12_345 };
        assert_eq!(pick.fee_minor(), 74, "123.45 × 0.6 % = 0.7407");
        let up = Pick { amount_minor: 12_490, ..pick };
        assert_eq!(up.fee_minor(), 75, "0.7494 rounds up");
        let half_up = Pick { amount_minor: 1_250, ..pick };
        assert_eq!(half_up.fee_minor(), 8, "0.075 rounds half to even: up to 0.08");
        let half_down = Pick { amount_minor: 750, ..pick };
        assert_eq!(half_down.fee_minor(), 4, "0.045 rounds half to even: down to 0.04");
        assert_eq!(decimal(12_345), "123.45");
        assert_eq!(decimal(5), "0.05");
        assert_eq!(decimal(-120), "-1.20");
    }
}
