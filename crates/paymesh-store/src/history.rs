//! The history tier of a region on disk: every [`Record`] applied, in fjall.
//!
//! `paymesh_core::history` explains the two tiers: the hot state decides,
//! and everything finished goes to history as records, written by every
//! replica in log order, tagged with the log index of the batch that made
//! them. This module keeps them in one fjall database (module `kv`, which
//! says why fjall) and answers exactly as
//! [`MemoryHistory`](paymesh_core::history::MemoryHistory) does: the write
//! path's [`Recall`] (as of the start of a batch), the readers'
//! [`HistoryRead`], account statements, and the journal that catch-up and
//! archiving read.
//!
//! # Layout
//!
//! The journal's chunks in history's own segment files (module `segments`,
//! which says why: each byte is written once), and in the engine key spaces
//! told apart by a first byte (`kv` keeps them in four trees by that byte),
//! everything one batch writes there (where its chunks are, the keys
//! derived from its records and the meta counters) in a single atomic
//! batch: after a crash either all of it is there or none is. Integers are
//! big-endian, so byte order is numeric order; identifiers (slugs and
//! printable ASCII, never a 0 byte) are ended by a 0 byte where something
//! follows them.
//!
//! ```text
//! J | index u64                                      -> segment u64 | offset u64 | n u32 | (first seq u32 | length u32 | crc32 u32)...  where the batch's chunks are
//! J | index u64 | first seq u32                        -> (length u32 | postcard(record))...  a chunk, as layout 4 kept it
//! I | hash 3 bytes | partner | 0 | idempotency key     -> (position)...           newest visible wins
//! I | partner | 0 | idempotency key                    -> (position)...           the same, as layouts before 6 kept it
//! T | origin | 0 | block u64 | index u64 | first seq u32 -> (offset u8 | seq u32)... finished transfers
//! P | origin | 0 | block u64 | index u64 | first seq u32 -> (offset u8 | seq u32)... finished participations
//! U | top-up reference                                 -> (position)...           newest visible wins
//! W | fund-out reference                                -> (position)...           newest visible wins
//! F | origin | 0 | block u64 | index u64 | first seq u32 -> (offset u8 | seq u32)... finished refunds coordinated here
//! Q | origin | 0 | block u64 | index u64 | first seq u32 -> (offset u8 | seq u32)... finished refund participations
//! R | transfer id                                      -> (position)...           a payment's refund totals, newest visible wins
//! S | window number u64                                -> (position)...           a settlement window, newest visible wins
//! E | partner | 0 | first cursor u64                   -> FE | (index step | seq step)...  last wins per cursor
//! L | partner | 0 | at u64 | index u64 | seq u32       -> FE | (at step | index step | seq step | length | transfer id)...
//! A | account | 0 | at u64 | index u64 | seq u32       -> FE | (at step | index step | seq step)...  movements, under each of their accounts
//! D | partner                                          -> cursor u64              the partner's newest event deleted
//! G | index u64                                        -> 32 bytes                the digest after the batch
//! M applied | M digest | M records | M deleted         -> u64 | 32 bytes | u64 | u64
//! M layout                                             -> u64                     7: this layout
//! M hashedfrom                                         -> u64                     the first batch whose `I` keys are hashed
//! M synced                                             -> u64                     the segments were synced through it
//! M archived                                           -> u64                     an archive was confirmed through it
//! M grouped                                            -> u64                     the last gathering (module `gather`)
//! ```
//!
//! A key costs more to write than its bytes do (10 to 25 µs of CPU each in
//! sled, which held history first; a few in fjall), so keys are not one per
//! record: a finished
//! transfer's nine records take about two (its `I` pointer and its shares
//! of its batch key and of its partners', accounts' and transfer block's
//! group keys), where one key per record and per pointer took 21.
//!
//! The journal holds a batch's records in chunks of at most 64 consecutive
//! records, a record that would take a chunk over 32 KiB starting the next
//! one (a larger record goes alone), so that reading one record by its
//! position reads at most 32 KiB of a larger batch. A chunk is each record's postcard length and
//! bytes, one after the other (the very bytes the digest hashes), so each
//! record's size is checked before it is decoded. A batch's chunks lie
//! one after the other in a segment file, and its batch key `J | index`
//! lists each chunk's first seq, length and checksum: the record at
//! (`index`, `seq`) is in the last chunk whose first seq is at or below
//! `seq`. (Layout 4 kept each chunk in the engine under `J | index | first
//! seq`; such chunks are still read, and deleted with their batch.) A
//! position is `index u64 | seq u32` (12 bytes).
//!
//! An idempotency pointer's key begins with three bytes of a CRC-32 of the
//! partner and key ([`idempotency_key`]), so that the engine's in-memory
//! tree tells keys apart by the bytes it keeps inline. The layouts before
//! 6 kept them plain; a store upgraded notes its first hashed batch (`M
//! hashedfrom`), a lookup reads both forms while batches before it are
//! held, and retention deletes each batch's pointers in its own form.
//!
//! The records that readers want in runs are grouped, and the groups
//! gathered over many batches (module `gather`, which says why and how):
//! a partner's listings and an account's movements, each group keyed by
//! the list token of its first member (so tokens order keys as they order
//! records; the groups of one partner or account never overlap), each
//! member's token as its step from the one before (the first's from the
//! key's: a step is the differences of time, index and seq, each a
//! postcard variable-length signed integer); and a partner's events with
//! consecutive cursors, keyed by the first cursor, each event's position
//! as its step from the one before (the first's from position 0). A
//! group's value begins with the byte `FE` and is at most 32 KiB; a larger
//! group continues under another key. (Layouts 4 to 6 wrote each member's
//! whole token or position after a first byte `FF`; layout 3 kept a group
//! per batch and time, its value each member's seq after the key's token,
//! or for events the batch's index then each seq; such groups are still
//! read, told apart by their first byte, never `FE` or `FF`.) A movement
//! with the same account on both sides is listed once under it.
//! Events are last wins per cursor, as in `MemoryHistory`: a batch that
//! writes a cursor held already (never in operation, where a partner's
//! cursors only grow) takes it from the run that held it, which is cut
//! around it; runs never overlap. Idempotency keys, top-up and fund-out
//! references (`I`, `U`, `W`) are found through one pointer key each whose value is the
//! position of every record under it, oldest first (almost always one: a
//! key or a reference is used again only after its window has passed). A
//! transfer id is its origin region and a sequence number, so finished
//! transfers and participations are grouped instead (`T`, `P`): one key
//! per batch for each block of 64 sequence numbers of one origin, each
//! entry the sequence number's offset in its block and the record's seq;
//! a batch finishes mostly consecutive transfers, so this takes a key per
//! batch and block where a pointer took one per transfer, and is never
//! read back to be written. A lookup reads the block's few keys. Either way
//! a lookup as of a batch answers with the newest record written before
//! it, as `Recall` asks. (Layout 2 kept a `T`/`P` pointer per id,
//! `T | transfer id -> (position)...`; they are still read.)
//!
//! The journal is the source of truth; every other key is derived from the
//! records of one batch (or, for gathered groups, of the batches gathered
//! together) and can be recomputed from them, which is how retention finds
//! what to delete (a batch's listings, movements and events it looks for
//! among the groups that may hold their tokens and cursors, keeping the
//! members of later batches) and how the members waiting in memory are
//! taken again after a crash. An account is keyed by its display form
//! (`partner:p:USD`, `fees:USD`, ...), unique because no identifier in it
//! holds a `:`.
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
//! second time, for one). So an engine's error or a record that does not decode
//! while answering [`Recall`] or [`HistoryRead`] **panics**, naming the
//! failure: the replica cannot decide deterministically without its
//! history, the process exits and its supervisor restarts it, and the node
//! rebuilds from its log or its peers. Readers that can fail politely use
//! the fallible methods ([`History::get_transfer`],
//! [`History::events_after`], [`History::statement`], ...).
//!
//! # Durability
//!
//! A batch's chunks are appended to the active segment (one `write`), then
//! its keys applied to fjall's journal and memory, neither synced: replicas
//! write history on every applied entry, and a sync each time would double
//! the region's `fsync`s. [`History::durable`] syncs the segments
//! (`fdatasync`), records that under `M synced`, and then syncs fjall's
//! journal (`fsync`, through the descriptor that wrote it; fjall syncs its
//! sorted tables as it writes them), so everything applied before it
//! survives power loss. A crash before it loses at most the tail since the
//! last sync, never part of a batch's keys, and never silently: history's
//! last index is read back at open.
//!
//! The segments and the engine are two files, so a crash may leave them
//! apart beyond the last sync, and open puts them back together. Chunks past
//! the engine's last batch (a crash between the two writes, or the engine's
//! unsynced tail lost) are cut. The engine may also hold batches whose
//! chunks a power loss took from the segments (the kernel writes either
//! file back when it likes, and fjall syncs its tables as it flushes them):
//! open checks the last batches' chunks against their checksums, back to
//! the first it finds whole (a batch at or below `M synced` must be whole,
//! or the store is damaged and refused), and history then reaches that
//! batch only ([`History::last_index`]), its readers seeing nothing later,
//! until the batches after it are written again: the state machine
//! re-applies them from its log as after any restart (its checkpoint is at
//! or below the last sync, so at or below that batch), or they come from a
//! peer's journal, and each such write puts only the batch's chunks back,
//! in order, checked against the digest the engine kept after it (`G`).
//! Should the region have deleted past them meanwhile, so that history
//! adopts a peer's start instead ([`History::adopt`]), their batch keys go
//! with everything else it held (their other keys name batches the start
//! covers, and read as deleted).
//!
//! That is enough because history at any index can
//! be rebuilt: the records of a batch are a pure function of
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
//! journal with every key derived from them, a batch's chunks and block
//! groups whole (a pointer keeps the positions of later batches, a gathered
//! group its members of later batches, and an event cursor a later batch
//! took stays), after putting every member waiting on disk, in bounded
//! batches that never split a log batch. The digest and the last index are
//! unaffected. Afterwards a deleted record is simply not found; for events,
//! where "deleted" and "not yet written" must be told apart,
//! [`History::oldest_event_cursor`] and [`HistoryError::CursorExpired`]
//! say where retention stopped.
//!
//! Nothing is deleted that was not archived first: [`History::archived_through`]
//! (the `M archived` key) is the highest index an archive of this node's
//! journal was confirmed for (`crate::archive`), and
//! [`History::deletable_through`] never reaches past it, nor past the last
//! batch whose records are all older than a cutoff (by each record's own
//! time, [`record_time`]) that the caller takes from the applied state's
//! clock.

use std::collections::{hash_map, BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use paymesh_core::history::{HistoryRead, IdempotencyRecord, ListToken, Movement, Recall, Record, TopUpRecord};
use paymesh_core::id::{IdempotencyKey, PartnerId, RegionId, TopUpRef, TransferId};
use paymesh_core::ledger::AccountId;
use paymesh_core::reconcile::{HistoryScan, RemoteRecord};
use paymesh_core::settlement::SettlementWindow;
use paymesh_core::state::{CursorExpired, Event, Participation, Refund, RefundParticipation, RefundTotals, Transfer};
use paymesh_core::Timestamp;

mod gather;
mod kv;
mod segments;

use gather::{BatchMembers, Gathered, Member, OnDisk, Run};
pub use kv::EngineMemory;
use segments::{Location, Segments};
#[cfg(test)]
pub(crate) mod tests;

/// The largest record written or read: a record comes from one log entry,
/// whose payload is at most
/// [`RECORD_PAYLOAD_BYTES_MAX`](crate::segment_log::RECORD_PAYLOAD_BYTES_MAX).
/// A longer value read from disk is damage, refused before it is decoded.
pub const RECORD_BYTES_MAX: usize = crate::segment_log::RECORD_PAYLOAD_BYTES_MAX;

/// How many records retention deletes in one engine batch (more when one log
/// batch holds more: a log batch is never split). Bounds the memory of one
/// deletion step and how long it holds up writes.
pub const DELETE_RECORDS_PER_BATCH_MAX: usize = 1_000;

/// The most records in one journal chunk.
const JOURNAL_CHUNK_RECORDS_MAX: usize = 64;

/// A journal chunk takes no record that would take it over this many
/// bytes (a larger record goes alone in its chunk), and a group key's value
/// is never longer: a read by position decodes at most this much.
const CHUNK_BYTES_MAX: usize = 32 * 1024;

/// The longest transfer id read back from a listing group: a region id (at
/// most a few dozen bytes), a colon and a u64.
const TRANSFER_ID_BYTES_MAX: usize = 256;

/// The first byte of each key space (see the module documentation).
mod space {
    pub(super) const JOURNAL: u8 = b'J';
    pub(super) const IDEMPOTENCY: u8 = b'I';
    pub(super) const TRANSFER: u8 = b'T';
    pub(super) const PARTICIPATION: u8 = b'P';
    pub(super) const TOP_UP: u8 = b'U';
    pub(super) const FUND_OUT: u8 = b'W';
    pub(super) const EVENT: u8 = b'E';
    pub(super) const LISTED: u8 = b'L';
    pub(super) const ACCOUNT: u8 = b'A';
    pub(super) const EVENTS_DELETED: u8 = b'D';
    pub(super) const DIGEST: u8 = b'G';
    pub(super) const REFUND: u8 = b'F';
    pub(super) const REFUND_PARTICIPATION: u8 = b'Q';
    pub(super) const REFUNDED: u8 = b'R';
    pub(super) const WINDOW: u8 = b'S';
}

/// `S | number u64`: a settlement window's key.
fn window_key(number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(space::WINDOW);
    key.extend_from_slice(&number.to_be_bytes());
    key
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
const META_LAYOUT: &[u8] = b"Mlayout";
const META_GROUPED: &[u8] = b"Mgrouped";
const META_SYNCED: &[u8] = b"Msynced";
/// The first batch whose idempotency pointers were written hashed (layout
/// 6): those of earlier batches, written by an earlier layout, are plain.
const META_HASHED_FROM: &[u8] = b"Mhashedfrom";

/// The key layout this module writes, kept under `M layout`: 7, each
/// batch's chunks in history's segment files with a batch key where they
/// are (module `segments`), idempotency pointers keyed by a hash first
/// ([`idempotency_key`]), the gathered groups' members packed as steps
/// ([`gather::PACKED`]). A store of layout 6 (the same with whole tokens in
/// the groups), 5 (also plain idempotency pointers), 4 (chunks in the
/// engine, as chunk keys; listing, statement and event groups gathered
/// over many batches, module `gather`), 3 (those groups one batch each) or
/// 2 (also a pointer per transfer and participation) is read too, and
/// marked 7 when this module opens it (a build that reads only an earlier
/// layout then refuses it); its groups are read in their form and packed
/// when a write or a deletion rewrites them. A store before 6 has the first
/// batch it writes noted under `M hashedfrom`: the idempotency pointers of
/// the batches before are plain, looked up too while retention has not
/// deleted them all, and deleted in their form. A store without the key
/// and not empty was written with one key per record (the layout before),
/// which this module does not read.
const LAYOUT: u64 = 7;

/// The layout before [`LAYOUT`], groups' members with whole tokens, that
/// this module still reads.
const LAYOUT_WHOLE_TOKENS: u64 = 6;

/// The layout before [`LAYOUT`], idempotency pointers plain, that this
/// module still reads.
const LAYOUT_PLAIN_IDEMPOTENCY: u64 = 5;

/// The layout before [`LAYOUT`], journal chunks in the engine, that this
/// module still reads.
const LAYOUT_CHUNKS_IN_ENGINE: u64 = 4;

/// The layout before [`LAYOUT`], groups of one batch each, that this
/// module still reads.
const LAYOUT_BATCH_GROUPS: u64 = 3;

/// The layout before [`LAYOUT`] that this module still reads.
const LAYOUT_GROUPED_POINTERS: u64 = 2;

/// Transfer sequence numbers per `T` and `P` group key.
const TRANSFERS_PER_BLOCK: u64 = 64;

/// Bytes of a `T` or `P` group entry (`offset u8 | seq u32`).
const BLOCK_ENTRY_BYTES: usize = 5;

/// Bytes of a position (`index u64 | seq u32`).
const POSITION_BYTES: usize = 12;
/// Bytes of a journal key (`J | index u64 | first seq u32`).
const JOURNAL_KEY_BYTES: usize = 1 + POSITION_BYTES;

/// Bytes in a batch key: `J | index`.
const BATCH_KEY_BYTES: usize = 9;
/// Bytes of a list token in a key (`at u64 | index u64 | seq u32`).
const TOKEN_BYTES: usize = 8 + POSITION_BYTES;

/// Why history could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The storage engine failed.
    #[error("history store (fjall): {0}")]
    Store(#[from] fjall::Error),
    /// The directory holds history in sled's files, as builds before the
    /// fjall engine wrote it, which this build does not read.
    #[error(
        "history {path} was written by an earlier build of paymesh (sled's files), which this build does not \
         read: export it with that build (`paymesh history export`), then start this node from an empty data \
         directory so that it takes the region's history from its peers"
    )]
    OldEngine {
        /// The directory.
        path: PathBuf,
    },
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

/// The positions a pointer's value holds, oldest first; a value that is
/// empty or not a whole number of positions is damage.
fn positions<'a>(key: &'a [u8], value: &'a [u8]) -> Result<impl Iterator<Item = Result<(u64, u32)>> + 'a> {
    if value.is_empty() || !value.len().is_multiple_of(POSITION_BYTES) {
        return Err(corrupt(key, format!("a pointer of {} bytes, not a multiple of {POSITION_BYTES}", value.len())));
    }
    Ok(value.chunks_exact(POSITION_BYTES).map(move |at| parse_position(key, at)))
}

fn parse_position(key: &[u8], bytes: &[u8]) -> Result<(u64, u32)> {
    let bytes: &[u8; POSITION_BYTES] =
        bytes.try_into().map_err(|_| corrupt(key, format!("a position of {} bytes, not 12", bytes.len())))?;
    let (index, seq) = bytes.split_at(8);
    Ok((u64::from_be_bytes(index.try_into().expect("8 bytes")), u32::from_be_bytes(seq.try_into().expect("4 bytes"))))
}

/// The key of the journal chunk of the batch at `index` whose first record
/// is at `first`.
pub(crate) fn journal_key(index: u64, first: u32) -> [u8; JOURNAL_KEY_BYTES] {
    let mut key = [space::JOURNAL; JOURNAL_KEY_BYTES];
    key[1..].copy_from_slice(&position(index, first));
    key
}

/// The key of the batch at `index` whose chunks are in history's segment
/// files (module `segments`): its value is their [`Location`].
fn batch_key(index: u64) -> [u8; BATCH_KEY_BYTES] {
    let mut key = [space::JOURNAL; BATCH_KEY_BYTES];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// A journal key's index and first seq: a chunk's key, or a batch key
/// (whose first seq is 0).
fn parse_journal_key(key: &[u8]) -> Result<(u64, u32)> {
    match key.split_first() {
        Some((&space::JOURNAL, rest)) if key.len() == JOURNAL_KEY_BYTES => parse_position(key, rest),
        Some((&space::JOURNAL, rest)) if key.len() == BATCH_KEY_BYTES => {
            Ok((u64::from_be_bytes(rest.try_into().expect("8 bytes")), 0))
        }
        _ => Err(corrupt(key, "not a journal key")),
    }
}

/// A batch key's location, or why it holds none.
fn parse_location(key: &[u8], value: &[u8]) -> Result<Location> {
    Location::decode(value).map_err(|reason| corrupt(key, reason))
}

/// `space | name`.
fn named(space: u8, name: &str) -> Vec<u8> {
    debug_assert!(!name.as_bytes().contains(&0), "identifiers hold no 0 byte");
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(space);
    key.extend_from_slice(name.as_bytes());
    key
}

/// `space | name`, the name written by its `Display`.
fn named_display(space: u8, name: &dyn std::fmt::Display) -> Vec<u8> {
    let mut key = vec![space];
    io::Write::write_fmt(&mut key, format_args!("{name}")).expect("writing to memory");
    debug_assert!(!key[1..].contains(&0), "identifiers hold no 0 byte");
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

/// A list token as keys and gathered groups hold it: `at u64 | index u64 | seq u32`.
fn token_bytes(token: &ListToken) -> [u8; TOKEN_BYTES] {
    let mut bytes = [0u8; TOKEN_BYTES];
    bytes[..8].copy_from_slice(&token.at.unix_ms().to_be_bytes());
    bytes[8..].copy_from_slice(&position(token.index, token.seq));
    bytes
}

/// The list token of [`token_bytes`], read from `key` (or a value under it).
fn token_from(key: &[u8], bytes: &[u8; TOKEN_BYTES]) -> Result<ListToken> {
    let (at, rest) = bytes.split_at(8);
    let (index, seq) = parse_position(key, rest)?;
    Ok(ListToken { at: Timestamp::from_unix_ms(u64::from_be_bytes(at.try_into().expect("8 bytes"))), index, seq })
}

fn with_token(prefix: &[u8], token: &ListToken) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + TOKEN_BYTES);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&token_bytes(token));
    key
}

/// The list token at the end of a listing or statement key: its group's
/// first.
fn parse_token(key: &[u8], prefix_len: usize) -> Result<ListToken> {
    let tail: &[u8; TOKEN_BYTES] = key
        .get(prefix_len..)
        .and_then(|tail| tail.try_into().ok())
        .ok_or_else(|| corrupt(key, "a group key without its 20-byte token"))?;
    token_from(key, tail)
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

/// An idempotency pointer's key: `I | hash | partner | 0 | key` when
/// `hashed` (layout 6), `I | partner | 0 | key` before. The hash is three
/// bytes of a CRC-32 of the rest: the engine compares the first four bytes
/// of a long key before it follows the key's pointer, and without the hash
/// they are the same for every key of a partner (`I` and its name's first
/// letters), so each comparison on the way down its in-memory tree read
/// another cache line (docs/BENCHMARKS.md, "Idempotency pointers keyed by
/// a hash first").
fn idempotency_key(partner: &PartnerId, key: &IdempotencyKey, hashed: bool) -> Vec<u8> {
    let (partner, key) = (partner.as_str().as_bytes(), key.as_str().as_bytes());
    let mut bytes = Vec::with_capacity(4 + partner.len() + 1 + key.len());
    bytes.push(space::IDEMPOTENCY);
    if hashed {
        let mut crc = crc32fast::Hasher::new();
        crc.update(partner);
        crc.update(&[0]);
        crc.update(key);
        bytes.extend_from_slice(&crc.finalize().to_be_bytes()[..3]);
    }
    bytes.extend_from_slice(partner);
    bytes.push(0);
    bytes.extend_from_slice(key);
    bytes
}

fn account_scope(account: &AccountId) -> Vec<u8> {
    scope(space::ACCOUNT, &account.to_string())
}

// --- the journal's chunks ---------------------------------------------------

/// A batch's journal chunks being built (see the module documentation):
/// each record's frame (its length, then its bytes) is encoded straight
/// into the last chunk, and moves to a chunk of its own if it took that one
/// past [`CHUNK_BYTES_MAX`] (or the last chunk is full).
#[derive(Debug, Default)]
struct JournalChunks {
    /// Each chunk's first seq and value.
    chunks: Vec<(u32, Vec<u8>)>,
    /// Records in the last chunk.
    in_last: usize,
    /// Records taken.
    records: usize,
}

impl JournalChunks {
    /// Take the next record, whose frame `frame` appends to the buffer it
    /// is given (returning the record's length); returns that length.
    fn push(&mut self, frame: impl FnOnce(&mut Vec<u8>) -> Result<usize>) -> Result<usize> {
        let seq = u32::try_from(self.records).expect("fewer than 2^32 records per batch");
        if self.chunks.is_empty() || self.in_last == JOURNAL_CHUNK_RECORDS_MAX {
            self.chunks.push((seq, Vec::with_capacity(CHUNK_BYTES_MAX)));
            self.in_last = 0;
        }
        let (_, value) = self.chunks.last_mut().expect("a chunk");
        let start = value.len();
        let length = frame(value)?;
        if value.len() > CHUNK_BYTES_MAX && start > 0 {
            let alone = value.split_off(start);
            self.chunks.push((seq, alone));
            self.in_last = 0;
        }
        self.in_last += 1;
        self.records += 1;
        Ok(length)
    }

    fn finish(self) -> Vec<(u32, Vec<u8>)> {
        self.chunks
    }

    /// The journal chunks of the batch at `index` holding `records`, each
    /// record's size checked; `each` is shown every record with its seq.
    fn of(index: u64, records: &[Record], mut each: impl FnMut(u32, &Record)) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut journal = JournalChunks::default();
        for (n, record) in records.iter().enumerate() {
            let seq = u32::try_from(n).expect("fewer than 2^32 records per batch");
            let bytes = journal.push(|buffer| {
                crate::push_frame(buffer, record).map_err(|source| HistoryError::Encode { index, seq: n, source })
            })?;
            if bytes > RECORD_BYTES_MAX {
                return Err(HistoryError::TooLarge { index, seq: n, bytes });
            }
            each(seq, record);
        }
        Ok(journal.finish())
    }
}

/// Records already encoded, as journal chunks.
#[cfg(test)]
fn journal_chunks(encoded: &[Vec<u8>]) -> Vec<(u32, Vec<u8>)> {
    let mut chunks = JournalChunks::default();
    for bytes in encoded {
        chunks
            .push(|buffer| {
                buffer.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                buffer.extend_from_slice(bytes);
                Ok(bytes.len())
            })
            .expect("copying bytes cannot fail");
    }
    chunks.finish()
}

/// The records of a journal chunk as their postcard bytes, each length
/// checked against what is left and [`RECORD_BYTES_MAX`] before it is
/// taken; damage (a chunk cut short, empty, or of more than
/// [`JOURNAL_CHUNK_RECORDS_MAX`] records) is an error, after which the
/// iteration ends.
struct Frames<'a> {
    key: &'a [u8],
    rest: &'a [u8],
    taken: usize,
}

impl<'a> Frames<'a> {
    fn new(key: &'a [u8], chunk: &'a [u8]) -> Result<Frames<'a>> {
        if chunk.is_empty() {
            return Err(corrupt(key, "an empty journal chunk"));
        }
        Ok(Frames { key, rest: chunk, taken: 0 })
    }

    fn take(&mut self) -> Result<&'a [u8]> {
        if self.taken == JOURNAL_CHUNK_RECORDS_MAX {
            return Err(corrupt(self.key, format!("a journal chunk of more than {JOURNAL_CHUNK_RECORDS_MAX} records")));
        }
        let (length, rest) =
            self.rest.split_first_chunk::<4>().ok_or_else(|| corrupt(self.key, "a record's length cut short"))?;
        let length = u32::from_be_bytes(*length) as usize;
        if length > RECORD_BYTES_MAX {
            return Err(corrupt(self.key, format!("a record of {length} bytes, over {RECORD_BYTES_MAX}")));
        }
        if length > rest.len() {
            return Err(corrupt(self.key, format!("a record of {length} bytes, {} left in its chunk", rest.len())));
        }
        let (bytes, rest) = rest.split_at(length);
        self.rest = rest;
        self.taken += 1;
        Ok(bytes)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let frame = self.take();
        if frame.is_err() {
            self.rest = &[];
        }
        Some(frame)
    }
}

/// The seq of the `n`th record of a chunk that starts at `first`.
fn nth_seq(key: &[u8], first: u32, n: usize) -> Result<u32> {
    u32::try_from(n).ok().and_then(|n| first.checked_add(n)).ok_or_else(|| corrupt(key, "seqs past 2^32"))
}

// --- keys derived from a batch ----------------------------------------------

/// A group key's value being built: its first record's seq and its bytes.
#[derive(Debug)]
struct Group {
    first: u32,
    value: Vec<u8>,
}

/// What a block group key gathers: finished transfers, participations or
/// refunds of one origin in one block of sequence numbers. (A partner's
/// listings and events and an account's movements are gathered over many
/// batches: module `gather`.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GroupOf {
    /// Finished transfers of one origin (`T`), by block.
    Transfers(RegionId),
    /// Finished participations in transfers of one origin (`P`), by block.
    Participations(RegionId),
    /// Finished refunds coordinated here (`F`), by block.
    Refunds(RegionId),
    /// Finished participations in refunds of one origin (`Q`), by block.
    RefundParticipations(RegionId),
}

impl GroupOf {
    /// The prefix of its group keys for `block`: `space | scope | 0 | block`.
    fn prefix(&self, block: u64) -> Vec<u8> {
        match self {
            GroupOf::Transfers(origin) => with_u64(&scope(space::TRANSFER, origin.as_str()), block),
            GroupOf::Participations(origin) => with_u64(&scope(space::PARTICIPATION, origin.as_str()), block),
            GroupOf::Refunds(origin) => with_u64(&scope(space::REFUND, origin.as_str()), block),
            GroupOf::RefundParticipations(origin) => {
                with_u64(&scope(space::REFUND_PARTICIPATION, origin.as_str()), block)
            }
        }
    }
}

/// Every key the records of the batch at `index` derive, besides the
/// journal's, built record by record: to write the batch, and again from
/// its journal to delete it.
#[derive(Debug)]
struct Derivation {
    index: u64,
    /// Whether its idempotency pointers are hashed (see [`idempotency_key`]).
    hashed: bool,
    /// Pointers (`I`, `U`, `W`; and, when a layout-2 batch is deleted, its `T`
    /// and `P` pointers), each with the seq of the
    /// record that derives it, in order.
    pointers: Vec<(Vec<u8>, u32)>,
    /// `T`, `P`, `F` and `Q` groups still taking entries, by what they
    /// gather and their block (their key's prefix,
    /// `space | scope | 0 | u64`, is made when they close). FxHash: no
    /// partner chooses these keys (the maps keyed by idempotency keys or
    /// references keep std's keyed hash, which a partner cannot aim at).
    open: FxHashMap<(GroupOf, u64), Group>,
    /// Groups complete: key and value.
    groups: Vec<(Vec<u8>, Vec<u8>)>,
    /// Listings, movements and events, for their gathered groups.
    members: BatchMembers,
}

impl Derivation {
    /// The keys derived from the batch at `index`, its idempotency pointers
    /// `hashed` or not (see [`idempotency_key`]).
    fn new(index: u64, hashed: bool) -> Derivation {
        Derivation {
            index,
            hashed,
            pointers: Vec::new(),
            open: FxHashMap::default(),
            groups: Vec::new(),
            members: BatchMembers::default(),
        }
    }

    /// The record at `seq` (records are added in seq order).
    fn add(&mut self, seq: u32, record: &Record) {
        self.members.add(self.index, seq, record);
        match record {
            Record::Listed { .. } | Record::Movement(_) | Record::Event { .. } => {}
            Record::Transfer(transfer) => {
                let id = &transfer.view.id;
                self.block_entry(GroupOf::Transfers(id.origin().clone()), id.sequence(), seq);
            }
            Record::Participation { transfer, .. } => {
                self.block_entry(GroupOf::Participations(transfer.origin().clone()), transfer.sequence(), seq);
            }
            Record::Idempotency { partner, key, .. } => {
                self.pointers.push((idempotency_key(partner, key, self.hashed), seq));
            }
            Record::TopUp { reference, .. } => self.pointers.push((named(space::TOP_UP, reference.as_str()), seq)),
            Record::FundOut { reference, .. } => self.pointers.push((named(space::FUND_OUT, reference.as_str()), seq)),
            Record::Refund(refund) => {
                let id = &refund.view.id;
                self.block_entry(GroupOf::Refunds(id.origin().clone()), id.sequence(), seq);
            }
            Record::RefundParticipation { refund, .. } => {
                self.block_entry(GroupOf::RefundParticipations(refund.origin().clone()), refund.sequence(), seq);
            }
            Record::Refunded { transfer, .. } => self.pointers.push((named_display(space::REFUNDED, transfer), seq)),
            Record::Window(window) => self.pointers.push((window_key(window.number), seq)),
            Record::Operator { .. } | Record::Audited { .. } => {}
        }
    }

    /// The entry of a transfer or participation with this sequence number.
    fn block_entry(&mut self, of: GroupOf, sequence: u64, seq: u32) {
        let offset = u8::try_from(sequence % TRANSFERS_PER_BLOCK).expect("an offset below 64");
        self.group(of, sequence / TRANSFERS_PER_BLOCK, seq, |value| {
            value.push(offset);
            value.extend_from_slice(&seq.to_be_bytes());
        });
    }

    /// Add the entry `write` appends to the group of `of` at `at`, which
    /// continues under a new key if the entry took it past
    /// [`CHUNK_BYTES_MAX`].
    fn group(&mut self, of: GroupOf, at: u64, seq: u32, write: impl FnOnce(&mut Vec<u8>)) {
        match self.open.entry((of, at)) {
            hash_map::Entry::Occupied(mut open) => {
                let start = open.get().value.len();
                write(&mut open.get_mut().value);
                if open.get().value.len() > CHUNK_BYTES_MAX {
                    let entry = open.get_mut().value.split_off(start);
                    let full = std::mem::replace(open.get_mut(), Group { first: seq, value: entry });
                    let (of, at) = open.key();
                    self.groups.push((group_key(&of.prefix(*at), self.index, full.first), full.value));
                }
            }
            hash_map::Entry::Vacant(vacant) => {
                let mut value = Vec::new();
                write(&mut value);
                vacant.insert(Group { first: seq, value });
            }
        }
    }

    /// Close the open groups: every group key and value.
    fn take_groups(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut groups = std::mem::take(&mut self.groups);
        for ((of, at), group) in self.open.drain() {
            groups.push((group_key(&of.prefix(at), self.index, group.first), group.value));
        }
        groups
    }
}

/// The key of a listing or statement group: its prefix (`space | scope | 0
/// | at`) and the position of its first record, so the list token of its
/// first record.
fn group_key(prefix: &[u8], index: u64, first: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + POSITION_BYTES);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&position(index, first));
    key
}

/// Remove the keys `removed` and write `written` in `batch`: a key both
/// removed and written is only written (its new value replaces the old).
fn replace_keys(batch: &mut kv::Batch, removed: Vec<Vec<u8>>, written: Vec<(Vec<u8>, Vec<u8>)>) {
    let kept: std::collections::HashSet<&[u8]> = written.iter().map(|(key, _)| key.as_slice()).collect();
    for key in removed.iter().filter(|key| !kept.contains(key.as_slice())) {
        batch.remove(key);
    }
    for (key, value) in written {
        batch.insert(key, value);
    }
}

/// What each scope's groups hold on disk, read from its last key.
impl gather::DiskHighest for History {
    fn token(&self, prefix: &[u8], listing: bool) -> Result<Option<ListToken>> {
        match self.db.scan_prefix(prefix).next_back().transpose()? {
            Some((key, value)) => {
                Ok(gather::group_members(&key, prefix.len(), &value, listing)?.last().map(|member| member.token))
            }
            None => Ok(None),
        }
    }

    fn cursor(&self, prefix: &[u8]) -> Result<u64> {
        match self.db.scan_prefix(prefix).next_back().transpose()? {
            Some((key, value)) => Ok(Run::parse(&key, prefix.len(), &value)?.last()),
            None => Ok(0),
        }
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
        Record::FundOut { .. } => "a fund-out",
        Record::Movement(_) => "a movement",
        Record::Event { .. } => "an event",
        Record::Operator { .. } | Record::Audited { .. } => "an operator command",
        Record::Refund(_) => "a refund",
        Record::RefundParticipation { .. } => "a refund participation",
        Record::Refunded { .. } => "a payment's refund totals",
        Record::Window(_) => "a settlement window",
    };
    corrupt(key, format!("leads to {kind} that does not derive it"))
}

pub(crate) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<Record> {
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(corrupt(key, format!("a record of {} bytes, over {RECORD_BYTES_MAX}", bytes.len())));
    }
    postcard::from_bytes(bytes).map_err(|e| corrupt(key, format!("the record does not decode: {e}")))
}

pub use paymesh_core::history::record_time;

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
    /// Beyond `last_index`, the engine holds every key of the batches
    /// through this index but the segments lost their chunks to a power
    /// loss: writing them again puts only their chunks ([`History::write`]).
    /// Otherwise 0.
    refill_through: u64,
}

/// Where a history begins once retention deleted its front: what a
/// replica whose history was deleted through an index sends one that
/// lacks those batches (a node wiped, or new), which it cannot send
/// anymore. The receiver adopts it ([`History::adopt`]) and takes the
/// journal after it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryStart {
    /// The journal is deleted through this index (0: nothing deleted).
    pub deleted_through: u64,
    /// The running digest after the batch at `deleted_through`.
    pub digest: [u8; 32],
    /// Each partner's newest event deleted (the `D` keys), so that a
    /// stream resumed before it is refused as expired, not answered with
    /// a gap.
    pub events_deleted: BTreeMap<PartnerId, u64>,
}

/// A region's history on disk. See the module documentation.
///
/// Writes ([`History::write`], [`History::delete_through`]) are serialised
/// among themselves; reads run alongside them and see each batch whole.
#[derive(Debug)]
pub struct History {
    db: kv::Kv,
    dir: PathBuf,
    /// The journal's chunks (module `segments`).
    segments: Arc<Segments>,
    meta: Mutex<Meta>,
    /// The journal is deleted through this index, or is being: raised before
    /// each deletion batch is applied, so that a reader who finds a pointer
    /// and then not its record can tell retention racing it from damage.
    deleted_through: AtomicU64,
    /// The first batch whose idempotency pointers are hashed (`M
    /// hashedfrom`, see [`LAYOUT`]).
    hashed_from: u64,
    /// An archive of the journal was confirmed through this index.
    archived_through: AtomicU64,
    /// Serialises writers.
    writer: Mutex<()>,
    /// The listings, movements and events of the batches after the last
    /// gathering, waiting to go to their groups on disk (module `gather`),
    /// and what each partner's and account's groups hold on disk. One
    /// entry per partner and account, as bounded as they are.
    gathered: Mutex<Gathered>,
    /// Pointer values read by the recall of the batch to be written next
    /// (a [`HistoryAt`] as of `last_index + 1`: the write path's
    /// idempotency lookups), so that writing the batch adds to them without
    /// reading them again. See [`Recalled`].
    recalled: Mutex<Recalled>,
}

/// Pointer values a recall read, for the write of its batch: valid while
/// nothing but that write changes pointers. Every write empties it, and
/// retention's deletions and [`History::adopt`] also move `generation` on, so
/// that a value read before one of them and kept after it is never used.
#[derive(Debug, Default)]
struct Recalled {
    /// The batch whose recall read them.
    before: u64,
    generation: u64,
    values: HashMap<Vec<u8>, Option<kv::Bytes>>,
}

/// The most pointer values kept for one batch's write (its commands' lookups;
/// beyond it the write reads them again).
const RECALLED_MAX: usize = 4 * paymesh_core::limits::BATCH_COMMANDS_MAX;

impl History {
    /// Open (or create) the history in `dir`, its engine's memory (block
    /// cache and write buffers) about `memory_bytes`.
    pub fn open(dir: &Path, memory_bytes: u64) -> Result<History> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent).and_then(|handle| handle.sync_all()).map_err(io_error(parent))?;
            }
        }
        if dir.join("conf").is_file() && dir.join("db").is_file() {
            return Err(HistoryError::OldEngine { path: dir.to_path_buf() });
        }
        let db = kv::Kv::open(dir, memory_bytes)?;
        // Whether the store is new or of an earlier layout, to be marked as
        // this layout's.
        let read_u64 = |key: &[u8]| -> Result<u64> { db.get(key)?.map_or(Ok(0), |v| parse_u64(key, &v)) };
        let last_index = read_u64(META_APPLIED)?;
        let layout = db.get(META_LAYOUT)?.map(|bytes| parse_u64(META_LAYOUT, &bytes)).transpose()?;
        // A store to mark as this layout's: `Some(None)` when new.
        let mark = match layout {
            Some(LAYOUT) => None,
            Some(
                earlier @ (LAYOUT_GROUPED_POINTERS
                | LAYOUT_BATCH_GROUPS
                | LAYOUT_CHUNKS_IN_ENGINE
                | LAYOUT_PLAIN_IDEMPOTENCY
                | LAYOUT_WHOLE_TOKENS),
            ) => Some(Some(earlier)),
            Some(layout) => {
                return Err(corrupt(META_LAYOUT, format!("key layout {layout}, where this build reads {LAYOUT}")));
            }
            None if db.is_empty()? => Some(None),
            None => return Err(corrupt(META_LAYOUT, "no key layout in a store that is not empty")),
        };
        if let Some(earlier) = mark {
            // Marked with the first batch whose pointers are hashed (unless
            // layout 6 hashed them already), all keys at once, so a crash
            // leaves the old layout. Groups are read in the form they were
            // written in, and packed when rewritten. Layout 4's
            // chunks stay in the engine and are read there; new batches go
            // to the segments. Layouts 2 and 3 wrote every batch's groups
            // with it: all are gathered.
            let mut batch = db.batch();
            batch.insert(META_LAYOUT, LAYOUT.to_be_bytes());
            if earlier != Some(LAYOUT_WHOLE_TOKENS) {
                batch.insert(META_HASHED_FROM, (last_index + 1).to_be_bytes());
            }
            if earlier.is_none_or(|layout| [LAYOUT_GROUPED_POINTERS, LAYOUT_BATCH_GROUPS].contains(&layout)) {
                batch.insert(META_GROUPED, last_index.to_be_bytes());
            }
            db.apply(batch)?;
        }
        let hashed_from = match db.get(META_HASHED_FROM)? {
            Some(bytes) => parse_u64(META_HASHED_FROM, &bytes)?,
            None => return Err(corrupt(META_HASHED_FROM, format!("missing in a store of layout {LAYOUT}"))),
        };
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
        let grouped = match db.get(META_GROUPED)? {
            Some(bytes) => parse_u64(META_GROUPED, &bytes)?,
            None => return Err(corrupt(META_GROUPED, "no mark of the last gathering in a store of this layout")),
        };
        if grouped > last_index {
            return Err(corrupt(META_GROUPED, format!("grouped through {grouped}, last index {last_index}")));
        }
        // The segments end where the engine's last batch does: cut back to
        // it, or, where a power loss took the chunks of batches the engine
        // holds (never at or below the index last made durable), back to
        // the last batch they hold, the others to be written again.
        let segments = Segments::open(&dir.join(segments::DIR))?;
        let synced = read_u64(META_SYNCED)?;
        let mut held = None;
        let mut refill_from = None;
        for item in db.scan_prefix([space::JOURNAL]).rev() {
            let (key, value) = item?;
            if key.len() != BATCH_KEY_BYTES {
                break;
            }
            let (index, _) = parse_journal_key(&key)?;
            let location = parse_location(&key, &value)?;
            if segments.holds(&location) {
                held = Some(location);
                break;
            }
            if index <= synced {
                return Err(corrupt(
                    &key,
                    format!("made durable through {synced}, but its chunks are not in the segments"),
                ));
            }
            refill_from = Some(index);
        }
        segments.cut_after(held.as_ref())?;
        let (last_index, digest, refill_through) = match refill_from {
            None => (last_index, digest, 0),
            Some(from) => {
                let before = from - 1;
                let found = db.range(digest_key(0)..=digest_key(before)).next_back().transpose()?;
                let digest = match found {
                    None => [0; 32],
                    Some((key, value)) => {
                        value.as_ref().try_into().map_err(|_| corrupt(&key, "a digest of other than 32 bytes"))?
                    }
                };
                (before, digest, last_index)
            }
        };
        let history = History {
            db,
            dir: dir.to_path_buf(),
            segments: Arc::new(segments),
            meta: Mutex::new(Meta { last_index, digest, records, refill_through }),
            deleted_through: AtomicU64::new(deleted_through),
            hashed_from,
            archived_through: AtomicU64::new(archived_through),
            writer: Mutex::new(()),
            gathered: Mutex::new(Gathered::new(grouped, gather::GATHER_BATCHES_MAX)),
            recalled: Mutex::new(Recalled::default()),
        };
        let gathered = history.gathered_again(grouped, gather::GATHER_BATCHES_MAX)?;
        *history.gathered_lock() = gathered;
        Ok(history)
    }

    /// Gather members every `batches` batches instead of
    /// [`gather::GATHER_BATCHES_MAX`] (tests: a gathering every batch or
    /// two puts members on disk and in memory in the same few batches).
    #[cfg(test)]
    pub(crate) fn gathering_every(self, batches: u64) -> History {
        let through = self.gathered_lock().through;
        let gathered = self.gathered_again(through, batches).expect("the journal reads");
        *self.gathered_lock() = gathered;
        self
    }

    fn gathered_lock(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members waiting to be gathered, taken again from the journal of
    /// the batches after `through` (the last gathering): sorted as when
    /// they were written, since what each scope holds on disk has not
    /// changed since (see module `gather`).
    fn gathered_again(&self, through: u64, batches_max: u64) -> Result<Gathered> {
        let mut gathered = Gathered::new(through, batches_max);
        let last = self.last_index();
        let mut members: Option<BatchMembers> = None;
        let mut batch_index = 0;
        for item in self.journal_raw(through.saturating_add(1), last) {
            let (index, seq, bytes) = item?;
            if index != batch_index {
                if let Some(done) = members.take() {
                    gathered.take(done, self)?;
                }
                batch_index = index;
                members = Some(BatchMembers::default());
            }
            let record = decode_record(&journal_key(index, seq), &bytes)?;
            members.as_mut().expect("a batch").add(index, seq, &record);
        }
        if let Some(done) = members {
            gathered.take(done, self)?;
        }
        gathered.set_batches(last.saturating_sub(through));
        Ok(gathered)
    }

    fn recalled_lock(&self) -> std::sync::MutexGuard<'_, Recalled> {
        self.recalled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the pointer values recalls read: pointers changed other than by
    /// the write they were read for.
    fn forget_recalled(&self) {
        let mut recalled = self.recalled_lock();
        recalled.generation += 1;
        recalled.values.clear();
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

    /// The keys to derive from the batch at `index`, in the form its
    /// layout wrote (see [`LAYOUT`]).
    fn derivation(&self, index: u64) -> Derivation {
        Derivation::new(index, index >= self.hashed_from)
    }

    /// Whether batches written before idempotency pointers were hashed may
    /// still be held, their pointers plain (see [`LAYOUT`]).
    fn plain_idempotency_held(&self) -> bool {
        self.hashed_from > self.deleted_through().saturating_add(1)
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
            self.db.insert(META_ARCHIVED, through.to_be_bytes())?;
            self.archived_through.store(through, Ordering::SeqCst);
        }
        self.durable()?;
        Ok(self.archived_through())
    }

    /// The journal's chunks with keys in `from..=to`, each as its key and
    /// bytes, in key order or (`backwards`) the reverse: from the engine
    /// where a batch written in layout 4 keeps them, else from the segments
    /// its batch key points to.
    fn chunks(
        &self,
        from: [u8; JOURNAL_KEY_BYTES],
        to: [u8; JOURNAL_KEY_BYTES],
        backwards: bool,
    ) -> impl Iterator<Item = Result<(kv::Bytes, kv::Bytes)>> + use<> {
        let mut range = self.db.range(from[..BATCH_KEY_BYTES].to_vec()..=to.to_vec());
        let items = std::iter::from_fn(move || if backwards { range.next_back() } else { range.next() });
        let segments = self.segments.clone();
        items.flat_map(move |item| {
            let expand = || -> Result<Vec<(kv::Bytes, kv::Bytes)>> {
                let (key, value) = item?;
                if key.len() == JOURNAL_KEY_BYTES {
                    let inside = (&from[..]..=&to[..]).contains(&key.as_ref());
                    return Ok(if inside { vec![(key, value)] } else { Vec::new() });
                }
                let (index, _) = parse_journal_key(&key)?;
                let location = parse_location(&key, &value)?;
                let keys: Vec<[u8; JOURNAL_KEY_BYTES]> =
                    location.chunks.iter().map(|(first, _, _)| journal_key(index, *first)).collect();
                let (low, high) = (keys.partition_point(|k| *k < from), keys.partition_point(|k| *k <= to));
                if low >= high {
                    return Ok(Vec::new());
                }
                let bytes = segments.read(&location, low..high)?;
                let mut out: Vec<(kv::Bytes, kv::Bytes)> = keys[low..high]
                    .iter()
                    .zip(bytes)
                    .map(|(key, bytes)| (kv::Bytes::from(&key[..]), kv::Bytes::from(&bytes)))
                    .collect();
                if backwards {
                    out.reverse();
                }
                Ok(out)
            };
            match expand() {
                Ok(chunks) => chunks.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        })
    }

    /// The journal chunk that holds the record at (`index`, `seq`) if any:
    /// the last of its batch that begins at or below it, its key and bytes.
    fn chunk_at(&self, index: u64, seq: u32) -> Result<Option<(kv::Bytes, kv::Bytes)>> {
        let found = self.db.range(batch_key(index).to_vec()..=journal_key(index, seq).to_vec()).next_back();
        let Some((key, value)) = found.transpose()? else { return Ok(None) };
        if key.len() == JOURNAL_KEY_BYTES {
            return Ok(Some((key, value)));
        }
        let location = parse_location(&key, &value)?;
        let at = location.chunks.partition_point(|(first, _, _)| *first <= seq);
        let Some(at) = at.checked_sub(1) else { return Ok(None) };
        let bytes = self.segments.read(&location, at..at + 1)?.pop().expect("one chunk read");
        Ok(Some((kv::Bytes::from(&journal_key(index, location.chunks[at].0)[..]), kv::Bytes::from(&bytes))))
    }

    /// The journal's records with an index in `first..=last`, as stored
    /// (`index`, `seq`, postcard bytes), in order, read lazily: for
    /// archiving, which frames them without decoding twice.
    pub(crate) fn journal_raw(
        &self,
        first: u64,
        last: u64,
    ) -> impl Iterator<Item = Result<(u64, u32, Vec<u8>)>> + use<> {
        let range = (first <= last).then(|| self.chunks(journal_key(first, 0), journal_key(last, u32::MAX), false));
        range.into_iter().flatten().flat_map(|item| {
            // A chunk's records, in order; a damaged chunk yields its error
            // and nothing after it.
            let records = || -> Result<Vec<(u64, u32, Vec<u8>)>> {
                let (key, value) = item?;
                let (index, first_seq) = parse_journal_key(&key)?;
                let mut out = Vec::new();
                for (n, frame) in Frames::new(&key, &value)?.enumerate() {
                    out.push((index, nth_seq(&key, first_seq, n)?, frame?.to_vec()));
                }
                Ok(out)
            };
            match records() {
                Ok(records) => records.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
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

    /// The bytes of the engine's files and of the journal's segments.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.disk_space()? + self.segments.size_on_disk()?)
    }

    /// The memory the engine holds now: its block cache and its write
    /// buffers, in bytes.
    pub fn engine_memory(&self) -> EngineMemory {
        self.db.memory()
    }

    /// Write the records of the log entry at `index`, all in one atomic batch.
    /// A batch at or below [`History::last_index`] is already here (the
    /// entry is re-applied after a restart) and is skipped.
    pub fn write(&self, index: u64, records: &[Record]) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.meta();
        if index <= meta.last_index {
            return Ok(());
        }
        if index <= meta.refill_through {
            return self.refill(meta, index, records);
        }
        let mut batch = self.db.batch();
        let mut derivation = self.derivation(index);
        let chunks = JournalChunks::of(index, records, |seq, record| derivation.add(seq, record))?;
        // The chunks are the frames the digest hashes, in order.
        let digest = crate::chain_framed(&meta.digest, index, chunks.iter().map(|(_, value)| value.as_slice()));
        if !chunks.is_empty() {
            // The chunks go to the segments first: a batch key points only
            // to bytes written (see "Durability").
            let location = self.segments.append(index, &chunks)?;
            batch.insert(batch_key(index), location.encode());
        }
        // Each pointer gains this batch's positions after those it holds; one
        // taken twice in this batch builds on its own new value (the engine
        // does not see the batch's writes before it is applied).
        let mut pointers: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (key, seq) in std::mem::take(&mut derivation.pointers) {
            let value = match pointers.entry(key) {
                hash_map::Entry::Occupied(held) => held.into_mut(),
                hash_map::Entry::Vacant(new) => {
                    let held = self.pointer_held_at(new.key(), index)?;
                    new.insert(held)
                }
            };
            value.extend_from_slice(&position(index, seq));
        }
        for (key, value) in pointers {
            batch.insert(key, value);
        }
        for (key, value) in derivation.take_groups() {
            batch.insert(key, value);
        }
        if !records.is_empty() {
            // The digest after each batch with records, kept (retention
            // leaves them), so a snapshot's digest at its index can be
            // checked against this history's.
            batch.insert(digest_key(index).as_slice(), digest);
        }
        let held = meta.records + records.len() as u64;
        batch.insert(META_APPLIED, index.to_be_bytes());
        batch.insert(META_DIGEST, digest);
        batch.insert(META_RECORDS, held.to_be_bytes());
        let mut gathered = self.gathered_lock();
        let (through, batches_max) = (gathered.through, gathered.batches_max());
        let members = std::mem::take(&mut derivation.members);
        let applied = self.gather(&mut gathered, &mut batch, index, members).and_then(|()| Ok(self.db.apply(batch)?));
        self.recalled_lock().values.clear();
        if let Err(e) = applied {
            // What waits must again be what the store holds.
            *gathered = or_stop(self.gathered_again(through, batches_max));
            return Err(e);
        }
        drop(gathered);
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) =
            Meta { last_index: index, digest, records: held, refill_through: 0 };
        Ok(())
    }

    /// Write again the chunks of the batch at `index`, whose other keys the
    /// engine holds (see [`Meta::refill_through`]): checked against the
    /// digest the engine kept after it, appended to the segments and
    /// pointed to; its members taken again into the gathering if they
    /// wait in memory.
    fn refill(&self, meta: Meta, index: u64, records: &[Record]) -> Result<()> {
        // In order: a batch skipped would stay without its chunks.
        if let Some(item) = self.db.range(batch_key(meta.last_index + 1).to_vec()..batch_key(index).to_vec()).next() {
            let (key, _) = item?;
            let (skipped, _) = parse_journal_key(&key)?;
            return Err(corrupt(&key, format!("batch {index} written again before batch {skipped}")));
        }
        let mut members = BatchMembers::default();
        let chunks = JournalChunks::of(index, records, |seq, record| members.add(index, seq, record))?;
        let key = batch_key(index);
        let digest = if chunks.is_empty() {
            if self.db.get(key)?.is_some() {
                return Err(corrupt(&key, "a batch written again without the records it was written with"));
            }
            meta.digest
        } else {
            let digest = crate::chain_framed(&meta.digest, index, chunks.iter().map(|(_, value)| value.as_slice()));
            let kept = self.db.get(digest_key(index))?;
            if kept.as_deref() != Some(digest.as_slice()) {
                return Err(corrupt(&digest_key(index), "a batch written again with other records than before"));
            }
            let location = self.segments.append(index, &chunks)?;
            self.db.insert(key, location.encode())?;
            digest
        };
        {
            let mut gathered = self.gathered_lock();
            if index > gathered.through {
                // Those on disk are there already.
                gathered.take(members, self)?;
            }
        }
        let refill_through = if index < meta.refill_through { meta.refill_through } else { 0 };
        *self.meta.lock().unwrap_or_else(|p| p.into_inner()) =
            Meta { last_index: index, digest, records: meta.records, refill_through };
        Ok(())
    }

    /// Take a batch's listings, movements and events into the gathering
    /// (module `gather`): those at or below what their scope holds on disk
    /// are written into its groups there, with the batch; when the
    /// gathering is due, every member waiting goes to disk with the batch
    /// too.
    fn gather(&self, gathered: &mut Gathered, batch: &mut kv::Batch, index: u64, members: BatchMembers) -> Result<()> {
        let OnDisk { listed, movements, events } = gathered.take(members, self)?;
        for (partner, members) in listed {
            self.insert_into_groups(batch, &scope(space::LISTED, partner.as_str()), true, members)?;
        }
        for (account, members) in movements {
            self.insert_into_groups(batch, &account_scope(&account), false, members)?;
        }
        for (partner, cursors) in events {
            self.insert_into_runs(batch, &partner, &cursors)?;
        }
        if gathered.due() {
            for (key, value) in gathered.drain(index) {
                batch.insert(key, value);
            }
            batch.insert(META_GROUPED, index.to_be_bytes());
        }
        Ok(())
    }

    /// The last key under `prefix` at or below `bound` (the group or run
    /// that holds it), or `otherwise` if there is none.
    fn holding(&self, prefix: &[u8], bound: &[u8], otherwise: &[u8]) -> Result<Vec<u8>> {
        let found = self.db.range(prefix.to_vec()..=bound.to_vec()).next_back().transpose()?;
        Ok(found.map_or_else(|| otherwise.to_vec(), |(key, _)| key.to_vec()))
    }

    /// Write `members` into the listing (`listing`) or statement groups on
    /// disk under `prefix`, which hold higher tokens: the groups from the
    /// one that holds the lowest member's token through the highest's are
    /// read and written again with them.
    fn insert_into_groups(
        &self,
        batch: &mut kv::Batch,
        prefix: &[u8],
        listing: bool,
        mut members: Vec<Member>,
    ) -> Result<()> {
        members.sort_by_key(|member| member.token);
        let (Some(low), Some(high)) = (members.first().map(|m| m.token), members.last().map(|m| m.token)) else {
            return Ok(());
        };
        let start = self.holding(prefix, &with_token(prefix, &low), prefix)?;
        let mut removed = Vec::new();
        for item in self.db.range(start..=with_token(prefix, &high)) {
            let (key, value) = item?;
            members.extend(gather::group_members(&key, prefix.len(), &value, listing)?);
            removed.push(key.to_vec());
        }
        members.sort_by_key(|member| member.token);
        replace_keys(batch, removed, gather::gathered_groups(prefix, &members));
        Ok(())
    }

    /// Write a partner's events (`cursors`: cursor to position) into its
    /// runs on disk, which hold higher cursors: a run that holds any of
    /// them loses it (last wins) and is cut around it.
    fn insert_into_runs(
        &self,
        batch: &mut kv::Batch,
        partner: &PartnerId,
        cursors: &BTreeMap<u64, (u64, u32)>,
    ) -> Result<()> {
        let (Some((&lowest, _)), Some((&highest, _))) = (cursors.first_key_value(), cursors.last_key_value()) else {
            return Ok(());
        };
        let prefix = scope(space::EVENT, partner.as_str());
        let mut removed = Vec::new();
        let mut written = Vec::new();
        // Runs never overlap, so going back from the highest cursor, the
        // first run that ends below the lowest is the end of the search.
        for item in self.db.range(prefix.clone()..=with_u64(&prefix, highest)).rev() {
            let (key, value) = item?;
            let run = Run::parse(&key, prefix.len(), &value)?;
            if run.last() < lowest {
                break;
            }
            if run.events().any(|(cursor, _)| cursors.contains_key(&cursor)) {
                removed.push(key.to_vec());
                written.extend(gather::gathered_runs(
                    &prefix,
                    run.events().filter(|(cursor, _)| !cursors.contains_key(cursor)),
                ));
            }
        }
        written.extend(gather::gathered_runs(&prefix, cursors.iter().map(|(&cursor, &at)| (cursor, at))));
        replace_keys(batch, removed, written);
        Ok(())
    }

    /// Append batches another replica's history holds (in index order, as
    /// [`History::journal_after`] gives them), skipping those held already;
    /// then, if the sender's history has no records after them through
    /// `through` (not 0), this history is complete through it. Returns the
    /// index history reaches.
    pub fn append(&self, batches: &[(u64, Vec<Record>)], through: u64) -> Result<u64> {
        for (index, records) in batches {
            self.write(*index, records)?;
        }
        if through > self.last_index() {
            self.write(through, &[])?;
        }
        Ok(self.last_index())
    }

    /// Where this history begins (see [`HistoryStart`]). Read again if a
    /// deletion moved the start meanwhile, so the parts agree.
    pub fn start(&self) -> Result<HistoryStart> {
        loop {
            let deleted_through = self.deleted_through();
            let digest = self.digest_at(deleted_through)?.ok_or_else(|| {
                corrupt(META_DELETED, format!("deleted through {deleted_through}, beyond the last index"))
            })?;
            let mut events_deleted = BTreeMap::new();
            for item in self.db.scan_prefix([space::EVENTS_DELETED]) {
                let (key, value) = item?;
                let partner = std::str::from_utf8(&key[1..])
                    .ok()
                    .and_then(|name| PartnerId::new(name).ok())
                    .ok_or_else(|| corrupt(&key, "not a partner's id"))?;
                events_deleted.insert(partner, parse_u64(&key, &value)?);
            }
            if self.deleted_through() == deleted_through {
                return Ok(HistoryStart { deleted_through, digest, events_deleted });
            }
        }
    }

    /// Begin this history at another replica's `start`, when this one ends
    /// before it: whatever this history holds goes (those batches were
    /// deleted in the region, and the region's digest through the start
    /// replaces its own), and it is then deleted and archived through the
    /// start's index, with that digest there and the start's event marks,
    /// so that the journal after it can be appended
    /// ([`History::append`]). Durable before it returns. A history that
    /// reaches the start already is left alone. Returns the index history
    /// reaches.
    pub fn adopt(&self, start: &HistoryStart) -> Result<u64> {
        let through = start.deleted_through;
        if self.last_index() >= through {
            return Ok(self.last_index());
        }
        self.delete_through(u64::MAX)?;
        {
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let meta = self.meta();
            if meta.last_index >= through {
                return Ok(meta.last_index);
            }
            let mut batch = self.db.batch();
            if meta.refill_through != 0 {
                // Batches whose chunks a power loss took and that were never
                // written back go too: their batch keys (the rest of their
                // keys name batches at or below `through`, read as deleted),
                // and their records from the count.
                let from = batch_key(meta.last_index + 1).to_vec();
                for item in self.db.range(from..=batch_key(meta.refill_through).to_vec()) {
                    batch.remove(item?.0);
                }
                batch.insert(META_RECORDS, 0u64.to_be_bytes());
            } else if meta.records != 0 {
                return Err(corrupt(META_RECORDS, format!("{} records held after deleting them all", meta.records)));
            }
            for item in self.db.scan_prefix([space::EVENTS_DELETED]) {
                batch.remove(item?.0);
            }
            for item in self.db.scan_prefix([space::DIGEST]) {
                batch.remove(item?.0);
            }
            for (partner, cursor) in &start.events_deleted {
                batch.insert(named(space::EVENTS_DELETED, partner.as_str()), cursor.to_be_bytes());
            }
            batch.insert(digest_key(through).as_slice(), start.digest);
            batch.insert(META_APPLIED, through.to_be_bytes());
            batch.insert(META_DIGEST, start.digest);
            batch.insert(META_DELETED, through.to_be_bytes());
            let archived = self.archived_through().max(through);
            batch.insert(META_ARCHIVED, archived.to_be_bytes());
            batch.insert(META_GROUPED, through.to_be_bytes());
            self.deleted_through.store(through, Ordering::SeqCst);
            let applied = self.db.apply(batch);
            self.forget_recalled();
            applied?;
            {
                // Nothing waits (everything was deleted) and nothing is on disk.
                let mut gathered = self.gathered_lock();
                let batches_max = gathered.batches_max();
                *gathered = Gathered::new(through, batches_max);
            }
            self.archived_through.store(archived, Ordering::SeqCst);
            *self.meta.lock().unwrap_or_else(|p| p.into_inner()) =
                Meta { last_index: through, digest: start.digest, records: 0, refill_through: 0 };
        }
        self.durable()?;
        Ok(through)
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
        // Nothing after the last batch is seen, not even (while batches are
        // written again, `Meta::refill_through`) what the engine holds of it.
        let meta = self.meta();
        let before = if meta.refill_through != 0 { index.min(meta.last_index + 1) } else { index };
        HistoryAt { history: self, before }
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

    /// A fund-out by its reference.
    pub fn get_fund_out(&self, reference: &TopUpRef) -> Result<Option<TopUpRecord>> {
        self.at(u64::MAX).get_fund_out(reference)
    }

    /// A finished refund this region coordinated.
    pub fn get_refund(&self, id: &TransferId) -> Result<Option<Refund>> {
        self.at(u64::MAX).get_refund(id)
    }

    /// The newest finished transfers this region coordinated, newest first:
    /// at most `max`, from at most `chunks_max` of the journal's newest
    /// chunks (so a journal of other records costs a bounded read).
    pub fn recent_transfers(&self, max: usize, chunks_max: usize) -> Result<Vec<Transfer>> {
        let mut transfers = Vec::new();
        for item in self.chunks(journal_key(0, 0), journal_key(self.last_index(), u32::MAX), true).take(chunks_max) {
            let (key, value) = item?;
            let mut chunk = Vec::new();
            for frame in Frames::new(&key, &value)? {
                if let Record::Transfer(transfer) = decode_record(&key, frame?)? {
                    chunk.push(*transfer);
                }
            }
            transfers.extend(chunk.into_iter().rev());
            if transfers.len() >= max {
                break;
            }
        }
        transfers.truncate(max);
        Ok(transfers)
    }

    /// One page of the scan a restored region asks of this one
    /// ([`paymesh_core::reconcile::HistoryScan`]): the finished transfers
    /// and participations with `region` in the journal's batches below
    /// `below` (0: from the newest), newest first, back to `since`; and
    /// where the next page starts (0: done). Reads one page's batches.
    pub fn reconcile_page(&self, region: &RegionId, since: Timestamp, below: u64) -> Result<(Vec<RemoteRecord>, u64)> {
        let mut scan = HistoryScan::new(region.clone(), since);
        if below == 1 {
            return Ok(scan.finish());
        }
        let last = self.last_index();
        let upper =
            if below == 0 || below > last { journal_key(last, u32::MAX) } else { journal_key(below - 1, u32::MAX) };
        'chunks: for item in self.chunks(journal_key(0, 0), upper, true) {
            let (key, value) = item?;
            let (index, _) = parse_journal_key(&key)?;
            for frame in Frames::new(&key, &value)? {
                if !scan.feed(index, &decode_record(&key, frame?)?) {
                    break 'chunks;
                }
            }
        }
        Ok(scan.finish())
    }

    /// The newest record a pointer key points to that was written before
    /// `before`.
    fn pointed(&self, key: &[u8], before: u64) -> Result<Option<Record>> {
        match self.newest_position(key, before)? {
            Some((index, seq)) => JournalReader::new(self).record(key, index, seq),
            None => Ok(None),
        }
    }

    /// The newest position a pointer key holds before `before`.
    fn newest_position(&self, key: &[u8], before: u64) -> Result<Option<(u64, u32)>> {
        let value = if before == self.last_index() + 1 {
            // The recall of the batch to be written next: keep what it read.
            let generation = self.recalled_lock().generation;
            let value = self.db.get(key)?;
            self.keep_recalled(generation, before, key, value.clone());
            value
        } else {
            self.db.get(key)?
        };
        let Some(value) = value else { return Ok(None) };
        let mut newest = None;
        for at in positions(key, &value)? {
            let (index, seq) = at?;
            if index < before {
                newest = Some((index, seq));
            }
        }
        Ok(newest)
    }

    /// Keep the pointer `value` the recall of the batch at `before` read
    /// under `key`, for that batch's write, unless a write came between
    /// (the `generation` the read began in has passed).
    fn keep_recalled(&self, generation: u64, before: u64, key: &[u8], value: Option<kv::Bytes>) {
        let mut recalled = self.recalled_lock();
        if recalled.generation == generation {
            if recalled.before != before {
                recalled.values.clear();
                recalled.before = before;
            }
            if recalled.values.len() < RECALLED_MAX {
                recalled.values.insert(key.to_vec(), value);
            }
        }
    }

    /// The newest record of transfer or participation `id` (`space` `T` or
    /// `P`) written before `before`: from its block's groups, or (written
    /// in layout 2) its pointer.
    fn grouped(&self, space: u8, id: &TransferId, before: u64) -> Result<Option<Record>> {
        let prefix = with_u64(&scope(space, id.origin().as_str()), id.sequence() / TRANSFERS_PER_BLOCK);
        let offset = (id.sequence() % TRANSFERS_PER_BLOCK) as u8;
        let mut newest = None;
        for item in self.db.scan_prefix(&prefix) {
            let (key, value) = item?;
            let (index, _) = parse_position(&key, &key[prefix.len()..])?;
            if index >= before {
                break;
            }
            if value.is_empty() || !value.len().is_multiple_of(BLOCK_ENTRY_BYTES) {
                return Err(corrupt(&key, format!("a block group of {} bytes", value.len())));
            }
            for entry in value.chunks_exact(BLOCK_ENTRY_BYTES) {
                if entry[0] == offset {
                    newest = Some((index, u32::from_be_bytes(entry[1..].try_into().expect("4 bytes"))));
                }
            }
        }
        match newest {
            Some((index, seq)) => JournalReader::new(self).record(&prefix, index, seq),
            None => self.pointed(&named_display(space, id), before),
        }
    }

    /// The positions a pointer key holds, as its value's bytes (empty if
    /// it holds none), checked.
    fn pointer_held(&self, key: &[u8]) -> Result<Vec<u8>> {
        let Some(value) = self.db.get(key)? else { return Ok(Vec::new()) };
        Self::checked_pointer(key, value)
    }

    /// [`History::pointer_held`] for the write of the batch at `index`:
    /// a value its recall read is taken from [`Recalled`], not read again.
    fn pointer_held_at(&self, key: &[u8], index: u64) -> Result<Vec<u8>> {
        let mut recalled = self.recalled_lock();
        match (recalled.before == index).then(|| recalled.values.remove(key)).flatten() {
            Some(None) => Ok(Vec::new()),
            Some(Some(value)) => Self::checked_pointer(key, value),
            None => {
                drop(recalled);
                self.pointer_held(key)
            }
        }
    }

    fn checked_pointer(key: &[u8], value: kv::Bytes) -> Result<Vec<u8>> {
        positions(key, &value)?.try_for_each(|at| at.map(drop))?;
        Ok(value.to_vec())
    }

    /// The transfers `partner` takes part in, after the page token `after`
    /// (from the start if `None`), at most `max`, each with its token: the
    /// answer of [`HistoryRead::listed`]. Those on disk, then those waiting
    /// to be gathered (module `gather`).
    pub fn listed_after(
        &self,
        partner: &PartnerId,
        after: Option<&ListToken>,
        max: usize,
    ) -> Result<Vec<(ListToken, TransferId)>> {
        let last = self.last_index();
        let waiting = self.gathered_lock().listed(partner, after, max);
        let prefix = scope(space::LISTED, partner.as_str());
        // The group that holds the token, or the first.
        let start = match after {
            Some(token) => self.holding(&prefix, &with_token(&prefix, token), &prefix)?,
            None => prefix.clone(),
        };
        let mut listed = Vec::new();
        'groups: for item in self.db.range(start..scope_end(&prefix)) {
            let (key, value) = item?;
            for member in gather::group_members(&key, prefix.len(), &value, true)? {
                if after.is_some_and(|after| member.token <= *after) || member.token.index > last {
                    continue;
                }
                if listed.len() >= max || waiting.first.is_some_and(|first| member.token >= first) {
                    break 'groups;
                }
                listed.push((member.token, member.transfer.ok_or_else(|| corrupt(&key, "a listing without its id"))?));
            }
        }
        for member in waiting.members {
            if listed.len() >= max {
                break;
            }
            listed.push((member.token, member.transfer.expect("a listing waits with its transfer")));
        }
        Ok(listed)
    }

    /// The partner's events above `after`, at most `max`, stopping early
    /// (and saying so) at one that retention deleted while this ran. Those
    /// on disk, then those waiting to be gathered.
    fn events_held(&self, partner: &PartnerId, after: u64, max: usize) -> Result<(Vec<Event>, bool)> {
        let last = self.last_index();
        let (first_waiting, waiting) = self.gathered_lock().events(partner, after, max);
        let prefix = scope(space::EVENT, partner.as_str());
        let from = after.saturating_add(1);
        // The run that holds `from`, or the first after it.
        let start = self.holding(&prefix, &with_u64(&prefix, from), &with_u64(&prefix, from))?;
        let mut journal = JournalReader::new(self);
        let mut events = Vec::new();
        let mut on_disk = Vec::new();
        'runs: for item in self.db.range(start..scope_end(&prefix)) {
            let (key, value) = item?;
            let run = Run::parse(&key, prefix.len(), &value)?;
            for (cursor, at) in run.events().filter(|(cursor, _)| *cursor >= from) {
                // A partner's cursors follow the log: one not written yet
                // (see `Meta::refill_through`) ends what there is.
                if on_disk.len() >= max || first_waiting.is_some_and(|first| cursor >= first) || at.0 > last {
                    break 'runs;
                }
                on_disk.push((key.to_vec(), cursor, at));
            }
        }
        let waiting = waiting.into_iter().map(|(cursor, at)| (prefix.clone(), cursor, at));
        for (key, cursor, (index, seq)) in on_disk.into_iter().chain(waiting).take(max) {
            match journal.record(&key, index, seq)? {
                Some(Record::Event { partner: owner, event }) if owner == *partner && event.cursor == cursor => {
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

    /// Where settlement window `number` closed: the log position of its
    /// first record, which the close wrote (later ones record settlements).
    /// Every movement of the window comes before it in the log, every one
    /// of the next window after it. `None` if it never closed, or retention
    /// deleted its close.
    pub fn window_closed_at(&self, number: u64) -> Result<Option<(u64, u32)>> {
        let key = window_key(number);
        let Some(value) = self.db.get(&key)? else { return Ok(None) };
        let first = positions(&key, &value)?.next().transpose();
        first
    }

    /// The numbers of the closed windows history holds below `number`,
    /// newest first, at most `max` (one key read each, not a probe per
    /// number; retention deletes the oldest).
    pub fn closed_windows_before(&self, number: u64, max: usize) -> Result<Vec<u64>> {
        let mut numbers = Vec::new();
        for item in self.db.range(window_key(0)..window_key(number)).rev().take(max) {
            let (key, _) = item?;
            numbers.push(parse_u64(&key, &key[1..])?);
        }
        Ok(numbers)
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
        let last = self.last_index();
        let in_bounds = |token: &ListToken| token.at >= from && token.at < to && token.index <= last;
        let waiting = self.gathered_lock().movements(account, after.as_ref(), in_bounds, max);
        let prefix = account_scope(account);
        let first = with_token(&prefix, &ListToken { at: from, index: 0, seq: 0 });
        // The group that holds the token, or the one that holds `from`, or the first after it.
        let bound = after.map_or_else(|| first.clone(), |token| with_token(&prefix, &token));
        let start = self.holding(&prefix, &bound, &first)?;
        // Every key of a movement at `to` is longer than this bound, so above it.
        let end = with_u64(&prefix, to.unix_ms());
        let mut tokens = Vec::new();
        'groups: for item in self.db.range(start..end) {
            let (key, value) = item?;
            for member in gather::group_members(&key, prefix.len(), &value, false)? {
                if after.is_some_and(|after| member.token <= after) || !in_bounds(&member.token) {
                    continue;
                }
                if tokens.len() >= max || waiting.first.is_some_and(|first| member.token >= first) {
                    break 'groups;
                }
                tokens.push((key.to_vec(), member.token));
            }
        }
        let waiting = waiting.members.into_iter().map(|member| (prefix.clone(), member.token));
        let mut journal = JournalReader::new(self);
        let mut movements = Vec::new();
        for (key, token) in tokens.into_iter().chain(waiting).take(max) {
            match journal.record(&key, token.index, token.seq)? {
                Some(Record::Movement(movement))
                    if movement.at == token.at && (movement.debit == *account || movement.credit == *account) =>
                {
                    movements.push((token, *movement))
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
            for item in self.chunks(journal_key(first, 0), journal_key(self.last_index(), u32::MAX), false) {
                let (key, value) = item?;
                let (index, first_seq) = parse_journal_key(&key)?;
                if current.as_ref().is_some_and(|(at, _, _)| *at != index) {
                    let (at, records, bytes) = current.take().expect("a batch");
                    total += bytes;
                    batches.push((at, records));
                    if total >= max_bytes {
                        break;
                    }
                }
                let (_, records, bytes) = current.get_or_insert_with(|| (index, Vec::new(), 0));
                if first_seq as usize != records.len() {
                    return Err(corrupt(&key, format!("a chunk from record {first_seq} follows {}", records.len())));
                }
                let frames = Frames::new(&key, &value)?.collect::<Result<Vec<&[u8]>>>()?;
                let chunk_bytes: usize = frames.iter().map(|frame| frame.len()).sum();
                if !batches.is_empty() && total + *bytes + chunk_bytes > max_bytes {
                    // This batch would overflow: it starts the next call.
                    current = None;
                    break;
                }
                for frame in frames {
                    records.push(decode_record(&key, frame)?);
                }
                *bytes += chunk_bytes;
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

    /// Make everything written so far survive power loss: the engine's
    /// journal synced. See the module documentation, "Durability".
    pub fn durable(&self) -> Result<()> {
        // The segments first: the engine's batch keys point into them. Every
        // batch through `meta.last_index` is in them (appended before the
        // meta moved on).
        let meta = self.meta();
        self.segments.sync()?;
        if meta.refill_through == 0 {
            self.db.insert(META_SYNCED, meta.last_index.to_be_bytes())?;
        }
        Ok(self.db.persist()?)
    }

    /// Delete the journal batches with an index at or below `index` (at
    /// most [`History::last_index`]) and every key derived from their
    /// records, in engine batches of about [`DELETE_RECORDS_PER_BATCH_MAX`]
    /// records that never split a log batch, each atomic with the counters.
    /// Returns how many records went. The digest and the last index stay.
    pub fn delete_through(&self, index: u64) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let (records, done) = self.delete_step(index)?;
            deleted += records;
            if done {
                // Whole segments go once their batches' deletion is durable.
                self.db.persist()?;
                self.segments.delete_through(self.deleted_through())?;
                return Ok(deleted);
            }
        }
    }

    /// One deletion batch; whether the deletion is complete.
    fn delete_step(&self, index: u64) -> Result<(usize, bool)> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.meta();
        let through = index.min(meta.last_index);
        // Deletion reads and cuts the groups on disk only.
        self.gather_all(meta.last_index)?;
        let mut batch = self.db.batch();
        let mut records = 0usize;
        let mut current: Option<Derivation> = None;
        let mut complete = true;
        let mut events_deleted: BTreeMap<PartnerId, u64> = BTreeMap::new();
        let mut pointers: HashMap<Vec<u8>, (bool, Vec<u8>)> = HashMap::new();
        let mut members = MemberRanges::default();
        for item in self.chunks(journal_key(0, 0), journal_key(through, u32::MAX), false) {
            let (key, value) = item?;
            let (at, first) = parse_journal_key(&key)?;
            if current.as_ref().is_none_or(|batch| batch.index != at) {
                if records >= DELETE_RECORDS_PER_BATCH_MAX {
                    complete = false;
                    break;
                }
                if let Some(done) = current.take() {
                    self.delete_derived(done, &mut batch, &mut pointers, &mut members)?;
                }
                current = Some(self.derivation(at));
                // Its chunks' place in the segments (layout 5).
                batch.remove(batch_key(at));
            }
            let derivation = current.as_mut().expect("a batch");
            for (n, frame) in Frames::new(&key, &value)?.enumerate() {
                let record = decode_record(&key, frame?)?;
                let seq = nth_seq(&key, first, n)?;
                derivation.add(seq, &record);
                // Written in layout 2, a transfer or participation may have
                // a pointer of its own.
                match &record {
                    Record::Transfer(transfer) => {
                        derivation.pointers.push((named_display(space::TRANSFER, &transfer.view.id), seq));
                    }
                    Record::Participation { transfer, .. } => {
                        derivation.pointers.push((named_display(space::PARTICIPATION, transfer), seq));
                    }
                    _ => {}
                }
                records += 1;
            }
            batch.remove(key);
        }
        // Only whole log batches were taken, so the last one taken is gone
        // entirely; when the scan reached the end, everything through
        // `through` is.
        let last_batch = current.as_ref().map(|batch| batch.index);
        if let Some(done) = current.take() {
            self.delete_derived(done, &mut batch, &mut pointers, &mut members)?;
        }
        if let Some(cutoff) = last_batch {
            self.delete_members(&mut batch, members, cutoff, &mut events_deleted)?;
        }
        for (key, (held, value)) in pointers {
            if value.is_empty() {
                if held {
                    batch.remove(key);
                }
            } else {
                batch.insert(key, value);
            }
        }
        for (partner, cursor) in events_deleted {
            let key = named(space::EVENTS_DELETED, partner.as_str());
            let before = self.db.get(&key)?.map_or(Ok(0), |bytes| parse_u64(&key, &bytes))?;
            batch.insert(key, before.max(cursor).to_be_bytes());
        }
        let before = self.deleted_through();
        let reached = if complete { through } else { last_batch.unwrap_or(0) };
        let deleted_through = before.max(reached);
        if records == 0 && deleted_through == before {
            return Ok((0, true));
        }
        let held = meta.records.checked_sub(records as u64).ok_or_else(|| {
            corrupt(META_RECORDS, format!("{} records counted, {records} more deleted", meta.records))
        })?;
        batch.insert(META_RECORDS, held.to_be_bytes());
        batch.insert(META_DELETED, deleted_through.to_be_bytes());
        // Announced before the records go (see the field's documentation),
        // and withdrawn if they do not.
        self.deleted_through.store(deleted_through, Ordering::SeqCst);
        let applied = self.db.apply(batch);
        self.forget_recalled();
        // What the groups on disk hold changed (nothing waits: see above).
        self.gathered_lock().forget_disk();
        if let Err(e) = applied {
            self.deleted_through.store(before, Ordering::SeqCst);
            return Err(e.into());
        }
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).records = held;
        Ok((records, complete))
    }

    /// Put every member waiting on disk now, with no batch of the log: a
    /// gathering through `last_index`, the last batch written.
    fn gather_all(&self, last_index: u64) -> Result<()> {
        let mut gathered = self.gathered_lock();
        if gathered.through >= last_index {
            return Ok(());
        }
        let (through, batches_max) = (gathered.through, gathered.batches_max());
        let mut batch = self.db.batch();
        for (key, value) in gathered.drain(last_index) {
            batch.insert(key, value);
        }
        batch.insert(META_GROUPED, last_index.to_be_bytes());
        if let Err(e) = self.db.apply(batch) {
            *gathered = or_stop(self.gathered_again(through, batches_max));
            return Err(e.into());
        }
        Ok(())
    }

    /// Delete from the groups and runs on disk every member of a batch at
    /// or below `cutoff` among those `members` ranges over (the batches
    /// this deletion step takes; earlier ones are gone already), each
    /// group or run that held one written again without it, noting each
    /// partner's newest event deleted.
    fn delete_members(
        &self,
        batch: &mut kv::Batch,
        members: MemberRanges,
        cutoff: u64,
        events_deleted: &mut BTreeMap<PartnerId, u64>,
    ) -> Result<()> {
        for (partner, (low, high)) in members.listed {
            self.delete_from_groups(batch, &scope(space::LISTED, partner.as_str()), true, low, high, cutoff)?;
        }
        for (account, (low, high)) in members.accounts {
            self.delete_from_groups(batch, &account_scope(&account), false, low, high, cutoff)?;
        }
        for (partner, (low, high)) in members.events {
            let prefix = scope(space::EVENT, partner.as_str());
            let low = with_u64(&prefix, low);
            let start = self.holding(&prefix, &low, &low)?;
            let (mut removed, mut written) = (Vec::new(), Vec::new());
            for item in self.db.range(start..=with_u64(&prefix, high)) {
                let (key, value) = item?;
                let run = Run::parse(&key, prefix.len(), &value)?;
                let gone = run.events().filter(|(_, (index, _))| *index <= cutoff).map(|(cursor, _)| cursor).max();
                if let Some(gone) = gone {
                    let newest = events_deleted.entry(partner.clone()).or_default();
                    *newest = (*newest).max(gone);
                    removed.push(key.to_vec());
                    written.extend(gather::gathered_runs(&prefix, run.events().filter(|(_, (i, _))| *i > cutoff)));
                }
            }
            replace_keys(batch, removed, written);
        }
        Ok(())
    }

    /// Delete every member of a batch at or below `cutoff` from the groups
    /// under `prefix` that may hold a token from `low` to `high`.
    fn delete_from_groups(
        &self,
        batch: &mut kv::Batch,
        prefix: &[u8],
        listing: bool,
        low: ListToken,
        high: ListToken,
        cutoff: u64,
    ) -> Result<()> {
        let start = self.holding(prefix, &with_token(prefix, &low), prefix)?;
        let (mut removed, mut written) = (Vec::new(), Vec::new());
        for item in self.db.range(start..=with_token(prefix, &high)) {
            let (key, value) = item?;
            let members = gather::group_members(&key, prefix.len(), &value, listing)?;
            if members.iter().any(|member| member.token.index <= cutoff) {
                removed.push(key.to_vec());
                let kept: Vec<Member> = members.into_iter().filter(|member| member.token.index > cutoff).collect();
                written.extend(gather::gathered_groups(prefix, &kept));
            }
        }
        replace_keys(batch, removed, written);
        Ok(())
    }

    /// Delete the keys derived from one batch's records: its positions in
    /// pointers (into `pointers`, each pointer's value as this deletion
    /// leaves it, and whether it was held) and its block groups; the range
    /// of its listings', movements' and events' tokens goes into `members`
    /// (deleted from their groups once the step's batches are all read).
    fn delete_derived(
        &self,
        mut derivation: Derivation,
        batch: &mut kv::Batch,
        pointers: &mut HashMap<Vec<u8>, (bool, Vec<u8>)>,
        members: &mut MemberRanges,
    ) -> Result<()> {
        let index = derivation.index;
        for (key, seq) in std::mem::take(&mut derivation.pointers) {
            let (_, value) = match pointers.entry(key) {
                hash_map::Entry::Occupied(held) => held.into_mut(),
                hash_map::Entry::Vacant(new) => {
                    let held = self.pointer_held(new.key())?;
                    new.insert((!held.is_empty(), held))
                }
            };
            let gone = position(index, seq);
            *value = value.chunks_exact(POSITION_BYTES).filter(|at| *at != gone).flatten().copied().collect();
        }
        members.add(std::mem::take(&mut derivation.members));
        for (key, _) in derivation.take_groups() {
            batch.remove(key);
        }
        Ok(())
    }
}

/// The lowest and highest token (or cursor) of each partner's listings,
/// each account's movements and each partner's events among the batches of
/// a deletion step.
#[derive(Debug, Default)]
struct MemberRanges {
    listed: BTreeMap<PartnerId, (ListToken, ListToken)>,
    accounts: BTreeMap<AccountId, (ListToken, ListToken)>,
    events: BTreeMap<PartnerId, (u64, u64)>,
}

impl MemberRanges {
    fn add(&mut self, members: BatchMembers) {
        fn widen<K: Ord, T: Ord + Copy>(ranges: &mut BTreeMap<K, (T, T)>, key: K, low: T, high: T) {
            let range = ranges.entry(key).or_insert((low, high));
            range.0 = range.0.min(low);
            range.1 = range.1.max(high);
        }
        for (partner, member) in members.listed {
            widen(&mut self.listed, partner, member.token, member.token);
        }
        for (account, token) in members.movements {
            widen(&mut self.accounts, account, token, token);
        }
        for (partner, cursors) in members.events {
            if let (Some((&low, _)), Some((&high, _))) = (cursors.first_key_value(), cursors.last_key_value()) {
                widen(&mut self.events, partner, low, high);
            }
        }
    }
}

/// Reads journal records by position, keeping the chunk read last: a
/// reader that follows many pointers into one batch reads each chunk once.
struct JournalReader<'a> {
    history: &'a History,
    /// The chunk read last: its index, first seq, key and value.
    chunk: Option<(u64, u32, kv::Bytes, kv::Bytes)>,
}

impl<'a> JournalReader<'a> {
    fn new(history: &'a History) -> JournalReader<'a> {
        JournalReader { history, chunk: None }
    }

    /// The record at (`index`, `seq`), which `pointer_key` points to;
    /// `None` if retention deleted it (or is deleting it).
    fn record(&mut self, pointer_key: &[u8], index: u64, seq: u32) -> Result<Option<Record>> {
        if let Some(record) = self.cached(index, seq)? {
            return Ok(Some(record));
        }
        if let Some((key, value)) = self.history.chunk_at(index, seq)? {
            let (_, first) = parse_journal_key(&key)?;
            self.chunk = Some((index, first, key, value));
            if let Some(record) = self.cached(index, seq)? {
                return Ok(Some(record));
            }
        }
        if index <= self.history.deleted_through() {
            Ok(None)
        } else {
            Err(corrupt(pointer_key, format!("points to ({index}, {seq}), which the journal does not hold")))
        }
    }

    /// The record at (`index`, `seq`) if the chunk read last holds it.
    fn cached(&self, index: u64, seq: u32) -> Result<Option<Record>> {
        let Some((at, first, key, value)) = &self.chunk else { return Ok(None) };
        if *at != index || seq < *first {
            return Ok(None);
        }
        let wanted = (seq - first) as usize;
        for (n, frame) in Frames::new(key, value)?.enumerate() {
            let frame = frame?;
            if n == wanted {
                return decode_record(key, frame).map(Some);
            }
        }
        Ok(None)
    }
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

    /// The newest answer under a partner's idempotency key.
    pub fn get_idempotency(&self, partner: &PartnerId, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>> {
        let history = self.history;
        let hashed = idempotency_key(partner, key, true);
        let mut newest = history.newest_position(&hashed, self.before)?.map(|at| (at, hashed));
        if history.plain_idempotency_held() {
            // Batches of an earlier layout may hold a newer one.
            let plain = idempotency_key(partner, key, false);
            if let Some(at) = history.newest_position(&plain, self.before)? {
                if newest.as_ref().is_none_or(|(held, _)| at > *held) {
                    newest = Some((at, plain));
                }
            }
        }
        let Some(((index, seq), key_read)) = newest else { return Ok(None) };
        match JournalReader::new(history).record(&key_read, index, seq)? {
            None => Ok(None),
            Some(Record::Idempotency { partner: p, key: k, record }) if p == *partner && k == *key => Ok(Some(*record)),
            Some(other) => Err(mismatch(&key_read, &other)),
        }
    }

    /// A finished transfer this region coordinated.
    pub fn get_transfer(&self, id: &TransferId) -> Result<Option<Transfer>> {
        let found = self.history.grouped(space::TRANSFER, id, self.before)?;
        match found {
            None => Ok(None),
            Some(Record::Transfer(transfer)) if transfer.view.id == *id => Ok(Some(*transfer)),
            Some(other) => Err(mismatch(&named_display(space::TRANSFER, id), &other)),
        }
    }

    /// A finished participation.
    pub fn get_participation(&self, id: &TransferId) -> Result<Option<Participation>> {
        let found = self.history.grouped(space::PARTICIPATION, id, self.before)?;
        match found {
            None => Ok(None),
            Some(Record::Participation { transfer, participation }) if transfer == *id => Ok(Some(*participation)),
            Some(other) => Err(mismatch(&named_display(space::PARTICIPATION, id), &other)),
        }
    }

    /// A top-up by its reference.
    pub fn get_top_up(&self, reference: &TopUpRef) -> Result<Option<TopUpRecord>> {
        self.find(&named(space::TOP_UP, reference.as_str()), |found| match found {
            Record::TopUp { reference: r, record } if r == *reference => Ok(record),
            other => Err(other),
        })
    }

    /// A fund-out by its reference.
    pub fn get_fund_out(&self, reference: &TopUpRef) -> Result<Option<TopUpRecord>> {
        self.find(&named(space::FUND_OUT, reference.as_str()), |found| match found {
            Record::FundOut { reference: r, record } if r == *reference => Ok(record),
            other => Err(other),
        })
    }

    /// A finished refund this region coordinated.
    pub fn get_refund(&self, id: &TransferId) -> Result<Option<Refund>> {
        match self.history.grouped(space::REFUND, id, self.before)? {
            None => Ok(None),
            Some(Record::Refund(refund)) if refund.view.id == *id => Ok(Some(*refund)),
            Some(other) => Err(mismatch(&named_display(space::REFUND, id), &other)),
        }
    }

    /// This region's finished side of another region's refund.
    pub fn get_refund_participation(&self, id: &TransferId) -> Result<Option<RefundParticipation>> {
        match self.history.grouped(space::REFUND_PARTICIPATION, id, self.before)? {
            None => Ok(None),
            Some(Record::RefundParticipation { refund, participation }) if refund == *id => Ok(Some(*participation)),
            Some(other) => Err(mismatch(&named_display(space::REFUND_PARTICIPATION, id), &other)),
        }
    }

    /// A closed settlement window, as it stands.
    pub fn get_window(&self, number: u64) -> Result<Option<SettlementWindow>> {
        self.find(&window_key(number), |found| match found {
            Record::Window(window) if window.number == number => Ok(*window),
            other => Err(other),
        })
    }

    /// What a payment's committed refunds gave back so far.
    pub fn get_refunded(&self, transfer: &TransferId) -> Result<Option<RefundTotals>> {
        self.find(&named_display(space::REFUNDED, transfer), |found| match found {
            Record::Refunded { transfer: t, totals } if t == *transfer => Ok(totals),
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
    fn fund_out(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        or_stop(self.get_fund_out(reference))
    }
    fn refund(&self, id: &TransferId) -> Option<Refund> {
        or_stop(self.get_refund(id))
    }
    fn refund_participation(&self, id: &TransferId) -> Option<RefundParticipation> {
        or_stop(self.get_refund_participation(id))
    }
    fn refunded(&self, transfer: &TransferId) -> Option<RefundTotals> {
        or_stop(self.get_refunded(transfer))
    }
    fn window(&self, number: u64) -> Option<SettlementWindow> {
        or_stop(self.get_window(number))
    }
    /// Kept for the batch's write as an empty pointer: the write then adds
    /// the key's first position without reading the engine.
    fn unrecorded(&self, partner: &PartnerId, key: &IdempotencyKey) {
        let history = self.history;
        if self.before == history.last_index() + 1 {
            let generation = history.recalled_lock().generation;
            history.keep_recalled(generation, self.before, &idempotency_key(partner, key, true), None);
        }
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
    fn fund_out(&self, reference: &TopUpRef) -> Option<TopUpRecord> {
        self.at(u64::MAX).fund_out(reference)
    }
    fn refund(&self, id: &TransferId) -> Option<Refund> {
        self.at(u64::MAX).refund(id)
    }
    fn refund_participation(&self, id: &TransferId) -> Option<RefundParticipation> {
        self.at(u64::MAX).refund_participation(id)
    }
    fn refunded(&self, transfer: &TransferId) -> Option<RefundTotals> {
        self.at(u64::MAX).refunded(transfer)
    }
    fn window(&self, number: u64) -> Option<SettlementWindow> {
        self.at(u64::MAX).window(number)
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
