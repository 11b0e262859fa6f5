//! The journal's bytes in segment files of history's own, written once.
//!
//! Every batch's records went through the engine twice: into its journal
//! (its write-ahead log) and again into the journal tree's sorted tables
//! when the write buffer was flushed, about 1.8 KB a payment on every
//! replica for 0.95 KB of records. Here a batch's chunks (the frames the
//! digest hashes, cut as the parent module cuts them) are appended to the
//! active segment file in one `write`, and the engine keeps only where
//! they are: one small key per batch (`J | index`, [`Location`]), written
//! in the batch's engine write with every key derived from the records.
//! The Raft log stands as the chunks' write-ahead log: a batch is written
//! only after its entry is durable there, and can be derived from it again.
//!
//! A segment file is named by the first batch index it holds
//! (`00000000000000000042.hjs`) and begins with [`MAGIC`]; then, per batch,
//! a header `index u64 | length u32 | crc32 of the previous 12 bytes u32`
//! (little-endian) and the batch's chunks, one after the other. Each
//! chunk's CRC-32 is in its location, so a record read by its position is
//! checked without reading its whole batch. A segment is closed once it
//! passes [`SEGMENT_BYTES_MAX`] and a new one begins; whole segments below
//! retention's point are deleted.
//!
//! Durability and recovery are the parent module's ("Durability"): its
//! `durable` syncs the segments before the engine, and at open it cuts the
//! segments back to the engine's last batch and finds the batches whose
//! bytes a power loss took from them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::durable;

/// The first bytes of every segment file: the format's name and version.
pub(crate) const MAGIC: [u8; 8] = *b"pmhjsv1\n";

/// A segment is closed and the next one begun once it is this large.
pub(crate) const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Bytes of a batch's header in a segment.
const HEADER_BYTES: u64 = 16;

/// The segments' directory inside history's.
pub(crate) const DIR: &str = "journal";

const SUFFIX: &str = ".hjs";

/// Segment files kept open for reading (besides the active one).
const READERS_MAX: usize = 16;

/// The bytes at the end of the active segment left in the page cache: the
/// batches written last, which readers of recent history (event streams, a
/// transfer read back after it finished) ask for. Bytes before them are
/// dropped from the cache ([`durable::drop_cached`]) as appends pass them.
pub(crate) const CACHED_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// Each append asks the kernel to drop this many bytes before the cached
/// tail: a page written but not yet on disk is not dropped (the advice
/// starts its writeback), so a page is asked about at several appends,
/// until it is clean.
const DROP_SWEEP_BYTES: u64 = 8 * 1024 * 1024;

/// Where a batch's chunks are: the value of its `J | index` key.
///
/// `segment u64 | offset u64 | chunks u32 | (first seq u32 | length u32 | crc32 u32)...`,
/// big-endian, `offset` where the first chunk begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// The segment's name (its first batch's index).
    pub(crate) segment: u64,
    /// Where the batch's first chunk begins in it.
    pub(crate) offset: u64,
    /// Each chunk's first seq, length and CRC-32, in order.
    pub(crate) chunks: Vec<(u32, u32, u32)>,
}

impl Location {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 12 * self.chunks.len());
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for (first, length, crc) in &self.chunks {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(&crc.to_be_bytes());
        }
        out
    }

    /// The location `bytes` hold, or why they do not hold one.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Location, &'static str> {
        let (segment, rest) = bytes.split_first_chunk::<8>().ok_or("a location cut short")?;
        let (offset, rest) = rest.split_first_chunk::<8>().ok_or("a location cut short")?;
        let (count, mut rest) = rest.split_first_chunk::<4>().ok_or("a location cut short")?;
        let count = u32::from_be_bytes(*count) as usize;
        if rest.len() != count * 12 || count == 0 {
            return Err("a location's chunk list does not match its count");
        }
        let mut chunks = Vec::with_capacity(count);
        let mut next_first = None;
        while let Some((entry, after)) = rest.split_first_chunk::<12>() {
            let word = |at: usize| u32::from_be_bytes(entry[at..at + 4].try_into().expect("four bytes"));
            let (first, length, crc) = (word(0), word(4), word(8));
            if next_first.is_some_and(|next| first < next) || length == 0 {
                return Err("a location's chunks out of order or empty");
            }
            next_first = Some(first.saturating_add(1));
            chunks.push((first, length, crc));
            rest = after;
        }
        Ok(Location { segment: u64::from_be_bytes(*segment), offset: u64::from_be_bytes(*offset), chunks })
    }

    /// Bytes of all its chunks.
    pub(crate) fn length(&self) -> u64 {
        self.chunks.iter().map(|(_, length, _)| u64::from(*length)).sum()
    }

    /// Where the batch ends in its segment.
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.length()
    }
}

/// The file name of segment `name`.
fn file_name(name: u64) -> String {
    format!("{name:020}{SUFFIX}")
}

/// Create segment `name`, empty but for its magic.
fn create(dir: &Path, name: u64) -> Result<File> {
    let path = dir.join(file_name(name));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    file.write_all(&MAGIC).map_err(|e| io_error(&path, e))?;
    Ok(file)
}

fn header(index: u64, length: u32) -> [u8; HEADER_BYTES as usize] {
    let mut out = [0u8; HEADER_BYTES as usize];
    out[..8].copy_from_slice(&index.to_le_bytes());
    out[8..12].copy_from_slice(&length.to_le_bytes());
    let crc = crc32fast::hash(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The segment being appended to, and what a sync owes.
#[derive(Debug)]
struct Active {
    name: u64,
    file: Arc<File>,
    bytes: u64,
    /// Closed segments not synced yet (with their length), and whether the
    /// directory is.
    unsynced: Vec<(Arc<File>, u64)>,
    dir_unsynced: bool,
    /// The active segment's bytes before this were synced and dropped from
    /// the page cache.
    dropped: u64,
}

/// History's segment files. Appends are made under the parent's writer
/// lock; reads from any thread.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    /// [`SEGMENT_BYTES_MAX`] (tests make it smaller).
    bytes_max: AtomicU64,
    active: Mutex<Active>,
    /// Segment names held, and open files of the segments read lately.
    names: Mutex<Vec<u64>>,
    readers: Mutex<BTreeMap<u64, Arc<File>>>,
}

fn io_error(path: &Path, source: io::Error) -> super::HistoryError {
    super::HistoryError::Io { path: path.to_path_buf(), source }
}

type Result<T> = std::result::Result<T, super::HistoryError>;

impl Segments {
    /// Open the segments in `dir` (created if absent, with an empty first
    /// segment), appending after the last one's end. The caller then cuts
    /// them back to what the engine holds ([`Segments::cut_after`]).
    pub(crate) fn open(dir: &Path) -> Result<Segments> {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            names.push(name);
        }
        names.sort_unstable();
        let name = match names.last() {
            Some(&name) => name,
            None => {
                names.push(0);
                create(dir, 0)?;
                0
            }
        };
        let path = dir.join(file_name(name));
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_error(&path, e))?;
        let bytes = file.metadata().map_err(|e| io_error(&path, e))?.len().max(MAGIC.len() as u64);
        let active = Active { name, file: Arc::new(file), bytes, unsynced: Vec::new(), dir_unsynced: true, dropped: 0 };
        Ok(Segments {
            dir: dir.to_path_buf(),
            bytes_max: AtomicU64::new(SEGMENT_BYTES_MAX),
            active: Mutex::new(active),
            names: Mutex::new(names),
            readers: Mutex::new(BTreeMap::new()),
        })
    }

    /// Cut the segments back to end where `last` ends (the last batch whose
    /// bytes the engine points to and the segments hold), or to nothing if
    /// there is none: bytes beyond are batches a crash took from the
    /// engine (or never reached it), to be written again. Durable before it
    /// returns.
    pub(crate) fn cut_after(&self, last: Option<&Location>) -> Result<()> {
        let mut active = self.active();
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let (keep, end) = match last {
            Some(location) => (location.segment, location.end()),
            None => (names[0], MAGIC.len() as u64),
        };
        while names.len() > 1 && *names.last().expect("a segment") > keep {
            let gone = names.pop().expect("a segment");
            let path = self.dir.join(file_name(gone));
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        let name = *names.last().expect("a segment");
        let path = self.dir.join(file_name(name));
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_error(&path, e))?;
        let damaged = |reason: &str| io_error(&path, io::Error::new(io::ErrorKind::InvalidData, reason.to_owned()));
        if last.is_some() {
            let held = file.metadata().map_err(|e| io_error(&path, e))?.len();
            if name != keep || held < end {
                return Err(damaged("segments short of a batch they hold"));
            }
            let mut magic = [0u8; MAGIC.len()];
            file.read_exact_at(&mut magic, 0).map_err(|e| io_error(&path, e))?;
            if magic != MAGIC {
                return Err(damaged("not a history segment file"));
            }
        } else {
            // Nothing the engine points to (a crash may even have left the
            // file without its magic): the segment begins again.
            file.set_len(0).map_err(|e| io_error(&path, e))?;
            file.write_all_at(&MAGIC, 0).map_err(|e| io_error(&path, e))?;
        }
        file.set_len(end).map_err(|e| io_error(&path, e))?;
        file.sync_all().map_err(|e| io_error(&path, e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_error(&self.dir, e))?;
        *active =
            Active { name, file: Arc::new(file), bytes: end, unsynced: Vec::new(), dir_unsynced: false, dropped: 0 };
        Ok(())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append the batch at `index`, its chunks (first seq, bytes) in order,
    /// in one write; where they are. Not durable until [`Segments::sync`].
    pub(crate) fn append(&self, index: u64, chunks: &[(u32, Vec<u8>)]) -> Result<Location> {
        let length: usize = chunks.iter().map(|(_, bytes)| bytes.len()).sum();
        let length32 = u32::try_from(length).map_err(|_| {
            io_error(&self.dir, io::Error::new(io::ErrorKind::InvalidInput, "a batch of more than 4 GiB"))
        })?;
        let mut active = self.active();
        if active.bytes >= self.bytes_max.load(Ordering::Relaxed) {
            self.roll(&mut active, index)?;
        }
        let mut buffer = Vec::with_capacity(HEADER_BYTES as usize + length);
        buffer.extend_from_slice(&header(index, length32));
        let mut located = Vec::with_capacity(chunks.len());
        for (first, bytes) in chunks {
            located.push((*first, bytes.len() as u32, crc32fast::hash(bytes)));
            buffer.extend_from_slice(bytes);
        }
        let at = active.bytes;
        if let Err(e) = active.file.write_all_at(&buffer, at) {
            // Nothing after `at` counts; the next append writes there again.
            return Err(io_error(&self.dir.join(file_name(active.name)), e));
        }
        active.bytes += buffer.len() as u64;
        let drop_to = active.bytes.saturating_sub(CACHED_TAIL_BYTES);
        durable::drop_cached(&active.file, drop_to.saturating_sub(DROP_SWEEP_BYTES), drop_to);
        Ok(Location { segment: active.name, offset: at + HEADER_BYTES, chunks: located })
    }

    /// Close the active segment and begin segment `name`.
    fn roll(&self, active: &mut Active, name: u64) -> Result<()> {
        let file = create(&self.dir, name)?;
        let old = std::mem::replace(&mut active.file, Arc::new(file));
        active.unsynced.push((old, active.bytes));
        active.name = name;
        active.bytes = MAGIC.len() as u64;
        active.dir_unsynced = true;
        active.dropped = 0;
        self.names.lock().unwrap_or_else(|p| p.into_inner()).push(name);
        Ok(())
    }

    /// Make every append so far survive power loss; then let the page
    /// cache drop what is synced, but for the active segment's last
    /// [`CACHED_TAIL_BYTES`].
    pub(crate) fn sync(&self) -> Result<()> {
        let (name, file, bytes, dropped, unsynced, dir) = {
            let mut active = self.active();
            let unsynced = std::mem::take(&mut active.unsynced);
            let dir = std::mem::replace(&mut active.dir_unsynced, false);
            (active.name, active.file.clone(), active.bytes, active.dropped, unsynced, dir)
        };
        let failed = |e| io_error(&self.dir, e);
        for (closed, bytes) in unsynced {
            closed.sync_data().map_err(failed)?;
            durable::drop_cached(&closed, 0, bytes);
        }
        file.sync_data().map_err(failed)?;
        if dir {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(failed)?;
        }
        let drop_to = bytes.saturating_sub(CACHED_TAIL_BYTES);
        if drop_to > dropped {
            durable::drop_cached(&file, dropped, drop_to);
            let mut active = self.active();
            if active.name == name {
                active.dropped = active.dropped.max(drop_to);
            }
        }
        Ok(())
    }

    /// The bytes of the chunks `which` (a run of `location`'s, by position
    /// in its list), each checked against its CRC.
    pub(crate) fn read(&self, location: &Location, which: std::ops::Range<usize>) -> Result<Vec<Vec<u8>>> {
        let start: u64 = location.offset + location.chunks[..which.start].iter().map(|c| u64::from(c.1)).sum::<u64>();
        let total: usize = location.chunks[which.clone()].iter().map(|c| c.1 as usize).sum();
        let file = self.file(location.segment)?;
        let path = || self.dir.join(file_name(location.segment));
        let mut bytes = vec![0u8; total];
        file.read_exact_at(&mut bytes, start).map_err(|e| io_error(&path(), e))?;
        let mut out = Vec::with_capacity(which.len());
        let mut rest = bytes.as_slice();
        for (first, length, crc) in &location.chunks[which] {
            let (chunk, after) = rest.split_at(*length as usize);
            if crc32fast::hash(chunk) != *crc {
                return Err(io_error(
                    &path(),
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the chunk from record {first} fails its checksum"),
                    ),
                ));
            }
            out.push(chunk.to_vec());
            rest = after;
        }
        Ok(out)
    }

    /// Whether `location`'s bytes are all there and pass their checksums.
    pub(crate) fn holds(&self, location: &Location) -> bool {
        self.read(location, 0..location.chunks.len()).is_ok()
    }

    fn file(&self, name: u64) -> Result<Arc<File>> {
        {
            let active = self.active();
            if active.name == name {
                return Ok(active.file.clone());
            }
        }
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = readers.get(&name) {
            return Ok(file.clone());
        }
        let path = self.dir.join(file_name(name));
        let file = Arc::new(File::open(&path).map_err(|e| io_error(&path, e))?);
        if readers.len() >= READERS_MAX {
            readers.pop_first();
        }
        readers.insert(name, file.clone());
        Ok(file)
    }

    /// Delete the segments that hold only batches at or below `through`
    /// (never the active one); the caller has made their deletion durable.
    pub(crate) fn delete_through(&self, through: u64) -> Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // A segment ends where the next begins.
        while names.len() > 1 && names[1] <= through.saturating_add(1) {
            let name = names.remove(0);
            readers.remove(&name);
            let path = self.dir.join(file_name(name));
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }

    /// Close a segment once it is `bytes` large instead of
    /// [`SEGMENT_BYTES_MAX`] (tests: many segments from a few batches).
    #[cfg(test)]
    pub(crate) fn set_bytes_max(&self, bytes: u64) {
        self.bytes_max.store(bytes, Ordering::Relaxed);
    }

    /// The segment files' names, oldest first.
    #[cfg(test)]
    pub(crate) fn names(&self) -> Vec<u64> {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bytes of the segment files.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut total = 0;
        for name in names {
            let path = self.dir.join(file_name(name));
            total += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }
}
