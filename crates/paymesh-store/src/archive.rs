//! History archives: a region's journal, exported to a file before
//! retention deletes it, that can be verified and read back offline.
//!
//! An archive holds the journal records of one node's history
//! ([`History`]) for a range of log indexes, each with the index of its
//! batch and its position in it, exactly as the journal stores them (the
//! same postcard bytes, which history's running digest is computed over).
//! It is versioned and checksummed at every level: a damaged byte anywhere
//! is found, and named by its offset and the check it broke, before a
//! record is trusted.
//!
//! # Format, version 1
//!
//! Integers are big-endian; CRCs are CRC-32 (IEEE), as `crc32fast`
//! computes them.
//!
//! ```text
//! header   magic "pmarchv\n" (8) | version u16 = 1 | region length u8 (1..=32)
//!          | region (ASCII) | first index u64 | last index u64
//!          | created at u64 (Unix ms) | producing node u64
//!          | CRC u32 over every header byte before it
//! frame*   length u32 (1..=FRAME_PAYLOAD_BYTES_MAX) | CRC u32 over the payload
//!          | payload: postcard((index u64, seq u32, Record))
//! trailer  magic "pmarend\n" (8) | record count u64
//!          | SHA-256 (32) over every frame's bytes, length and CRC included
//!          | CRC u32 over the 48 trailer bytes before it
//! ```
//!
//! The archive holds every record the journal held at indexes
//! `first..=last` when it was exported (`last = first - 1` for an empty
//! range), in journal order: by index, then by position from 0 up, with no
//! gap within a batch. A frame's payload is postcard's encoding of the
//! tuple, which is the two varints followed by the record's bytes as the
//! journal stores them, so [`frame_digest`]s computed from the journal and
//! from a file agree byte for byte. The trailer's magic read as a length is
//! far above any frame's, so a reader tells the trailer from a frame by its
//! first four bytes; any other length above [`FRAME_PAYLOAD_BYTES_MAX`] is
//! damage (a lying length), refused before anything is allocated for it.
//! Nothing may follow the trailer.
//!
//! The header's last index is known only when the export ends (it stops
//! before the first batch holding a record too young): [`ArchiveWriter`]
//! writes the header first and rewrites it in place, same length, when it
//! finishes.
//!
//! # Writing
//!
//! [`ArchiveWriter`] streams: it holds one frame at a time, writes to a
//! temporary name beside the target (`.NAME.partial`), and on
//! [`ArchiveWriter::finish`] writes the trailer, `fsync`s the file, renames
//! it into place and `fsync`s the directory, so that a crash leaves either
//! no archive or a complete one.
//!
//! # Reading
//!
//! [`ArchiveReader`] streams too, checking the header, then each frame
//! (length bound, CRC, decoding, order, range) as it is read, then the
//! trailer (CRC, count, SHA-256, end of file). Every failure is an
//! [`ArchiveError`]: the byte offset of the part that failed and which
//! check it failed.
//!
//! # From a node
//!
//! [`Export`] reads a node's journal from its first retained batch through
//! the last batch all of whose records are older than a cutoff, as chunks
//! of frames of whole batches; [`range_digest`] recomputes, streaming, the
//! SHA-256 an export of a range gives, which is how a node confirms that an
//! archive holds its journal before retention may delete it
//! ([`History::confirm_archived`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use paymesh_core::history::Record;
use paymesh_core::id::RegionId;
use paymesh_core::limits::REGION_ID_BYTES_MAX;
use paymesh_core::Timestamp;
use sha2::{Digest, Sha256};

use crate::history::{record_time, History, HistoryError, RECORD_BYTES_MAX};

/// The first bytes of an archive.
pub const MAGIC: [u8; 8] = *b"pmarchv\n";

/// The first bytes of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"pmarend\n";

/// The format version this module writes and reads.
pub const VERSION: u16 = 1;

/// The longest frame payload: a record of [`RECORD_BYTES_MAX`] bytes after
/// its index and position (varints of at most 10 and 5 bytes).
pub const FRAME_PAYLOAD_BYTES_MAX: usize = RECORD_BYTES_MAX + 15;

/// Bytes before a frame's payload: its length and CRC.
pub const FRAME_HEAD_BYTES: usize = 8;

/// Bytes of the trailer.
pub const TRAILER_BYTES: usize = 8 + 8 + 32 + 4;

const _: () = assert!(
    u32::from_be_bytes([TRAILER_MAGIC[0], TRAILER_MAGIC[1], TRAILER_MAGIC[2], TRAILER_MAGIC[3]]) as usize
        > FRAME_PAYLOAD_BYTES_MAX,
    "the trailer's magic is no frame length"
);

/// Buffer size of the reader and the writer.
const IO_BUFFER_BYTES: usize = 256 * 1024;

/// What an archive's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveHeader {
    /// The region whose history it is.
    pub region: RegionId,
    /// The lowest log index it covers.
    pub first_index: u64,
    /// The highest log index it covers (`first_index - 1` if none).
    pub last_index: u64,
    /// When it was exported, by the producing node's clock.
    pub created_at: Timestamp,
    /// The node whose journal it was exported from.
    pub node_id: u64,
}

impl ArchiveHeader {
    /// The header's bytes, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let region = self.region.as_str().as_bytes();
        let mut bytes = Vec::with_capacity(47 + region.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_be_bytes());
        bytes.push(u8::try_from(region.len()).expect("a region id is at most 32 bytes"));
        bytes.extend_from_slice(region);
        for value in [self.first_index, self.last_index, self.created_at.unix_ms(), self.node_id] {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }
}

/// What a complete archive holds, as its trailer states and its frames
/// confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// The header.
    pub header: ArchiveHeader,
    /// How many records.
    pub records: u64,
    /// The bytes of all frames.
    pub frame_bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// SHA-256 over all frame bytes.
    pub sha256: [u8; 32],
    /// The index of the last batch with records (0 if none).
    pub last_batch: u64,
}

/// Which check an archive failed.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file ends inside a part.
    #[error("truncated: the file ends inside {part} ({got} of {wanted} bytes)")]
    Truncated {
        /// Which part.
        part: String,
        /// Bytes it needs.
        wanted: u64,
        /// Bytes there were.
        got: u64,
    },
    /// The first bytes are not an archive's.
    #[error("not a paymesh history archive (magic {found:?}, expected {:?})", MAGIC.escape_ascii().to_string())]
    NotAnArchive {
        /// What the first bytes are, printable.
        found: String,
    },
    /// A version this code does not read.
    #[error("format version {0}, this paymesh reads version {VERSION}")]
    Version(u16),
    /// The header's CRC does not match its bytes.
    #[error("header checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    HeaderChecksum {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The header's fields contradict themselves.
    #[error("header: {0}")]
    Header(String),
    /// A frame's length is 0 or beyond any record's.
    #[error(
        "frame {frame}: length {length} is beyond any frame's (1 to {FRAME_PAYLOAD_BYTES_MAX} bytes): a damaged or \
         lying length"
    )]
    FrameLength {
        /// The frame's number, from 0.
        frame: u64,
        /// The length it claims.
        length: u32,
    },
    /// A frame's CRC does not match its payload.
    #[error("frame {frame}: checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    FrameChecksum {
        /// The frame's number, from 0.
        frame: u64,
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the payload.
        computed: u32,
    },
    /// A frame's payload is not an index, a position and a record.
    #[error("frame {frame}: the payload does not decode: {reason}")]
    FrameDecode {
        /// The frame's number, from 0.
        frame: u64,
        /// Why.
        reason: String,
    },
    /// A frame out of journal order, or outside the header's range.
    #[error("frame {frame}: record ({index}, {seq}) {reason}")]
    FramePlace {
        /// The frame's number, from 0.
        frame: u64,
        /// Its batch's index.
        index: u64,
        /// Its position in the batch.
        seq: u32,
        /// What is wrong with its place.
        reason: String,
    },
    /// The trailer's CRC does not match its bytes.
    #[error("trailer checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    TrailerChecksum {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The trailer counts another number of records than the frames.
    #[error("the trailer counts {trailer} records, the file holds {counted}")]
    RecordCount {
        /// The trailer's count.
        trailer: u64,
        /// Frames read.
        counted: u64,
    },
    /// The trailer's SHA-256 is not that of the frames.
    #[error(
        "SHA-256 mismatch: the trailer says {}, the frames hash to {}",
        hex::encode(trailer),
        hex::encode(computed)
    )]
    Digest {
        /// The trailer's.
        trailer: [u8; 32],
        /// The frames'.
        computed: [u8; 32],
    },
    /// Bytes after the trailer.
    #[error("{0} bytes follow the trailer")]
    TrailingBytes(u64),
}

/// An archive that failed a check: where, and which.
#[derive(Debug, thiserror::Error)]
#[error("{path}byte {offset}: {problem}", path = path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
pub struct ArchiveError {
    /// The file, when known.
    pub path: Option<PathBuf>,
    /// The offset of the part that failed (of the frame, the header or the
    /// trailer), in bytes from the start of the file.
    pub offset: u64,
    /// What failed.
    pub problem: Problem,
}

impl ArchiveError {
    fn at(offset: u64, problem: impl Into<Problem>) -> ArchiveError {
        ArchiveError { path: None, offset, problem: problem.into() }
    }

    fn in_file(mut self, path: &Path) -> ArchiveError {
        self.path = Some(path.to_path_buf());
        self
    }
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

// --- frames -------------------------------------------------------------------

/// Append the frame of the record at (`index`, `seq`), whose postcard
/// bytes are `record`, to `out`.
pub fn push_frame(out: &mut Vec<u8>, index: u64, seq: u32, record: &[u8]) {
    let mut prefix = [0u8; 15];
    let prefix = postcard::to_slice(&(index, seq), &mut prefix).expect("two varints fit 15 bytes");
    let length = prefix.len() + record.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(prefix);
    crc.update(record);
    out.reserve(FRAME_HEAD_BYTES + length);
    out.extend_from_slice(&u32::try_from(length).expect("a frame is far below 4 GiB").to_be_bytes());
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(record);
}

/// The frame of `record` at (`index`, `seq`).
pub fn encode_frame(index: u64, seq: u32, record: &Record) -> Vec<u8> {
    let bytes = postcard::to_stdvec(record).expect("a history record encodes");
    let mut frame = Vec::new();
    push_frame(&mut frame, index, seq, &bytes);
    frame
}

/// A frame's payload split: its index, position and record bytes.
fn split_payload(payload: &[u8]) -> Result<(u64, u32, &[u8]), postcard::Error> {
    let ((index, seq), record) = postcard::take_from_bytes::<(u64, u32)>(payload)?;
    Ok((index, seq, record))
}

/// The order and range checks of one frame after the previous one.
#[derive(Clone, Debug)]
struct Order {
    first: u64,
    last: u64,
    previous: Option<(u64, u32)>,
}

impl Order {
    fn check(&mut self, index: u64, seq: u32) -> Result<(), String> {
        if index < self.first || index > self.last {
            return Err(format!("is outside the header's range {}..={}", self.first, self.last));
        }
        let fits = match self.previous {
            None => seq == 0,
            Some((at, previous)) if at == index => previous.checked_add(1) == Some(seq),
            Some((at, _)) => index > at && seq == 0,
        };
        if !fits {
            return Err(match self.previous {
                None => "starts the archive, but is not the first record of its batch".into(),
                Some((at, previous)) => format!("does not follow ({at}, {previous}) in journal order"),
            });
        }
        self.previous = Some((index, seq));
        Ok(())
    }
}

// --- writing ------------------------------------------------------------------

/// Writes an archive, streaming (see the module documentation).
#[derive(Debug)]
pub struct ArchiveWriter {
    file: BufWriter<File>,
    temp: PathBuf,
    path: PathBuf,
    header: ArchiveHeader,
    header_bytes: usize,
    hasher: Sha256,
    order: Order,
    records: u64,
    frame_bytes: u64,
    scratch: Vec<u8>,
}

fn io_at(offset: u64) -> impl FnOnce(io::Error) -> ArchiveError {
    move |e| ArchiveError::at(offset, e)
}

impl ArchiveWriter {
    /// Start an archive at `path` (written under a temporary name until
    /// [`ArchiveWriter::finish`]); `header.last_index` is provisional, the
    /// range's end as far as known.
    pub fn create(path: &Path, header: ArchiveHeader) -> Result<ArchiveWriter> {
        let name = path.file_name().ok_or_else(|| {
            ArchiveError::at(0, io::Error::new(io::ErrorKind::InvalidInput, "the archive's path names no file"))
                .in_file(path)
        })?;
        let temp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| ArchiveError::at(0, e).in_file(&temp))?;
        let mut file = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
        let bytes = header.encode();
        file.write_all(&bytes).map_err(|e| ArchiveError::at(0, e).in_file(&temp))?;
        let order = Order { first: header.first_index, last: u64::MAX, previous: None };
        Ok(ArchiveWriter {
            file,
            temp,
            path: path.to_path_buf(),
            header_bytes: bytes.len(),
            header,
            hasher: Sha256::new(),
            order,
            records: 0,
            frame_bytes: 0,
            scratch: Vec::new(),
        })
    }

    fn offset(&self) -> u64 {
        self.header_bytes as u64 + self.frame_bytes
    }

    /// Append one record.
    pub fn write_record(&mut self, index: u64, seq: u32, record: &Record) -> Result<()> {
        let mut frame = std::mem::take(&mut self.scratch);
        frame.clear();
        let bytes = postcard::to_stdvec(record).expect("a history record encodes");
        push_frame(&mut frame, index, seq, &bytes);
        let written = self.write_frames(&frame).map(|_| ());
        self.scratch = frame;
        written
    }

    /// Append frames received whole (from a node's export): each is checked
    /// (length bound, CRC, journal order) before it is written. Returns how
    /// many records they hold.
    pub fn write_frames(&mut self, frames: &[u8]) -> Result<u64> {
        let mut rest = frames;
        let mut count = 0;
        while !rest.is_empty() {
            let offset = self.offset() + (frames.len() - rest.len()) as u64;
            let frame = self.records + count;
            let damaged = |problem: Problem| Err::<u64, _>(ArchiveError::at(offset, problem));
            let Some((head, after)) = rest.split_first_chunk::<FRAME_HEAD_BYTES>() else {
                return damaged(Problem::Truncated {
                    part: format!("frame {frame}'s length and checksum"),
                    wanted: FRAME_HEAD_BYTES as u64,
                    got: rest.len() as u64,
                });
            };
            let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if length == 0 || length as usize > FRAME_PAYLOAD_BYTES_MAX {
                return damaged(Problem::FrameLength { frame, length });
            }
            let Some(payload) = after.get(..length as usize) else {
                return damaged(Problem::Truncated {
                    part: format!("frame {frame}'s payload"),
                    wanted: u64::from(length),
                    got: after.len() as u64,
                });
            };
            let stored = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            let computed = crc32fast::hash(payload);
            if stored != computed {
                return damaged(Problem::FrameChecksum { frame, stored, computed });
            }
            let (index, seq, _) = split_payload(payload)
                .map_err(|e| ArchiveError::at(offset, Problem::FrameDecode { frame, reason: e.to_string() }))?;
            if let Err(reason) = self.order.check(index, seq) {
                damaged(Problem::FramePlace { frame, index, seq, reason })?;
            }
            rest = &after[length as usize..];
            count += 1;
        }
        let offset = self.offset();
        self.file.write_all(frames).map_err(|e| ArchiveError::at(offset, e).in_file(&self.temp))?;
        self.hasher.update(frames);
        self.frame_bytes += frames.len() as u64;
        self.records += count;
        Ok(count)
    }

    /// How many records are written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// How many bytes of frames are written so far.
    pub fn frame_bytes(&self) -> u64 {
        self.frame_bytes
    }

    /// Write the trailer and the header's final `last_index`, make the file
    /// durable and move it into place. Refused if a record written lies
    /// beyond `last_index`.
    pub fn finish(mut self, last_index: u64) -> Result<ArchiveSummary> {
        let temp = self.temp.clone();
        self.finish_inner(last_index).map_err(|e| {
            let _ = fs::remove_file(&temp);
            e.in_file(&temp)
        })
    }

    fn finish_inner(&mut self, last_index: u64) -> Result<ArchiveSummary> {
        let end = self.offset();
        if let Some((index, seq)) = self.order.previous.filter(|(index, _)| *index > last_index) {
            return Err(ArchiveError::at(
                end,
                Problem::FramePlace {
                    frame: self.records - 1,
                    index,
                    seq,
                    reason: format!("is beyond the archive's last index {last_index}"),
                },
            ));
        }
        if last_index.checked_add(1).is_none_or(|next| next < self.header.first_index) {
            return Err(ArchiveError::at(
                0,
                Problem::Header(format!(
                    "last index {last_index} is before the first, {}, less one",
                    self.header.first_index
                )),
            ));
        }
        let sha256: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let mut trailer = Vec::with_capacity(TRAILER_BYTES);
        trailer.extend_from_slice(&TRAILER_MAGIC);
        trailer.extend_from_slice(&self.records.to_be_bytes());
        trailer.extend_from_slice(&sha256);
        let crc = crc32fast::hash(&trailer);
        trailer.extend_from_slice(&crc.to_be_bytes());
        self.file.write_all(&trailer).map_err(io_at(end))?;
        self.header.last_index = last_index;
        let header = self.header.encode();
        debug_assert_eq!(header.len(), self.header_bytes, "the header keeps its length");
        self.file.seek(SeekFrom::Start(0)).map_err(io_at(0))?;
        self.file.write_all(&header).map_err(io_at(0))?;
        self.file.flush().map_err(io_at(0))?;
        crate::durable::replace(self.file.get_ref(), &self.temp, &self.path).map_err(|e| {
            let error = ArchiveError::at(0, e.source);
            if e.dir {
                error.in_file(&e.path)
            } else {
                error
            }
        })?;
        Ok(ArchiveSummary {
            header: self.header.clone(),
            records: self.records,
            frame_bytes: self.frame_bytes,
            file_bytes: end + TRAILER_BYTES as u64,
            sha256,
            last_batch: self.order.previous.map_or(0, |(index, _)| index),
        })
    }
}

// --- reading ------------------------------------------------------------------

/// One record read from an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's offset in the file.
    pub offset: u64,
    /// Its batch's log index.
    pub index: u64,
    /// Its position in the batch.
    pub seq: u32,
    /// The record.
    pub record: Record,
}

/// Reads an archive, checking everything (see the module documentation).
#[derive(Debug)]
pub struct ArchiveReader<R> {
    input: R,
    offset: u64,
    header: ArchiveHeader,
    hasher: Sha256,
    order: Order,
    records: u64,
    frame_bytes: u64,
    payload: Vec<u8>,
    summary: Option<ArchiveSummary>,
}

/// Read exactly `buf.len()` bytes, or say how many there were.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Read exactly `buf.len()` bytes of `part` at `offset`.
fn read_part(input: &mut impl Read, buf: &mut [u8], offset: u64, part: impl FnOnce() -> String) -> Result<()> {
    let got = fill(input, buf).map_err(io_at(offset))?;
    if got < buf.len() {
        return Err(ArchiveError::at(
            offset,
            Problem::Truncated { part: part(), wanted: buf.len() as u64, got: got as u64 },
        ));
    }
    Ok(())
}

impl ArchiveReader<BufReader<File>> {
    /// Open the archive at `path` and check its header.
    pub fn open_file(path: &Path) -> Result<ArchiveReader<BufReader<File>>> {
        let file = File::open(path).map_err(|e| ArchiveError::at(0, e).in_file(path))?;
        ArchiveReader::new(BufReader::with_capacity(IO_BUFFER_BYTES, file)).map_err(|e| e.in_file(path))
    }
}

impl<R: Read> ArchiveReader<R> {
    /// Read and check the header from `input`.
    pub fn new(mut input: R) -> Result<ArchiveReader<R>> {
        let mut fixed = [0u8; 11];
        read_part(&mut input, &mut fixed, 0, || "the header".into())?;
        if fixed[..8] != MAGIC {
            return Err(ArchiveError::at(0, Problem::NotAnArchive { found: fixed[..8].escape_ascii().to_string() }));
        }
        let version = u16::from_be_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(ArchiveError::at(0, Problem::Version(version)));
        }
        let region_len = usize::from(fixed[10]);
        if region_len == 0 || region_len > REGION_ID_BYTES_MAX {
            // Checked before the CRC so that nothing is read for a length
            // no region has; a flipped length still fails here, naming it.
            return Err(ArchiveError::at(
                0,
                Problem::Header(format!("a region id of {region_len} bytes (1 to {REGION_ID_BYTES_MAX})")),
            ));
        }
        let mut rest = vec![0u8; region_len + 32 + 4];
        read_part(&mut input, &mut rest, 0, || "the header".into())?;
        let (body, crc) = rest.split_at(rest.len() - 4);
        let mut crc_input = crc32fast::Hasher::new();
        crc_input.update(&fixed);
        crc_input.update(body);
        let computed = crc_input.finalize();
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if stored != computed {
            return Err(ArchiveError::at(0, Problem::HeaderChecksum { stored, computed }));
        }
        let (region, numbers) = body.split_at(region_len);
        let region = std::str::from_utf8(region).ok().and_then(|text| RegionId::new(text).ok()).ok_or_else(|| {
            ArchiveError::at(0, Problem::Header(format!("{:?} is not a region id", region.escape_ascii().to_string())))
        })?;
        let number = |n: usize| u64::from_be_bytes(numbers[n * 8..n * 8 + 8].try_into().expect("8 bytes"));
        let header = ArchiveHeader {
            region,
            first_index: number(0),
            last_index: number(1),
            created_at: Timestamp::from_unix_ms(number(2)),
            node_id: number(3),
        };
        if header.first_index == 0 || header.last_index.saturating_add(1) < header.first_index {
            return Err(ArchiveError::at(
                0,
                Problem::Header(format!("the range {}..={} is not one", header.first_index, header.last_index)),
            ));
        }
        let order = Order { first: header.first_index, last: header.last_index, previous: None };
        Ok(ArchiveReader {
            input,
            offset: (fixed.len() + rest.len()) as u64,
            header,
            hasher: Sha256::new(),
            order,
            records: 0,
            frame_bytes: 0,
            payload: Vec::new(),
            summary: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &ArchiveHeader {
        &self.header
    }

    /// How many records were read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The offset of the next byte to read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record, checked; `None` once the trailer is read and checked
    /// (see [`ArchiveReader::summary`]).
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.summary.is_some() {
            return Ok(None);
        }
        let offset = self.offset;
        let frame = self.records;
        let mut head = [0u8; FRAME_HEAD_BYTES];
        read_part(&mut self.input, &mut head, offset, || {
            format!("frame {frame}'s length and checksum, or the trailer")
        })?;
        if head == TRAILER_MAGIC {
            self.trailer()?;
            return Ok(None);
        }
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if length == 0 || length as usize > FRAME_PAYLOAD_BYTES_MAX {
            return Err(ArchiveError::at(offset, Problem::FrameLength { frame, length }));
        }
        // Grown only to a length just checked against the bound.
        self.payload.resize(length as usize, 0);
        read_part(&mut self.input, &mut self.payload, offset, || format!("frame {frame}'s payload"))?;
        let stored = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let computed = crc32fast::hash(&self.payload);
        if stored != computed {
            return Err(ArchiveError::at(offset, Problem::FrameChecksum { frame, stored, computed }));
        }
        let decode_error = |reason: String| ArchiveError::at(offset, Problem::FrameDecode { frame, reason });
        let (index, seq, bytes) = split_payload(&self.payload).map_err(|e| decode_error(e.to_string()))?;
        let (record, left) = postcard::take_from_bytes::<Record>(bytes).map_err(|e| decode_error(e.to_string()))?;
        if !left.is_empty() {
            return Err(decode_error(format!("{} bytes follow the record", left.len())));
        }
        if let Err(reason) = self.order.check(index, seq) {
            return Err(ArchiveError::at(offset, Problem::FramePlace { frame, index, seq, reason }));
        }
        self.hasher.update(head);
        self.hasher.update(&self.payload);
        let size = (FRAME_HEAD_BYTES + self.payload.len()) as u64;
        self.frame_bytes += size;
        self.offset += size;
        self.records += 1;
        Ok(Some(Frame { offset, index, seq, record }))
    }

    fn trailer(&mut self) -> Result<()> {
        let offset = self.offset;
        let mut trailer = [0u8; TRAILER_BYTES];
        trailer[..8].copy_from_slice(&TRAILER_MAGIC);
        read_part(&mut self.input, &mut trailer[8..], offset, || "the trailer".into()).map_err(|mut e| {
            if let Problem::Truncated { wanted, got, .. } = &mut e.problem {
                *wanted += 8;
                *got += 8;
            }
            e
        })?;
        let (body, crc) = trailer.split_at(TRAILER_BYTES - 4);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(ArchiveError::at(offset, Problem::TrailerChecksum { stored, computed }));
        }
        let count = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
        let stated: [u8; 32] = body[16..48].try_into().expect("32 bytes");
        if count != self.records {
            return Err(ArchiveError::at(offset, Problem::RecordCount { trailer: count, counted: self.records }));
        }
        let sha256: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if sha256 != stated {
            return Err(ArchiveError::at(offset, Problem::Digest { trailer: stated, computed: sha256 }));
        }
        let mut extra = [0u8; 4096];
        let mut trailing = 0u64;
        loop {
            match fill(&mut self.input, &mut extra).map_err(io_at(offset + TRAILER_BYTES as u64))? {
                0 => break,
                n => trailing += n as u64,
            }
        }
        if trailing > 0 {
            return Err(ArchiveError::at(offset + TRAILER_BYTES as u64, Problem::TrailingBytes(trailing)));
        }
        self.summary = Some(ArchiveSummary {
            header: self.header.clone(),
            records: self.records,
            frame_bytes: self.frame_bytes,
            file_bytes: offset + TRAILER_BYTES as u64,
            sha256,
            last_batch: self.order.previous.map_or(0, |(index, _)| index),
        });
        Ok(())
    }

    /// What the archive holds, once every frame and the trailer were read
    /// and checked.
    pub fn summary(&self) -> Option<&ArchiveSummary> {
        self.summary.as_ref()
    }

    /// Read the rest of the archive, checking it; its summary.
    pub fn verify(mut self) -> Result<ArchiveSummary> {
        while self.next_frame()?.is_some() {}
        Ok(self.summary.take().expect("the trailer was read"))
    }
}

/// Check the whole archive at `path`; what it holds.
pub fn verify_file(path: &Path) -> Result<ArchiveSummary> {
    ArchiveReader::open_file(path)?.verify().map_err(|e| e.in_file(path))
}

// --- from a node's journal ---------------------------------------------------

/// Why an export or a digest of a node's journal failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// History failed (or was deleted while read).
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The range asked for is not this journal's to give.
    #[error("{0}")]
    Range(String),
    /// The receiver of the chunks went away.
    #[error("the export's receiver went away: {0}")]
    Gone(String),
}

/// Some frames of an export: whole batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportChunk {
    /// The frames' bytes.
    pub frames: Vec<u8>,
    /// How many records.
    pub records: u64,
    /// The index of its last batch.
    pub last_index: u64,
}

/// What an export held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRange {
    /// The lowest index covered.
    pub first_index: u64,
    /// The highest index covered: the last batch all of whose records are
    /// older than the cutoff, or the last index written when the export
    /// began if none is as young.
    pub last_index: u64,
    /// How many records.
    pub records: u64,
    /// The bytes of all frames.
    pub frame_bytes: u64,
    /// SHA-256 over all frames.
    pub sha256: [u8; 32],
}

/// An export of a node's journal (see the module documentation): from the
/// first batch retention kept through the last batch all of whose records
/// are older than `before`.
#[derive(Debug)]
pub struct Export<'a> {
    history: &'a History,
    before: Timestamp,
    first_index: u64,
    limit: u64,
}

impl<'a> Export<'a> {
    /// An export of `history` of the records older than `before`.
    pub fn new(history: &'a History, before: Timestamp) -> Export<'a> {
        // The last index first: batches written while the export runs are
        // not part of it.
        let limit = history.last_index();
        Export { history, before, first_index: history.deleted_through() + 1, limit }
    }

    /// The lowest index it covers.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Read the journal, handing `sink` chunks of frames of whole batches of
    /// about `chunk_bytes` (one batch alone may be larger).
    pub fn run(
        self,
        chunk_bytes: usize,
        mut sink: impl FnMut(ExportChunk) -> Result<(), String>,
    ) -> Result<ExportRange, ExportError> {
        let mut hasher = Sha256::new();
        let (mut records, mut frame_bytes) = (0u64, 0u64);
        let mut chunk = ExportChunk { frames: Vec::new(), records: 0, last_index: 0 };
        let mut batch: Option<(u64, Vec<u8>, u64)> = None;
        let mut last_index = self.limit;
        let mut emit = |chunk: &mut ExportChunk| -> Result<(), ExportError> {
            if chunk.records == 0 {
                return Ok(());
            }
            hasher.update(&chunk.frames);
            records += chunk.records;
            frame_bytes += chunk.frames.len() as u64;
            let full = std::mem::replace(chunk, ExportChunk { frames: Vec::new(), records: 0, last_index: 0 });
            sink(full).map_err(ExportError::Gone)
        };
        let close = |batch: (u64, Vec<u8>, u64), chunk: &mut ExportChunk| {
            let (index, frames, count) = batch;
            chunk.frames.extend_from_slice(&frames);
            chunk.records += count;
            chunk.last_index = index;
        };
        for item in self.history.journal_raw(self.first_index, self.limit) {
            let (index, seq, bytes) = item?;
            if batch.as_ref().is_some_and(|(at, _, _)| *at != index) {
                close(batch.take().expect("a batch"), &mut chunk);
                if chunk.frames.len() >= chunk_bytes {
                    emit(&mut chunk)?;
                }
            }
            let record = crate::history::decode_record(&crate::history::journal_key(index, seq), &bytes)?;
            if record_time(&record) >= self.before {
                // This batch and everything after it stay out.
                last_index = index - 1;
                batch = None;
                break;
            }
            let (_, frames, count) = batch.get_or_insert_with(|| (index, Vec::new(), 0));
            push_frame(frames, index, seq, &bytes);
            *count += 1;
        }
        if let Some(batch) = batch {
            close(batch, &mut chunk);
        }
        emit(&mut chunk)?;
        // Checked after reading: a deletion that raced the read is seen.
        let deleted_through = self.history.deleted_through();
        if deleted_through >= self.first_index {
            return Err(HistoryError::Deleted { requested: self.first_index - 1, deleted_through }.into());
        }
        Ok(ExportRange {
            first_index: self.first_index,
            last_index,
            records,
            frame_bytes,
            sha256: hasher.finalize().into(),
        })
    }
}

/// The record count and SHA-256 of an export of `history`'s journal over
/// `first_index..=through` (framed as an archive's, streamed), which must
/// start where retention stopped: `first_index` is the one after
/// [`History::deleted_through`], and `through` at most the last index
/// written.
pub fn range_digest(history: &History, first_index: u64, through: u64) -> Result<(u64, [u8; 32]), ExportError> {
    let deleted = history.deleted_through();
    if first_index != deleted + 1 {
        return Err(ExportError::Range(format!(
            "the range starts at index {first_index}, but this node's journal is deleted through {deleted}, so it \
             starts at {}",
            deleted + 1
        )));
    }
    let last = history.last_index();
    if through > last {
        return Err(ExportError::Range(format!("this node's history reaches index {last} only, not {through}")));
    }
    let mut hasher = Sha256::new();
    let mut records = 0u64;
    let mut frame = Vec::new();
    for item in history.journal_raw(first_index, through) {
        let (index, seq, bytes) = item?;
        frame.clear();
        push_frame(&mut frame, index, seq, &bytes);
        hasher.update(&frame);
        records += 1;
    }
    let deleted_through = history.deleted_through();
    if deleted_through >= first_index {
        return Err(HistoryError::Deleted { requested: first_index - 1, deleted_through }.into());
    }
    Ok((records, hasher.finalize().into()))
}

#[cfg(test)]
mod tests;
