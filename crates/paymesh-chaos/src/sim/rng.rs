//! The simulation's only source of randomness: SplitMix64, written out here
//! so that a seed replays the same run whatever version of `rand` the
//! workspace moves to.

/// A deterministic pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// A generator derived from this one for an independent stream (one per
    /// worker), so adding a draw in one stream does not shift the others.
    pub(crate) fn fork(&self, stream: u64) -> Rng {
        let mut forked = Rng(self.0 ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        forked.next_u64();
        forked
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0). The modulo bias is below
    /// 2^-40 for the small ranges drawn here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A number in `low..=high` (`low` if the range is empty).
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low).saturating_add(1))
    }

    /// An index into a slice of `len` items (0 for an empty one).
    pub(crate) fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// True `permille` times in a thousand.
    pub(crate) fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < u64::from(permille)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_sequence_and_ranges_hold() {
        let mut a = Rng::new(17);
        let mut b = Rng::new(17);
        let first: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..8).map(|_| Rng::new(18).next_u64()).collect::<Vec<_>>());
        for _ in 0..1000 {
            let x = a.range(5, 9);
            assert!((5..=9).contains(&x));
        }
        assert_eq!(a.below(0), 0);
        assert_eq!(a.range(3, 3), 3);
    }
}
