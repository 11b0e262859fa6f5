//! The history tier of a region on disk: every [`Record`] applied, in sled.
//!
//! `paymesh_core::history` explains the two tiers: the hot state decides,
//! and everything finished goes to history as records, written by every
//! replica in log order, tagged with the log index of the batch that made
//! them. This module keeps them in one sled database and answers exactly as
//! [`MemoryHistory`](paymesh_core::history::MemoryHistory) does: the write
//! path's [`Recall`] (as of the start of a batch), the readers'
//! [`HistoryRead`], account statements, and the journal that catch-up and
//! archiving read.
//!
//! # Layout
//!
//! One sled tree (the default one), its key spaces told apart by a first
//! byte, so that everything one batch writes (its journal records, the
//! pointers derived from them and the meta counters) goes in a single
//! `sled::Batch`: after a crash either all of it is there or none is.
//! Integers are big-endian, so byte order is numeric order; identifiers
//! (slugs and printable ASCII, never a 0 byte) are ended by a 0 byte where
//! something follows them.
//!
//! ```text
//! J | index u64 | seq u32                      -> postcard(record)   the journal
//! I | partner | 0 | idempotency key            -> position           first wins
//! T | transfer id                              -> position           first wins
//! P | transfer id                              -> position           first wins
//! U | top-up reference                         -> position           first wins
//! E | partner | 0 | cursor u64                 -> position           last wins
//! L | partner | 0 | at u64 | index u64 | seq u32 -> transfer id
//! A | account | 0 | at u64 | index u64 | seq u32 -> (empty)          a movement, under each of its accounts
//! D | partner                                  -> cursor u64         the partner's newest event deleted
//! M applied | M digest | M records | M deleted -> u64 | 32 bytes | u64 | u64
//! M archived                                   -> u64                an archive was confirmed through it
//! ```
//!
//! A position is `index u64 | seq u32` (12 bytes): the journal key of the
//! record without its space byte. The journal is the source of truth;
//! every other key is derived from a record and can be recomputed from it,
//! which is how retention finds what to delete. An account is keyed by its
//! display form (`partner:p:USD`, `fees:USD`, ...), unique because no
//! identifier in it holds a `:`.
//!
//! The digest is SHA-256 chained over the batches that hold records:
//! `SHA-256(previous || index u64 BE || for each record: length u32 BE ||
//! postcard bytes)`, 32 zero bytes before the first. A batch without
//! records advances [`History::last_index`] and nothing else: the journal
//! has nothing to show for it, and the digest must be recomputable from the
//! journal by a replica that catches up from it. Replicas that applied the
//! same log hold the same digest.
//!
//! # Reading while a replica decides
//!
//! [`Recall`] returns `Option`s: the write path cannot handle a failure
//! there, and must not take one for "no such record", which would decide
//! differently from the other replicas (accept a retried idempotency key a
//! second time, for one). So a sled error or a record that does not decode
//! while answering [`Recall`] or [`HistoryRead`] **panics**, naming the
//! failure: the replica cannot decide deterministically without its
//! history, the process exits and its supervisor restarts it, and the node
//! rebuilds from its log or its peers. Readers that can fail politely use
//! the fallible methods ([`History::get_transfer`],
//! [`History::events_after`], [`History::statement`], ...).
//!
//! # Durability
//!
//! sled's `flush` is not trusted (see ARCHITECTURE.md, "Durability"): it
//! issues `sync_file_range`, which persists neither file metadata nor the
//! drive's write cache. [`History::durable`] therefore flushes, then opens
//! and `fsync`s every file under the directory (`blobs/` included) and the
//! directories themselves. This is weaker than the Raft log's own files,
//! which are synced through the descriptor that wrote them: a writeback
//! error reported only to sled's descriptors (and consumed by its periodic
//! sync, which merely logs it) is not seen by a descriptor opened later, so
//! a page lost that way could go unnoticed. It is enough because history at
//! any index can be rebuilt: the records of a batch are a pure function of
//! the state and the log entry, so they can be re-derived from the Raft log
//! or copied from a peer's journal ([`History::journal_after`]), provided
//! the state machine purges the Raft log only behind history made durable
//! this way, and makes history durable through an index before it saves a
//! checkpoint at that index (a restart re-applies the log only after its
//! checkpoint, so history behind the checkpoint is not written again).
//!
//! # Retention
//!
//! [`History::delete_through`] deletes whole batches from the front of the
//! journal with every pointer derived from them (a pointer another record
//! owns, a later event under the same cursor, say, stays), in bounded sled
//! batches that never split a log batch. The digest and the last index are
//! unaffected. Afterwards a deleted record is simply not found; for events,
//! where "deleted" and "not yet written" must be told apart,
//! [`History::oldest_event_cursor`] and [`HistoryError::CursorExpired`]
//! say where retention stopped. A first-wins key whose owner was deleted
//! answers "none" even if a later duplicate record is kept: the later
//! record never was the answer.
//!
//! Nothing is deleted that was not archived first: [`History::archived_through`]
//! (the `M archived` key) is the highest index an archive of this node's
//! journal was confirmed for (`crate::archive`), and
//! [`History::deletable_through`] never reaches past it, nor past the last
//! batch whose records are all older than a cutoff (by each record's own
//! time, [`record_time`]) that the caller takes from the applied state's
//! clock.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use paymesh_core::history::{HistoryRead, IdempotencyRecord, ListToken, Movement, Recall, Record, TopUpRecord};
use paymesh_core::id::{IdempotencyKey, PartnerId, TopUpRef, TransferId};
use paymesh_core::ledger::AccountId;
use paymesh_core::state::{CursorExpired, Event, Participation, Transfer};
use paymesh_core::Timestamp;

#[cfg(test)]
pub(crate) mod tests;

/// The largest record written or read: a record comes from one log entry,
/// whose payload is at most
/// [`RECORD_PAYLOAD_BYTES_MAX`](crate::segment_log::RECORD_PAYLOAD_BYTES_MAX).
/// A longer value read from disk is damage, refused before it is decoded.
pub const RECORD_BYTES_MAX: usize = crate::segment_log::RECORD_PAYLOAD_BYTES_MAX;

/// How many records retention deletes in one sled batch (more when one log
/// batch holds more: a log batch is never split). Bounds the memory of one
/// deletion step and how long it holds up writes.
pub const DELETE_RECORDS_PER_BATCH_MAX: usize = 1_000;

/// The longest transfer id read back from a listing key: a region id (at
/// most a few dozen bytes), a colon and a u64.
const TRANSFER_ID_BYTES_MAX: usize = 256;

/// The first byte of each key space (see the module documentation).
mod space {
    pub(super) const JOURNAL: u8 = b'J';
    pub(super) const IDEMPOTENCY: u8 = b'I';
    pub(super) const TRANSFER: u8 = b'T';
    pub(super) const PARTICIPATION: u8 = b'P';
    pub(super) const TOP_UP: u8 = b'U';
    pub(super) const EVENT: u8 = b'E';
    pub(super) const LISTED: u8 = b'L';
    pub(super) const ACCOUNT: u8 = b'A';
    pub(super) const EVENTS_DELETED: u8 = b'D';
    pub(super) const DIGEST: u8 = b'G';
}

/// The key of the digest after the batch at `index`.
fn digest_key(index: u64) -> [u8; 9] {
    let mut key = [space::DIGEST; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

const META_APPLIED: &[u8] = b"Mapplied";
const META_DIGEST: &[u8] = b"Mdigest";
const META_RECORDS: &[u8] = b"Mrecords";
const META_DELETED: &[u8] = b"Mdeleted";
const META_ARCHIVED: &[u8] = b"Marchived";

/// Bytes of a position (`index u64 | seq u32`).
const POSITION_BYTES: usize = 12;
/// Bytes of a journal key.
const JOURNAL_KEY_BYTES: usize = 1 + POSITION_BYTES;
/// Bytes of a list token in a key (`at u64 | index u64 | seq u32`).
const TOKEN_BYTES: usize = 8 + POSITION_BYTES;

/// Why history could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// sled failed.
    #[error("history store (sled): {0}")]
    Sled(#[from] sled::Error),
    /// The file system failed (creating the directory, or syncing).
    #[error("history {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// What is stored is not what this module writes.
    #[error("history store is corrupt at key {key}: {reason}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A record that does not encode (a bug: every record type does).
    #[error("record {seq} of the batch at index {index} does not encode: {source}")]
    Encode {
        /// The batch.
        index: u64,
        /// The record's position in it.
        seq: usize,
        /// The error.
        source: postcard::Error,
    },
    /// A record over [`RECORD_BYTES_MAX`].
    #[error("record {seq} of the batch at index {index} is too large ({bytes} bytes, at most {RECORD_BYTES_MAX})")]
    TooLarge {
        /// The batch.
        index: u64,
        /// The record's position in it.
        seq: usize,
        /// Its encoded size.
        bytes: usize,
    },
    /// Events after the cursor asked for were deleted by retention.
    #[error(transparent)]
    CursorExpired(#[from] CursorExpired),
    /// Journal batches after the index asked for were deleted by retention.
    #[error("the journal after index {requested} is no longer held: deleted through index {deleted_through}")]
    Deleted {
        /// The index asked for.
        requested: u64,
        /// The journal was deleted through this index.
        deleted_through: u64,
    },
}

type Result<T, E = HistoryError> = std::result::Result<T, E>;

fn corrupt(key: &[u8], reason: impl Into<String>) -> HistoryError {
    HistoryError::Corrupt { key: key.escape_ascii().to_string(), reason: reason.into() }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io { path: path.to_path_buf(), source }
}

/// Stop the process on a failure the caller cannot report (see the module
/// documentation, "Reading while a replica decides").
fn or_stop<T>(result: Result<T>) -> T {
    result.unwrap_or_else(|e| {
        panic!(
            "history store unreadable: {e}. A replica cannot decide without its history: \
             stopping so that the node is restarted and rebuilt"
        )
    })
}

// --- keys -------------------------------------------------------------------

fn position(index: u64, seq: u32) -> [u8; POSITION_BYTES] {
    let mut bytes = [0u8; POSITION_BYTES];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    bytes
}

fn parse_position(key: &[u8], bytes: &[u8]) -> Result<(u64, u32)> {
    let bytes: &[u8; POSITION_BYTES] =
        bytes.try_into().map_err(|_| corrupt(key, format!("a position of {} bytes, not 12", bytes.len())))?;
    let (index, seq) = bytes.split_at(8);
    Ok((u64::from_be_bytes(index.try_into().expect("8 bytes")), u32::from_be_bytes(seq.try_into().expect("4 bytes"))))
}

pub(crate) fn journal_key(index: u64, seq: u32) -> [u8; JOURNAL_KEY_BYTES] {
    let mut key = [space::JOURNAL; JOURNAL_KEY_BYTES];
    key[1..].copy_from_slice(&position(index, seq));
    key
}

fn parse_journal_key(key: &[u8]) -> Result<(u64, u32)> {
    match key.split_first() {
        Some((&space::JOURNAL, rest)) if key.len() == JOURNAL_KEY_BYTES => parse_position(key, rest),
        _ => Err(corrupt(key, "not a journal key")),
    }
}

/// `space | name`.
fn named(space: u8, name: &str) -> Vec<u8> {
    debug_assert!(!name.as_bytes().contains(&0), "identifiers hold no 0 byte");
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(space);
    key.extend_from_slice(name.as_bytes());
    key
}

/// `space | scope | 0`: the prefix of everything under `scope`.
fn scope(space: u8, scope: &str) -> Vec<u8> {
    let mut key = named(space, scope);
    key.push(0);
    key
}

/// The first key after everything under a [`scope`] prefix (which ends in 0).
fn scope_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("a scope prefix ends in 0") = 1;
    end
}

fn with_token(prefix: &[u8], token: &ListToken) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + TOKEN_BYTES);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&token.at.unix_ms().to_be_bytes());
    key.extend_from_slice(&position(token.index, token.seq));
    key
}

/// The list token at the end of a listing or statement key.
fn parse_token(key: &[u8], prefix_len: usize) -> Result<ListToken> {
    let tail = key
        .get(prefix_len..)
        .filter(|tail| tail.len() == TOKEN_BYTES)
        .ok_or_else(|| corrupt(key, "a listing key without its 20-byte position"))?;
    let (at, rest) = tail.split_at(8);
    let (index, seq) = parse_position(key, rest)?;
    Ok(ListToken { at: Timestamp::from_unix_ms(u64::from_be_bytes(at.try_into().expect("8 bytes"))), index, seq })
}

fn with_u64(prefix: &[u8], value: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&value.to_be_bytes());
    key
}

fn parse_u64(key: &[u8], bytes: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| corrupt(key, format!("{} bytes, not a u64", bytes.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn idempotency_key(partner: &PartnerId, key: &IdempotencyKey) -> Vec<u8> {
    let mut bytes = scope(space::IDEMPOTENCY, partner.as_str());
    bytes.extend_from_slice(key.as_str().as_bytes());
    bytes
}

fn account_scope(account: &AccountId) -> Vec<u8> {
    scope(space::ACCOUNT, &account.to_string())
}

/// Who a derived key belongs to when two records derive the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// The first record keeps it (`MemoryHistory`'s `or_insert`).
    First,
    /// The last record takes it (`MemoryHistory`'s `insert`).
    Last,
    /// The key holds the record's own position: no other record derives it.
    Own,
}

/// A key derived from a record, and its value.
#[derive(Debug)]
struct Derived {
    key: Vec<u8>,
    value: Vec<u8>,
    claim: Claim,
}

/// Every key the record at (`index`, `seq`) derives, besides its journal key.
fn derived(record: &Record, index: u64, seq: u32) -> Vec<Derived> {
    let pointer = |key: Vec<u8>, claim| Derived { key, value: position(index, seq).to_vec(), claim };
    match record {
        Record::Listed { partner, transfer, at } => {
            let key = with_token(&scope(space::LISTED, partner.as_str()), &ListToken { at: *at, index, seq });
            vec![Derived { key, value: transfer.to_string().into_bytes(), claim: Claim::Own }]
        }
        Record::Transfer(transfer) => {
            vec![pointer(named(space::TRANSFER, &transfer.view.id.to_string()), Claim::First)]
        }
        Record::Participation { transfer, .. } => {
            vec![pointer(named(space::PARTICIPATION, &transfer.to_string()), Claim::First)]
        }
        Record::Idempotency { partner, key, .. } => vec![pointer(idempotency_key(partner, key), Claim::First)],
        Record::TopUp { reference, .. } => vec![pointer(named(space::TOP_UP, reference.as_str()), Claim::First)],
        Record::Event { partner, event } => {
            vec![pointer(with_u64(&scope(space::EVENT, partner.as_str()), event.cursor), Claim::Last)]
        }
        Record::Movement(movement) => {
            let token = ListToken { at: movement.at, index, seq };
            let mut keys = vec![Derived {
                key: with_token(&account_scope(&movement.debit), &token),
                value: Vec::new(),
                claim: Claim::Own,
            }];
            if movement.credit != movement.debit {
                keys.push(Derived {
                    key: with_token(&account_scope(&movement.credit), &token),
                    value: Vec::new(),
                    claim: Claim::Own,
                });
            }
            keys
        }
        Record::Operator { .. } => Vec::new(),
    }
}

/// A key derived from one record that leads to another: named by kind
/// only, as records hold personal data.
fn mismatch(key: &[u8], found: &Record) -> HistoryError {
    let kind = match found {
        Record::Listed { .. } => "a listing",
        Record::Transfer(_) => "a transfer",
        Record::Participation { .. } => "a participation",
        Record::Idempotency { .. } => "an idempotency record",
        Record::TopUp { .. } => "a top-up",
        Record::Movement(_) => "a movement",
        Record::Event { .. } => "an event",
        Record::Operator { .. } => "an operator command",
    };
    corrupt(key, format!("leads to {kind} that does not derive it"))
}

pub(crate) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<Record> {
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(corrupt(key, format!("a record of {} bytes, over {RECORD_BYTES_MAX}", bytes.len())));
    }
    postcard::from_bytes(bytes).map_err(|e| corrupt(key, format!("the record does not decode: {e}")))
}

/// A record's own time: when what it records happened (for a finished
/// transfer or participation, when it last changed). Retention compares it
/// with a cutoff taken from the applied state's clock.
pub fn record_time(record: &Record) -> Timestamp {
    match record {
        Record::Listed { at, .. } | Record::Operator { at, .. } => *at,
        Record::Transfer(transfer) => transfer.view.updated_at.max(transfer.view.created_at),
        Record::Participation { participation, .. } => participation.updated_at.max(participation.created_at),
        Record::Idempotency { record, .. } => record.at,
        Record::TopUp { record, .. } => record.at,
        Record::Movement(movement) => movement.at,
        Record::Event { event, .. } => event.at,
    }
}

/// Where [`History::deletable_through`] stopped, and why there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeletionStop {
    /// At the index asked for.
    Requested,
    /// At [`History::archived_through`]: what follows was not archived.
    Archive,
    /// Before the batch at `index`, which holds a record of time `at`, not
    /// older than the cutoff.
    Retention {
        /// The first batch kept for its age.
        index: u64,
        /// Its youngest record's time.
        at: Timestamp,
    },
    /// At the last index written: there is nothing after it.
    End,
}

/// How far retention may delete: through `through`, stopped by `stop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deletable {
    /// The journal may be deleted through this index (at most what is
    /// deleted already means nothing more may be).
    pub through: u64,
    /// Why not further.
    pub stop: DeletionStop,
}

/// What the meta keys hold, cached.
#[derive(Clone, Copy, Debug)]
struct Meta {
    last_index: u64,
    digest: [u8; 32],
    records: u64,
}

/// A region's history on disk. See the module documentation.
///
/// Writes ([`History::write`], [`History::delete_through`]) are serialised
/// among themselves; reads run alongside them and see each sled batch whole.
#[derive(Debug)]
pub struct History {
    db: sled::Db,
    dir: PathBuf,
    meta: Mutex<Meta>,
    /// The journal is deleted through this index, or is being: raised before
    /// each deletion batch is applied, so that a reader who finds a pointer
    /// and then not its record can tell retention racing it from damage.
    deleted_through: AtomicU64,
    /// An archive of the journal was confirmed through this index.
    archived_through: AtomicU64,
    /// Serialises writers.
    writer: Mutex<()>,
}

impl History {
    /// Open (or create) the history in `dir`, with sled's page cache at
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<History> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent).and_then(|handle| handle.sync_all()).map_err(io_error(parent))?;
            }
        }
        let db = sled::Config::new().path(dir).cache_capacity(cache_bytes).open()?;
        let read_u64 = |key: &[u8]| -> Result<u64> { db.get(key)?.map_or(Ok(0), |v| parse_u64(key, &v)) };
        let last_index = read_u64(META_APPLIED)?;
        let records = read_u64(META_RECORDS)?;
        let deleted_through = read_u64(META_DELETED)?;
        let archived_through = read_u64(META_ARCHIVED)?;
        let digest = match db.get(META_DIGEST)? {
            None => [0; 32],
            Some(bytes) => bytes.as_ref().try_into().map_err(|_| corrupt(META_DIGEST, "not 32 bytes"))?,
        };
        // Checked on the way in, as every write asserts on the way out: the
        // journal ends at or below the last index written and holds records
        // exactly when the counter says it does.
        let last_journal = db.scan_prefix([space::JOURNAL]).next_back().transpose()?;
        match &last_journal {
            Some((key, _)) => {
                let (index, _) = parse_journal_key(key)?;
                if index > last_index || records == 0 {
                    return Err(corrupt(
                        key,
                        format!("a journal batch at {index} with {records} records counted, last index {last_index}"),
                    ));
                }
            }
            None if records != 0 => return Err(corrupt(META_RECORDS, format!("{records} records, empty journal"))),
            None => {}
        }
        if deleted_through > last_index {
            return Err(corrupt(META_DELETED, format!("deleted through {deleted_through}, last index {last_index}")));
        }
        if archived_through > last_index {
            return Err(corrupt(
                META_ARCHIVED,
                format!("archived through {archived_through}, last index {last_index}"),
            ));
        }
        Ok(History {
            db,
            dir: dir.to_path_buf(),
            meta: Mutex::new(Meta { last_index, digest, records }),
            deleted_through: AtomicU64::new(deleted_through),
            archived_through: AtomicU64::new(archived_through),
            writer: Mutex::new(()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta(&self) -> Meta {
        *self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of the last batch written (0 before any).
    pub fn last_index(&self) -> u64 {
        self.meta().last_index
    }

    /// The running digest of every batch with records written (see the
    /// module documentation); 32 zero bytes before any.
    pub fn digest(&self) -> [u8; 32] {
        self.meta().digest
    }

    /// How many records the journal holds (written, less deleted by
    /// retention).
    pub fn records(&self) -> u64 {
        self.meta().records
    }

    /// The journal is deleted through this index by retention (0 if never).
    pub fn deleted_through(&self) -> u64 {
        self.deleted_through.load(Ordering::SeqCst)
    }

    /// The highest index an archive of this journal was confirmed for (0 if
    /// none): retention deletes nothing after it.
    pub fn archived_through(&self) -> u64 {
        self.archived_through.load(Ordering::SeqCst)
    }

    /// Remember that an archive of the journal through `index` was
    /// confirmed (the caller compared the archive's digest with this
    /// journal's): [`History::archived_through`] becomes `index` if that is
    /// higher, durably (with [`History::durable`]) before this returns.
    /// Refused beyond [`History::last_index`].
    pub fn confirm_archived(&self, index: u64) -> Result<u64> {
        {
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let last_index = self.meta().last_index;
            if index > last_index {
                return Err(corrupt(
                    META_ARCHIVED,
                    format!("an archive through {index} confirmed, but history reaches {last_index} only"),
                ));
            }
            let through = self.archived_through().max(index);
            self.db.insert(META_ARCHIVED, &through.to_be_bytes())?;
            self.archived_through.store(through, Ordering::SeqCst);
        }
        self.durable()?;
        Ok(self.archived_through())
    }

    /// The journal's records with an index in `first..=last`, as stored
    /// (`index`, `seq`, postcard bytes), in order, read lazily: for
    /// archiving, which frames them without decoding twice.
    pub(crate) fn journal_raw(
        &self,
        first: u64,
        last: u64,
    ) -> impl Iterator<Item = Result<(u64, u32, sled::IVec)>> + use<> {
        let range = (first <= last).then(|| self.db.range(journal_key(first, 0)..=journal_key(last, u32::MAX)));
        range.into_iter().flatten().map(|item| {
            let (key, value) = item?;
            let (index, seq) = parse_journal_key(&key)?;
            if value.len() > RECORD_BYTES_MAX {
                return Err(corrupt(&key, format!("a record of {} bytes, over {RECORD_BYTES_MAX}", value.len())));
            }
            Ok((index, seq, value))
        })
    }

    /// How far the journal may be deleted: through the highest index at
    /// most `requested`, [`History::archived_through`] and
    /// [`History::last_index`], such that every record held at or below it
    /// is older than `before` (by [`record_time`]); and what stopped it
    /// there. Reads the journal from its first retained batch up to that
    /// bound, no further.
    pub fn deletable_through(&self, requested: u64, before: Timestamp) -> Result<Deletable> {
        let archived = self.archived_through();
        let last = self.last_index();
        let (limit, stop) = if requested <= archived && requested <= last {
            (requested, DeletionStop::Requested)
        } else if archived <= last {
            (archived, DeletionStop::Archive)
        } else {
            (last, DeletionStop::End)
        };
        let first = self.deleted_through().saturating_add(1);
        for item in self.journal_raw(first, limit) {
            let (index, seq, bytes) = item?;
            let record = decode_record(&journal_key(index, seq), &bytes)?;
            let at = record_time(&record);
            if at >= before {
                return Ok(Deletable { through: index - 1, stop: DeletionStop::Retention { index, at } });
            }
        }
        Ok(Deletable { through: limit, stop })
    }

    /// Whether the first batch with records after `after` holds only records
    /// older than `before`: its index if so (retention's backlog check: such
    /// a batch waits only for an archive).
    pub fn first_batch_older_than(&self, after: u64, before: Timestamp) -> Result<Option<u64>> {
        let mut batch = None;
        for item in self.journal_raw(after.saturating_add(1), self.last_index()) {
            let (index, seq, bytes) = item?;
            if batch.is_some_and(|first| first != index) {
                break;
            }
            batch = Some(index);
            if record_time(&decode_record(&journal_key(index, seq), &bytes)?) >= before {
                return Ok(None);
            }
        }
        Ok(batch)
    }

    /// The index of the first batch in the journal (0 if it is empty).
    pub fn first_index(&self) -> Result<u64> {
        match self.db.scan_prefix([space::JOURNAL]).next().transpose()? {
            Some((key, _)) => Ok(parse_journal_key(&key)?.0),
            None => Ok(0),
        }
    }

    /// The bytes of sled's files.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Write the records of the log entry at `index`, all in one sled batch.
    /// A batch at or below [`History::last_index`] is already here (the
    /// entry is re-applied after a restart) and is skipped.
    pub fn write(&self, index: u64, records: &[Record]) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.meta();
        if index <= meta.last_index {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut encoded = Vec::with_capacity(records.len());
        // First-wins keys taken earlier in this batch: sled does not see the
        // batch's own writes before it is applied.
        let mut claimed = HashSet::new();
        for (n, record) in records.iter().enumerate() {
            let seq = u32::try_from(n).expect("fewer than 2^32 records per batch");
            let bytes = postcard::to_stdvec(record).map_err(|source| HistoryError::Encode { index, seq: n, source })?;
            if bytes.len() > RECORD_BYTES_MAX {
                return Err(HistoryError::TooLarge { index, seq: n, bytes: bytes.len() });
            }
            for Derived { key, value, claim } in derived(record, index, seq) {
                if claim == Claim::First {
                    if claimed.contains(&key) || self.db.contains_key(&key)? {
                        continue;
                    }
                    claimed.insert(key.clone());
                }
                batch.insert(key, value);
            }
            batch.insert(&journal_key(index, seq), bytes.as_slice());
            encoded.push(bytes);
        }
        let digest = crate::chain_encoded(&meta.digest, index, encoded.iter().map(Vec::as_slice));
        if !records.is_empty() {
            // The digest after each batch with records, kept (retention
            // leaves them), so a snapshot's digest at its index can be
            // checked against this history's.
            batch.insert(digest_key(index).as_slice(), &digest);
        }
        let held = meta.records + records.len() as u64;
        batch.insert(META_APPLIED, &index.to_be_bytes());
        batch.insert(META_DIGEST, &digest);
        batch.insert(META_RECORDS, &held.to_be_bytes());
        self.db.apply_batch(batch)?;
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) = Meta { last_index: index, digest, records: held };
        Ok(())
    }

    /// The running digest after the batch at `index`: that of the last batch
    /// with records at or below it (32 zero bytes before any); `None` if
    /// history has not reached `index`.
    pub fn digest_at(&self, index: u64) -> Result<Option<[u8; 32]>> {
        if index > self.last_index() {
            return Ok(None);
        }
        let found = self.db.range(digest_key(0)..=digest_key(index)).next_back().transpose()?;
        match found {
            None => Ok(Some([0; 32])),
            Some((key, value)) => {
                value.as_ref().try_into().map(Some).map_err(|_| corrupt(&key, "a digest of other than 32 bytes"))
            }
        }
    }

    /// History as of the start of the batch at `index`: what a batch
    /// written at `index` or later holds is not seen.
    pub fn at(&self, index: u64) -> HistoryAt<'_> {
        HistoryAt { history: self, before: index }
    }

    /// A finished transfer this region coordinated.
    pub fn get_transfer(&self, id: &TransferId) -> Result<Option<Transfer>> {
        self.at(u64::MAX).get_transfer(id)
    }

    /// A finished participation.
    pub fn get_participation(&self, id: &TransferId) -> Result<Option<Participation>> {
        self.at(u64::MAX).get_participation(id)
    }

    /// The first answer under a partner's idempotency key.
    pub fn get_idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>> {
        self.at(u64::MAX).get_idempotency(partner, key)
    }

    /// A top-up by its reference.
    pub fn get_top_up(&self, reference: &TopUpRef) -> Result<Option<TopUpRecord>> {
        self.at(u64::MAX).get_top_up(reference)
    }

    /// The journal record at (`index`, `seq`); `None` if retention deleted
    /// it (or is deleting it).
    fn pointed_record(&self, pointer_key: &[u8], index: u64, seq: u32) -> Result<Option<Record>> {
        let key = journal_key(index, seq);
        match self.db.get(key)? {
            Some(bytes) => decode_record(&key, &bytes).map(Some),
            None if index <= self.deleted_through() => Ok(None),
            None => Err(corrupt(pointer_key, format!("points to ({index}, {seq}), which the journal does not hold"))),
        }
    }

    /// The record a pointer key points to, if the pointer exists and was
    /// written before `before`.
    fn pointed(&self, key: &[u8], before: u64) -> Result<Option<Record>> {
        let Some(value) = self.db.get(key)? else { return Ok(None) };
        let (index, seq) = parse_position(key, &value)?;
        if index >= before {
            return Ok(None);
        }
        self.pointed_record(key, index, seq)
    }

    /// The transfers `partner` takes part in, after the page token `after`
    /// (from the start if `None`), at most `max`, each with its token: the
    /// answer of [`HistoryRead::listed`].
    pub fn listed_after(
        &self,
        partner: &PartnerId,
        after: Option<&ListToken>,
        max: usize,
    ) -> Result<Vec<(ListToken, TransferId)>> {
        let prefix = scope(space::LISTED, partner.as_str());
        let start = match after {
            Some(token) => Bound::Excluded(with_token(&prefix, token)),
            None => Bound::Included(prefix.clone()),
        };
        let mut listed = Vec::new();
        for item in self.db.range((start, Bound::Excluded(scope_end(&prefix)))).take(max) {
            let (key, value) = item?;
            let token = parse_token(&key, prefix.len())?;
            if value.len() > TRANSFER_ID_BYTES_MAX {
                return Err(corrupt(&key, format!("a transfer id of {} bytes", value.len())));
            }
            let id = std::str::from_utf8(&value)
                .ok()
                .and_then(|text| TransferId::parse(text).ok())
                .ok_or_else(|| corrupt(&key, "the value is not a transfer id"))?;
            listed.push((token, id));
        }
        Ok(listed)
    }

    /// The partner's events above `after`, at most `max`, stopping early
    /// (and saying so) at one that retention deleted while this ran.
    fn events_held(&self, partner: &PartnerId, after: u64, max: usize) -> Result<(Vec<Event>, bool)> {
        let prefix = scope(space::EVENT, partner.as_str());
        let start = with_u64(&prefix, after.saturating_add(1));
        let mut events = Vec::new();
        for item in self.db.range(start..scope_end(&prefix)).take(max) {
            let (key, value) = item?;
            let (index, seq) = parse_position(&key, &value)?;
            match self.pointed_record(&key, index, seq)? {
                Some(Record::Event { partner: owner, event })
                    if owner == *partner && key.ends_with(&event.cursor.to_be_bytes()) =>
                {
                    events.push(event)
                }
                Some(other) => return Err(mismatch(&key, &other)),
                None => return Ok((events, true)),
            }
        }
        Ok((events, false))
    }

    /// Up to `max` of a partner's events with a cursor above `after`: the
    /// answer of [`HistoryRead::events`], or [`HistoryError::CursorExpired`]
    /// if retention deleted any event above `after` (a reader resuming
    /// there would miss it).
    pub fn events_after(&self, partner: &PartnerId, after: u64, max: usize) -> Result<Vec<Event>> {
        let (events, cut) = self.events_held(partner, after, max)?;
        // Checked after reading: a deletion that raced the read is seen.
        if let Some(oldest) = self.oldest_event_cursor(partner)? {
            if after.saturating_add(1) < oldest {
                return Err(CursorExpired { requested: after, oldest }.into());
            }
        }
        if cut {
            return Err(corrupt(
                &scope(space::EVENT, partner.as_str()),
                "an event's record is missing, yet retention did not reach its cursor",
            ));
        }
        Ok(events)
    }

    /// Where retention stopped on the partner's event stream: `None` if it
    /// deleted none of the partner's events (every event written is held);
    /// otherwise the cursor after the newest one it deleted, so that an
    /// event below it was deleted and one at or above it not found was
    /// never written.
    pub fn oldest_event_cursor(&self, partner: &PartnerId) -> Result<Option<u64>> {
        let key = named(space::EVENTS_DELETED, partner.as_str());
        match self.db.get(&key)? {
            Some(bytes) => Ok(Some(parse_u64(&key, &bytes)?.saturating_add(1))),
            None => Ok(None),
        }
    }

    /// Every movement touching `account` with `from <= at < to`, in order
    /// of (time, log position), after the page token `after`, at most
    /// `max`, each with its token.
    pub fn statement(
        &self,
        account: &AccountId,
        from: Timestamp,
        to: Timestamp,
        after: Option<ListToken>,
        max: usize,
    ) -> Result<Vec<(ListToken, Movement)>> {
        if from >= to || after.is_some_and(|token| token.at >= to) {
            return Ok(Vec::new());
        }
        let prefix = account_scope(account);
        let first = ListToken { at: from, index: 0, seq: 0 };
        let start = match after {
            Some(token) if token >= first => Bound::Excluded(with_token(&prefix, &token)),
            _ => Bound::Included(with_token(&prefix, &first)),
        };
        // Every key of a movement at `to` is longer than this bound, so above it.
        let end = Bound::Excluded(with_u64(&prefix, to.unix_ms()));
        let mut movements = Vec::new();
        for item in self.db.range((start, end)) {
            if movements.len() >= max {
                break;
            }
            let (key, _) = item?;
            let token = parse_token(&key, prefix.len())?;
            match self.pointed_record(&key, token.index, token.seq)? {
                Some(Record::Movement(movement))
                    if movement.at == token.at && (movement.debit == *account || movement.credit == *account) =>
                {
                    movements.push((token, movement))
                }
                Some(other) => return Err(mismatch(&key, &other)),
                // Deleted by retention while this ran: not part of history any more.
                None => {}
            }
        }
        Ok(movements)
    }

    /// Whole batches of the journal with an index above `after`, in order:
    /// as many as fit in `max_bytes` of encoded records, and at least one
    /// (even if larger). A batch is never split. For a replica catching up
    /// and for archiving; [`HistoryError::Deleted`] if retention deleted
    /// batches above `after`.
    pub fn journal_after(&self, after: u64, max_bytes: usize) -> Result<Vec<(u64, Vec<Record>)>> {
        let mut batches = Vec::new();
        let mut total = 0usize;
        if let Some(first) = after.checked_add(1) {
            let mut current: Option<(u64, Vec<Record>, usize)> = None;
            for item in self.db.range(journal_key(first, 0)..=journal_key(u64::MAX, u32::MAX)) {
                let (key, value) = item?;
                let (index, seq) = parse_journal_key(&key)?;
                if current.as_ref().is_some_and(|(at, _, _)| *at != index) {
                    let (at, records, bytes) = current.take().expect("a batch");
                    total += bytes;
                    batches.push((at, records));
                    if total >= max_bytes {
                        break;
                    }
                }
                let (_, records, bytes) = current.get_or_insert_with(|| (index, Vec::new(), 0));
                if seq as usize != records.len() {
                    return Err(corrupt(&key, format!("record {seq} follows {} of its batch", records.len())));
                }
                if !batches.is_empty() && total + *bytes + value.len() > max_bytes {
                    // This batch would overflow: it starts the next call.
                    current = None;
                    break;
                }
                records.push(decode_record(&key, &value)?);
                *bytes += value.len();
            }
            if let Some((at, records, _)) = current {
                batches.push((at, records));
            }
        }
        // Checked after reading: a deletion that raced the read is seen.
        let deleted_through = self.deleted_through();
        if after < deleted_through {
            return Err(HistoryError::Deleted { requested: after, deleted_through });
        }
        Ok(batches)
    }

    /// Make everything written so far survive power loss: sled's flush, then
    /// `fsync` of every file and directory under [`History::dir`]. See the
    /// module documentation for why this is weaker than the log's own
    /// files, and why it is enough.
    pub fn durable(&self) -> Result<()> {
        self.db.flush()?;
        sync_tree(&self.dir)
    }

    /// Delete the journal batches with an index at or below `index` (at
    /// most [`History::last_index`]) and every key derived from their
    /// records, in sled batches of about [`DELETE_RECORDS_PER_BATCH_MAX`]
    /// records that never split a log batch, each atomic with the counters.
    /// Returns how many records went. The digest and the last index stay.
    pub fn delete_through(&self, index: u64) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let (records, done) = self.delete_step(index)?;
            deleted += records;
            if done {
                return Ok(deleted);
            }
        }
    }

    /// One deletion batch; whether the deletion is complete.
    fn delete_step(&self, index: u64) -> Result<(usize, bool)> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.meta();
        let through = index.min(meta.last_index);
        let mut batch = sled::Batch::default();
        let mut records = 0usize;
        let mut last_batch = None;
        let mut complete = true;
        let mut events_deleted: BTreeMap<PartnerId, u64> = BTreeMap::new();
        for item in self.db.range(journal_key(0, 0)..=journal_key(through, u32::MAX)) {
            let (key, value) = item?;
            let (at, seq) = parse_journal_key(&key)?;
            if records >= DELETE_RECORDS_PER_BATCH_MAX && last_batch != Some(at) {
                complete = false;
                break;
            }
            let record = decode_record(&key, &value)?;
            for Derived { key: derived_key, value: derived_value, claim } in derived(&record, at, seq) {
                // A pointer another record owns stays.
                if claim != Claim::Own && self.db.get(&derived_key)?.is_none_or(|held| held != derived_value) {
                    continue;
                }
                if let Record::Event { partner, event } = &record {
                    let newest = events_deleted.entry(partner.clone()).or_default();
                    *newest = (*newest).max(event.cursor);
                }
                batch.remove(derived_key);
            }
            batch.remove(&key[..]);
            records += 1;
            last_batch = Some(at);
        }
        for (partner, cursor) in events_deleted {
            let key = named(space::EVENTS_DELETED, partner.as_str());
            let before = self.db.get(&key)?.map_or(Ok(0), |bytes| parse_u64(&key, &bytes))?;
            batch.insert(key, &before.max(cursor).to_be_bytes());
        }
        // Only whole log batches were taken, so the last one taken is gone
        // entirely; when the scan reached the end, everything through
        // `through` is.
        let before = self.deleted_through();
        let reached = if complete { through } else { last_batch.unwrap_or(0) };
        let deleted_through = before.max(reached);
        if records == 0 && deleted_through == before {
            return Ok((0, true));
        }
        let held = meta.records.checked_sub(records as u64).ok_or_else(|| {
            corrupt(META_RECORDS, format!("{} records counted, {records} more deleted", meta.records))
        })?;
        batch.insert(META_RECORDS, &held.to_be_bytes());
        batch.insert(META_DELETED, &deleted_through.to_be_bytes());
        // Announced before the records go (see the field's documentation),
        // and withdrawn if they do not.
        self.deleted_through.store(deleted_through, Ordering::SeqCst);
        if let Err(e) = self.db.apply_batch(batch) {
            self.deleted_through.store(before, Ordering::SeqCst);
            return Err(e.into());
        }
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).records = held;
        Ok((records, complete))
    }
}

/// `fsync` every regular file under `dir` and every directory, `dir` last.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            match File::open(&path) {
                Ok(file) => file.sync_all().map_err(io_error(&path))?,
                // sled removed it (a blob replaced, a segment file gone)
                // since the directory was read: nothing to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
    }
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(io_error(dir))
}

/// [`History`] as of the start of one batch: [`History::at`].
#[derive(Clone, Copy, Debug)]
pub struct HistoryAt<'a> {
    history: &'a History,
    before: u64,
}

impl HistoryAt<'_> {
    /// The record `key` points to, if written before this recall's batch,
    /// and if `pick` takes it; damage if `pick` gives it back.
    fn find<T>(&self, key: &[u8], pick: impl FnOnce(Record) -> Result<T, Record>) -> Result<Option<T>> {
        match self.history.pointed(key, self.before)? {
            None => Ok(None),
            Some(record) => pick(record).map(Some).map_err(|other| mismatch(key, &other)),
        }
    }

    /// The first answer under a partner's idempotency key.
    pub fn get_idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>> {
        self.find(&idempotency_key(partner, key), |found| match found {
            Record::Idempotency { partner: p, key: k, record } if p == *partner && k == *key => Ok(record),
            other => Err(other),
        })
    }

    /// A finished transfer this region coordinated.
    pub fn get_transfer(&self, id: &TransferId) -> Result<Option<Transfer>> {
        self.find(&named(space::TRANSFER, &id.to_string()), |found| match found {
            Record::Transfer(transfer) if transfer.view.id == *id => Ok(transfer),
            other => Err(other),
        })
    }

    /// A finished participation.
    pub fn get_participation(&self, id: &TransferId) -> Result<Option<Participation>> {
        self.find(&named(space::PARTICIPATION, &id.to_string()), |found| match found {
            Record::Participation { transfer, participation } if transfer == *id => Ok(participation),
            other => Err(other),
        })
    }

    /// A top-up by its reference.
    pub fn get_top_up(&self, reference: &TopUpRef) -> Result<Option<TopUpRecord>> {
        self.find(&named(space::TOP_UP, reference.as_str()), |found| match found {
            Record::TopUp { reference: r, record } if r == *reference => Ok(record),
            other => Err(other),
        })
    }
}

/// Panics on a storage failure: see the module documentation.
impl Recall for HistoryAt<'_> {
    fn idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Option<IdempotencyRecord> {
        or_stop(self.get_idempotency(partner, key))
    }
    fn transfer(&self, id: &TransferId) -> Option<Transfer> {
        or_stop(self.get_transfer(id))
    }
    fn participation(&self, id: &TransferId) -> Option<Participation> {
        or_stop(self.get_participation(id))
    }
    fn top_up(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        or_stop(self.get_top_up(reference))
    }
}

/// Everything written: [`History::at`]`(u64::MAX)`. Panics on a storage
/// failure: see the module documentation.
impl Recall for History {
    fn idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Option<IdempotencyRecord> {
        self.at(u64::MAX).idempotency(partner, key)
    }
    fn transfer(&self, id: &TransferId) -> Option<Transfer> {
        self.at(u64::MAX).transfer(id)
    }
    fn participation(&self, id: &TransferId) -> Option<Participation> {
        self.at(u64::MAX).participation(id)
    }
    fn top_up(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        self.at(u64::MAX).top_up(reference)
    }
}

/// Panics on a storage failure: see the module documentation. `events`
/// answers with the events held, whether or not retention deleted some
/// above `after`; [`History::events_after`] reports that.
impl HistoryRead for History {
    fn listed(&self, partner: &PartnerId, after: Option<&ListToken>, max: usize) -> Vec<(ListToken, TransferId)> {
        or_stop(self.listed_after(partner, after, max))
    }

    fn events(&self, partner: &PartnerId, after: u64, max: usize) -> Vec<Event> {
        or_stop(self.events_held(partner, after, max)).0
    }
}
