//! The state machine's durable image in sled: the latest snapshot.
//!
//! A checkpoint is a snapshot's metadata and bytes (the serialised state with
//! its `last_applied` and membership). The bytes are stored in chunks under a
//! new generation's keys; then one insert points `head` at the new
//! generation, and only then are the old one's chunks removed, so the switch
//! is atomic: after a crash, `head` names either the old complete checkpoint
//! or the new one (and leftover chunks are removed by the next save).
//!
//! sled's `flush` issues `sync_file_range`, which is not durable across power
//! loss, so after flushing every file under the sled directory is
//! `fdatasync`ed (and the directories `fsync`ed) before a save returns. The Raft
//! log is purged only behind a durable checkpoint.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::raft_types::SnapshotMeta;

/// Bytes per stored chunk: small values stay in sled's segments.
const CHUNK_BYTES: usize = 64 * 1024;

/// Format byte of the head record.
const HEAD_FORMAT: u8 = 1;

const HEAD_KEY: &[u8] = b"head";

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// sled failed.
    #[error("checkpoint store: {0}")]
    Sled(#[from] sled::Error),
    /// The file system failed while making sled's files durable.
    #[error("checkpoint sync of {path}: {source}")]
    Sync {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A stored checkpoint does not match its own record.
    #[error("checkpoint is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    generation: u64,
    meta: SnapshotMeta,
    chunks: u32,
    bytes: u64,
    sha256: [u8; 32],
}

/// The checkpoint store: a sled database in its own directory.
#[derive(Debug)]
pub struct Checkpoints {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
}

fn chunk_key(generation: u64, chunk: u32) -> Vec<u8> {
    format!("g{generation:020}/{chunk:010}").into_bytes()
}

fn generation_prefix(generation: u64) -> Vec<u8> {
    format!("g{generation:020}/").into_bytes()
}

impl Checkpoints {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoints, CheckpointError> {
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("checkpoint")?;
        Ok(Checkpoints { db, tree, dir: dir.to_path_buf() })
    }

    fn head(&self) -> Result<Option<Head>, CheckpointError> {
        let Some(bytes) = self.tree.get(HEAD_KEY)? else { return Ok(None) };
        match bytes.split_first() {
            Some((&HEAD_FORMAT, body)) => {
                postcard::from_bytes(body).map(Some).map_err(|e| CheckpointError::Corrupt(format!("head: {e}")))
            }
            _ => Err(CheckpointError::Corrupt("head: unknown format".into())),
        }
    }

    /// Save a checkpoint durably, replacing the previous one.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), CheckpointError> {
        let generation = self.head()?.map_or(1, |head| head.generation + 1);
        // Chunks of an interrupted earlier save are garbage: clear any.
        for key in self.tree.scan_prefix(generation_prefix(generation)).keys() {
            self.tree.remove(key?)?;
        }
        let mut chunks = 0u32;
        for piece in data.chunks(CHUNK_BYTES) {
            self.tree.insert(chunk_key(generation, chunks), piece)?;
            chunks += 1;
        }
        let head = Head {
            generation,
            meta: meta.clone(),
            chunks,
            bytes: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        };
        let mut encoded = vec![HEAD_FORMAT];
        encoded.extend(postcard::to_stdvec(&head).map_err(|e| CheckpointError::Corrupt(e.to_string()))?);
        // One key's insert is atomic, and sled recovers a prefix of its writes:
        // after a crash `head` names the old checkpoint (whose chunks are
        // removed only after this) or the new one (whose chunks were written
        // before it). Not a sled batch: `apply_batch` takes sled's
        // process-wide write lock, which deadlocked against another sled
        // database's flush in a process hosting several nodes.
        self.tree.insert(HEAD_KEY, encoded)?;
        for key in self.tree.iter().keys() {
            let key = key?;
            if key.starts_with(b"g") && !key.starts_with(&generation_prefix(generation)) {
                self.tree.remove(key)?;
            }
        }
        self.db.flush()?;
        sync_tree(&self.dir)
    }

    /// The latest checkpoint, if any, verified against its checksum.
    pub fn load(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, CheckpointError> {
        let Some(head) = self.head()? else { return Ok(None) };
        let mut data = Vec::with_capacity(head.bytes as usize);
        for chunk in 0..head.chunks {
            let piece = self
                .tree
                .get(chunk_key(head.generation, chunk))?
                .ok_or_else(|| CheckpointError::Corrupt(format!("chunk {chunk} of {} missing", head.chunks)))?;
            data.extend_from_slice(&piece);
        }
        if data.len() as u64 != head.bytes || <[u8; 32]>::from(Sha256::digest(&data)) != head.sha256 {
            return Err(CheckpointError::Corrupt("data does not match its checksum".into()));
        }
        Ok(Some((head.meta, data)))
    }
}

/// `fdatasync` every file under `dir` and `fsync` the directories: sled's own
/// flush does not reach the disk durably.
fn sync_tree(dir: &Path) -> Result<(), CheckpointError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Sync { path, source }
    };
    for entry in fs::read_dir(dir).map_err(failed(dir))? {
        let path = entry.map_err(failed(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            match File::open(&path).and_then(|f| f.sync_data()) {
                // sled removes blob files of values it no longer holds,
                // concurrently: a file gone since the listing holds nothing
                // the checkpoint needs (its directory is synced below).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other.map_err(failed(&path))?,
            }
        }
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(failed(dir))
}
