//! A node's backup: the region's state as the node applied it at one index
//! and its history through that index, in one checksummed file written while
//! the node runs; and the restore that seeds a new node's data directory
//! from it.
//!
//! Consistent without stopping anything: the state is the applied state's
//! copy at index `I` (a clone of persistent maps, as a snapshot takes), and
//! history through `I` is immutable once written (records are keyed by the
//! log index of the batch that wrote them), so reading the journal's
//! batches up to `I` while the node applies later ones gives exactly
//! history at `I`; its running digest at `I` must equal the one the state
//! records, or the backup fails.
//!
//! The file (format 1):
//!
//! ```text
//! "PMBACKUP" | frame... | end frame
//! frame = kind (u8) | length (u32 LE) | bytes
//! ```
//!
//! in this order: a header (kind 1, JSON: what the backup is, for people
//! and tools); the snapshot metadata (kind 2, postcard); the state image
//! (kind 3, one or more chunks of at most 1 MiB, the bytes a checkpoint
//! holds); where history begins when retention deleted its front (kind 4,
//! postcard, at most once); history's batches in index order (kind 5,
//! postcard `(index, records)` sequences of about 1 MiB); and the end
//! (kind 255: the SHA-256 of every byte before that frame). Every length is
//! checked against a maximum before anything is allocated, and a reader
//! checks the end's digest before it trusts anything else.
//!
//! A restore reads the file twice: once to check its digest, once to write
//! history (batch by batch, so memory holds one frame at a time) and the
//! checkpoint. History's digest at `I` is compared with the header's, and
//! the image is decoded and verified as a snapshot installed from a peer
//! is. Then the region's membership is replaced by the new nodes' (a
//! restored region is a new Raft group seeded with old data), and the
//! sequences partners hold numbers of skip a gap ([`State::skip_numbers`]).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use paymesh_core::history::Record;
use paymesh_core::id::RegionId;
use paymesh_core::State;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::Checkpoints;
use crate::history::{History, HistoryError, HistoryStart};
use crate::raft_types::{NodeAddr, NodeId, SnapshotMeta, StoredMembership};
use crate::state_machine::{self, AppliedState, HISTORY_DIR, HISTORY_MEMORY_BYTES};

/// The first bytes of a backup file.
pub const MAGIC: [u8; 8] = *b"PMBACKUP";

/// The format this code writes and reads.
pub const FORMAT: u32 = 1;

/// The largest frame accepted: a history batch is bounded by the largest
/// log entry; anything larger is damage.
const FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// How many bytes of image or history a frame carries, about.
const CHUNK_BYTES: usize = 1024 * 1024;

const HEADER: u8 = 1;
const META: u8 = 2;
const IMAGE: u8 = 3;
const HISTORY_START: u8 = 4;
const HISTORY_BATCHES: u8 = 5;
const END: u8 = 255;

/// What a backup holds, as its header states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The file's format ([`FORMAT`]).
    pub format: u32,
    /// The region.
    pub region: String,
    /// The node it was taken from.
    pub node_id: u64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at_unix_ms: u64,
    /// The paymesh version that took it.
    pub paymesh_version: String,
    /// The log index it holds the region at.
    pub index: u64,
    /// The term of the entry at that index.
    pub term: u64,
    /// The region's clock at that index, in milliseconds since the Unix
    /// epoch: when its last command was applied.
    pub clock_unix_ms: u64,
    /// The state image's length and SHA-256 (hex).
    pub image_bytes: u64,
    /// The SHA-256 of the state image (hex).
    pub image_sha256: String,
    /// History's running digest at the index (hex).
    pub history_digest: String,
    /// The digest over state and history at the index (hex), as
    /// `paymesh status` shows replicas'.
    pub region_digest: String,
    /// Transfer ids the region had issued.
    pub transfers_issued: u64,
}

/// Why a backup could not be taken, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a backup this code reads, or is damaged.
    #[error("{path} is not a readable backup: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// History failed or disagrees.
    #[error("history: {0}")]
    History(String),
    /// The state could not be encoded, decoded or saved.
    #[error("state: {0}")]
    State(String),
    /// The backup cannot be restored here.
    #[error("{0}")]
    Refused(String),
}

fn history_failed(e: &HistoryError) -> BackupError {
    BackupError::History(e.to_string())
}

/// Write `bytes` as one frame of `kind`.
fn frame(out: &mut impl Write, kind: u8, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).ok().filter(|n| *n <= FRAME_BYTES_MAX).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("a frame of {} bytes is too large", bytes.len()))
    })?;
    out.write_all(&[kind])?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a backup of `applied` and `history` (a node's, while it runs) to
/// `out`, taken on node `node_id`. Fails if history does not reach the
/// state's index with the state's digest there, or if retention deleted
/// batches of it while the backup read them (run it again).
pub fn write(
    applied: &AppliedState,
    history: &History,
    node_id: u64,
    created_at_unix_ms: u64,
    out: impl Write,
) -> Result<Written, BackupError> {
    let io_failed = |source: io::Error| BackupError::Io { path: PathBuf::from("the backup stream"), source };
    let last = applied.last_applied.ok_or_else(|| BackupError::Refused("the node has applied nothing yet".into()))?;
    let index = last.index;
    let held = history.digest_at(index).map_err(|e| history_failed(&e))?.unwrap_or_default();
    if held != applied.history_digest {
        return Err(BackupError::History(format!(
            "history's digest at index {index} is not the state's: history and state disagree on this node"
        )));
    }
    let image = state_machine::encode_image(applied).map_err(|e| BackupError::State(e.to_string()))?;
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id: format!("backup-{}-{index}", last.leader_id),
    };
    let start = history.start().map_err(|e| history_failed(&e))?;
    let mut out = Hashing { inner: out, hasher: Sha256::new() };
    let header = BackupHeader {
        format: FORMAT,
        region: applied.state.region().to_string(),
        node_id,
        created_at_unix_ms,
        paymesh_version: env!("CARGO_PKG_VERSION").to_owned(),
        index,
        term: last.leader_id.get_term(),
        clock_unix_ms: applied.state.clock().unix_ms(),
        image_bytes: image.len() as u64,
        image_sha256: hex::encode(Sha256::digest(&image)),
        history_digest: hex::encode(applied.history_digest),
        region_digest: hex::encode(applied.digest()),
        transfers_issued: applied.state.transfers_created(),
    };
    out.inner.write_all(&MAGIC).map_err(io_failed)?;
    out.hasher.update(MAGIC);
    let header_json = serde_json::to_vec(&header).map_err(|e| BackupError::State(e.to_string()))?;
    frame(&mut out, HEADER, &header_json).map_err(io_failed)?;
    let meta_bytes = postcard::to_stdvec(&meta).map_err(|e| BackupError::State(e.to_string()))?;
    frame(&mut out, META, &meta_bytes).map_err(io_failed)?;
    for chunk in image.chunks(CHUNK_BYTES) {
        frame(&mut out, IMAGE, chunk).map_err(io_failed)?;
    }
    if start.deleted_through > 0 {
        let bytes = postcard::to_stdvec(&start).map_err(|e| BackupError::State(e.to_string()))?;
        frame(&mut out, HISTORY_START, &bytes).map_err(io_failed)?;
    }
    let (mut after, mut written) = (start.deleted_through, 0u64);
    while after < index {
        let mut batches = history.journal_after(after, CHUNK_BYTES).map_err(|e| history_failed(&e))?;
        batches.retain(|(at, _)| *at <= index);
        let Some((last_index, _)) = batches.last() else { break };
        after = *last_index;
        written += batches.len() as u64;
        let bytes = postcard::to_stdvec(&batches).map_err(|e| BackupError::State(e.to_string()))?;
        frame(&mut out, HISTORY_BATCHES, &bytes).map_err(io_failed)?;
    }
    let digest: [u8; 32] = out.hasher.finalize_reset().into();
    frame(&mut out.inner, END, &digest).map_err(io_failed)?;
    out.inner.flush().map_err(io_failed)?;
    Ok(Written { header, history_batches: written })
}

/// What [`write`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// The backup's header.
    pub header: BackupHeader,
    /// History's batches it holds.
    pub history_batches: u64,
}

/// The frames of a backup file, read one at a time.
struct Frames {
    path: PathBuf,
    reader: BufReader<File>,
    hasher: Sha256,
    /// Bytes of the file not read yet: no frame claims more.
    unread: u64,
}

impl Frames {
    fn open(path: &Path) -> Result<Frames, BackupError> {
        let io_failed = |source| BackupError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_failed)?;
        let unread = file.metadata().map_err(io_failed)?.len();
        let mut frames = Frames { path: path.to_owned(), reader: BufReader::new(file), hasher: Sha256::new(), unread };
        let mut magic = [0; 8];
        frames.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(frames.damaged("it does not start with PMBACKUP"));
        }
        frames.hasher.update(magic);
        Ok(frames)
    }

    fn damaged(&self, reason: impl Into<String>) -> BackupError {
        BackupError::Damaged { path: self.path.clone(), reason: reason.into() }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.reader.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.damaged("it ends early (a backup cut short?)"),
            _ => BackupError::Io { path: self.path.clone(), source: e },
        })?;
        self.unread = self.unread.saturating_sub(buf.len() as u64);
        Ok(())
    }

    /// The next frame: its kind and bytes. The end frame's digest is
    /// checked here; after it, `None`.
    fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, BackupError> {
        let mut head = [0; 5];
        self.read_exact(&mut head)?;
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > FRAME_BYTES_MAX {
            return Err(self.damaged(format!("a frame of {len} bytes, over {FRAME_BYTES_MAX}")));
        }
        if u64::from(len) > self.unread {
            return Err(self.damaged("it ends early (a backup cut short?)"));
        }
        let mut bytes = vec![0; len as usize];
        self.read_exact(&mut bytes)?;
        if kind == END {
            let expected: [u8; 32] = self.hasher.clone().finalize().into();
            if bytes != expected {
                return Err(self.damaged("its SHA-256 does not match its contents"));
            }
            let mut rest = [0; 1];
            return match self.reader.read(&mut rest) {
                Ok(0) => Ok(None),
                Ok(_) => Err(self.damaged("bytes follow its end")),
                Err(source) => Err(BackupError::Io { path: self.path.clone(), source }),
            };
        }
        self.hasher.update(head);
        self.hasher.update(&bytes);
        Ok(Some((kind, bytes)))
    }
}

/// Check a backup's digest (every byte read once) and return its header.
pub fn check(path: &Path) -> Result<BackupHeader, BackupError> {
    let mut frames = Frames::open(path)?;
    let mut header = None;
    while let Some((kind, bytes)) = frames.next()? {
        if kind == HEADER && header.is_none() {
            header = Some(parse_header(&frames, &bytes)?);
        }
    }
    header.ok_or_else(|| frames.damaged("it has no header"))
}

fn parse_header(frames: &Frames, bytes: &[u8]) -> Result<BackupHeader, BackupError> {
    let header: BackupHeader =
        serde_json::from_slice(bytes).map_err(|e| frames.damaged(format!("its header does not parse: {e}")))?;
    if header.format != FORMAT {
        return Err(frames.damaged(format!("format {}; this paymesh reads format {FORMAT}", header.format)));
    }
    Ok(header)
}

/// The new region a backup is restored into.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    /// The region (must be the backup's).
    pub region: RegionId,
    /// The new region's members: every node's id and addresses.
    pub members: Vec<(NodeId, NodeAddr)>,
    /// Numbers skipped in every sequence partners hold numbers of
    /// ([`State::skip_numbers`]).
    pub gap: u64,
    /// The other regions the restored one reconciles with before it
    /// exchanges transfers with them again
    /// ([`State::begin_reconciliation`]).
    pub reconcile_with: Vec<RegionId>,
}

/// What a restore wrote.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The backup's header.
    pub header: BackupHeader,
    /// History's batches written.
    pub history_batches: u64,
    /// The region's digest after the restore (membership replaced, numbers
    /// skipped): the same on every node restored from one backup.
    pub region_digest: [u8; 32],
    /// The next transfer id's number in the restored region.
    pub next_transfer: u64,
}

/// Restore the backup at `path` into the state directory `state_dir` of a
/// new node (which must hold nothing yet) for `target`.
pub fn restore(path: &Path, state_dir: &Path, target: &RestoreTarget) -> Result<Restored, BackupError> {
    let checked = check(path)?;
    if checked.region != target.region.as_str() {
        return Err(BackupError::Refused(format!("the backup is of region {}, not {}", checked.region, target.region)));
    }
    let history_dir = state_dir.join(HISTORY_DIR);
    let holds_something = std::fs::read_dir(state_dir).map(|mut entries| entries.next().is_some()).unwrap_or(false);
    if holds_something {
        return Err(BackupError::Refused(format!(
            "{} already holds a state; restore into an empty one",
            state_dir.display()
        )));
    }
    let history = History::open(&history_dir, HISTORY_MEMORY_BYTES).map_err(|e| history_failed(&e))?;
    let mut frames = Frames::open(path)?;
    let (mut header, mut meta, mut image, mut batches_written) = (None, None, Vec::new(), 0u64);
    while let Some((kind, bytes)) = frames.next()? {
        match kind {
            HEADER => header = Some(parse_header(&frames, &bytes)?),
            META => {
                meta = Some(
                    postcard::from_bytes::<SnapshotMeta>(&bytes)
                        .map_err(|e| frames.damaged(format!("its snapshot metadata does not decode: {e}")))?,
                )
            }
            IMAGE => {
                if (image.len() + bytes.len()) as u64 > crate::checkpoint::MAX_CHECKPOINT_BYTES {
                    return Err(frames.damaged("a state image larger than a checkpoint may be"));
                }
                image.extend_from_slice(&bytes)
            }
            HISTORY_START => {
                let start: HistoryStart = postcard::from_bytes(&bytes)
                    .map_err(|e| frames.damaged(format!("history's start does not decode: {e}")))?;
                history.adopt(&start).map_err(|e| history_failed(&e))?;
            }
            HISTORY_BATCHES => {
                let batches: Vec<(u64, Vec<Record>)> = postcard::from_bytes(&bytes)
                    .map_err(|e| frames.damaged(format!("history's batches do not decode: {e}")))?;
                batches_written += batches.len() as u64;
                history.append(&batches, 0).map_err(|e| history_failed(&e))?;
            }
            other => return Err(frames.damaged(format!("a frame of unknown kind {other}"))),
        }
    }
    let header = header.ok_or_else(|| frames.damaged("it has no header"))?;
    let meta = meta.ok_or_else(|| frames.damaged("it has no snapshot metadata"))?;
    if image.len() as u64 != header.image_bytes || hex::encode(Sha256::digest(&image)) != header.image_sha256 {
        return Err(frames.damaged("its state image is not the one its header describes"));
    }
    // History is complete through the index: the node wrote no records
    // after the last batch up to it.
    history.append(&[], header.index).map_err(|e| history_failed(&e))?;
    history.durable().map_err(|e| history_failed(&e))?;
    let held = history.digest_at(header.index).map_err(|e| history_failed(&e))?.unwrap_or_default();
    if hex::encode(held) != header.history_digest {
        return Err(BackupError::History(format!(
            "the restored history's digest at index {} is not the backup's",
            header.index
        )));
    }
    // Decoded and checked against history as a snapshot from a peer is.
    let mut applied = state_machine::adopt_image(&target.region, &history, &meta, &image)
        .map_err(|e| BackupError::State(e.to_string()))?;
    // The digest is over the state's encoding, so only an image of this
    // version's format can reproduce it; an older image (a backup taken
    // before an upgrade) is vouched for by its checksum above and by the
    // checks decoding made.
    if state_machine::image_is_current(&image) && hex::encode(applied.digest()) != header.region_digest {
        return Err(BackupError::State("the restored state's digest is not the backup's".into()));
    }
    let voters: BTreeSet<NodeId> = target.members.iter().map(|(id, _)| *id).collect();
    let nodes: std::collections::BTreeMap<NodeId, NodeAddr> = target.members.iter().cloned().collect();
    let membership = openraft::Membership::new(vec![voters.clone()], nodes);
    applied.membership = StoredMembership::new(*applied.membership.log_id(), membership);
    applied.retired.retain(|id| !voters.contains(id));
    applied.state.begin_reconciliation(header.index, target.reconcile_with.iter().cloned());
    applied.state.skip_numbers(target.gap);
    let next_transfer = applied.state.transfers_created() + 1;
    let bytes = state_machine::encode_image(&applied).map_err(|e| BackupError::State(e.to_string()))?;
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id: format!("restored-{}", header.index),
    };
    let checkpoints = Checkpoints::open(state_dir).map_err(|e| BackupError::State(e.to_string()))?;
    checkpoints.save(&meta, &bytes).map_err(|e| BackupError::State(e.to_string()))?;
    Ok(Restored { region_digest: applied.digest(), history_batches: batches_written, next_transfer, header })
}

/// Write a backup to `path` atomically: to `path.tmp`, synced, then renamed
/// (an interrupted backup never leaves a file that looks whole).
pub fn write_file(
    path: &Path,
    write_to: impl FnOnce(&mut dyn Write) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(|source| BackupError::Io { path: tmp.clone(), source })?;
    let mut out = BufWriter::new(file);
    write_to(&mut out)?;
    let file = out.into_inner().map_err(|e| BackupError::Io { path: tmp.clone(), source: e.into_error() })?;
    commit_file(file, &tmp, path)
}

/// Make a file written at `tmp` durable under `path` ([`crate::durable::replace`]).
pub fn commit_file(file: File, tmp: &Path, path: &Path) -> Result<(), BackupError> {
    crate::durable::replace(&file, tmp, path).map_err(|e| BackupError::Io { path: e.path, source: e.source })
}

/// The state a restore starts a region from, for tests: `restore`'s
/// checkpoint, loaded.
#[doc(hidden)]
pub fn restored_state(state_dir: &Path, region: RegionId) -> Result<State, BackupError> {
    let store =
        state_machine::StateMachineStore::open(state_dir, region).map_err(|e| BackupError::State(e.to_string()))?;
    Ok(store.applied().state.clone())
}
