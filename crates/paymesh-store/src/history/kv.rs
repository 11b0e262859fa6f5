//! The key-value engine under history: fjall, a log-structured merge tree.
//!
//! History writes far more than it reads, its keys mostly in order (the
//! journal by log index, transfer ids by sequence), and it grows without
//! end; a log-structured tree takes each batch as one append to its
//! journal and a sorted run in memory, and keeps in memory only its write
//! buffers, its block cache and a few bytes of filter per key. sled, which
//! held history before, cost two to four times the CPU per transfer (more
//! as the store grew) and its memory grew with the history held
//! (docs/BENCHMARKS.md, "History in fjall").
//!
//! The module's keys are told apart by their first byte (see the parent
//! module); here they are kept in four trees (fjall's keyspaces), chosen by
//! that byte, so that each tree's keys arrive in an order of their own and
//! a compaction of one never rewrites the others: the journal (appended in
//! index order), the pointers (transfer ids in sequence,
//! idempotency keys in any order), the groups (a partner's or an account's
//! runs, by time) and the small bookkeeping keys. A batch spans the four
//! atomically. Every range and prefix read stays within one key space,
//! hence within one tree.

use std::ops::{Bound, RangeBounds};
use std::path::Path;

use fjall::config::CompressionPolicy;
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// A key or value as the engine hands it back.
pub(crate) type Bytes = fjall::Slice;

/// A key and its value, or the engine's failure.
pub(crate) type Item = fjall::Result<(Bytes, Bytes)>;

/// The trees, by name, and the first key bytes each holds.
const TREES: [(&str, &[u8]); 4] = [("journal", b"J"), ("pointers", b"ITPUFQR"), ("groups", b"ELA"), ("meta", b"DGM")];

/// The tree of a key: by its first byte (an empty key or an unknown first
/// byte goes with the bookkeeping keys).
fn tree_of(key: &[u8]) -> usize {
    key.first().and_then(|first| TREES.iter().position(|(_, firsts)| firsts.contains(first))).unwrap_or(TREES.len() - 1)
}

/// The engine's background threads (flushes and compactions): one.
///
/// With more than one, fjall keeps its first worker for flushes: a
/// compaction request that reaches it goes back to the shared queue at
/// once, and while every other worker is busy compacting, the first takes
/// the same request back again and again, a core spinning for as long as
/// the compaction lasts. In a follower at 2,500 transfers/s (two workers,
/// fjall's default on two cores) that loop took 42 % of the two threads'
/// time, each at 22 % of a core beside 64 % for the rest of the node. One
/// worker flushes and compacts in turn, a flush's writes meanwhile held in
/// the write buffers the engine bounds (writes pause at four sealed
/// buffers in one tree); at 2,000 transfers/s it took 26 µs per transfer
/// off the region's CPU and halved its p99 (docs/BENCHMARKS.md, "The
/// engine's spinning worker").
const WORKER_THREADS: usize = 1;

/// A tree's write buffer: `base` scaled by a factor between 7/8 and 9/8
/// chosen by `draw`.
fn drawn_buffer(base: u64, draw: u64) -> u64 {
    let sixteenths = 14 + draw % 5; // 14..=18 sixteenths
    base / 16 * sixteenths
}

/// A number that differs from one opening to the next (std's hasher keys
/// are drawn from the system's randomness), for what must not be in step
/// across replicas.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// The nice value of the engine's background thread: its flushes and
/// compactions take the cores' idle time before the payments' time.
///
/// Compactions come in bursts that grow with the trees (a merge of the
/// first levels rewrites the level below), and on a node whose cores are
/// busy each burst takes its share of them from the state machine and the
/// partner API for as long as it lasts. At nice 10 the thread still takes
/// what the node leaves idle (a node is never busy all the time: it waits
/// on its disk and its peers) and about a tenth of a core it competes
/// for; a two-minute run at the batched peak showed it keeping up (a few
/// tables in each tree at the end, the throughput of the runs at nice 0).
/// Five alternating rounds at 576 workers: a lower p99 and more payments
/// in each (docs/BENCHMARKS.md, "The engine's thread below the
/// payments").
const WORKER_NICE: i32 = 10;

/// Lower the scheduling priority of the engine's background threads
/// (fjall names them `fjall:…`) to [`WORKER_NICE`]: a thread's nice is its
/// own on Linux (`setpriority` with its thread id). Where the threads
/// cannot be listed or reniced (not Linux, no `/proc`), they keep the
/// process's priority, as before.
fn lower_workers_priority() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fjall") {
            continue;
        }
        let tid =
            task.file_name().to_str().and_then(|tid| tid.parse::<i32>().ok()).and_then(rustix::process::Pid::from_raw);
        if let Some(tid) = tid {
            let _ = rustix::process::setpriority_process(Some(tid), WORKER_NICE);
        }
    }
}

/// The memory history's engine holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineMemory {
    /// Blocks read from its files, kept for the next read.
    pub cache: u64,
    /// Writes not yet flushed to its files.
    pub write_buffers: u64,
}

/// History's engine: one fjall database, its four trees.
pub(crate) struct Kv {
    db: Database,
    trees: [Keyspace; 4],
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    /// Open (or create) the engine in `dir`, its memory bounded by about
    /// `memory_bytes`: half for the block cache, at most half for the
    /// trees' write buffers (each tree but the journal's a sixth of that
    /// half, the journal's an eighth of it).
    ///
    /// Every replica fills its buffers with the same bytes at the same
    /// moment: each buffer flushed is a burst of writes on every node at
    /// once, beside the Raft log's syncs. When the journal tree held the
    /// records' chunks and filled first, a quarter of that half (32 MiB)
    /// stalled the region for about a second every 8 s at its peak
    /// (per-second p99 200 to 270 ms), and an eighth spread the same writes
    /// into smaller bursts (docs/BENCHMARKS.md, "History's cost cut"); the
    /// chunks are in history's segments now (module `segments`) and the
    /// journal tree holds a key per batch, the pointers' tree (a key per
    /// payment) filling first. Each opening takes every tree's buffer
    /// between 7/8 and 9/8 of its share at random ([`drawn_buffer`]), so
    /// that the replicas' flushes drift apart instead of falling on the
    /// same moment: what is flushed when changes no byte of what is kept.
    pub(crate) fn open(dir: &Path, memory_bytes: u64) -> fjall::Result<Kv> {
        let half = (memory_bytes / 2).max(1024 * 1024);
        // Nothing is compressed: the data-locality audit reads a node's files
        // as bytes, and a payer's data compressed into a block could hide
        // from it.
        let db = Database::builder(dir)
            .cache_size(half)
            .journal_compression(CompressionType::None)
            .worker_threads(WORKER_THREADS)
            .open()?;
        let open = |n: usize| {
            let memtable = drawn_buffer(if n == 0 { half / 8 } else { half / 6 }, random_u64());
            db.keyspace(TREES[n].0, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .data_block_compression_policy(CompressionPolicy::disabled())
                    .index_block_compression_policy(CompressionPolicy::disabled())
            })
        };
        let trees = [open(0)?, open(1)?, open(2)?, open(3)?];
        lower_workers_priority();
        Ok(Kv { db, trees })
    }

    fn tree(&self, key: &[u8]) -> &Keyspace {
        &self.trees[tree_of(key)]
    }

    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> fjall::Result<Option<Bytes>> {
        self.tree(key.as_ref()).get(key)
    }

    /// One key written alone (bookkeeping outside a batch).
    pub(crate) fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> fjall::Result<()> {
        self.tree(key.as_ref()).insert(key.as_ref(), value.as_ref())
    }

    /// One key removed alone (tests damage a store with it).
    #[cfg(test)]
    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> fjall::Result<()> {
        self.tree(key.as_ref()).remove(key.as_ref())
    }

    /// The keys in `range`, in order (or backwards), read from a snapshot
    /// taken now. Both ends must lie in one key space.
    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = Item> + use<K, R> {
        let end = |bound: Bound<&K>| match bound {
            Bound::Included(key) | Bound::Excluded(key) => Some(tree_of(key.as_ref())),
            Bound::Unbounded => None,
        };
        let (start, stop) = (end(range.start_bound()), end(range.end_bound()));
        debug_assert!(start.is_none() || stop.is_none() || start == stop, "a range within one key space");
        let tree = start.or(stop).unwrap_or(TREES.len() - 1);
        self.trees[tree].range(range).map(fjall::Guard::into_inner)
    }

    /// The keys that begin with `prefix` (not empty), in order.
    pub(crate) fn scan_prefix<K: AsRef<[u8]>>(&self, prefix: K) -> impl DoubleEndedIterator<Item = Item> + use<K> {
        self.tree(prefix.as_ref()).prefix(prefix).map(fjall::Guard::into_inner)
    }

    /// Every key of every tree (tests and measurements).
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = Item> + '_ {
        self.trees.iter().flat_map(|tree| tree.iter().map(fjall::Guard::into_inner))
    }

    /// How many keys the trees hold, counted by reading them all.
    #[cfg(test)]
    pub(crate) fn len(&self) -> fjall::Result<usize> {
        self.trees.iter().map(Keyspace::len).sum()
    }

    pub(crate) fn is_empty(&self) -> fjall::Result<bool> {
        for tree in &self.trees {
            if !tree.is_empty()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(crate) fn batch(&self) -> Batch {
        Batch { inner: self.db.batch(), trees: self.trees.clone() }
    }

    /// Apply `batch` atomically: readers see all of it or none.
    pub(crate) fn apply(&self, batch: Batch) -> fjall::Result<()> {
        batch.inner.commit()
    }

    /// The memory the engine holds now.
    pub(crate) fn memory(&self) -> EngineMemory {
        EngineMemory { cache: self.db.cache_size(), write_buffers: self.db.write_buffer_size() }
    }

    /// The bytes of the engine's files.
    pub(crate) fn disk_space(&self) -> fjall::Result<u64> {
        self.db.disk_space()
    }

    /// Make every batch applied so far survive power loss: the engine's
    /// journal synced (`fsync`) through the descriptor that wrote it. Its
    /// sorted tables are synced as they are written.
    pub(crate) fn persist(&self) -> fjall::Result<()> {
        self.db.persist(PersistMode::SyncAll)
    }
}

/// Writes applied together by [`Kv::apply`].
pub(crate) struct Batch {
    inner: fjall::OwnedWriteBatch,
    trees: [Keyspace; 4],
}

impl Batch {
    pub(crate) fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.inner.insert(&self.trees[tree_of(key)], key, value.as_ref());
    }

    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.inner.remove(&self.trees[tree_of(key)], key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_buffer_lies_within_an_eighth_of_its_base_and_takes_each_step() {
        let base = 8 * 1024 * 1024;
        let sizes: std::collections::BTreeSet<u64> = (0..5).map(|draw| drawn_buffer(base, draw)).collect();
        assert_eq!(sizes.len(), 5, "five sizes: {sizes:?}");
        assert_eq!(sizes.first(), Some(&(base / 8 * 7)));
        assert_eq!(sizes.last(), Some(&(base / 8 * 9)));
        let drawn: std::collections::BTreeSet<u64> = (0..64).map(|_| random_u64() % 5).collect();
        assert!(drawn.len() > 1, "openings draw different sizes: {drawn:?}");
    }
}
