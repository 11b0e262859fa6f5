//! The state machine's durable image: its latest snapshots, in files of our
//! own, two generations deep.
//!
//! A checkpoint is a snapshot's metadata and bytes (the serialised state with
//! its `last_applied` and membership), written as one file per generation:
//!
//! ```text
//! checkpoint-<generation, 20 digits>:
//!   magic (8 bytes) | header length (u32 LE) | header (postcard) |
//!   CRC-32 of length and header (u32 LE) | data
//! ```
//!
//! where the header holds the generation, the metadata, the data's length and
//! its SHA-256. A save writes `checkpoint-<g>.tmp`, `fdatasync`s it through
//! the descriptor that wrote it (so no writeback error can be missed: the
//! descriptor was open before the first byte was written), renames it to its
//! final name, `fsync`s the directory, then reads the file back and verifies
//! it. Only then is the generation before the previous one removed: the
//! previous generation stays until the next one is proven durable and
//! readable. Any write, sync or verification error fails the save, and
//! openraft purges the Raft log only behind a save that succeeded.
//!
//! Loading tries the newest generation first and falls back to the previous
//! one (with a warning naming what failed) when the newest fails its
//! checksums or cannot be read; if every generation fails, loading fails with
//! an error naming each. Every length read from disk is checked against the
//! file's size and a fixed maximum before anything is allocated.
//!
//! Why not sled, which held checkpoints before: sled 0.34.7 writes a page
//! larger than a quarter of its 512 KiB segment (a leaf of up to 17 chunks of
//! 64 KiB is) to a new file under `blobs/` through a descriptor it closes
//! without syncing, and relocates pages and reuses segments of its `db` file
//! on its own schedule, made stable only by `sync_file_range` (its periodic
//! `fsync` only logs errors). A descriptor opened by us before or after those
//! writes cannot vouch for them. A checkpoint stored by sled before this
//! format (a `conf` and a `db` in the directory, no checkpoint file) is read
//! once at open and written as generation files ([`legacy`]); sled's files
//! are removed once two generations of our own are durable.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::raft_types::SnapshotMeta;

/// The first bytes of a checkpoint file (format 2; format 1 was sled's).
const MAGIC: [u8; 8] = *b"PMCKPT02";

/// The largest header accepted: metadata is a membership and a few ids.
const MAX_HEADER_BYTES: u32 = 1 << 20;

/// The largest checkpoint saved or loaded. The state is tens of megabytes;
/// a length beyond this read from disk is damage, not a state.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

const FILE_PREFIX: &str = "checkpoint-";
const TMP_SUFFIX: &str = ".tmp";

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A stored checkpoint does not match its own record.
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt {
        /// The file (or directory, for sled's format).
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A checkpoint just written did not read back as written.
    #[error("checkpoint {path} did not verify after its sync: {reason}")]
    Unverified {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A checkpoint larger than [`MAX_CHECKPOINT_BYTES`].
    #[error("checkpoint of {0} bytes is over the limit of {MAX_CHECKPOINT_BYTES}")]
    TooLarge(u64),
    /// Every stored generation failed to load.
    #[error("no checkpoint generation in {dir} loads: {}", failures.join("; "))]
    NoneLoads {
        /// The directory.
        dir: PathBuf,
        /// Each generation's failure, newest first.
        failures: Vec<String>,
    },
    /// sled failed while reading a checkpoint of the old format.
    #[error("checkpoint store (sled, old format): {0}")]
    Sled(#[from] sled::Error),
}

/// Makes written bytes durable. [`OsSync`] calls `fdatasync` and `fsync`;
/// tests substitute one that fails.
pub trait FileSync: Send + Sync + fmt::Debug {
    /// Make a file's data durable through the descriptor that wrote it.
    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Make a directory's entries durable.
    fn sync_dir(&self, dir: &File, path: &Path) -> io::Result<()>;
}

/// `fdatasync` for files, `fsync` for directories.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsSync;

impl FileSync for OsSync {
    fn sync_file(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &File, _: &Path) -> io::Result<()> {
        dir.sync_all()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    generation: u64,
    meta: SnapshotMeta,
    bytes: u64,
    sha256: [u8; 32],
}

/// The checkpoint store: generation files in one directory.
#[derive(Debug)]
pub struct Checkpoints {
    dir: PathBuf,
    sync: Arc<dyn FileSync>,
    /// Saves are serialised: openraft may build a snapshot while it installs
    /// one received from the leader.
    saving: Mutex<()>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

impl Checkpoints {
    /// Open (or create) the store in `dir`, syncing through the OS.
    pub fn open(dir: &Path) -> Result<Checkpoints, CheckpointError> {
        Checkpoints::open_with(dir, Arc::new(OsSync))
    }

    /// Open (or create) the store in `dir`, syncing through `sync`.
    pub fn open_with(dir: &Path, sync: Arc<dyn FileSync>) -> Result<Checkpoints, CheckpointError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let handle = File::open(parent).map_err(io_error(parent))?;
                sync.sync_dir(&handle, parent).map_err(io_error(parent))?;
            }
        }
        let store = Checkpoints { dir: dir.to_path_buf(), sync, saving: Mutex::new(()) };
        // A save interrupted by a crash leaves a temporary file: garbage.
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with(FILE_PREFIX) && name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        if store.generations()?.is_empty() && legacy::present(dir) {
            match legacy::load(dir)? {
                Some((generation, meta, data)) => {
                    tracing::info!(dir = %dir.display(), generation, "moving the checkpoint out of sled");
                    store.save_generation(generation, &meta, &data)?;
                }
                None => legacy::remove(dir),
            }
        }
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `generation`.
    pub fn path_of(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{FILE_PREFIX}{generation:020}"))
    }

    /// The generations stored, oldest first.
    pub fn generations(&self) -> Result<Vec<u64>, CheckpointError> {
        let mut generations = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let entry = entry.map_err(io_error(&self.dir))?;
            let name = entry.file_name();
            let Some(digits) = name.to_str().and_then(|n| n.strip_prefix(FILE_PREFIX)) else { continue };
            if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(generation) = digits.parse() {
                    generations.push(generation);
                }
            }
        }
        generations.sort_unstable();
        Ok(generations)
    }

    /// Save a checkpoint durably as a new generation, keeping the previous one.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), CheckpointError> {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generations()?.last().map_or(1, |g| g + 1);
        self.save_generation(generation, meta, data)
    }

    fn save_generation(&self, generation: u64, meta: &SnapshotMeta, data: &[u8]) -> Result<(), CheckpointError> {
        let bytes = data.len() as u64;
        if bytes > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::TooLarge(bytes));
        }
        let path = self.path_of(generation);
        let tmp = path.with_file_name(format!("{FILE_PREFIX}{generation:020}{TMP_SUFFIX}"));
        let written = self.write_durably(generation, meta, data, &tmp, &path).and_then(|()| {
            // Read back through a new descriptor and verify, before the
            // previous generation may go.
            let (read_meta, read_data) = read_generation(&path, generation)
                .map_err(|e| CheckpointError::Unverified { path: path.clone(), reason: e.to_string() })?;
            if read_meta != *meta || read_data != data {
                return Err(CheckpointError::Unverified { path: path.clone(), reason: "content differs".into() });
            }
            Ok(())
        });
        if let Err(e) = written {
            // Leave the store as it was: the previous generation newest.
            for leftover in [&tmp, &path] {
                match fs::remove_file(leftover) {
                    Ok(()) => {}
                    Err(r) if r.kind() == io::ErrorKind::NotFound => {}
                    Err(r) => {
                        tracing::warn!(path = %leftover.display(), error = %r, "cannot remove a failed checkpoint")
                    }
                }
            }
            return Err(e);
        }
        self.remove_older_than_previous(generation);
        Ok(())
    }

    fn write_durably(
        &self,
        generation: u64,
        meta: &SnapshotMeta,
        data: &[u8],
        tmp: &Path,
        path: &Path,
    ) -> Result<(), CheckpointError> {
        let header =
            Header { generation, meta: meta.clone(), bytes: data.len() as u64, sha256: Sha256::digest(data).into() };
        let header = postcard::to_stdvec(&header)
            .map_err(|e| CheckpointError::Corrupt { path: path.to_path_buf(), reason: format!("header: {e}") })?;
        let header_len = u32::try_from(header.len())
            .ok()
            .filter(|&len| len <= MAX_HEADER_BYTES)
            .ok_or_else(|| CheckpointError::TooLarge(header.len() as u64))?;
        let mut front = Vec::with_capacity(MAGIC.len() + 8 + header.len());
        front.extend_from_slice(&MAGIC);
        front.extend_from_slice(&header_len.to_le_bytes());
        front.extend_from_slice(&header);
        let crc = crc32fast::hash(&front[MAGIC.len()..]);
        front.extend_from_slice(&crc.to_le_bytes());

        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp).map_err(io_error(tmp))?;
        file.write_all(&front).and_then(|()| file.write_all(data)).map_err(io_error(tmp))?;
        // The descriptor that wrote the bytes syncs them: it sees every
        // writeback error since it was opened.
        self.sync.sync_file(&file, tmp).map_err(io_error(tmp))?;
        drop(file);
        fs::rename(tmp, path).map_err(io_error(path))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), CheckpointError> {
        let dir = File::open(&self.dir).map_err(io_error(&self.dir))?;
        self.sync.sync_dir(&dir, &self.dir).map_err(io_error(&self.dir))
    }

    /// Remove the generations before the one preceding `newest` (and sled's
    /// files once two generations of ours exist). Failures are logged: the
    /// new checkpoint is durable, and the next save retries.
    fn remove_older_than_previous(&self, newest: u64) {
        let generations = match self.generations() {
            Ok(generations) => generations,
            Err(e) => return tracing::warn!(error = %e, "cannot list checkpoints to remove old ones"),
        };
        let keep_from = generations.iter().rev().nth(1).copied().unwrap_or(newest);
        let mut removed = false;
        for &old in generations.iter().filter(|&&g| g < keep_from) {
            let path = self.path_of(old);
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove an old checkpoint"),
            }
        }
        if generations.len() >= 2 && legacy::present(&self.dir) {
            legacy::remove(&self.dir);
            removed = true;
        }
        if removed {
            if let Err(e) = self.sync_dir() {
                tracing::warn!(error = %e, "cannot sync the checkpoint directory after removing old checkpoints");
            }
        }
    }

    /// The newest checkpoint that verifies, if any is stored. A newer one
    /// that fails is named in a warning; if every one fails, an error names
    /// each.
    pub fn load(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, CheckpointError> {
        let generations = self.generations()?;
        let mut failures = Vec::new();
        for &generation in generations.iter().rev() {
            let path = self.path_of(generation);
            match read_generation(&path, generation) {
                Ok(loaded) => return Ok(Some(loaded)),
                Err(e) => {
                    tracing::warn!(
                        generation,
                        path = %path.display(),
                        error = %e,
                        "checkpoint generation does not load; trying the previous one"
                    );
                    failures.push(format!("generation {generation}: {e}"));
                }
            }
        }
        if failures.is_empty() {
            Ok(None)
        } else {
            Err(CheckpointError::NoneLoads { dir: self.dir.clone(), failures })
        }
    }
}

/// Read and verify the checkpoint file of `generation`, allocating only for
/// lengths checked against the file's size and the limits.
fn read_generation(path: &Path, generation: u64) -> Result<(SnapshotMeta, Vec<u8>), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.to_path_buf(), reason };
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut front = [0u8; MAGIC.len() + 4];
    read_exact(&mut file, &mut front, path, file_len)?;
    if front[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a checkpoint file (bad magic)".into()));
    }
    let header_len = u32::from_le_bytes(front[MAGIC.len()..].try_into().expect("4 bytes"));
    let fixed = (front.len() + 4) as u64;
    if header_len > MAX_HEADER_BYTES || fixed + u64::from(header_len) > file_len {
        return Err(corrupt(format!("header length {header_len} does not fit a file of {file_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    read_exact(&mut file, &mut header, path, file_len)?;
    let mut crc = [0u8; 4];
    read_exact(&mut file, &mut crc, path, file_len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&front[MAGIC.len()..]);
    hasher.update(&header);
    if hasher.finalize() != u32::from_le_bytes(crc) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let header: Header = postcard::from_bytes(&header).map_err(|e| corrupt(format!("header: {e}")))?;
    if header.generation != generation {
        return Err(corrupt(format!("holds generation {}", header.generation)));
    }
    let data_len = file_len - fixed - u64::from(header_len);
    if header.bytes > MAX_CHECKPOINT_BYTES || header.bytes != data_len {
        return Err(corrupt(format!("{} data bytes recorded, {data_len} in the file", header.bytes)));
    }
    let mut data = vec![0u8; header.bytes as usize];
    read_exact(&mut file, &mut data, path, file_len)?;
    if <[u8; 32]>::from(Sha256::digest(&data)) != header.sha256 {
        return Err(corrupt("data does not match its checksum".into()));
    }
    Ok((header.meta, data))
}

fn read_exact(file: &mut File, buf: &mut [u8], path: &Path, file_len: u64) -> Result<(), CheckpointError> {
    file.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            CheckpointError::Corrupt { path: path.to_path_buf(), reason: format!("truncated at {file_len} bytes") }
        }
        _ => CheckpointError::Io { path: path.to_path_buf(), source: e },
    })
}

/// Checkpoints stored by sled (format 1): read once, to move them into files.
pub mod legacy {
    use super::*;

    /// Bytes per chunk sled's format stored.
    pub(crate) const CHUNK_BYTES: u64 = 64 * 1024;

    /// Format byte of the head record.
    pub(crate) const HEAD_FORMAT: u8 = 1;

    pub(crate) const HEAD_KEY: &[u8] = b"head";

    /// The head record of sled's format.
    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) struct Head {
        pub(crate) generation: u64,
        pub(crate) meta: SnapshotMeta,
        pub(crate) chunks: u32,
        pub(crate) bytes: u64,
        pub(crate) sha256: [u8; 32],
    }

    pub(crate) fn chunk_key(generation: u64, chunk: u32) -> Vec<u8> {
        format!("g{generation:020}/{chunk:010}").into_bytes()
    }

    /// Whether `dir` holds a sled database.
    pub fn present(dir: &Path) -> bool {
        dir.join("conf").is_file() && dir.join("db").is_file()
    }

    /// The checkpoint in the sled database in `dir`, verified, with its
    /// generation.
    pub fn load(dir: &Path) -> Result<Option<(u64, SnapshotMeta, Vec<u8>)>, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt { path: dir.to_path_buf(), reason };
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("checkpoint")?;
        let Some(bytes) = tree.get(HEAD_KEY)? else { return Ok(None) };
        let head: Head = match bytes.split_first() {
            Some((&HEAD_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| corrupt(format!("head: {e}")))?,
            _ => return Err(corrupt("head: unknown format".into())),
        };
        if head.bytes > MAX_CHECKPOINT_BYTES || u64::from(head.chunks) != head.bytes.div_ceil(CHUNK_BYTES) {
            return Err(corrupt(format!("{} chunks of {} bytes recorded", head.chunks, head.bytes)));
        }
        let mut data = Vec::with_capacity(head.bytes as usize);
        for chunk in 0..head.chunks {
            let piece = tree
                .get(chunk_key(head.generation, chunk))?
                .ok_or_else(|| corrupt(format!("chunk {chunk} of {} missing", head.chunks)))?;
            if piece.len() as u64 > CHUNK_BYTES || (data.len() + piece.len()) as u64 > head.bytes {
                return Err(corrupt(format!("chunk {chunk} is {} bytes", piece.len())));
            }
            data.extend_from_slice(&piece);
        }
        if data.len() as u64 != head.bytes || <[u8; 32]>::from(Sha256::digest(&data)) != head.sha256 {
            return Err(corrupt("data does not match its checksum".into()));
        }
        Ok(Some((head.generation, head.meta, data)))
    }

    /// Remove sled's files from `dir` (logged, not failed: they are no
    /// longer read).
    pub fn remove(dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            let result = match name {
                "blobs" => fs::remove_dir_all(&path),
                "conf" | "db" => fs::remove_file(&path),
                _ if name.starts_with("snap.") => fs::remove_file(&path),
                _ => continue,
            };
            if let Err(e) = result {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove sled's old checkpoint file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Fails every sync while its flag is set.
    #[derive(Debug)]
    struct FailingSync(Arc<AtomicBool>);

    impl FileSync for FailingSync {
        fn sync_file(&self, file: &File, path: &Path) -> io::Result<()> {
            if self.0.load(Ordering::SeqCst) {
                return Err(io::Error::other(format!("injected fdatasync failure on {}", path.display())));
            }
            file.sync_data()
        }

        fn sync_dir(&self, dir: &File, _: &Path) -> io::Result<()> {
            dir.sync_all()
        }
    }

    fn open_failing(dir: &Path, fail: Arc<AtomicBool>) -> Checkpoints {
        Checkpoints::open_with(dir, Arc::new(FailingSync(fail))).unwrap()
    }

    fn generations(store: &Checkpoints, _: &Path) -> Vec<u64> {
        store.generations().unwrap()
    }

    /// Flip bytes in the data of `generation`'s file.
    fn damage(store: &Checkpoints, _: &Path, generation: u64) {
        let path = store.path_of(generation);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 1000;
        bytes[at] ^= 0xff;
        fs::write(&path, bytes).unwrap();
    }

    include!("checkpoint_tests.rs");

    #[test]
    fn a_missing_newest_file_falls_back_and_a_lying_length_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::open(dir.path()).unwrap();
        store.save(&meta(10), &data(10)).unwrap();
        store.save(&meta(20), &data(20)).unwrap();
        // A header claiming more data than the file holds (and more than
        // the limit) is refused before any allocation of that size.
        let path = store.path_of(2);
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let error = read_generation(&path, 2).unwrap_err().to_string();
        assert!(error.contains("does not fit"), "{error}");
        assert_eq!(store.load().unwrap().unwrap().0, meta(10));
        fs::remove_file(&path).unwrap();
        assert_eq!(store.load().unwrap().unwrap().0, meta(10));
        fs::remove_file(store.path_of(1)).unwrap();
        assert!(store.load().unwrap().is_none());
    }

    #[test]
    fn a_checkpoint_in_sleds_old_format_is_moved_into_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("checkpoint").unwrap();
            let bytes = data(7);
            let mut chunks = 0;
            for piece in bytes.chunks(legacy::CHUNK_BYTES as usize) {
                tree.insert(legacy::chunk_key(5, chunks), piece).unwrap();
                chunks += 1;
            }
            let head = legacy::Head {
                generation: 5,
                meta: meta(7),
                chunks,
                bytes: bytes.len() as u64,
                sha256: Sha256::digest(&bytes).into(),
            };
            let mut encoded = vec![legacy::HEAD_FORMAT];
            encoded.extend(postcard::to_stdvec(&head).unwrap());
            tree.insert(legacy::HEAD_KEY, encoded).unwrap();
            db.flush().unwrap();
        }
        // sled lets go of its file lock from a thread of its own, a moment
        // after the database is dropped (a node migrating at start has no
        // earlier sled in its process): wait for it, a bounded while.
        let store = (0..100)
            .find_map(|_| {
                Checkpoints::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    None
                })
            })
            .expect("sled's lock is released within 5 s");
        assert_eq!(store.generations().unwrap(), [5]);
        assert_eq!(store.load().unwrap().unwrap(), (meta(7), data(7)));
        assert!(legacy::present(dir.path()), "sled's files stay until two generations are ours");
        store.save(&meta(8), &data(8)).unwrap();
        assert!(!legacy::present(dir.path()));
        assert_eq!(store.generations().unwrap(), [5, 6]);
        drop(store);
        let store = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().unwrap(), (meta(8), data(8)));
    }
}
