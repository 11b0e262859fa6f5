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
//! record (`00000000000000000001.seg`). A record is
//!
//! ```text
//! | length: u32 LE | crc32: u32 LE | index: u64 LE | payload: length bytes |
//! ```
//!
//! where the CRC covers the index and the payload. Indexes strictly increase
//! through the log. (Raft appends consecutive indexes; the storage only
//! insists that they increase, which is what openraft's conformance suite
//! expects of a log store.) A segment is closed, synced, once it passes its
//! size limit, and a new one starts.
//!
//! On open, every segment is scanned. In the last segment, the first record
//! that is short, fails its CRC, or does not increase the index ends the log:
//! the file is cut there. Such a tail can only be a write that was never
//! acknowledged, because an append is acknowledged only after `fdatasync`, and
//! a segment is synced before the next one starts. Damage anywhere else (a bad
//! record in an earlier segment, a missing segment) may have destroyed
//! acknowledged entries, so the log refuses to open and names the damage
//! instead of cutting it away.
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

/// Bytes in a record header: length, CRC and index.
const HEADER_BYTES: usize = 16;

/// A segment is closed and a new one started once it is this large.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The largest payload a record may carry (a Raft entry of up to
/// `BATCH_COMMANDS_MAX` commands is far smaller).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 32 * 1024 * 1024;

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
    /// Damage a crash cannot explain: the log will not open.
    #[error("raft log in {dir} is damaged: {reason}; restore this node from its peers (wipe its data directory)")]
    Damaged {
        /// The log's directory.
        dir: PathBuf,
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
    /// Bytes cut from a torn tail of the last segment.
    pub truncated_bytes: u64,
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
/// were closed.
#[derive(Clone, Debug)]
pub struct Syncer {
    active: Arc<Mutex<Arc<File>>>,
}

impl Syncer {
    /// `fdatasync` the segment being appended to. Every append made before
    /// this call is durable when it returns.
    pub fn sync(&self) -> io::Result<()> {
        let file = self.active.lock().unwrap_or_else(|p| p.into_inner()).clone();
        file.sync_data()
    }
}

/// The log. See the module documentation.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes_max: u64,
    /// Never empty; the last is the active one.
    segments: Vec<Segment>,
    /// Records with an index below this are purged, even if still on disk.
    first_index: u64,
    active: Arc<Mutex<Arc<File>>>,
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
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if let Some(number) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                names.push((number, path));
            }
        }
        names.sort();
        let damaged = |reason: String| LogError::Damaged { dir: dir.to_path_buf(), reason };
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let count = names.len();
        for (position, (name, path)) in names.into_iter().enumerate() {
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
            let last_segment = position + 1 == count;
            let (segment, cut) = scan_segment(name, path, last_segment)?;
            if cut > 0 && !last_segment {
                return Err(damaged(format!("segment {name} has {cut} bad bytes and is not the last")));
            }
            recovery.records += segment.records.len() as u64;
            recovery.truncated_bytes += cut;
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, first_index)?);
        }
        let file = Arc::new(open_append(&segments.last().expect("at least one segment").path)?);
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments,
            first_index,
            active: Arc::new(Mutex::new(file.clone())),
            active_file: file,
        };
        // Segments below the purge point remain if a purge was cut short.
        log.drop_purged()?;
        if recovery.truncated_bytes > 0 {
            log.sync_all()?;
        }
        Ok((log, recovery))
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
        let Some(&(first, _)) = records.first() else { return Ok(()) };
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
        let start = self.active_segment().bytes;
        let mut located = Vec::with_capacity(records.len());
        for (index, payload) in &records {
            located.push((*index, start + buffer.len() as u64));
            encode_record(&mut buffer, *index, payload);
        }
        let path = self.active_segment().path.clone();
        (&*self.active_file).write_all(&buffer).map_err(io_error(&path))?;
        let segment = self.active_segment_mut();
        segment.records.extend(located);
        segment.bytes += buffer.len() as u64;
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
        let (length, crc, stored_index) = decode_header(&header);
        if stored_index != index {
            return Err(LogError::Corrupt { index, reason: "index differs from its position" });
        }
        let mut payload = vec![0u8; length as usize];
        file.read_exact_at(&mut payload, offset + HEADER_BYTES as u64).map_err(io_error(&segment.path))?;
        if record_crc(index, &payload) != crc {
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
        let segment = create_segment(&self.dir, name)?;
        self.segments.push(segment);
        self.reopen_active()
    }

    fn reopen_active(&mut self) -> Result<(), LogError> {
        let path = self.active_segment().path.clone();
        let file = Arc::new(open_append(&path)?);
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = file.clone();
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
    File::create(&path).map_err(io_error(&path))?.sync_all().map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(Segment { name, path, records: Vec::new(), bytes: 0 })
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new().read(true).append(true).open(path).map_err(io_error(path))
}

/// `fsync` a directory, so that files created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(buffer: &mut Vec<u8>, index: u64, payload: &[u8]) {
    // The caller checked the payload against RECORD_PAYLOAD_BYTES_MAX < 2^32.
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&record_crc(index, payload).to_le_bytes());
    buffer.extend_from_slice(&index.to_le_bytes());
    buffer.extend_from_slice(payload);
}

fn decode_header(header: &[u8; HEADER_BYTES]) -> (u32, u32, u64) {
    let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    (length, crc, index)
}

/// Read a segment's records up to the last good one, and cut the file there if
/// it is the last segment. Returns the segment and the bytes after the last
/// good record. The first record must carry the segment's name; later ones
/// must increase.
fn scan_segment(name: u64, path: PathBuf, cut_tail: bool) -> Result<(Segment, u64), LogError> {
    let mut data = Vec::new();
    File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_error(&path))?;
    let mut records: Vec<(u64, u64)> = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= HEADER_BYTES {
        let header: &[u8; HEADER_BYTES] = data[at..at + HEADER_BYTES].try_into().expect("header length");
        let (length, crc, index) = decode_header(header);
        let length = length as usize;
        let in_order = match records.last() {
            None => index == name,
            Some((last, _)) => index > *last,
        };
        if !in_order || length > RECORD_PAYLOAD_BYTES_MAX || data.len() - at - HEADER_BYTES < length {
            break;
        }
        let payload = &data[at + HEADER_BYTES..at + HEADER_BYTES + length];
        if record_crc(index, payload) != crc {
            break;
        }
        records.push((index, at as u64));
        at += HEADER_BYTES + length;
    }
    let cut = (data.len() - at) as u64;
    if cut > 0 && cut_tail {
        let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
        file.set_len(at as u64).map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
    }
    Ok((Segment { name, path, records, bytes: at as u64 }, cut))
}

#[cfg(test)]
mod tests;
