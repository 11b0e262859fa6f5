//! openraft's state machine over `paymesh_core::State` and its history.
//!
//! The hot state lives in memory and changes only through
//! `State::apply_batch`, entry by entry, in log order; each entry's history
//! records are written to the region's [`History`] (in `history/` under the
//! state machine's directory) at the entry's index before the state that
//! follows it becomes visible to readers, so a reader who misses a finished
//! transfer in the hot state finds it in history. Every entry writes a batch,
//! empty for blank and membership entries, so history's last index is the
//! applied index. The hot state's durable image is the latest snapshot,
//! kept as a [`Checkpoints`] generation file that holds the state together
//! with the `last_applied` log id and the membership it produced, written,
//! synced and verified before it replaces anything (the previous generation
//! stays as a fallback). On restart the node loads that checkpoint and openraft
//! re-applies the (durable) log entries after it, which reproduces the state
//! exactly because application is deterministic. History is made durable
//! ([`History::durable`]) before each checkpoint is saved, so on restart it
//! reaches at least the checkpoint's index; entries it already holds are
//! applied again against history as of each entry (`History::at`) and their
//! records, the same again, are not rewritten. A snapshot carries history's
//! digest at its index, not history itself: a node installing one must hold
//! history through that index with that digest (the node fetches what it
//! lacks from its peers first, in bounded chunks).
//!
//! Snapshots are built from a consistent view without stopping apply: the
//! core's state is made of persistent maps, so `get_snapshot_builder` takes an
//! O(1) copy at the current applied index and the builder serialises it on
//! openraft's snapshot task while apply continues on the original.

use std::collections::BTreeSet;
use std::io::{self, Cursor, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use paymesh_core::history::Record;
use paymesh_core::id::RegionId;
use paymesh_core::state::{StateV10, StateV2, StateV3, StateV4, StateV5, StateV6, StateV7, StateV8, StateV9};
use paymesh_core::version::{Protocol, PROTOCOL, PROTOCOL_MIN};
use paymesh_core::State;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::Checkpoints;
use crate::history::{History, HistoryError};
use crate::raft_types::{
    Entry, EntryOutcome, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Format byte in front of a snapshot image: 2 adds the retired nodes, 3
/// the partners' limits and usage to the state, 4 splits the state in two
/// tiers (finished work is history) and adds history's digest, 5 the
/// region's settings, 6 refunds (the refund window, refunds in flight on
/// either side), 7 settlement windows (the open window's book, decisions
/// naming their window), 8 cancels (the cancel window among the settings,
/// which move after the settlement book, and the cancels pending), 9
/// partners' webhooks, 10 corridors' refund rates, 11 a restore's
/// reconciliation.
const IMAGE_FORMAT: u8 = 11;

/// The format of a region that runs a protocol after the first
/// ([`paymesh_core::version`]): the protocol's number (postcard), then an
/// image of [`IMAGE_FORMAT`]'s layout. A region at protocol 1 writes
/// [`IMAGE_FORMAT`], as the releases before protocols did, so a region
/// being upgraded node by node sends images every member reads.
const IMAGE_FORMAT_PROTOCOL: u8 = 12;

/// The format before restores' reconciliations; still read (no restore
/// behind it).
const IMAGE_FORMAT_V10: u8 = 10;

/// The format before corridors' refund rates; still read (every corridor
/// refunds at the original rate).
const IMAGE_FORMAT_V9: u8 = 9;

/// The format before webhooks; still read (none registered).
const IMAGE_FORMAT_V8: u8 = 8;

/// The format before cancels; still read (none pending, the default cancel
/// window).
const IMAGE_FORMAT_V7: u8 = 7;

/// The format before settlement windows; still read (window 1 opens at
/// the conversion, decisions in flight name window 0).
const IMAGE_FORMAT_V6: u8 = 6;

/// The format before refunds; still read (none in flight, the default
/// refund window).
const IMAGE_FORMAT_V5: u8 = 5;

/// The format before the region's settings; still read (with the default
/// settings).
const IMAGE_FORMAT_V4: u8 = 4;

/// The format before the history tier: the state held finished work for a
/// retention window. Still read: split into the hot state and history
/// records written at the image's index (`State::from_v3`).
const IMAGE_FORMAT_V3: u8 = 3;

/// The format before the partners' limits and usage; still read (with
/// default limits, and the usage counted from the quotes and transfers).
const IMAGE_FORMAT_V2: u8 = 2;

/// The format before the retired nodes were kept; still read (as none
/// retired).
const IMAGE_FORMAT_V1: u8 = 1;

/// The applied state: the core state and the Raft position it corresponds to.
/// Cloning is O(1) (persistent maps), so readers take copies.
#[derive(Clone, Debug)]
pub struct AppliedState {
    /// The region's state.
    pub state: State,
    /// The last log entry applied to it.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// Nodes that were members of the region and were removed (and not
    /// added back since): their certificates, though still valid, no longer
    /// speak for the region. Derived from the membership entries in log order,
    /// so every replica holds the same set at the same index.
    pub retired: BTreeSet<NodeId>,
    /// History's running digest after the batch at `last_applied`.
    pub history_digest: [u8; 32],
}

impl AppliedState {
    /// The digest over both tiers that replicas at the same applied index
    /// share ([`crate::region_digest`]).
    pub fn digest(&self) -> [u8; 32] {
        crate::region_digest(&state_digest(&self.state), &self.history_digest)
    }
}

impl AppliedState {
    /// Apply a new membership: every node of the old one that the new one
    /// lacks is retired; a node the new one names is not (it may come back).
    fn change_membership(&mut self, membership: StoredMembership) {
        let new: BTreeSet<NodeId> = membership.membership().nodes().map(|(id, _)| *id).collect();
        self.retired.extend(self.membership.membership().nodes().map(|(id, _)| *id));
        self.retired.retain(|id| !new.contains(id));
        self.membership = membership;
    }
}

/// What a snapshot's bytes hold.
#[derive(Serialize, Deserialize)]
struct Image {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    retired: BTreeSet<NodeId>,
    history_digest: [u8; 32],
}

/// A snapshot image of formats 4 to 6: the layout of [`Image`] around the
/// state of its format.
#[derive(Deserialize)]
struct ImageOf<S> {
    state: S,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    retired: BTreeSet<NodeId>,
    history_digest: [u8; 32],
}

impl<S: Into<State>> ImageOf<S> {
    /// The image with its state converted to the current one.
    fn current(self) -> Image {
        Image {
            state: self.state.into(),
            last_applied: self.last_applied,
            membership: self.membership,
            retired: self.retired,
            history_digest: self.history_digest,
        }
    }
}

/// A snapshot image of format 3.
#[derive(Deserialize)]
struct ImageV3 {
    state: StateV3,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    retired: BTreeSet<NodeId>,
}

/// A snapshot image of format 2.
#[derive(Deserialize)]
struct ImageV2 {
    state: StateV2,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    retired: BTreeSet<NodeId>,
}

/// A snapshot image of format 1.
#[derive(Deserialize)]
struct ImageV1 {
    state: StateV2,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Whether a snapshot image is of this version's format (older ones are
/// read and converted).
pub fn image_is_current(image: &[u8]) -> bool {
    matches!(image.first(), Some(&IMAGE_FORMAT | &IMAGE_FORMAT_PROTOCOL))
}

/// A SHA-256 of the state's canonical encoding. Replicas at the same applied
/// index have equal digests; operators and tests compare them.
pub fn state_digest(state: &State) -> [u8; 32] {
    let mut hasher = Sha256::new();
    // Writing into a hasher cannot fail, and the state always encodes.
    postcard::to_io(state, HashWriter(&mut hasher)).expect("the state encodes");
    if state.protocol() != Protocol::FIRST {
        hasher.update(state.protocol().number().to_be_bytes());
    }
    hasher.finalize().into()
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Told of every entry as it is applied: its log id and a SHA-256 of its
/// payload. Used to audit that replicas apply the same entry at each index.
pub type ApplyObserver = Arc<dyn Fn(LogId, [u8; 32]) + Send + Sync>;

struct Shared {
    region: RegionId,
    /// The state the applies change: taken by [`RaftStateMachine::apply`]
    /// and snapshot installation only, for as long as they run.
    working: Mutex<AppliedState>,
    /// The state as the last apply left it, for readers: a copy published
    /// when an apply ends (the state's tables are persistent maps, so the
    /// copy shares them). A reader takes a reference to it and never waits
    /// for an apply in progress, which holds the working state for the
    /// whole batch, history's writes included (milliseconds at a region's
    /// peak); and a reader's copy is one reference count, not one per table.
    applied: RwLock<Arc<AppliedState>>,
    checkpoints: Checkpoints,
    history: History,
    snapshots_built: AtomicU64,
    /// The last snapshot built: its image's bytes and how long building it
    /// took (encoding, history made durable, checkpoint saved), in
    /// microseconds.
    last_snapshot: (AtomicU64, AtomicU64),
    observer: RwLock<Option<ApplyObserver>>,
    /// The index of the last applied entry (0 before any), for the tasks
    /// that act on new entries: openraft's own metrics are sent on every
    /// turn of its loop, changed or not, and would wake them far more often.
    applied_index: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("region", &self.region)
            .field("checkpoints", &self.checkpoints)
            .finish_non_exhaustive()
    }
}

/// The state machine handed to openraft. Cheap to clone: the node keeps a
/// clone to read the applied state.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

fn sm_error(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_state_machine(e).into()
}

/// A snapshot image decoded and verified against its metadata (for the fuzz
/// targets; the store calls it on every snapshot it reads or installs).
#[doc(hidden)]
pub fn decode_image_bytes(region: &RegionId, meta: &SnapshotMeta, bytes: &[u8]) -> Result<AppliedState, StorageError> {
    decode_image(region, meta, bytes).map(|decoded| decoded.applied)
}

/// A decoded image: what it applies, and for an image from before the
/// history tier, the history records of the finished work its state held.
struct Decoded {
    applied: AppliedState,
    migrated: Option<Vec<Record>>,
}

fn decode_image(region: &RegionId, meta: &SnapshotMeta, bytes: &[u8]) -> Result<Decoded, StorageError> {
    let invalid = |reason: String| invalid_snapshot(meta, reason);
    let decode_error = |e: postcard::Error| invalid(format!("cannot decode: {e}"));
    // Deserialising the ledger re-verifies conservation; verify the rest too:
    // a snapshot is data from disk or the network and is not trusted.
    let old = |state: StateV3, last_applied, membership, retired| {
        let (state, records) = State::from_v3(state);
        (Image { state, last_applied, membership, retired, history_digest: [0; 32] }, Some(records))
    };
    let (image, migrated) = match bytes.split_first() {
        Some((&IMAGE_FORMAT, body)) => (postcard::from_bytes::<Image>(body).map_err(decode_error)?, None),
        Some((&IMAGE_FORMAT_PROTOCOL, body)) => {
            let (number, body) = postcard::take_from_bytes::<u32>(body).map_err(decode_error)?;
            let protocol = Protocol::new(number).ok_or_else(|| invalid("protocol 0".into()))?;
            if !protocol.is_supported() {
                return Err(invalid(format!(
                    "the region runs protocol {protocol}, and this release of paymesh supports protocols \
                     {PROTOCOL_MIN} to {PROTOCOL}: run a release that supports it on this node"
                )));
            }
            let mut image = postcard::from_bytes::<Image>(body).map_err(decode_error)?;
            image.state = image.state.at_protocol(protocol);
            (image, None)
        }
        Some((&IMAGE_FORMAT_V10, body)) => {
            (postcard::from_bytes::<ImageOf<StateV10>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V9, body)) => {
            (postcard::from_bytes::<ImageOf<StateV9>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V8, body)) => {
            (postcard::from_bytes::<ImageOf<StateV8>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V7, body)) => {
            (postcard::from_bytes::<ImageOf<StateV7>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V6, body)) => {
            (postcard::from_bytes::<ImageOf<StateV6>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V5, body)) => {
            (postcard::from_bytes::<ImageOf<StateV5>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V4, body)) => {
            (postcard::from_bytes::<ImageOf<StateV4>>(body).map_err(decode_error)?.current(), None)
        }
        Some((&IMAGE_FORMAT_V3, body)) => {
            let v3: ImageV3 = postcard::from_bytes(body).map_err(decode_error)?;
            old(v3.state, v3.last_applied, v3.membership, v3.retired)
        }
        Some((&IMAGE_FORMAT_V2, body)) => {
            let v2: ImageV2 = postcard::from_bytes(body).map_err(decode_error)?;
            old(v2.state.into(), v2.last_applied, v2.membership, v2.retired)
        }
        Some((&IMAGE_FORMAT_V1, body)) => {
            let v1: ImageV1 = postcard::from_bytes(body).map_err(decode_error)?;
            old(v1.state.into(), v1.last_applied, v1.membership, BTreeSet::new())
        }
        _ => return Err(invalid("unknown snapshot format".into())),
    };
    image.state.verify().map_err(|broken| invalid(format!("state invariants broken: {broken}")))?;
    if image.state.region() != region {
        return Err(invalid(format!("snapshot of region {} offered to region {region}", image.state.region())));
    }
    if image.last_applied != meta.last_log_id || image.membership != meta.last_membership {
        return Err(invalid("snapshot bytes do not match their metadata".into()));
    }
    if image.retired.iter().any(|id| image.membership.membership().get_node(id).is_some()) {
        return Err(invalid("a retired node is also a member".into()));
    }
    let applied = AppliedState {
        state: image.state,
        last_applied: image.last_applied,
        membership: image.membership,
        retired: image.retired,
        history_digest: image.history_digest,
    };
    Ok(Decoded { applied, migrated })
}

fn invalid_snapshot(meta: &SnapshotMeta, reason: String) -> StorageError {
    StorageError::from(StorageIOError::read_snapshot(
        Some(meta.signature()),
        &io::Error::new(io::ErrorKind::InvalidData, reason),
    ))
}

/// The subdirectory of the state machine's directory that holds history.
pub const HISTORY_DIR: &str = "history";

/// The memory history's engine keeps (block cache and write buffers), in bytes.
pub const HISTORY_MEMORY_BYTES: u64 = 128 * 1024 * 1024;

fn history_error(e: &HistoryError) -> StorageError {
    StorageIOError::read_state_machine(e).into()
}

/// Make `decoded` the applied state over `history`: an image from before
/// the history tier has its records written at its index (unless history
/// already reaches it: written before a crash); a current image must find
/// history at its index with its digest.
fn adopt(history: &History, meta: &SnapshotMeta, decoded: Decoded) -> Result<AppliedState, StorageError> {
    let Decoded { mut applied, migrated } = decoded;
    let index = applied.last_applied.map_or(0, |l| l.index);
    if let Some(records) = migrated {
        if history.last_index() < index {
            history.write(index, &records).map_err(|e| history_error(&e))?;
        }
        applied.history_digest = history.digest_at(index).map_err(|e| history_error(&e))?.unwrap_or_default();
        return Ok(applied);
    }
    if history.last_index() < index && history.digest() == applied.history_digest {
        // The chain is the same through the snapshot's index as through
        // history's last: no batch between them holds a record.
        history.write(index, &[]).map_err(|e| history_error(&e))?;
    }
    if history.last_index() < index {
        return Err(invalid_snapshot(
            meta,
            format!(
                "history reaches index {} only, short of the snapshot's {index}: the node must fetch history \
                 through {index} from its peers first",
                history.last_index()
            ),
        ));
    }
    let held = history.digest_at(index).map_err(|e| history_error(&e))?.unwrap_or_default();
    if held != applied.history_digest {
        return Err(invalid_snapshot(
            meta,
            format!("history's digest at index {index} differs from the snapshot's: this node's history is not the region's"),
        ));
    }
    Ok(applied)
}

/// The image bytes of `applied`, as a snapshot and a checkpoint hold them.
pub(crate) fn encode_image(applied: &AppliedState) -> Result<Vec<u8>, StorageError> {
    StateMachineStore::encode(applied)
}

/// An image decoded, verified and checked against `history` as a snapshot
/// installed from a peer is (a restore's).
pub(crate) fn adopt_image(
    region: &RegionId,
    history: &History,
    meta: &SnapshotMeta,
    bytes: &[u8],
) -> Result<AppliedState, StorageError> {
    adopt(history, meta, decode_image(region, meta, bytes)?)
}

impl StateMachineStore {
    /// Open the state machine of `region` with its checkpoints in `dir`,
    /// starting from the latest checkpoint if there is one.
    pub fn open(dir: &Path, region: RegionId) -> Result<StateMachineStore, StorageError> {
        let checkpoints = Checkpoints::open(dir).map_err(|e| sm_error(&e))?;
        let history = History::open(&dir.join(HISTORY_DIR), HISTORY_MEMORY_BYTES).map_err(|e| history_error(&e))?;
        let applied = match checkpoints.load().map_err(|e| sm_error(&e))? {
            Some((meta, bytes)) => adopt(&history, &meta, decode_image(&region, &meta, &bytes)?)?,
            None => AppliedState {
                state: State::new(region.clone()),
                last_applied: None,
                membership: Default::default(),
                retired: BTreeSet::new(),
                history_digest: [0; 32],
            },
        };
        let applied_index = tokio::sync::watch::Sender::new(applied.last_applied.map_or(0, |l| l.index));
        let shared = Shared {
            region,
            applied_index,
            applied: RwLock::new(Arc::new(applied.clone())),
            working: Mutex::new(applied),
            checkpoints,
            history,
            snapshots_built: AtomicU64::new(0),
            last_snapshot: (AtomicU64::new(0), AtomicU64::new(0)),
            observer: RwLock::new(None),
        };
        Ok(StateMachineStore { shared: Arc::new(shared) })
    }

    /// The region's history on this node.
    pub fn history(&self) -> &History {
        &self.shared.history
    }

    /// The applied state as the last apply left it (a reference, O(1); an
    /// apply in progress does not hold it up).
    pub fn applied(&self) -> Arc<AppliedState> {
        self.shared.applied.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publish `applied` for readers ([`Self::applied`]).
    fn publish(&self, applied: &AppliedState) {
        let published = Arc::new(applied.clone());
        *self.shared.applied.write().unwrap_or_else(|p| p.into_inner()) = published;
    }

    /// The protocol the region runs as applied here (cheaper than
    /// [`Self::applied`]).
    pub fn protocol(&self) -> Protocol {
        self.shared.applied.read().unwrap_or_else(|p| p.into_inner()).state.protocol()
    }

    /// Whether node `id` was removed from the region (and not added back) as
    /// of the applied index; cheaper than [`Self::applied`].
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.shared.applied.read().unwrap_or_else(|p| p.into_inner()).retired.contains(&id)
    }

    /// The index of the last applied entry, changing as entries are applied
    /// (once per `apply` call, which may apply several) or a snapshot is
    /// installed.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied_index.subscribe()
    }

    /// Report every entry applied from now on to `observer`.
    pub fn observe_applies(&self, observer: ApplyObserver) {
        *self.shared.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    /// How many snapshots this process built.
    pub fn snapshots_built(&self) -> u64 {
        self.shared.snapshots_built.load(Ordering::Relaxed)
    }

    /// The last snapshot this node built: its image's size in bytes and
    /// how long building it took; zeros before the first.
    pub fn last_snapshot(&self) -> (u64, Duration) {
        let (bytes, micros) = &self.shared.last_snapshot;
        (bytes.load(Ordering::Relaxed), Duration::from_micros(micros.load(Ordering::Relaxed)))
    }

    pub(crate) fn encode(applied: &AppliedState) -> Result<Vec<u8>, StorageError> {
        let image = Image {
            state: applied.state.clone(),
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            retired: applied.retired.clone(),
            history_digest: applied.history_digest,
        };
        let protocol = applied.state.protocol();
        let mut bytes = if protocol == Protocol::FIRST {
            vec![IMAGE_FORMAT]
        } else {
            let mut bytes = vec![IMAGE_FORMAT_PROTOCOL];
            postcard::to_io(&protocol.number(), &mut bytes).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            bytes
        };
        postcard::to_io(&image, &mut bytes).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(bytes)
    }
}

/// Refuse to apply the entry at `log_id` if it moves the region to a
/// protocol this release does not support: the node stops (openraft takes
/// a storage error as fatal) with the reason in its log, where applying it
/// would follow rules this release does not know. `paymesh upgrade
/// finalize` proposes a raise only once every member supports it, so this
/// is met by a node started with an older binary after the raise.
fn unsupported_protocol(log_id: LogId, batch: &paymesh_core::Batch) -> Result<(), StorageError> {
    match batch.raises_protocol_to() {
        Some(protocol) if !protocol.is_supported() => {
            let reason = format!(
                "the entry at index {} moves the region to protocol {protocol}, and this release of paymesh supports \
                 protocols {PROTOCOL_MIN} to {PROTOCOL}: this node stops; run a release that supports it",
                log_id.index
            );
            tracing::error!("{reason}");
            Err(StorageIOError::apply(log_id, &io::Error::new(io::ErrorKind::Unsupported, reason)).into())
        }
        _ => Ok(()),
    }
}

/// Write the history of the entry at `index` and return history's digest
/// after it. An entry history already holds (applied again after a restart)
/// is not rewritten; its records must chain to the digest history recorded
/// at that index, or applying was not deterministic and the node stops.
fn record_history(
    history: &History,
    index: u64,
    records: &[Record],
    previous: &[u8; 32],
) -> Result<[u8; 32], StorageError> {
    // The measurement build without history: every entry's records dropped
    // here, the one place replicas hand them over.
    let records: &[Record] = if cfg!(feature = "measure-without-history") { &[] } else { records };
    if index > history.last_index() {
        history.write(index, records).map_err(|e| StorageError::from(StorageIOError::write_state_machine(&e)))?;
        return Ok(history.digest());
    }
    let held = history.digest_at(index).map_err(|e| history_error(&e))?;
    let again = crate::chain_digest(previous, index, records);
    match held {
        Some(held) if held == again => Ok(held),
        // Deleted by retention: nothing to compare with.
        None if index <= history.deleted_through() => Ok(again),
        _ => panic!("the entry at index {index} applied again gives other history than it gave the first time"),
    }
}

/// Builds a snapshot from a copy of the state taken at one applied index.
#[derive(Debug)]
pub struct SnapshotBuilder {
    copy: Arc<AppliedState>,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Encoding tens of megabytes and syncing them takes hundreds of
        // milliseconds: off the async workers, which would otherwise stall
        // every request queued behind them (all of a region's nodes build at
        // about the same index, so the whole region would pause).
        let (copy, shared) = (self.copy.clone(), self.shared.clone());
        tokio::task::spawn_blocking(move || SnapshotBuilder::build(&copy, &shared))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &io::Error::other(e.to_string())))?
    }
}

impl SnapshotBuilder {
    fn build(copy: &AppliedState, shared: &Shared) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let bytes = StateMachineStore::encode(copy)?;
        let sequence = shared.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let snapshot_id = match copy.last_applied {
            Some(id) => format!("{}-{}-{nanos}-{sequence}", id.leader_id, id.index),
            None => format!("empty-{nanos}-{sequence}"),
        };
        let meta =
            SnapshotMeta { last_log_id: copy.last_applied, last_membership: copy.membership.clone(), snapshot_id };
        // History through the snapshot's index is durable before the
        // checkpoint is (a restart from the checkpoint must find it), and
        // the checkpoint before openraft purges the log behind it.
        shared.history.durable().map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        shared
            .checkpoints
            .save(&meta, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.last_snapshot.0.store(bytes.len() as u64, Ordering::Relaxed);
        shared.last_snapshot.1.store(micros, Ordering::Relaxed);
        tracing::info!(last_applied = ?meta.last_log_id, bytes = bytes.len(), micros, "snapshot built and checkpointed");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let observer = self.shared.observer.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut working = self.shared.working.lock().unwrap_or_else(|p| p.into_inner());
        let applied = &mut *working;
        let mut outcomes = Vec::new();
        for entry in entries {
            if let EntryPayload::Normal(batch) = &entry.payload {
                unsupported_protocol(entry.log_id, batch)?;
            }
            if let Some(observer) = &observer {
                let mut hasher = Sha256::new();
                postcard::to_io(&entry.payload, HashWriter(&mut hasher)).expect("entries encode");
                observer(entry.log_id, hasher.finalize().into());
            }
            assert!(
                applied.last_applied.is_none_or(|last| last.index < entry.log_id.index),
                "entries apply in increasing index order: {:?} after {:?}",
                entry.log_id,
                applied.last_applied
            );
            applied.last_applied = Some(entry.log_id);
            let index = entry.log_id.index;
            let history = &self.shared.history;
            let (outcome, records) = match entry.payload {
                EntryPayload::Blank => (EntryOutcome::default(), Vec::new()),
                EntryPayload::Normal(batch) => {
                    let done = applied.state.apply_batch(index, &batch, &history.at(index));
                    (EntryOutcome { outcomes: done.outcomes }, done.history)
                }
                EntryPayload::Membership(membership) => {
                    applied.change_membership(StoredMembership::new(Some(entry.log_id), membership));
                    (EntryOutcome::default(), Vec::new())
                }
            };
            applied.history_digest = record_history(history, index, &records, &applied.history_digest)?;
            outcomes.push(outcome);
        }
        let last = applied.last_applied.map_or(0, |l| l.index);
        self.publish(applied);
        drop(working);
        self.shared.applied_index.send_if_modified(|index| std::mem::replace(index, last) != last);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { copy: self.applied(), shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        // The received buffer's position is at its end: take the whole buffer.
        let bytes = snapshot.into_inner();
        let installed = adopt(&self.shared.history, meta, decode_image(&self.shared.region, meta, &bytes)?)?;
        // History through the snapshot's index (sent ahead of it) is durable
        // before the checkpoint that relies on it.
        self.shared.history.durable().map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.shared
            .checkpoints
            .save(meta, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let index = installed.last_applied.map_or(0, |l| l.index);
        let mut working = self.shared.working.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(&installed);
        *working = installed;
        drop(working);
        self.shared.applied_index.send_replace(index);
        tracing::info!(last_applied = ?meta.last_log_id, bytes = bytes.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let loaded = self.shared.checkpoints.load().map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(loaded.map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

#[cfg(test)]
mod tests {
    use paymesh_core::command::{Batch, Command, CommandBody};
    use paymesh_core::settings::{RegionSetting, RegionSettings};
    use paymesh_core::Timestamp;

    use super::*;

    /// An empty region's snapshot image in every format this code reads: the
    /// current one as written; format 6 without settlement windows; format
    /// 5 without refunds (the settings' refund
    /// window and the two tables after the settings); format 4 without the
    /// region's settings either; format 3 with the state's fields of then (an
    /// empty collection is one zero byte); format 2 without the partners'
    /// limits and usage (the state's last two fields); format 1 without the
    /// retired set either.
    fn empty_images() -> Vec<(&'static str, Vec<u8>)> {
        let state = State::new(RegionId::new("us-west").expect("a region id"));
        let (last_applied, membership, retired) =
            (None::<LogId>, StoredMembership::default(), BTreeSet::<NodeId>::new());
        let image = Image {
            state: state.clone(),
            last_applied,
            membership: membership.clone(),
            retired,
            history_digest: [0; 32],
        };
        let mut current = vec![IMAGE_FORMAT];
        current.extend(postcard::to_stdvec(&image).expect("an image encodes"));
        let encode = |value: &dyn erased::Encode| value.encode();
        // region, clock, next transfer and quote, partners, corridors,
        // directory, fifteen tables from quotes to top-up expiry, the ledger.
        let mut state_v2 = Vec::new();
        state_v2.extend(encode(state.region()));
        state_v2.extend(encode(&state.clock()));
        state_v2.extend(encode(&1u64));
        state_v2.extend(encode(&1u64));
        state_v2.extend([0, 0]);
        state_v2.extend(encode(state.directory()));
        state_v2.extend([0; 15]);
        state_v2.extend(encode(state.ledger()));
        // The current state ends with the refunds in flight (two empty
        // tables), the settlement book, the settings, the cancels pending,
        // the webhooks and the refund rates (three empty tables), and no
        // reconciliation. Format 10 has no reconciliation; format 9
        // no refund rates either; format 8 no webhooks either;
        // format 7 has the settings before the
        // refunds, without the cancel window (its last field: 1,440
        // minutes, two bytes), and no cancels; format 6 the same without
        // the book; format 5 without the refund window either (365 days,
        // two bytes) and the refunds' tables; format 4 without the settings
        // either (the default idempotency window, 30 days, is one byte).
        let encoded = postcard::to_stdvec(&state).expect("a state encodes");
        let book = postcard::to_stdvec(&paymesh_core::state::SettlementBook::default()).unwrap();
        let settings = postcard::to_stdvec(state.settings()).unwrap();
        assert_eq!(settings, [30, 0xed, 0x02, 0xa0, 0x0b]);
        let tail: Vec<u8> = [&[0u8, 0][..], &book, &settings, &[0, 0, 0, 0]].concat();
        assert!(encoded.ends_with(&tail));
        let v4_bytes = &encoded[..encoded.len() - tail.len()];
        let rest = &current[1 + encoded.len()..];
        let image_of = |format: u8, parts: &[&[u8]]| -> Vec<u8> {
            let mut image = vec![format];
            image.extend(v4_bytes);
            for part in parts {
                image.extend(*part);
            }
            image.extend(rest);
            image
        };
        let v10 = image_of(IMAGE_FORMAT_V10, &[&[0, 0], &book, &settings, &[0, 0, 0]]);
        let v9 = image_of(IMAGE_FORMAT_V9, &[&[0, 0], &book, &settings, &[0, 0]]);
        let v8 = image_of(IMAGE_FORMAT_V8, &[&[0, 0], &book, &settings, &[0]]);
        let v7 = image_of(IMAGE_FORMAT_V7, &[&settings[..3], &[0, 0], &book]);
        let v6 = image_of(IMAGE_FORMAT_V6, &[&settings[..3], &[0, 0]]);
        let v5 = image_of(IMAGE_FORMAT_V5, &[&settings[..1]]);
        let v4 = image_of(IMAGE_FORMAT_V4, &[]);
        let mut v3 = vec![IMAGE_FORMAT_V3];
        v3.extend(&state_v2);
        v3.extend([0, 0]);
        v3.extend(postcard::to_stdvec(&(last_applied, membership.clone(), BTreeSet::<NodeId>::new())).unwrap());
        let mut v2 = vec![IMAGE_FORMAT_V2];
        v2.extend(&state_v2);
        v2.extend(postcard::to_stdvec(&(last_applied, membership.clone(), BTreeSet::<NodeId>::new())).unwrap());
        let mut v1 = vec![IMAGE_FORMAT_V1];
        v1.extend(&state_v2);
        v1.extend(postcard::to_stdvec(&(last_applied, membership)).unwrap());
        vec![
            ("format 11", current),
            ("format 10", v10),
            ("format 9", v9),
            ("format 8", v8),
            ("format 7", v7),
            ("format 6", v6),
            ("format 5", v5),
            ("format 4", v4),
            ("format 3", v3),
            ("format 2", v2),
            ("format 1", v1),
        ]
    }

    /// postcard's encoding of values of different types through one closure.
    mod erased {
        pub(super) trait Encode {
            fn encode(&self) -> Vec<u8>;
        }

        impl<T: serde::Serialize> Encode for T {
            fn encode(&self) -> Vec<u8> {
                postcard::to_stdvec(self).expect("encodes")
            }
        }
    }

    /// Images of formats 4 (before the region's settings) and 5 (before
    /// refunds) read as the same state with the default settings; settings
    /// set survive the current format.
    #[test]
    fn a_format_4_or_5_image_reads_with_the_default_settings_and_the_current_one_keeps_them() {
        let meta = SnapshotMeta::default();
        let region = RegionId::new("us-west").unwrap();
        let images = empty_images();
        let decoded = |bytes: &[u8]| decode_image(&region, &meta, bytes).unwrap().applied.state;
        let (current, v8, v7) = (decoded(&images[0].1), decoded(&images[1].1), decoded(&images[2].1));
        let (v6, v5, v4) = (decoded(&images[3].1), decoded(&images[4].1), decoded(&images[5].1));
        assert_eq!(current, v8);
        assert_eq!(current, v7);
        assert_eq!(current, v6);
        assert_eq!(current, v5);
        assert_eq!(current, v4);
        assert_eq!(v4.settings(), &RegionSettings::default());

        let mut state = State::new(region.clone());
        let command = Command {
            id: paymesh_core::command::CommandId { session: 1, sequence: 1 },
            body: CommandBody::SetRegionSetting(RegionSetting::IdempotencyRetentionDays(90)),
        };
        let window = Command {
            id: paymesh_core::command::CommandId { session: 1, sequence: 2 },
            body: CommandBody::SetRegionSetting(RegionSetting::RefundWindowDays(7)),
        };
        let cancel = Command {
            id: paymesh_core::command::CommandId { session: 1, sequence: 3 },
            body: CommandBody::SetRegionSetting(RegionSetting::CancelWindowMinutes(15)),
        };
        let batch = Batch::new(Timestamp::from_unix_ms(1), vec![command, window, cancel]).unwrap();
        state.apply_batch(1, &batch, &paymesh_core::history::MemoryHistory::new().at(1));
        assert_eq!(state.settings().idempotency_retention_days(), 90);
        let image = Image {
            state,
            last_applied: None,
            membership: StoredMembership::default(),
            retired: BTreeSet::new(),
            history_digest: [0; 32],
        };
        let mut bytes = vec![IMAGE_FORMAT];
        bytes.extend(postcard::to_stdvec(&image).unwrap());
        assert_eq!(decoded(&bytes).settings().idempotency_retention_days(), 90);
        assert_eq!(decoded(&bytes).settings().refund_window_days(), 7);
        assert_eq!(decoded(&bytes).settings().cancel_window_minutes(), 15);
    }

    /// An image of a region at a protocol after the first carries it: read
    /// back at that protocol by a release that supports it, refused with
    /// the protocol named by one that does not. A region at protocol 1
    /// writes the format of the releases before protocols.
    #[test]
    fn an_image_carries_its_regions_protocol_and_a_release_reads_only_those_it_supports() {
        let meta = SnapshotMeta::default();
        let region = RegionId::new("us-west").unwrap();
        let applied = |protocol| AppliedState {
            state: State::new(region.clone()).at_protocol(protocol),
            last_applied: None,
            membership: StoredMembership::default(),
            retired: BTreeSet::new(),
            history_digest: [0; 32],
        };
        let first = StateMachineStore::encode(&applied(Protocol::FIRST)).unwrap();
        assert_eq!(first[0], IMAGE_FORMAT);
        for number in 2..=PROTOCOL + 1 {
            let protocol = Protocol::new(number).unwrap();
            let bytes = StateMachineStore::encode(&applied(protocol)).unwrap();
            assert_eq!(bytes[0], IMAGE_FORMAT_PROTOCOL);
            assert!(image_is_current(&bytes));
            match decode_image(&region, &meta, &bytes) {
                Ok(decoded) => {
                    assert!(protocol.is_supported(), "protocol {protocol} read by a release of {PROTOCOL}");
                    assert_eq!(decoded.applied.state.protocol(), protocol);
                    assert_eq!(decoded.applied.digest(), applied(protocol).digest());
                    assert_ne!(decoded.applied.digest(), applied(Protocol::FIRST).digest());
                }
                Err(refused) => {
                    assert!(!protocol.is_supported(), "protocol {protocol} refused: {refused}");
                    let text = refused.to_string();
                    assert!(text.contains(&format!("runs protocol {protocol}")), "{text}");
                }
            }
        }
    }

    /// Every length in an image read from disk or a peer is untrusted: each
    /// zero byte of an empty image (every empty collection's length among
    /// them; the others are numbers, for which 2^62 may be valid) made to
    /// claim 2^62 must be read as it comes, never allocated up front, which
    /// aborts the process (and this test with it).
    #[test]
    fn no_claimed_length_in_an_image_of_any_format_is_allocated_up_front() {
        let meta = SnapshotMeta::default();
        let region = RegionId::new("us-west").unwrap();
        for (format, image) in empty_images() {
            decode_image(&region, &meta, &image).unwrap_or_else(|e| panic!("the empty {format} image decodes: {e}"));
            let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
            let zeros: Vec<usize> = (1..image.len()).filter(|&at| image[at] == 0).collect();
            assert!(zeros.len() > 20, "{format}: {} empty fields", zeros.len());
            for at in zeros {
                let mut claimed = image[..at].to_vec();
                claimed.extend(huge);
                claimed.extend(&image[at + 1..]);
                let _ = decode_image(&region, &meta, &claimed);
            }
        }
    }
}
