//! The idempotency keys recorded by the batches applied lately: what lets a
//! replica take the leader's word that a transfer request's key is new.
//!
//! A transfer request is looked up under its idempotency key twice: by the
//! leader before it proposes (a retry is answered from its record), and by
//! every replica as it applies the request (to decide). The second lookup
//! is a read of history on every replica for every transfer, and nearly
//! always for a key never seen. So when the leader's lookup, as of its
//! applied index `A`, found no record, the command says so
//! ([`CommandBody::CreateFreshTransfer`](crate::command::CommandBody::CreateFreshTransfer)),
//! and a replica applying it in the batch at index `B` needs only the keys
//! recorded by the batches `A + 1 .. B` (and by the commands before it in
//! its own batch): those this module keeps, in memory, for the most recent
//! batches. When what is kept does not reach back to `A + 1` (after a
//! restart, or for a command that waited long), the replica looks in
//! history as before. Either way its answer is the one a lookup in history
//! would give, so replicas that took different ways still decide alike.
//!
//! The claim is the leader's, as the whole entry is: a replica trusts the
//! leader of its term to order and stamp the commands, and now also to
//! have looked the key up. A claim about a batch not yet applied (`A` at or
//! after `B`) is not taken.
//!
//! Bounded by [`RECENT_KEYS_MAX`], whole batches dropped oldest first. It
//! is not part of the state's image, its digest or its equality, and a copy
//! of the state does not copy it: it is a cache of history, rebuilt by
//! applying. The state's copies are its readers' (the state published after
//! each apply, a checkpoint's, a snapshot's) and never apply; one that did
//! would look its keys up in history, as a replica does after a restart,
//! and decide the same. So the cache is the applying state's alone, in
//! plain structures changed in place: in persistent maps shared with the
//! copy published after every batch, each batch's random keys copied a
//! node each (about a tenth of a follower's hot state at the batched peak).
//! It answers whether a key may have been recorded (see [`COUNTERS`]): a
//! wrong yes costs a read of history, never a wrong decision.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};

use crate::id::{IdempotencyKey, PartnerId};

/// The most idempotency keys kept: about 2 to 3 s of a region's peak, some
/// 100 bytes each. A command that waited longer between the leader's lookup
/// and its apply is looked up in history.
pub const RECENT_KEYS_MAX: usize = 16_384;

/// A key as it is kept: the first 8 bytes of a SHA-256 of the partner and
/// the key. Two keys that share it only make a replica read history for
/// one of them when it need not: the same answer, more slowly. Kept as a
/// number, the table's nodes copy without allocating when the state is
/// shared with readers (with the keys' strings in it, keeping the table
/// cost as much as the reads of history it saves).
pub(super) fn short(partner: &PartnerId, key: &IdempotencyKey) -> u64 {
    let mut hash = Sha256::new();
    hash.update(partner.as_str().as_bytes());
    hash.update([0]);
    hash.update(key.as_str().as_bytes());
    let digest = hash.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Counters of the keys kept: each key counts in two of them, picked by
/// bits of its [`short`] form (uniform: a SHA-256). A key counts as held
/// when both of its counters are above zero; one not kept is taken for held
/// only when other keys cover both its counters, about 0.4 % of the time
/// when [`RECENT_KEYS_MAX`] keys are kept, and costs that one command a
/// read of history. Plain counters replaced an ordered map of the keys,
/// whose inserts and removals in a tree of 16,384 cost about 2 % of a
/// follower's time at the batched peak (docs/BENCHMARKS.md).
const COUNTERS: usize = 1 << 19;

/// The counters a key counts in.
fn counters_of(key: u64) -> [usize; 2] {
    let mask = (COUNTERS - 1) as u64;
    [(key & mask) as usize, ((key >> 32) & mask) as usize]
}

/// The idempotency keys recorded by the most recent batches. See the module
/// documentation.
#[derive(Default)]
pub(super) struct RecentKeys {
    /// The first batch index whose keys are all here; `None` before the
    /// first batch this copy applied.
    from: Option<u64>,
    /// The index of the batch being applied (or last applied).
    applying: u64,
    /// [`COUNTERS`] counts, empty until this copy keeps a key (a copy of the
    /// state, which never applies, allocates none). A counter that reached
    /// `u16::MAX` stays there: it may no longer tell a key is gone, only
    /// take keys for held that are not, which costs reads, not answers.
    counts: Vec<u16>,
    /// Keys counted (a key recorded by two batches, twice).
    held: usize,
    /// The keys each batch recorded, oldest batch first, with its index.
    batches: VecDeque<(u64, Vec<u64>)>,
    /// The keys the batch being applied recorded so far; empty between
    /// batches.
    recording: Vec<u64>,
}

/// A copy starts empty (see the module documentation): it looks keys up in
/// history until it has applied batches of its own.
impl Clone for RecentKeys {
    fn clone(&self) -> RecentKeys {
        RecentKeys::default()
    }
}

/// A cache of history: two states that decide alike are equal whatever
/// each of them caches.
impl PartialEq for RecentKeys {
    fn eq(&self, _other: &RecentKeys) -> bool {
        true
    }
}

impl Eq for RecentKeys {}

impl std::fmt::Debug for RecentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentKeys").field("from", &self.from).field("keys", &self.held).finish()
    }
}

impl RecentKeys {
    /// The batch at `index` starts.
    pub(super) fn begin(&mut self, index: u64) {
        self.from.get_or_insert(index);
        self.applying = index;
    }

    /// The batch being applied recorded `key` (its [`short`] form).
    pub(super) fn record(&mut self, key: u64) {
        self.recording.push(key);
    }

    /// The batch being applied ends: the keys it recorded are kept, and the
    /// oldest batches are dropped while more than [`RECENT_KEYS_MAX`] keys
    /// are.
    pub(super) fn finish(&mut self) {
        let keys = std::mem::take(&mut self.recording);
        if keys.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; COUNTERS];
        }
        for key in &keys {
            for at in counters_of(*key) {
                self.counts[at] = self.counts[at].saturating_add(1);
            }
        }
        self.held += keys.len();
        self.batches.push_back((self.applying, keys));
        while self.held > RECENT_KEYS_MAX {
            let Some((index, dropped)) = self.batches.pop_front() else { break };
            for key in &dropped {
                for at in counters_of(*key) {
                    let count = &mut self.counts[at];
                    if *count != u16::MAX {
                        *count -= 1;
                    }
                }
            }
            self.held -= dropped.len();
            self.from = Some(index + 1);
        }
    }

    /// Whether the batch being applied may take the leader's word that a
    /// key had no record through index `fresh_through`, and look only here
    /// for records since: the claim is about an index before this batch,
    /// and every batch after it is here.
    pub(super) fn vouches(&self, fresh_through: u64) -> bool {
        fresh_through < self.applying && self.from.is_some_and(|from| from <= fresh_through.saturating_add(1))
    }

    /// Whether a batch kept here recorded `key` (a [`short`] form), or
    /// other keys cover its counters (see [`COUNTERS`]): never `false` for
    /// a key kept.
    pub(super) fn holds(&self, key: u64) -> bool {
        !self.counts.is_empty() && counters_of(key).iter().all(|at| self.counts[*at] > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idempotency_key(n: usize) -> IdempotencyKey {
        IdempotencyKey::new(format!("key-{n}")).unwrap()
    }

    fn key(n: usize) -> u64 {
        short(&wallet(), &idempotency_key(n))
    }

    fn wallet() -> PartnerId {
        PartnerId::new("wallet").unwrap()
    }

    fn held(recent: &RecentKeys, n: usize) -> bool {
        recent.holds(short(&wallet(), &idempotency_key(n)))
    }

    /// The batch being applied records `keys`, then ends.
    fn finish_with(recent: &mut RecentKeys, keys: Vec<u64>) {
        for key in keys {
            recent.record(key);
        }
        recent.finish();
    }

    #[test]
    fn vouches_only_for_claims_about_earlier_batches_it_holds_all_of() {
        let mut recent = RecentKeys::default();
        assert!(!recent.vouches(0), "nothing applied yet");
        recent.begin(10);
        finish_with(&mut recent, vec![key(1)]);
        recent.begin(11);
        // Everything from 10 on is here: a claim through 9 or 10 is enough.
        assert!(recent.vouches(9));
        assert!(recent.vouches(10));
        // Through 8 would need batch 9, which this copy never saw.
        assert!(!recent.vouches(8));
        // A claim about this batch or a later one is not taken.
        assert!(!recent.vouches(11));
        assert!(!recent.vouches(u64::MAX));
        assert!(held(&recent, 1));
        assert!(!held(&recent, 2));
    }

    #[test]
    fn a_copy_holds_nothing_and_vouches_for_nothing() {
        let mut recent = RecentKeys::default();
        recent.begin(10);
        finish_with(&mut recent, vec![key(1)]);
        recent.begin(11);
        let copy = recent.clone();
        assert!(recent.vouches(10) && held(&recent, 1));
        assert!(!copy.vouches(10) && !held(&copy, 1));
    }

    #[test]
    fn drops_whole_batches_oldest_first_and_stops_vouching_for_them() {
        let mut recent = RecentKeys::default();
        let per_batch = RECENT_KEYS_MAX / 4;
        for batch in 0..5u64 {
            recent.begin(100 + batch);
            let first = batch as usize * per_batch;
            finish_with(&mut recent, (first..first + per_batch).map(key).collect());
        }
        assert!(recent.held <= RECENT_KEYS_MAX);
        // Batch 100 went: its keys are gone (but for the few that others'
        // counters cover) and so is the claim it covered.
        let still = (0..per_batch).filter(|n| held(&recent, *n)).count();
        assert!(still * 100 <= per_batch, "{still} of batch 100's {per_batch} keys still taken for held");
        assert!((per_batch..5 * per_batch).all(|n| held(&recent, n)), "a key kept is always held");
        recent.begin(105);
        assert!(!recent.vouches(99));
        assert!(recent.vouches(100));
    }

    #[test]
    fn a_key_recorded_again_stays_until_its_newest_batch_goes() {
        let mut recent = RecentKeys::default();
        recent.begin(1);
        finish_with(&mut recent, vec![key(0), key(RECENT_KEYS_MAX)]);
        recent.begin(2);
        finish_with(&mut recent, (0..RECENT_KEYS_MAX).map(key).collect());
        // Batch 1 was dropped, but key 0 was recorded again by batch 2.
        assert_eq!(recent.held, RECENT_KEYS_MAX);
        assert!(held(&recent, 0));
        recent.begin(3);
        assert!(!recent.vouches(0));
        assert!(recent.vouches(1));
    }

    #[test]
    fn a_key_kept_is_always_held_and_few_others_are() {
        let mut recent = RecentKeys::default();
        recent.begin(1);
        finish_with(&mut recent, (0..RECENT_KEYS_MAX).map(key).collect());
        assert!((0..RECENT_KEYS_MAX).all(|n| held(&recent, n)));
        let others = 100_000;
        let taken = (RECENT_KEYS_MAX..RECENT_KEYS_MAX + others).filter(|n| held(&recent, *n)).count();
        // About 0.4 % expected with the table full.
        assert!(taken * 100 < others, "{taken} of {others} keys never recorded taken for held");
    }

    #[test]
    fn a_counter_at_its_limit_stays_there() {
        let mut recent = RecentKeys::default();
        recent.begin(1);
        finish_with(&mut recent, vec![key(0); usize::from(u16::MAX) + 10]);
        // That batch alone was more than the most kept, and went at once;
        // key 0's counters could not count it all, so they keep it held.
        assert_eq!(recent.held, 0);
        assert!(held(&recent, 0));
        recent.begin(2);
        finish_with(&mut recent, vec![key(1)]);
        assert!(held(&recent, 0) && held(&recent, 1));
    }
}
