//! An append-only log of numbered records in segment files, made durable with
//! `fdatasync`.
//!
//! This holds the Raft log. sled's `flush` issues `sync_file_range`, which
//! neither flushes file metadata nor the drive's cache, so an acknowledged
//! append could be lost on power failure; paymesh therefore keeps the log in its
//! own files and calls `fdatasync` itself (see "Durability" in
//! docs/ARCHITECTURE.md).
//!
//! Layout: a directory of segment files named by the index of their first
//! record (`00000000000000000001.seg`). A record is
//!
//! ```text
//! | length: u32 LE | crc32: u32 LE | index: u64 LE | payload: length bytes |
//! ```
//!
//! where the CRC covers the index and the payload. Records are contiguous:
//! each index is the previous plus one. A segment is closed (synced) when it
//! passes [`SEGMENT_BYTES_MAX`] and a new one starts.
//!
//! On open, every segment is scanned; the first record that is short, fails
//! its CRC, or breaks contiguity ends the log: the file is cut there and any
//! later segment is removed. Such a tail can only be a write that was never
//! acknowledged, because an append is acknowledged only after `fdatasync`.
//!
//! Writes happen under `&mut self`; [`SegmentLog::sync`] and
//! [`SegmentLog::syncer`] make them durable, the latter from another thread so
//! that many appends share one `fdatasync` (group commit).

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
    /// An append did not continue the log where it ends.
    #[error("append of index {index} where the log expects {expected}")]
    NotContiguous {
        /// The index offered.
        index: u64,
        /// The index the log expects next.
        expected: u64,
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
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// What opening the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read.
    pub records: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Segment files removed because they followed a torn tail.
    pub removed_segments: u64,
}

#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Byte offset of each record, by index − `first_index`.
    offsets: Vec<u64>,
    /// Bytes in the file.
    bytes: u64,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_index + self.offsets.len() as u64 - 1)
    }
}

/// Makes appends durable from another thread: `fdatasync` of the active
/// segment. Earlier segments were synced when they were closed.
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
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut broken = false;
        for (first, path) in names {
            let expected = segments.last().and_then(Segment::last_index).map(|last| last + 1);
            if broken || expected.is_some_and(|e| e != first) || segments.last().is_some_and(|s| s.offsets.is_empty()) {
                // After a torn tail or a gap nothing can be trusted.
                fs::remove_file(&path).map_err(io_error(&path))?;
                recovery.removed_segments += 1;
                broken = true;
                continue;
            }
            let (segment, cut) = scan_segment(first, path)?;
            recovery.records += segment.offsets.len() as u64;
            recovery.truncated_bytes += cut;
            broken = cut > 0;
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
        if recovery.truncated_bytes > 0 || recovery.removed_segments > 0 {
            log.sync_all()?;
        }
        Ok((log, recovery))
    }

    /// The index of the first record not purged.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The index of the last record, if there is one at or after `first_index`.
    pub fn last_index(&self) -> Option<u64> {
        self.next_index().checked_sub(1).filter(|last| *last >= self.first_index)
    }

    /// The index the next append must use.
    pub fn next_index(&self) -> u64 {
        // Only the active segment may be empty, and it never holds only
        // purged records (see `drop_purged`).
        let active = self.active_segment();
        active.last_index().map_or(active.first_index, |last| last + 1)
    }

    /// A handle that syncs appends from another thread.
    pub fn syncer(&self) -> Syncer {
        Syncer { active: self.active.clone() }
    }

    /// Append records with consecutive indexes, continuing the log, in one
    /// write. Not durable until a sync.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<(), LogError> {
        let mut buffer = Vec::new();
        let mut offsets = Vec::new();
        let start = self.active_segment().bytes;
        let mut expected = self.next_index();
        for (index, payload) in records {
            if index != expected {
                return Err(LogError::NotContiguous { index, expected });
            }
            if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
                return Err(LogError::TooLarge { bytes: payload.len() });
            }
            offsets.push(start + buffer.len() as u64);
            encode_record(&mut buffer, index, payload);
            expected += 1;
        }
        if offsets.is_empty() {
            return Ok(());
        }
        if self.next_index() > self.active_segment().first_index
            && self.active_segment().bytes >= self.segment_bytes_max
        {
            self.roll()?;
            // Offsets were computed for the old segment; recompute for the new one.
            let delta = start;
            for offset in &mut offsets {
                *offset -= delta;
            }
        }
        let path = self.active_segment().path.clone();
        (&*self.active_file).write_all(&buffer).map_err(io_error(&path))?;
        let segment = self.active_segment_mut();
        if segment.offsets.is_empty() {
            // An empty segment adopts the first index it is given (after a purge
            // or truncation everything lives in new indexes).
            debug_assert_eq!(segment.first_index, expected - offsets.len() as u64);
        }
        segment.offsets.extend(offsets);
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
        let Some(segment) = self.segments.iter().rev().find(|s| s.first_index <= index) else { return Ok(None) };
        let Some(&offset) = segment.offsets.get((index - segment.first_index) as usize) else { return Ok(None) };
        let file = if std::ptr::eq(segment, self.active_segment()) {
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

    /// Read the records with indexes in `start..end` that exist.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut records = Vec::new();
        for index in start.max(self.first_index)..end {
            match self.read(index)? {
                Some(payload) => records.push((index, payload)),
                None => break,
            }
        }
        Ok(records)
    }

    /// Remove every record with an index at or above `index` (a conflicting
    /// suffix), durably.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), LogError> {
        let index = index.max(self.first_index);
        if index >= self.next_index() {
            return Ok(());
        }
        // Whole segments that start at or after `index` go.
        while self.segments.last().is_some_and(|s| s.first_index >= index) {
            let gone = self.segments.pop().expect("checked above");
            fs::remove_file(&gone.path).map_err(io_error(&gone.path))?;
        }
        match self.segments.last_mut() {
            None => self.segments.push(create_segment(&self.dir, index)?),
            Some(segment) => {
                // Segments are contiguous, so this one holds `index - 1` and
                // possibly more: cut it at `index`.
                let keep = (index - segment.first_index) as usize;
                let cut_at = segment.offsets.get(keep).copied().unwrap_or(segment.bytes);
                segment.offsets.truncate(keep);
                segment.bytes = cut_at;
                let path = segment.path.clone();
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
                file.set_len(cut_at).map_err(io_error(&path))?;
            }
        }
        self.reopen_active()?;
        self.sync_all()
    }

    /// Forget every record with an index at or below `index`, which may lie
    /// beyond the log's end (a snapshot installed past it): the next append is
    /// then `index + 1`. Whole segments are deleted; the caller records the
    /// purge point durably first, since a purged record may remain on disk.
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
        let purged = |s: &Segment| s.last_index().map_or(s.first_index < first, |l| l < first);
        let all_purged = purged(self.active_segment());
        if all_purged {
            let fresh = create_segment(&self.dir, self.first_index)?;
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

    /// Close the active segment (synced) and start a new one at the next index.
    fn roll(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let next = self.next_index();
        let segment = create_segment(&self.dir, next)?;
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

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

fn create_segment(dir: &Path, first_index: u64) -> Result<Segment, LogError> {
    let path = segment_path(dir, first_index);
    File::create(&path).map_err(io_error(&path))?.sync_all().map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(Segment { first_index, path, offsets: Vec::new(), bytes: 0 })
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new().read(true).append(true).open(path).map_err(io_error(path))
}

/// `fsync` a directory, so that files created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
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
    let word = |range: std::ops::Range<usize>| -> [u8; 4] { header[range].try_into().expect("4 bytes") };
    let length = u32::from_le_bytes(word(0..4));
    let crc = u32::from_le_bytes(word(4..8));
    let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    (length, crc, index)
}

/// Read a segment's records; cut it after the last good one. Returns the
/// segment and the bytes cut.
fn scan_segment(first_index: u64, path: PathBuf) -> Result<(Segment, u64), LogError> {
    let mut data = Vec::new();
    File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_error(&path))?;
    let mut offsets = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= HEADER_BYTES {
        let header: &[u8; HEADER_BYTES] = data[at..at + HEADER_BYTES].try_into().expect("header length");
        let (length, crc, index) = decode_header(header);
        let length = length as usize;
        let expected = first_index + offsets.len() as u64;
        if index != expected || length > RECORD_PAYLOAD_BYTES_MAX || data.len() - at - HEADER_BYTES < length {
            break;
        }
        let payload = &data[at + HEADER_BYTES..at + HEADER_BYTES + length];
        if record_crc(index, payload) != crc {
            break;
        }
        offsets.push(at as u64);
        at += HEADER_BYTES + length;
    }
    let cut = (data.len() - at) as u64;
    if cut > 0 {
        let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
        file.set_len(at as u64).map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
    }
    Ok((Segment { first_index, path, offsets, bytes: at as u64 }, cut))
}

#[cfg(test)]
mod tests;
