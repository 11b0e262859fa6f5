//! The Raft log's small durable metadata: the vote and the purge point.
//!
//! Stored as one file replaced atomically: write a temporary file,
//! `fdatasync` it, rename it over the old one, `fsync` the directory. A crash
//! leaves either the old or the new content, never a mix, and a CRC refuses a
//! file damaged some other way.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::raft_types::{LogId, Vote};

/// The on-disk format version; bumped if the layout changes.
const FORMAT: u8 = 1;

/// What the metadata file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMeta {
    /// The last vote this node saved (its term and whom it voted for).
    pub vote: Option<Vote>,
    /// The last log id purged (removed from the log, covered by a snapshot).
    pub last_purged: Option<LogId>,
}

/// Why the metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The file system failed.
    #[error("raft metadata {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged or from an unknown format.
    #[error("raft metadata {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The metadata file.
#[derive(Debug)]
pub struct MetaFile {
    path: PathBuf,
}

impl MetaFile {
    /// The metadata file at `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> MetaFile {
        MetaFile { path }
    }

    /// Read the metadata; a missing file is the empty default.
    pub fn load(&self) -> Result<RaftMeta, MetaError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RaftMeta::default()),
            Err(source) => return Err(MetaError::Io { path: self.path.clone(), source }),
        };
        let corrupt = |reason: String| MetaError::Corrupt { path: self.path.clone(), reason };
        if bytes.len() < 5 || bytes[0] != FORMAT {
            return Err(corrupt(format!("unknown format or too short ({} bytes)", bytes.len())));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        postcard::from_bytes(&body[1..]).map_err(|e| corrupt(e.to_string()))
    }

    /// Replace the metadata durably.
    pub fn save(&self, meta: &RaftMeta) -> Result<(), MetaError> {
        let io = |source| MetaError::Io { path: self.path.clone(), source };
        let mut bytes = vec![FORMAT];
        bytes.extend(
            postcard::to_stdvec(meta)
                .map_err(|e| MetaError::Corrupt { path: self.path.clone(), reason: format!("cannot encode: {e}") })?,
        );
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let temporary = self.path.with_extension("tmp");
        let mut file = File::create(&temporary).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        crate::durable::replace(&file, &temporary, &self.path).map_err(|e| io(e.source))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    #[test]
    fn metadata_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = MetaFile::new(dir.path().join("meta"));
        assert_eq!(file.load().unwrap(), RaftMeta::default());
        let meta =
            RaftMeta { vote: Some(Vote::new(3, 2)), last_purged: Some(LogId::new(CommittedLeaderId::new(2, 1), 40)) };
        file.save(&meta).unwrap();
        assert_eq!(file.load().unwrap(), meta);
        let mut bytes = fs::read(dir.path().join("meta")).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(dir.path().join("meta"), &bytes).unwrap();
        assert!(matches!(file.load(), Err(MetaError::Corrupt { .. })));
    }
}
