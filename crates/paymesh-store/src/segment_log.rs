//! An append-only log of numbered records in segment files, made durable with
//! `fdatasync`.
//!
//! This holds the Raft log. sled's `flush` issues `sync_file_range`, which
//! neither flushes file metadata nor the drive's cache, so an acknowledged
//! append could be lost on power failure; paymesh therefore keeps the log in its
//! own files and calls `fdatasync` itself (see "Durability" in
//! docs/ARCHITECTURE.md).
//!
//! Layout: a directory of segment files, each named by the index of its first
//! record (`00000000000000000001.seg`). A segment starts with the 8 bytes
//! [`SEGMENT_MAGIC`] (`pmlogv3\n`: the format's name and version, 3; a
//! file of another format is refused, not misread), followed by records:
//!
//! ```text
//! | length: u32 | index: u64 | batch: u64 | payload crc32: u32 | header crc32: u32 | payload |
//! ```
//!
//! all little-endian. `batch` is the index of the *last* record of the append
//! (one `write`, then one `fdatasync`) the record belongs to, so the records
//! of one append share it and each tells where its append ends. The low 26
//! bits of `length` are the payload's length (at most
//! [`RECORD_PAYLOAD_BYTES_MAX`] = 2^25); its top 6 bits are the record's
//! index minus its append's first index, capped at 63 (meaning "63 or
//! more"), so a record also tells where its append began. The header CRC
//! covers the 24 bytes before it, so a damaged length, index or batch is
//! detected before it is used; the payload CRC covers the payload. Indexes
//! strictly increase through the log. (Raft appends consecutive indexes; the
//! storage only insists that they increase, which is what openraft's
//! conformance suite expects of a log store.) An append never spans two
//! segments. A segment is closed, synced, once it passes its size limit, and
//! a new one starts.
//!
//! Version 2 (magic `pmlog\0\0\x02`) had the same layout with `batch` the
//! append's *first* index and `length` only the payload's length. Its files
//! are still read and judged by its own rule (below). A log may hold version
//! 2 segments followed by version 3 ones: on open, an active segment of
//! version 2 is closed if it holds records (or started again in version 3
//! if empty), so new appends go to a version 3 segment; and should a
//! truncation make a version 2 segment active again, appends to it are
//! written in version 2. Version 1 had no file header and is refused.
//!
//! On open, every segment is scanned, then `fdatasync`ed, and the directory
//! `fsync`ed: what a restarted node reads is on disk, not only in the page
//! cache of a process that died before its sync. The first record that is
//! short, fails a checksum or does not increase the index is either a
//! **torn tail**, cut, or **damage**, on which the log refuses to open. Two
//! facts decide:
//!
//! * A later append is made only after the earlier one was synced and
//!   acknowledged (openraft awaits each append's callback before the next),
//!   whereas the pages of one unsynced `write` may reach the disk in any
//!   order. So anything on disk written by a *later* append proves that the
//!   bad record's append was synced, and may have been acknowledged.
//! * A `write` torn by a crash leaves the file at most as long as that
//!   write's own end, never longer. So bytes beyond the end of the bad
//!   record's append, even too few to read as a record, were written by a
//!   later append.
//!
//! In version 3, the bad record R is a **torn tail** only if it lies in the
//! last segment, every readable record after it belongs to R's append (bears
//! the same `batch`), and, where the end of R's append is known, no byte of
//! the file lies beyond it. R's append's last index is known from R's header
//! if its CRC holds; or from the good record before R if that one is not the
//! last of its append (its index is below its `batch`: R continues it); or,
//! with R's header unreadable and R the first record of its append, from the
//! first readable record after R if its header says its append began at the
//! lowest index R may carry (otherwise that record starts a later append:
//! damage). The append's end is known if the record with that last index is
//! found readable (R itself, whose length is trustworthy when its header CRC
//! holds, or a record after it): it ends with that record. A torn tail was
//! never acknowledged, and the file is cut at R. Everything else is
//! **damage**: a bad record followed by a record of a later append or by
//! bytes past its append's end, a bad record in an earlier segment, a
//! missing segment, a file of another format. It may have destroyed entries
//! this node acknowledged as part of a majority, and Raft's safety rests on
//! those: the log refuses to open, naming the file, the byte offset and the
//! indexes at stake, and changes nothing on disk.
//!
//! (Version 2 knew only each append's first index: a bad record followed by
//! readable records of its own append and then by a later write too short to
//! read was taken for a torn tail, which could cut an acknowledged append.
//! Its rule, kept for its files: a torn tail if in the last segment and no
//! readable record after it names another batch; with the bad header
//! unreadable, a record is of its batch if it names the last good record's
//! batch or the very next index.)
//!
//! One case no record format tells apart: an acknowledged append that is
//! damaged, in a log whose next write a crash lost whole (the file ends
//! exactly where the damaged append ends), looks like that append torn, and
//! is cut.
//!
//! To find the records after a bad one, the scan searches forward, byte by
//! byte, for the next header whose CRC holds (a damaged length cannot be
//! trusted to say where the next record starts).
//!
//! Records at or below the purge point (`first_index − 1`) are invisible even
//! while they remain on disk; whole segments below it are deleted.
//!
//! Writes happen under `&mut self`; [`SegmentLog::sync`] and
//! [`SegmentLog::syncer`] make them durable, the latter without the log
//! itself, so that the log store can sync outside its lock while readers go
//! on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::durable;

/// Bytes in a record header: length, index, batch, payload CRC, header CRC.
const HEADER_BYTES: usize = 28;

/// The first bytes of every segment file this code writes: the format's
/// name and version (3). Version 2 (`b"pmlog\0\0\x02"`) is still read;
/// version 1 had no file header and no header CRC, and is refused. The two
/// differ in three bytes, so that no damaged byte turns one into the other
/// (a first choice, `pmlog\0\0\x03`, was one bit from version 2: the
/// `segment_log_damage` fuzz target flipped it, and the version 3 records,
/// read by the version 2 rule, were cut).
pub const SEGMENT_MAGIC: [u8; 8] = *b"pmlogv3\n";

/// The file header of version 2, whose `batch` was the append's first index.
const SEGMENT_MAGIC_V2: [u8; 8] = *b"pmlog\0\0\x02";

const MAGIC_BYTES: u64 = SEGMENT_MAGIC.len() as u64;

/// Bits of a version 3 length field that hold the payload's length; the bits
/// above hold the record's distance from its append's first index.
const LENGTH_BITS: u32 = 26;

/// The largest distance from the append's first index a version 3 header
/// records; a record further in says this much ("at least").
const FROM_FIRST_MAX: u64 = (1 << (32 - LENGTH_BITS)) - 1;

/// A segment file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// `batch` is the append's first index.
    V2,
    /// `batch` is the append's last index; the length field's top bits hold
    /// the distance from the first.
    V3,
}

/// A segment is closed and a new one started once it is this large.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The largest payload a record may carry (a Raft entry of up to
/// `BATCH_COMMANDS_MAX` commands is far smaller).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 32 * 1024 * 1024;

const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX < 1 << LENGTH_BITS, "a payload's length fits its bits");

const SEGMENT_SUFFIX: &str = ".seg";

/// Why a log operation failed. I/O errors are fatal for the node: Raft cannot
/// go on without its log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system failed.
    #[error("log I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An append whose index does not exceed the last one.
    #[error("append of index {index} after the last index {last}")]
    NotIncreasing {
        /// The index offered.
        index: u64,
        /// The log's last index.
        last: u64,
    },
    /// A payload above [`RECORD_PAYLOAD_BYTES_MAX`].
    #[error("record of {bytes} bytes is larger than the limit")]
    TooLarge {
        /// The payload's size.
        bytes: usize,
    },
    /// A record read back from disk that does not match its index entry.
    #[error("record {index} is corrupt on disk: {reason}")]
    Corrupt {
        /// The record's index.
        index: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// Records a crash cannot explain, which may have been acknowledged: the
    /// log will not open.
    #[error(
        "raft log damaged: segment {} at byte {offset}: records from index {first} fail their checksum ({reason}); \
         indexes {first}..={last} may have been acknowledged; this node refuses to start; \
         see README.md, 'A damaged Raft log' (paymesh node rebuild)",
        path.display()
    )]
    Damage {
        /// The segment file.
        path: PathBuf,
        /// Where the first bad record starts.
        offset: u64,
        /// The index of the first record that fails (or the lowest it may have).
        first: u64,
        /// The highest index that may have been lost.
        last: u64,
        /// What was found.
        reason: String,
    },
    /// Damage to the log's structure (a missing segment, a file of another
    /// format): the log will not open.
    #[error(
        "raft log damaged: {}: {reason}; this node refuses to start; \
         see README.md, 'A damaged Raft log' (paymesh node rebuild)",
        path.display()
    )]
    Damaged {
        /// The log's directory or the file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// What opening the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read.
    pub records: u64,
    /// Bytes cut from a torn tail of the last segment (by [`SegmentLog::check`]:
    /// the bytes opening would cut).
    pub truncated_bytes: u64,
    /// Segment files `fdatasync`ed on open (all of them).
    pub synced_segments: u64,
    /// Whether the directory was `fsync`ed on open.
    pub synced_dir: bool,
}

#[derive(Debug)]
struct Segment {
    /// The index the file is named by: its first record's, or for an empty
    /// segment the lowest index it may receive.
    name: u64,
    path: PathBuf,
    /// `(index, byte offset)` of each record, indexes increasing.
    records: Vec<(u64, u64)>,
    /// Bytes in the file.
    bytes: u64,
    /// The file's format: appends to a version 2 file are written in it.
    version: Version,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        self.records.last().map(|(index, _)| *index)
    }

    fn offset_of(&self, index: u64) -> Option<u64> {
        self.records.binary_search_by_key(&index, |(i, _)| *i).ok().map(|at| self.records[at].1)
    }
}

/// Makes appends durable without holding the log (from any thread):
/// `fdatasync` of the active segment. Earlier segments were synced when they
/// were closed. What a sync made durable is then dropped from the page
/// cache ([`durable::drop_cached`]): the log store keeps the entries
/// appended last in memory, and reads of older ones are rare (a follower
/// far behind, a restart).
#[derive(Clone, Debug)]
pub struct Syncer {
    active: Arc<Mutex<ActiveFile>>,
}

/// The active segment's file as its syncer sees it.
#[derive(Debug)]
struct ActiveFile {
    file: Arc<File>,
    /// Bytes written to it.
    written: u64,
    /// Bytes before this are synced and dropped from the page cache.
    dropped: u64,
}

impl Syncer {
    /// `fdatasync` the segment being appended to. Every append made before
    /// this call is durable when it returns.
    pub fn sync(&self) -> io::Result<()> {
        let (file, written, dropped) = {
            let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            (active.file.clone(), active.written, active.dropped)
        };
        file.sync_data()?;
        // Whole pages only: the page the next append continues stays.
        let synced = written - written % PAGE_BYTES;
        if synced > dropped {
            durable::drop_cached(&file, dropped, synced);
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if Arc::ptr_eq(&active.file, &file) {
                active.dropped = active.dropped.max(synced);
            }
        }
        Ok(())
    }
}

/// The page size the page cache is dropped by.
const PAGE_BYTES: u64 = 4096;

/// The log. See the module documentation.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes_max: u64,
    /// Never empty; the last is the active one.
    segments: Vec<Segment>,
    /// Records with an index below this are purged, even if still on disk.
    first_index: u64,
    active: Arc<Mutex<ActiveFile>>,
    active_file: Arc<File>,
}

impl SegmentLog {
    /// Open (or create) the log in `dir`, recovering from a torn tail. Records
    /// below `first_index` are treated as purged.
    pub fn open(dir: &Path, first_index: u64) -> Result<(SegmentLog, Recovery), LogError> {
        SegmentLog::open_with(dir, first_index, SEGMENT_BYTES_MAX)
    }

    /// [`SegmentLog::open`] with a chosen segment size (tests use small ones).
    pub fn open_with(dir: &Path, first_index: u64, segment_bytes_max: u64) -> Result<(SegmentLog, Recovery), LogError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let (mut segments, tail) = scan_dir(dir)?;
        let mut recovery = Recovery {
            records: segments.iter().map(|s| s.records.len() as u64).sum(),
            truncated_bytes: tail.as_ref().map_or(0, |t| t.bytes),
            ..Recovery::default()
        };
        if let (Some(tail), Some(last)) = (&tail, segments.last()) {
            cut_torn_tail(&last.path, tail)?;
        }
        // Everything read is made durable before anything is built on it: a
        // record written by a process that died before its sync is still in
        // the page cache, readable but not on disk.
        for segment in &segments {
            let file = OpenOptions::new().write(true).open(&segment.path).map_err(io_error(&segment.path))?;
            file.sync_data().map_err(io_error(&segment.path))?;
            recovery.synced_segments += 1;
        }
        sync_dir(dir)?;
        recovery.synced_dir = true;
        if segments.is_empty() {
            segments.push(create_segment(dir, first_index)?);
        }
        let active = segments.last().expect("at least one segment");
        let (file, written) = (Arc::new(open_append(&active.path)?), active.bytes);
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments,
            first_index,
            active: Arc::new(Mutex::new(ActiveFile { file: file.clone(), written, dropped: 0 })),
            active_file: file,
        };
        // Segments below the purge point remain if a purge was cut short.
        log.drop_purged()?;
        // A log written by an older paymesh goes on in a segment of this
        // format: an empty version 2 segment is started again, a non-empty
        // one closed. (Were it appended to, its records would stay version 2.)
        if log.active_segment().version == Version::V2 {
            if log.active_segment().records.is_empty() {
                log.replace_active(log.active_segment().name)?;
            } else {
                log.roll(log.next_index())?;
            }
        }
        Ok((log, recovery))
    }

    /// Check the log in `dir` without changing anything (for an operator,
    /// offline): the damage [`SegmentLog::open`] would refuse, or what it
    /// would find, with `truncated_bytes` the torn tail it would cut.
    pub fn check(dir: &Path) -> Result<Recovery, LogError> {
        if !dir.exists() {
            return Ok(Recovery::default());
        }
        let (segments, tail) = scan_dir(dir)?;
        Ok(Recovery {
            records: segments.iter().map(|s| s.records.len() as u64).sum(),
            truncated_bytes: tail.map_or(0, |t| t.bytes),
            ..Recovery::default()
        })
    }

    /// The lowest index that may be present (everything below is purged).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The index of the last record not purged, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(Segment::last_index).filter(|last| *last >= self.first_index)
    }

    /// The lowest index the next append may use.
    pub fn next_index(&self) -> u64 {
        self.segments.iter().rev().find_map(Segment::last_index).map_or(self.first_index, |last| last + 1)
    }

    /// A handle that syncs appends from another thread.
    pub fn syncer(&self) -> Syncer {
        Syncer { active: self.active.clone() }
    }

    /// Append records with increasing indexes, each above the last, in one
    /// write. Not durable until a sync.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<(), LogError> {
        let records: Vec<(u64, &[u8])> = records.into_iter().collect();
        let (Some(&(first, _)), Some(&(last_index, _))) = (records.first(), records.last()) else { return Ok(()) };
        let mut last = self.segments.iter().rev().find_map(Segment::last_index);
        for (index, payload) in &records {
            if last.is_some_and(|l| *index <= l) {
                return Err(LogError::NotIncreasing { index: *index, last: last.unwrap_or_default() });
            }
            if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
                return Err(LogError::TooLarge { bytes: payload.len() });
            }
            last = Some(*index);
        }
        let active = self.active_segment();
        if active.records.is_empty() && active.name != first {
            // An empty segment is renamed after the first record it receives.
            self.replace_active(first)?;
        } else if !active.records.is_empty() && active.bytes >= self.segment_bytes_max {
            self.roll(first)?;
        }
        let mut buffer = Vec::new();
        let (start, version) = (self.active_segment().bytes, self.active_segment().version);
        let mut located = Vec::with_capacity(records.len());
        for (index, payload) in &records {
            located.push((*index, start + buffer.len() as u64));
            encode_record(&mut buffer, version, Append { first, last: last_index }, *index, payload);
        }
        let path = self.active_segment().path.clone();
        (&*self.active_file).write_all(&buffer).map_err(io_error(&path))?;
        let segment = self.active_segment_mut();
        segment.records.extend(located);
        segment.bytes += buffer.len() as u64;
        let written = segment.bytes;
        self.active.lock().unwrap_or_else(|p| p.into_inner()).written = written;
        Ok(())
    }

    /// Make every append so far durable.
    pub fn sync(&self) -> Result<(), LogError> {
        self.active_file.sync_data().map_err(io_error(&self.active_segment().path))
    }

    /// Read one record, if it exists and is not purged.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        if index < self.first_index {
            return Ok(None);
        }
        let Some(position) = self.segments.iter().rposition(|s| s.name <= index) else { return Ok(None) };
        let segment = &self.segments[position];
        let Some(offset) = segment.offset_of(index) else { return Ok(None) };
        let file = if position + 1 == self.segments.len() {
            self.active_file.clone()
        } else {
            Arc::new(File::open(&segment.path).map_err(io_error(&segment.path))?)
        };
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, offset).map_err(io_error(&segment.path))?;
        let Some(header) = Header::decode(&header, segment.version) else {
            return Err(LogError::Corrupt { index, reason: "header checksum mismatch" });
        };
        if header.index != index {
            return Err(LogError::Corrupt { index, reason: "index differs from its position" });
        }
        // The header's CRC held, but a length is checked against the limit
        // and the file before anything is allocated for it.
        let end = offset + HEADER_BYTES as u64 + u64::from(header.length);
        if header.length as usize > RECORD_PAYLOAD_BYTES_MAX || end > segment.bytes {
            return Err(LogError::Corrupt { index, reason: "length beyond the segment" });
        }
        let mut payload = vec![0u8; header.length as usize];
        file.read_exact_at(&mut payload, offset + HEADER_BYTES as u64).map_err(io_error(&segment.path))?;
        if crc32fast::hash(&payload) != header.payload_crc {
            return Err(LogError::Corrupt { index, reason: "checksum mismatch" });
        }
        Ok(Some(payload))
    }

    /// Read the records present with indexes in `start..end`, in order.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let start = start.max(self.first_index);
        let indexes: Vec<u64> = self
            .segments
            .iter()
            .flat_map(|s| s.records.iter().map(|(index, _)| *index))
            .filter(|index| (start..end).contains(index))
            .collect();
        let mut records = Vec::with_capacity(indexes.len());
        for index in indexes {
            if let Some(payload) = self.read(index)? {
                records.push((index, payload));
            }
        }
        Ok(records)
    }

    /// Remove every record with an index at or above `index` (a conflicting
    /// suffix), durably.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), LogError> {
        // Whole segments that start at or after `index` go, keeping at least
        // one (emptied below if need be).
        while self.segments.len() > 1 && self.active_segment().name >= index {
            let gone = self.segments.pop().expect("more than one segment");
            fs::remove_file(&gone.path).map_err(io_error(&gone.path))?;
        }
        let segment = self.segments.last_mut().expect("at least one segment");
        let keep = segment.records.partition_point(|(i, _)| *i < index);
        if keep < segment.records.len() {
            let cut_at = segment.records[keep].1;
            segment.records.truncate(keep);
            segment.bytes = cut_at;
            let path = segment.path.clone();
            let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
            file.set_len(cut_at).map_err(io_error(&path))?;
        }
        self.reopen_active()?;
        self.sync_all()
    }

    /// Forget every record with an index at or below `index`, which may lie
    /// beyond the log's end (a snapshot installed past it). Whole segments are
    /// deleted; the caller records the purge point durably first, since a
    /// purged record may remain on disk.
    pub fn purge_through(&mut self, index: u64) -> Result<(), LogError> {
        if index < self.first_index {
            return Ok(());
        }
        self.first_index = index + 1;
        self.drop_purged()?;
        sync_dir(&self.dir)
    }

    /// Delete segments holding only purged records. If that is all of them,
    /// start an empty segment at `first_index`.
    fn drop_purged(&mut self) -> Result<(), LogError> {
        let first = self.first_index;
        let purged = |s: &Segment| s.last_index().map_or(s.name < first, |last| last < first);
        if purged(self.active_segment()) {
            let fresh = create_segment(&self.dir, first)?;
            self.segments.push(fresh);
            self.reopen_active()?;
        }
        while self.segments.len() > 1 && purged(&self.segments[0]) {
            let gone = self.segments.remove(0);
            fs::remove_file(&gone.path).map_err(io_error(&gone.path))?;
        }
        Ok(())
    }

    fn active_segment(&self) -> &Segment {
        self.segments.last().expect("the log always has an active segment")
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("the log always has an active segment")
    }

    /// Replace the (empty) active segment by an empty one named `name`.
    fn replace_active(&mut self, name: u64) -> Result<(), LogError> {
        let old = self.segments.pop().expect("the active segment");
        debug_assert!(old.records.is_empty());
        let fresh = create_segment(&self.dir, name)?;
        self.segments.push(fresh);
        self.reopen_active()?;
        if old.path != self.active_segment().path {
            fs::remove_file(&old.path).map_err(io_error(&old.path))?;
        }
        Ok(())
    }

    /// Close the active segment (synced) and start a new one at `name`.
    fn roll(&mut self, name: u64) -> Result<(), LogError> {
        self.sync()?;
        durable::drop_cached(&self.active_file, 0, self.active_segment().bytes);
        let segment = create_segment(&self.dir, name)?;
        self.segments.push(segment);
        self.reopen_active()
    }

    fn reopen_active(&mut self) -> Result<(), LogError> {
        let path = self.active_segment().path.clone();
        let file = Arc::new(open_append(&path)?);
        let written = self.active_segment().bytes;
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = ActiveFile { file: file.clone(), written, dropped: 0 };
        self.active_file = file;
        Ok(())
    }

    fn sync_all(&self) -> Result<(), LogError> {
        self.sync()?;
        sync_dir(&self.dir)
    }
}

fn segment_path(dir: &Path, name: u64) -> PathBuf {
    dir.join(format!("{name:020}{SEGMENT_SUFFIX}"))
}

fn create_segment(dir: &Path, name: u64) -> Result<Segment, LogError> {
    let path = segment_path(dir, name);
    let mut file = File::create(&path).map_err(io_error(&path))?;
    file.write_all(&SEGMENT_MAGIC).and_then(|()| file.sync_all()).map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(Segment { name, path, records: Vec::new(), bytes: MAGIC_BYTES, version: Version::V3 })
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new().read(true).append(true).open(path).map_err(io_error(path))
}

/// `fsync` a directory, so that files created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// A record header whose CRC holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    /// The payload's length.
    length: u32,
    index: u64,
    /// The first (version 2) or last (version 3) index of the append the
    /// record was written by.
    batch: u64,
    /// Version 3: `index` minus the append's first index, at most
    /// [`FROM_FIRST_MAX`], which means "at least that". 0 in version 2.
    from_first: u64,
    payload_crc: u32,
}

impl Header {
    fn encode(&self, version: Version) -> [u8; HEADER_BYTES] {
        let length = match version {
            Version::V2 => self.length,
            Version::V3 => {
                debug_assert!(self.length < 1 << LENGTH_BITS);
                self.length | ((self.from_first.min(FROM_FIRST_MAX) as u32) << LENGTH_BITS)
            }
        };
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&length.to_le_bytes());
        bytes[4..12].copy_from_slice(&self.index.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.batch.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The header in `bytes`, read as `version`, if its CRC holds.
    fn decode(bytes: &[u8; HEADER_BYTES], version: Version) -> Option<Header> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if crc32fast::hash(&bytes[0..24]) != u32_at(24) {
            return None;
        }
        let (length, from_first) = match version {
            Version::V2 => (u32_at(0), 0),
            Version::V3 => (u32_at(0) & ((1 << LENGTH_BITS) - 1), u64::from(u32_at(0) >> LENGTH_BITS)),
        };
        Some(Header { length, index: u64_at(4), batch: u64_at(12), from_first, payload_crc: u32_at(20) })
    }

    /// The header at byte `at` of `data`, if there is room for one and its CRC holds.
    fn at(data: &[u8], at: usize, version: Version) -> Option<Header> {
        let bytes: &[u8; HEADER_BYTES] = data.get(at..at.checked_add(HEADER_BYTES)?)?.try_into().ok()?;
        Header::decode(bytes, version)
    }

    /// Version 3: the first index of the record's append, if the header says
    /// it exactly.
    fn append_first(&self) -> Option<u64> {
        if self.from_first < FROM_FIRST_MAX {
            self.index.checked_sub(self.from_first)
        } else {
            None
        }
    }
}

/// The first and last index of one append.
#[derive(Clone, Copy, Debug)]
struct Append {
    first: u64,
    last: u64,
}

fn encode_record(buffer: &mut Vec<u8>, version: Version, append: Append, index: u64, payload: &[u8]) {
    let batch = match version {
        Version::V2 => append.first,
        Version::V3 => append.last,
    };
    // The caller checked the payload against RECORD_PAYLOAD_BYTES_MAX < 2^26.
    let header = Header {
        length: payload.len() as u32,
        index,
        batch,
        from_first: index - append.first,
        payload_crc: crc32fast::hash(payload),
    };
    buffer.extend_from_slice(&header.encode(version));
    buffer.extend_from_slice(payload);
}

/// A torn tail found in the last segment: where to cut, and how many bytes go.
#[derive(Clone, Copy, Debug)]
struct Torn {
    at: u64,
    bytes: u64,
}

/// Scan every segment in `dir`: the segments (records up to any torn tail)
/// and the last segment's torn tail, or the damage that keeps the log from
/// opening. Changes nothing.
fn scan_dir(dir: &Path) -> Result<(Vec<Segment>, Option<Torn>), LogError> {
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(number) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
            names.push((number, path));
        }
    }
    names.sort();
    let damaged = |reason: String| LogError::Damaged { path: dir.to_path_buf(), reason };
    let mut segments: Vec<Segment> = Vec::new();
    let mut torn = None;
    for position in 0..names.len() {
        let (name, path) = names[position].clone();
        if let Some(previous) = segments.last() {
            // A segment starts only after the previous one ends, at the
            // next index, and only once that one holds records.
            match previous.last_index() {
                None => return Err(damaged(format!("empty segment {} is followed by another", previous.name))),
                Some(last) if name != last + 1 => {
                    return Err(damaged(format!("segment {name} does not follow the last index {last}")));
                }
                Some(_) => {}
            }
        }
        let next = names.get(position + 1).map(|(next, _)| *next);
        let (segment, tail) = scan_segment(name, path, next)?;
        torn = tail;
        segments.push(segment);
    }
    Ok((segments, torn))
}

/// Cut the last segment's torn tail, durably.
fn cut_torn_tail(path: &Path, torn: &Torn) -> Result<(), LogError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    if torn.at < MAGIC_BYTES {
        // The file was created, but its header never reached the disk.
        file.set_len(0).map_err(io_error(path))?;
        file.write_all_at(&SEGMENT_MAGIC, 0).map_err(io_error(path))?;
    } else {
        file.set_len(torn.at).map_err(io_error(path))?;
    }
    file.sync_all().map_err(io_error(path))
}

/// Read a segment's records up to the first bad one, if any, and judge it:
/// a torn tail (returned, to be cut) or damage (an error). `next` is the next
/// segment's name; `None` for the last segment. The first record must carry
/// the segment's name; later ones must increase.
fn scan_segment(name: u64, path: PathBuf, next: Option<u64>) -> Result<(Segment, Option<Torn>), LogError> {
    let mut data = Vec::new();
    File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_error(&path))?;
    let last_segment = next.is_none();
    if data.len() < SEGMENT_MAGIC.len() {
        // A segment whose header never reached the disk: it was just created,
        // and only the last one can be. It is started again in this format.
        if last_segment && SEGMENT_MAGIC.starts_with(&data) {
            let torn = Torn { at: 0, bytes: data.len() as u64 };
            let segment = Segment { name, path, records: Vec::new(), bytes: MAGIC_BYTES, version: Version::V3 };
            return Ok((segment, Some(torn)));
        }
    }
    let version = if data.starts_with(&SEGMENT_MAGIC) {
        Version::V3
    } else if data.starts_with(&SEGMENT_MAGIC_V2) {
        Version::V2
    } else {
        return Err(LogError::Damaged {
            path,
            reason: "the file does not start with the segment header of a format this paymesh reads \
                     (version 2 or 3); it was written by an older paymesh or is not a segment"
                .into(),
        });
    };
    let mut records: Vec<(u64, u64)> = Vec::new();
    // The last good record's header.
    let mut last_good: Option<Header> = None;
    let mut at = SEGMENT_MAGIC.len();
    let bad = loop {
        if at == data.len() {
            break None;
        }
        let Some(header) = Header::at(&data, at, version) else { break Some(None) };
        let in_order = match records.last() {
            None => header.index == name,
            Some((last, _)) => header.index > *last,
        };
        let length = header.length as usize;
        let fits = length <= RECORD_PAYLOAD_BYTES_MAX && data.len() - at - HEADER_BYTES >= length;
        if !in_order
            || !fits
            || crc32fast::hash(&data[at + HEADER_BYTES..at + HEADER_BYTES + length]) != header.payload_crc
        {
            break Some(Some(header));
        }
        records.push((header.index, at as u64));
        last_good = Some(header);
        at += HEADER_BYTES + length;
    };
    let segment = Segment { name, path, records, bytes: at as u64, version };
    let Some(bad) = bad else { return Ok((segment, None)) };
    // The record at `at` is bad. Which records follow it, by their headers
    // (with their offsets)?
    let mut later: Vec<(usize, Header)> = Vec::new();
    let mut search = match bad {
        Some(header) => (at + HEADER_BYTES).saturating_add(header.length as usize).min(data.len()).max(at + 1),
        None => at + 1,
    };
    while search + HEADER_BYTES <= data.len() {
        match Header::at(&data, search, version) {
            Some(header) => {
                later.push((search, header));
                search += HEADER_BYTES + (header.length as usize).min(data.len() - search - HEADER_BYTES);
            }
            None => search += 1,
        }
    }
    // The lowest index the bad record may carry.
    let first = bad.map_or_else(|| segment.last_index().map_or(name, |last| last + 1), |header| header.index);
    let judged = match version {
        Version::V2 => judge_v2(bad, first, last_good, &later),
        Version::V3 => judge_v3(Bad { at, header: bad, first }, last_good, &later, data.len()),
    };
    let reason = match judged {
        Err(reason) => reason,
        Ok(()) if !last_segment => "it is not in the last segment".to_owned(),
        Ok(()) => return Ok(tail(segment, data.len())),
    };
    let last = match next {
        Some(next) => next.saturating_sub(1),
        None => later.iter().map(|(_, h)| h.index).max().unwrap_or(first),
    };
    Err(LogError::Damage { path: segment.path, offset: at as u64, first, last: last.max(first), reason })
}

/// The version 2 judgement of the bad record (`bad`: its header, if
/// readable; `first`: the lowest index it may carry), given the last good
/// record before it in the segment and the records found after it: `Err`,
/// with the reason, if a record of a later append follows it.
fn judge_v2(
    bad: Option<Header>,
    first: u64,
    last_good: Option<Header>,
    later: &[(usize, Header)],
) -> Result<(), String> {
    // A later record belongs to the bad record's own batch if it names that
    // batch; with the bad header unreadable, if it names the batch of the
    // last good record (a batch is contiguous) or starts right after it (so
    // its first record is the bad one).
    let same_batch = |header: &Header| match bad {
        Some(bad) => header.batch == bad.batch,
        None => Some(header.batch) == last_good.map(|g| g.batch) || header.batch == first,
    };
    match later.iter().find(|(_, h)| !same_batch(h)) {
        Some((_, later)) => Err(format!("record {} of a later append follows it", later.index)),
        None => Ok(()),
    }
}

/// The first bad record of a segment.
#[derive(Clone, Copy, Debug)]
struct Bad {
    /// Its byte offset.
    at: usize,
    /// Its header, if readable.
    header: Option<Header>,
    /// The lowest index it may carry.
    first: u64,
}

/// The version 3 judgement of the bad record, given the last good record
/// before it in the segment, the records found after it and the file's size
/// (see the module documentation): `Err`, with the reason, if a record of a
/// later append or bytes of a later write follow it.
fn judge_v3(bad: Bad, last_good: Option<Header>, later: &[(usize, Header)], file_bytes: usize) -> Result<(), String> {
    // The last index of the bad record's append, where known: from its own
    // header, or from the good record before it if that one's append goes on.
    let continued = last_good.filter(|good| good.index < good.batch);
    let own = match (bad.header, continued) {
        (Some(header), Some(good)) if header.batch != good.batch => {
            return Err(format!(
                "its header names an append ending at index {}, but record {} before it belongs to one \
                 ending at {}",
                header.batch, good.index, good.batch
            ));
        }
        (Some(header), _) => Some(header.batch),
        (None, Some(good)) => Some(good.batch),
        // The bad record starts an append and its header is unreadable: the
        // next readable record belongs to that append if it says its append
        // starts at the lowest index the bad record may carry.
        (None, None) => later.first().filter(|(_, h)| h.append_first() == Some(bad.first)).map(|(_, h)| h.batch),
    };
    if let Some((_, later)) = later.iter().find(|(_, h)| Some(h.batch) != own) {
        return Err(format!("record {} of a later append follows it", later.index));
    }
    let Some(own) = own else { return Ok(()) };
    // Where the append ends, if its last record's header is readable (its
    // length is then trustworthy). A write leaves the file at most as long
    // as its own end: bytes beyond it were written by a later append, made
    // only once this one was synced.
    let end = bad
        .header
        .map(|header| (bad.at, header))
        .iter()
        .chain(later)
        .find(|(_, h)| h.index == own)
        .map(|(offset, h)| *offset as u64 + HEADER_BYTES as u64 + u64::from(h.length));
    match end {
        Some(end) if end < file_bytes as u64 => Err(format!(
            "{} bytes follow the end of its append (record {own}), written by a later append",
            file_bytes as u64 - end
        )),
        _ => Ok(()),
    }
}

/// A segment whose records end before `length`, the file's size: a torn tail.
fn tail(segment: Segment, length: usize) -> (Segment, Option<Torn>) {
    let torn = Torn { at: segment.bytes, bytes: length as u64 - segment.bytes };
    (segment, Some(torn))
}

#[cfg(test)]
mod tests;
