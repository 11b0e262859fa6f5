//! The simulated WAN between the three regions: per link a baseline of
//! loss, duplication, jitter and rare very late deliveries drawn from the
//! seed, the WAN faults layered over it, and cuts (partitions).
//!
//! Nothing here sleeps: the engine asks how long a message takes and puts
//! its delivery on the event queue at that simulated time.

use super::rng::Rng;

/// The normal one-way delay between two regions (a 50 ms round trip, as
/// `paymesh-chaos run` uses by default).
pub(crate) const BASE_ONE_WAY_MS: u64 = 25;

/// How a link treats the messages crossing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Conditions {
    /// Messages lost, per thousand.
    pub(crate) loss_permille: u32,
    /// Messages delivered twice, per thousand (the copy on its own delay).
    pub(crate) dup_permille: u32,
    /// One-way delay added to [`BASE_ONE_WAY_MS`].
    pub(crate) delay_ms: u64,
    /// Uniform jitter on top, so messages overtake each other.
    pub(crate) jitter_ms: u64,
    /// Messages held 1 to 15 s (a stalled connection), per thousand: they
    /// arrive after their caller gave up, some after the transfer's deadline.
    pub(crate) late_permille: u32,
}

impl Conditions {
    /// A seed's everyday conditions on one link: mostly clean, never
    /// perfectly so.
    pub(crate) fn baseline(rng: &mut Rng) -> Conditions {
        Conditions {
            loss_permille: u32::try_from(rng.range(0, 20)).unwrap_or(0),
            dup_permille: u32::try_from(rng.range(0, 30)).unwrap_or(0),
            delay_ms: 0,
            jitter_ms: rng.range(0, 20),
            late_permille: u32::try_from(rng.range(0, 10)).unwrap_or(0),
        }
    }

    /// A WAN fault's conditions: slow, jittery, lossy, duplicating.
    pub(crate) fn degraded(rng: &mut Rng) -> Conditions {
        Conditions {
            loss_permille: u32::try_from(rng.range(10, 200)).unwrap_or(0),
            dup_permille: u32::try_from(rng.range(0, 100)).unwrap_or(0),
            delay_ms: rng.range(20, 150),
            jitter_ms: rng.range(10, 80),
            late_permille: u32::try_from(rng.range(0, 30)).unwrap_or(0),
        }
    }

    /// The one-way delay of one message.
    pub(crate) fn one_way_ms(&self, rng: &mut Rng) -> u64 {
        let late = if rng.chance(self.late_permille) { rng.range(1_000, 15_000) } else { 0 };
        BASE_ONE_WAY_MS + self.delay_ms + rng.range(0, self.jitter_ms) + late
    }
}

#[derive(Clone, Debug)]
struct Link {
    /// Cuts in force (partitions and regions cut off); cut while above 0.
    cuts: u32,
    base: Conditions,
    /// WAN faults in force, by fault index; the latest one applies.
    wan: Vec<(usize, Conditions)>,
}

/// The links between every pair of the three regions.
#[derive(Clone, Debug)]
pub(crate) struct Network {
    links: [Link; 3],
}

/// The link between regions `a` and `b` (indexes 0 to 2, different).
fn pair(a: usize, b: usize) -> usize {
    match (a.min(b), a.max(b)) {
        (0, 1) => 0,
        (0, 2) => 1,
        _ => 2,
    }
}

impl Network {
    /// Three links with the seed's baselines.
    pub(crate) fn new(rng: &mut Rng) -> Network {
        let mut link = || Link { cuts: 0, base: Conditions::baseline(rng), wan: Vec::new() };
        Network { links: [link(), link(), link()] }
    }

    /// Whether `a` and `b` are cut off from each other now.
    pub(crate) fn is_cut(&self, a: usize, b: usize) -> bool {
        self.links[pair(a, b)].cuts > 0
    }

    /// The conditions between `a` and `b` now.
    pub(crate) fn conditions(&self, a: usize, b: usize) -> Conditions {
        let link = &self.links[pair(a, b)];
        link.wan.last().map_or(link.base, |(_, c)| *c)
    }

    /// Cut (`true`) or restore (`false`) the link, counting overlapping cuts.
    pub(crate) fn cut(&mut self, a: usize, b: usize, cut: bool) {
        let link = &mut self.links[pair(a, b)];
        link.cuts = if cut { link.cuts + 1 } else { link.cuts.saturating_sub(1) };
    }

    /// Degrade the link for fault `fault`.
    pub(crate) fn degrade(&mut self, a: usize, b: usize, fault: usize, conditions: Conditions) {
        self.links[pair(a, b)].wan.push((fault, conditions));
    }

    /// End fault `fault`'s degradation of the link.
    pub(crate) fn restore(&mut self, a: usize, b: usize, fault: usize) {
        self.links[pair(a, b)].wan.retain(|(f, _)| *f != fault);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_and_faults_stack_and_heal_in_any_order() {
        let mut rng = Rng::new(1);
        let mut net = Network::new(&mut rng);
        let base = net.conditions(2, 0);
        net.cut(0, 2, true);
        net.cut(2, 0, true);
        net.cut(0, 2, false);
        assert!(net.is_cut(2, 0) && !net.is_cut(0, 1));
        net.cut(0, 2, false);
        assert!(!net.is_cut(0, 2));
        let (slow, slower) = (Conditions::degraded(&mut rng), Conditions::degraded(&mut rng));
        net.degrade(0, 2, 1, slow);
        net.degrade(2, 0, 2, slower);
        assert_eq!(net.conditions(0, 2), slower);
        net.restore(0, 2, 2);
        assert_eq!(net.conditions(0, 2), slow);
        net.restore(2, 0, 1);
        assert_eq!(net.conditions(0, 2), base);
    }
}
