//! openraft's log storage over the segment log.
//!
//! `append` writes the entries, `fdatasync`s the active segment and only then
//! reports them durable through openraft's `LogFlushed` callback: an entry is
//! acknowledged only after it is on disk. The sync runs on the caller's task,
//! outside the log's lock, so replication keeps reading meanwhile. (It ran on
//! a flusher thread of its own until the profile showed what that bought:
//! openraft 0.9's core awaits each append's callback before it does anything
//! else, so the thread only added two thread switches to every append on every
//! node; see "Durability" in docs/ARCHITECTURE.md.)
//!
//! The entries appended last are also kept decoded ([`RECENT_ENTRIES_MAX`],
//! [`RECENT_BYTES_MAX`]): right after an append, openraft reads them back
//! to apply them and, on the leader, once for each follower's replication
//! stream. Each read from the segments decoded every command again (the
//! leader's three decodes of each entry were 5 % of its CPU at the batched
//! peak); from memory an entry is its log id and a reference to its batch
//! ([`SharedBatch`](crate::raft_types::SharedBatch)). What is kept is
//! exactly what was written: a truncation or a purge drops it with the
//! records, and reads outside it go to the segments as before.
//!
//! The vote and the purge point live in a [`MetaFile`] replaced atomically.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::meta_file::{MetaFile, RaftMeta};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::segment_log::{LogError, SegmentLog, Syncer};

/// Format byte in front of every encoded entry.
const ENTRY_FORMAT: u8 = 1;

/// Counters of the log's I/O, for status, metrics and the durability
/// report.
#[derive(Debug)]
pub struct LogStats {
    /// `append` calls.
    pub appends: AtomicU64,
    /// Entries appended.
    pub entries: AtomicU64,
    /// `fdatasync` calls made for appends.
    pub syncs: AtomicU64,
    /// Of those, the ones that took longer than [`SLOW_SYNC`].
    pub slow_syncs: AtomicU64,
    /// The longest of those calls, in microseconds.
    pub sync_max_micros: AtomicU64,
    /// How long each of those calls took, in seconds.
    pub sync_seconds: Histogram,
}

impl Default for LogStats {
    fn default() -> LogStats {
        LogStats {
            appends: AtomicU64::default(),
            entries: AtomicU64::default(),
            syncs: AtomicU64::default(),
            slow_syncs: AtomicU64::default(),
            sync_max_micros: AtomicU64::default(),
            // 100 µs to about 3.3 s, doubling: SSDs to a stalled disk.
            sync_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        }
    }
}

/// An append's `fdatasync` slower than this is counted and logged: the disk
/// stalled, and every commit that needs this node waited for it.
pub const SLOW_SYNC: Duration = Duration::from_millis(50);

/// At most one warning about slow syncs per this interval.
const SLOW_SYNC_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The most entries kept decoded after their append.
pub const RECENT_ENTRIES_MAX: usize = 16;

/// The most bytes (as encoded in the log) of the entries kept decoded.
pub const RECENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The entries appended last, decoded, in index order and consecutive:
/// each as written, with its encoded size.
#[derive(Debug, Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    /// Keep `entries`, just appended, then drop the oldest beyond the
    /// bounds. An entry that does not follow the last one kept (never so
    /// in operation: openraft truncates before it writes over) drops
    /// everything kept before it, so what is kept stays consecutive.
    fn appended(&mut self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        for (entry, bytes) in entries {
            if self.entries.back().is_some_and(|(last, _)| last.log_id.index + 1 != entry.log_id.index) {
                self.clear();
            }
            self.bytes += bytes;
            self.entries.push_back((entry, bytes));
        }
        while self.entries.len() > RECENT_ENTRIES_MAX || self.bytes > RECENT_BYTES_MAX {
            let Some((_, bytes)) = self.entries.pop_front() else { break };
            self.bytes -= bytes;
        }
    }

    /// The index of the first entry kept.
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    /// Drop the entries at `index` and after (a truncation).
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(entry, _)| entry.log_id.index >= index) {
            let (_, bytes) = self.entries.pop_back().expect("an entry");
            self.bytes -= bytes;
        }
    }

    /// Drop the entries through `index` (a purge).
    fn purge_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(entry, _)| entry.log_id.index <= index) {
            let (_, bytes) = self.entries.pop_front().expect("an entry");
            self.bytes -= bytes;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Copies of the entries kept from `start` (at or after the first kept)
    /// to before `end`.
    fn read(&self, start: u64, end: u64) -> Vec<Entry> {
        let Some(first) = self.first_index() else { return Vec::new() };
        let skip = usize::try_from(start.saturating_sub(first)).unwrap_or(usize::MAX);
        let take = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip).take(take).map(|(entry, _)| entry.clone()).collect()
    }
}

#[derive(Debug)]
struct Inner {
    log: SegmentLog,
    meta_file: MetaFile,
    meta: RaftMeta,
    /// The last log id present, or the last purged one if the log is empty.
    last_log_id: Option<LogId>,
    /// The entries appended last, decoded.
    recent: Recent,
}

impl Inner {
    fn read_entry(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        match self.log.read(index).map_err(|e| StorageIOError::read_logs(&e))? {
            Some(bytes) => decode_entry(index, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The id of the last entry present, or else the purge point.
    fn find_last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last_index() {
            Some(index) => Ok(self.read_entry(index)?.map(|e| e.log_id)),
            None => Ok(self.meta.last_purged),
        }
    }
}

fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![ENTRY_FORMAT];
    postcard::to_io(entry, &mut bytes).map_err(|e| StorageIOError::write_logs(&e))?;
    Ok(bytes)
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    let corrupt = |reason: String| StorageIOError::read_logs(&io::Error::new(io::ErrorKind::InvalidData, reason));
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, body)) => {
            let entry: Entry = postcard::from_bytes(body).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
            if entry.log_id.index != index {
                return Err(corrupt(format!("entry at {index} claims index {}", entry.log_id.index)).into());
            }
            Ok(entry)
        }
        _ => Err(corrupt(format!("entry {index}: unknown format")).into()),
    }
}

/// Called once an append is durable (or failed to become so).
pub type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The log store handed to openraft.
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    syncer: Syncer,
    stats: Arc<LogStats>,
    /// When slow syncs were last logged, and the slow syncs since.
    slow_warning: Mutex<(Option<Instant>, u64)>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("inner", &self.inner).field("stats", &self.stats).finish_non_exhaustive()
    }
}

/// A reader of the log, used by openraft's replication tasks concurrently
/// with appends.
#[derive(Clone, Debug)]
pub struct LogReader {
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves the log in memory as it was
    // written to disk; the data is still the log's, so keep going.
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogStore {
    /// Open the log in `dir` (the segment files and the metadata file).
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageIOError::write_logs(&e))?;
        let meta_file = MetaFile::new(dir.join("raft-meta"));
        let meta = meta_file.load().map_err(|e| StorageIOError::read_vote(&e))?;
        let first_index = meta.last_purged.map_or(0, |purged| purged.index + 1);
        let (log, recovery) = SegmentLog::open(&dir.join("segments"), first_index).map_err(|e| {
            if matches!(e, LogError::Damage { .. } | LogError::Damaged { .. }) {
                tracing::error!("{e}");
            }
            StorageIOError::read_logs(&e)
        })?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(?recovery, "raft log: cut a torn tail left by a crash (unacknowledged writes)");
        }
        let syncer = log.syncer();
        let mut inner = Inner { log, meta_file, meta, last_log_id: None, recent: Recent::default() };
        inner.last_log_id = inner.find_last_log_id()?;
        let stats = Arc::new(LogStats::default());
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)), syncer, stats, slow_warning: Mutex::new((None, 0)) })
    }

    /// The log's I/O counters.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// Append entries (readable at once), make them durable, then call `done`
    /// with the outcome of the sync.
    pub fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: FlushDone,
    ) -> Result<(), StorageError> {
        let mut encoded = Vec::new();
        let mut kept = Vec::new();
        let mut last = None;
        for entry in entries {
            encoded.push((entry.log_id.index, encode_entry(&entry)?));
            last = Some(entry.log_id);
            kept.push(entry);
        }
        {
            let mut inner = lock(&self.inner);
            let appended = inner.log.append(encoded.iter().map(|(index, bytes)| (*index, bytes.as_slice())));
            if let Err(e) = appended {
                // What the segments hold now is not known here: read it there.
                inner.recent.clear();
                return Err(StorageIOError::write_logs(&e).into());
            }
            inner.recent.appended(kept.into_iter().zip(encoded.iter().map(|(_, bytes)| bytes.len())));
            if last.is_some() {
                inner.last_log_id = last;
            }
        }
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats.entries.fetch_add(encoded.len() as u64, Ordering::Relaxed);
        let started = Instant::now();
        let synced = self.syncer.sync();
        self.record_sync(started.elapsed());
        done(synced.map_err(|e| io::Error::new(e.kind(), format!("raft log fdatasync failed: {e}"))));
        Ok(())
    }

    /// Count a sync that took `took`; log slow ones, at most once per
    /// [`SLOW_SYNC_WARNING_INTERVAL`].
    fn record_sync(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.sync_max_micros.fetch_max(micros, Ordering::Relaxed);
        self.stats.sync_seconds.observe(took.as_secs_f64());
        if took <= SLOW_SYNC {
            return;
        }
        self.stats.slow_syncs.fetch_add(1, Ordering::Relaxed);
        let mut warning = self.slow_warning.lock().unwrap_or_else(|p| p.into_inner());
        warning.1 += 1;
        if warning.0.is_none_or(|at| at.elapsed() >= SLOW_SYNC_WARNING_INTERVAL) {
            tracing::warn!(
                ms = took.as_millis(),
                slow_syncs = warning.1,
                "raft log fdatasync over 50 ms: the disk stalled, and commits waited for it \
                 (slow_syncs: how many since the last such warning)"
            );
            *warning = (Some(Instant::now()), 0);
        }
    }
}

fn range_to_indexes<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i + 1,
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_indexes(&range);
        let inner = lock(&self.inner);
        // A range past the last entry reads nothing (and `end` never lies
        // below `start`).
        let end = end.min(inner.log.next_index()).max(start);
        // The part before the entries kept decoded is read from the segments
        // (not at all when they hold the whole range, as right after an append).
        let kept_from = inner.recent.first_index().map_or(end, |first| first.clamp(start, end));
        let mut entries = Vec::new();
        if start < kept_from {
            let records = inner.log.read_range(start, kept_from).map_err(|e| StorageIOError::read_logs(&e))?;
            entries = records.iter().map(|(index, bytes)| decode_entry(*index, bytes)).collect::<Result<_, _>>()?;
        }
        if kept_from < end {
            entries.extend(inner.recent.read(kept_from, end));
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        LogReader { inner: self.inner.clone() }.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = lock(&self.inner);
        Ok(LogState { last_purged_log_id: inner.meta.last_purged, last_log_id: inner.last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { inner: self.inner.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        // A vote must not become durable before entries appended earlier.
        inner.log.sync().map_err(|e| StorageIOError::write_logs(&e))?;
        let mut meta = inner.meta.clone();
        meta.vote = Some(*vote);
        inner.meta_file.save(&meta).map_err(|e| StorageIOError::write_vote(&e))?;
        inner.meta = meta;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.inner).meta.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_entries(entries, Box::new(move |result| callback.log_io_completed(result)))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.recent.truncate_from(log_id.index);
        inner.log.truncate_from(log_id.index).map_err(|e| StorageIOError::write_logs(&e))?;
        inner.last_log_id = inner.find_last_log_id()?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        // Record the purge point first: a crash before the segments go leaves
        // extra records on disk, which the recorded point hides.
        let mut meta = inner.meta.clone();
        meta.last_purged = Some(log_id);
        inner.meta_file.save(&meta).map_err(|e| StorageIOError::write_logs(&e))?;
        inner.meta = meta;
        inner.recent.purge_through(log_id.index);
        inner.log.purge_through(log_id.index).map_err(|e| StorageIOError::write_logs(&e))?;
        if inner.last_log_id.is_none_or(|last| last.index < log_id.index) {
            inner.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};
    use paymesh_core::command::{Batch, Command, CommandBody, CommandId};
    use paymesh_core::Timestamp;

    use super::*;

    /// An entry of `term` at `index` whose one command tells the two apart.
    fn entry(term: u64, index: u64) -> Entry {
        let command = Command { id: CommandId { session: term, sequence: index }, body: CommandBody::Tick };
        let batch = Batch::new(Timestamp::from_unix_ms(1_700_000_000_000 + index), vec![command]).unwrap();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Normal(batch.into()),
        }
    }

    fn append(log: &LogStore, entries: Vec<Entry>) {
        let (done, synced) = std::sync::mpsc::channel();
        log.append_entries(entries, Box::new(move |result| done.send(result.is_ok()).unwrap())).unwrap();
        assert!(synced.recv().unwrap(), "the append synced");
    }

    async fn read(log: &mut LogStore, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        log.try_get_log_entries(range).await.unwrap()
    }

    fn kept(log: &LogStore) -> (Option<u64>, usize) {
        let inner = lock(&log.inner);
        (inner.recent.first_index(), inner.recent.entries.len())
    }

    #[tokio::test]
    async fn entries_read_after_their_append_are_those_written_from_memory_or_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        let written: Vec<Entry> = (1..=200).map(|index| entry(1, index)).collect();
        for chunk in written.chunks(7) {
            append(&log, chunk.to_vec());
        }
        // The newest are kept, within the bound; a read across the bound
        // takes the older from the segments.
        assert_eq!(kept(&log), (Some(200 - RECENT_ENTRIES_MAX as u64 + 1), RECENT_ENTRIES_MAX));
        assert_eq!(read(&mut log, 1..=200).await, written);
        assert_eq!(read(&mut log, 190..=200).await, written[189..]);
        assert_eq!(read(&mut log, 190..=250).await, written[189..], "nothing past the last entry");
        assert_eq!(read(&mut log, 300..=310).await, Vec::<Entry>::new(), "a range wholly past it");
        drop(log);
        let mut reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(kept(&reopened), (None, 0));
        assert_eq!(read(&mut reopened, 1..=200).await, written, "the segments hold the same");
    }

    #[tokio::test]
    async fn a_truncation_and_a_purge_take_the_entries_they_remove_out_of_memory_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&log, (1..=10).map(|index| entry(1, index)).collect());
        // A new leader's entries replace the conflicting suffix from 6.
        log.truncate(LogId::new(CommittedLeaderId::new(1, 0), 6)).await.unwrap();
        assert_eq!(read(&mut log, 1..=10).await, (1..=5).map(|index| entry(1, index)).collect::<Vec<_>>());
        append(&log, (6..=8).map(|index| entry(2, index)).collect());
        let expected: Vec<Entry> = (1..=5).map(|index| entry(1, index)).chain((6..=8).map(|i| entry(2, i))).collect();
        assert_eq!(read(&mut log, 1..=10).await, expected);
        assert_eq!(kept(&log), (Some(1), 8));

        log.purge(LogId::new(CommittedLeaderId::new(1, 0), 4)).await.unwrap();
        assert_eq!(read(&mut log, 1..=10).await, expected[4..]);
        assert_eq!(kept(&log), (Some(5), 4));
        drop(log);
        let mut reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(read(&mut reopened, 1..=10).await, expected[4..], "as the segments hold them");
    }

    #[test]
    fn entries_kept_stay_within_their_bytes_and_consecutive() {
        let mut recent = Recent::default();
        recent.appended(vec![(entry(1, 1), RECENT_BYTES_MAX / 2), (entry(1, 2), RECENT_BYTES_MAX / 2)]);
        assert_eq!((recent.first_index(), recent.bytes), (Some(1), RECENT_BYTES_MAX));
        recent.appended(vec![(entry(1, 3), 1)]);
        assert_eq!((recent.first_index(), recent.entries.len()), (Some(2), 2), "the oldest made room");
        // An entry that does not follow the last kept starts afresh.
        recent.appended(vec![(entry(1, 9), 10)]);
        assert_eq!((recent.first_index(), recent.entries.len(), recent.bytes), (Some(9), 1, 10));
        assert_eq!(recent.read(9, 10), vec![entry(1, 9)]);
        assert_eq!(recent.read(10, 20), Vec::<Entry>::new());
    }

    #[test]
    fn slow_syncs_are_counted_and_the_longest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path()).unwrap();
        log.record_sync(Duration::from_millis(3));
        log.record_sync(SLOW_SYNC + Duration::from_millis(10));
        log.record_sync(SLOW_SYNC);
        let stats = log.stats();
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 3);
        assert_eq!(stats.slow_syncs.load(Ordering::Relaxed), 1, "only a sync over the limit is slow");
        let longest = u64::try_from((SLOW_SYNC + Duration::from_millis(10)).as_micros()).unwrap();
        assert_eq!(stats.sync_max_micros.load(Ordering::Relaxed), longest);
    }
}
