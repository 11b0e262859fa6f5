//! Groups gathered over many batches (layout 4).
//!
//! A partner's listings, an account's movements and a partner's events
//! are read in runs, so they are kept in group keys (`L`, `A`, `E`). Written
//! per batch, a group holds what one batch gave its partner or account: at a
//! region's peak, whose entries carry a few dozen transfers among dozens of
//! partners, that is nearly one key per listing, movement and event, and
//! each key costs every replica an insert into the engine's sorted write
//! buffer and its share of flushes and compactions: 4.5 of a transfer's 5.8
//! keys with 32 transfers per entry. Gathered, a transfer takes 1.35 keys,
//! and a replica's apply path a third less CPU (docs/BENCHMARKS.md, "Groups
//! gathered over many batches").
//!
//! So the members of these groups wait in memory, per partner or account,
//! for up to [`GATHER_BATCHES_MAX`] batches (or [`GATHER_MEMBERS_MAX`]
//! members), then go to disk together: one key per partner or account per
//! [`GATHER_BATCHES_MAX`] batches, each member carrying its whole list
//! token (or, for events, its log position). The journal, written with
//! every batch, stays the source of truth: after a crash, the members of
//! the batches after the last gathering (`M grouped`) are taken again from
//! it when history opens. Readers take the members on disk, then those
//! waiting here.
//!
//! Groups of one scope never overlap in token order (a reader seeks the
//! group that holds a token as the last key at or below it): members wait
//! here only while their token is above every token the scope holds on
//! disk, and in operation they always are, since a batch's time never goes
//! back. A member at or below them (a store written out of time order, as
//! the tests do) is written into the groups on disk with its own batch,
//! the groups around it cut and written again. Since the disk's highest
//! token changes only when members move there from here, the batches taken
//! again from the journal after a crash are sorted the same way as when
//! they were first written.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use paymesh_core::history::{ListToken, Record};
use paymesh_core::id::{PartnerId, TransferId};
use paymesh_core::ledger::AccountId;
use paymesh_core::time::Timestamp;

use super::{
    account_scope, corrupt, parse_position, parse_token, parse_u64, scope, space, token_from, with_token, with_u64,
    Result, CHUNK_BYTES_MAX, POSITION_BYTES, TOKEN_BYTES, TRANSFER_ID_BYTES_MAX,
};

/// The first byte of a gathered group's value as layouts 4 to 6 wrote it:
/// its members carry their whole token (or position), 20 (12) bytes each.
/// A group written per batch (layout 3) begins with a seq or an index,
/// big-endian, whose first byte is never this nor [`PACKED`].
pub(super) const GATHERED: u8 = 0xFF;

/// The first byte of a gathered group's value (layout 7): each member's
/// token (or position) as its difference from the one before it, the
/// first's from the group key's token (or, for events, from position 0),
/// in postcard's variable-length integers.
///
/// A token is a batch's time, its index and the record's seq; the members
/// of a group come in token order, mostly from the same or the next batch,
/// so the differences are small: a movement takes 3 to 5 bytes instead of
/// 20, an event 2 to 3 instead of 12, and a listing its transfer id and
/// 4 to 6. Whole tokens were about 190 bytes of a payment's at the
/// batched peak (six movements, a listing, two events), and the groups'
/// tree two thirds of what the engine's flushes and compactions wrote
/// (docs/BENCHMARKS.md, "Groups' members packed").
pub(super) const PACKED: u8 = 0xFE;

/// The most batches whose members wait in memory before they go to disk.
pub(super) const GATHER_BATCHES_MAX: u64 = 64;

/// The most members waiting in memory (listings, movements under each of
/// their accounts, events): about 100 bytes each.
pub(super) const GATHER_MEMBERS_MAX: usize = 32 * 1024;

/// Bytes of an event's position in a gathered run.
const EVENT_BYTES: usize = POSITION_BYTES;

/// The most events in one run: as many positions as fit
/// [`CHUNK_BYTES_MAX`] after the marker.
pub(super) const EVENTS_PER_RUN_MAX: usize = (CHUNK_BYTES_MAX - 1) / EVENT_BYTES;

/// An event's cursor and the position of its record.
pub(super) type EventAt = (u64, (u64, u32));

/// A listing's or a movement's place in its partner's or account's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub(super) token: ListToken,
    /// A listing's transfer; `None` for a movement.
    pub(super) transfer: Option<TransferId>,
}

/// The members of the listing (`L`) or statement (`A`) group under `key`
/// (its scope's prefix `prefix_len` bytes long), in token order, from
/// either layout: a group of one batch (layout 3: the key's token, then
/// each member's seq) or a gathered one (the marker, then each member's
/// token). Damage (a member cut short, out of order, a first member other
/// than the key's token, an empty group) is an error.
pub(super) fn group_members(key: &[u8], prefix_len: usize, value: &[u8], listing: bool) -> Result<Vec<Member>> {
    if value.is_empty() || value.len() > CHUNK_BYTES_MAX {
        return Err(corrupt(key, format!("a group of {} bytes", value.len())));
    }
    let first = parse_token(key, prefix_len)?;
    let mut members: Vec<Member> = Vec::new();
    let mut push = |token: ListToken, transfer| {
        let in_order = match members.last() {
            None => token == first,
            Some(previous) => token > previous.token,
        };
        if !in_order {
            return Err(corrupt(key, format!("a member out of order in its group (first {first:?}): {token:?}")));
        }
        members.push(Member { token, transfer });
        Ok(())
    };
    if value[0] == PACKED {
        let mut rest = &value[1..];
        let mut previous = first;
        while !rest.is_empty() {
            let token = step(&previous, take(key, &mut rest)?);
            let transfer = if listing { Some(transfer_id(key, take(key, &mut rest)?)?) } else { None };
            push(token, transfer)?;
            previous = token;
        }
    } else if value[0] == GATHERED {
        let mut rest = &value[1..];
        while !rest.is_empty() {
            let (bytes, tail) =
                rest.split_first_chunk::<TOKEN_BYTES>().ok_or_else(|| corrupt(key, "a member cut short"))?;
            rest = tail;
            let token = token_from(key, bytes)?;
            let transfer = if listing { Some(take_transfer_id(key, &mut rest)?) } else { None };
            push(token, transfer)?;
        }
    } else if listing {
        let mut rest = value;
        while !rest.is_empty() {
            let (seq, tail) = rest.split_first_chunk::<4>().ok_or_else(|| corrupt(key, "a listing cut short"))?;
            rest = tail;
            let id = take_transfer_id(key, &mut rest)?;
            push(ListToken { seq: u32::from_be_bytes(*seq), ..first }, Some(id))?;
        }
    } else {
        if !value.len().is_multiple_of(4) {
            return Err(corrupt(key, format!("a statement group of {} bytes", value.len())));
        }
        for seq in value.chunks_exact(4) {
            push(ListToken { seq: u32::from_be_bytes(seq.try_into().expect("4 bytes")), ..first }, None)?;
        }
    }
    if members.is_empty() {
        return Err(corrupt(key, "an empty group"));
    }
    Ok(members)
}

/// A transfer id after its length (u16), taken from the front of `rest`.
fn take_transfer_id(key: &[u8], rest: &mut &[u8]) -> Result<TransferId> {
    let (length, tail) = rest.split_first_chunk::<2>().ok_or_else(|| corrupt(key, "a listing cut short"))?;
    let length = usize::from(u16::from_be_bytes(*length));
    if length > tail.len() {
        return Err(corrupt(key, format!("a transfer id of {length} bytes")));
    }
    let (id, tail) = tail.split_at(length);
    *rest = tail;
    transfer_id(key, std::str::from_utf8(id).map_err(|_| corrupt(key, "a listing that is not a transfer id"))?)
}

/// A listing's transfer id from its text.
fn transfer_id(key: &[u8], text: &str) -> Result<TransferId> {
    if text.len() > TRANSFER_ID_BYTES_MAX {
        return Err(corrupt(key, format!("a transfer id of {} bytes", text.len())));
    }
    TransferId::parse(text).map_err(|_| corrupt(key, "a listing that is not a transfer id"))
}

/// The next number (or text) of a packed value, taken from the front of
/// `rest`: damage (cut short, a number past its type) is an error.
fn take<'a, T: serde::Deserialize<'a>>(key: &[u8], rest: &mut &'a [u8]) -> Result<T> {
    let (value, tail) =
        postcard::take_from_bytes::<T>(rest).map_err(|e| corrupt(key, format!("a packed member: {e}")))?;
    *rest = tail;
    Ok(value)
}

/// How a packed token differs from the one before it: its time, index
/// and seq, each as a wrapping difference read as signed (small either
/// way, and any token can be reached from any other).
type Step = (i64, i64, i32);

/// The difference from `from` to `to`.
fn step_between(from: &ListToken, to: &ListToken) -> Step {
    (
        to.at.unix_ms().wrapping_sub(from.at.unix_ms()) as i64,
        to.index.wrapping_sub(from.index) as i64,
        to.seq.wrapping_sub(from.seq) as i32,
    )
}

/// The token `step` after `from`.
fn step(from: &ListToken, (at, index, seq): Step) -> ListToken {
    ListToken {
        at: Timestamp::from_unix_ms(from.at.unix_ms().wrapping_add_signed(at)),
        index: from.index.wrapping_add_signed(index),
        seq: from.seq.wrapping_add_signed(seq),
    }
}

/// `member` packed after `previous` into `value`; `text` is room to
/// format its transfer id in.
fn push_packed(value: &mut Vec<u8>, previous: &ListToken, member: &Member, text: &mut String) {
    let step = step_between(previous, &member.token);
    let written = match &member.transfer {
        None => postcard::to_extend(&step, std::mem::take(value)),
        Some(transfer) => {
            text.clear();
            std::fmt::Write::write_fmt(text, format_args!("{transfer}")).expect("writing to memory");
            postcard::to_extend(&(step, text.as_str()), std::mem::take(value))
        }
    };
    *value = written.expect("postcard writes numbers and text to memory");
}

/// Members in token order as gathered groups under the scope `prefix`:
/// each group's key (the prefix and its first member's token) and value
/// ([`PACKED`]), of at most [`CHUNK_BYTES_MAX`] bytes.
pub(super) fn gathered_groups(prefix: &[u8], members: &[Member]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut groups: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut member_bytes = Vec::with_capacity(MEMBER_BYTES_MAX);
    let mut text = String::new();
    let mut previous: Option<ListToken> = None;
    for member in members {
        member_bytes.clear();
        if let (Some(last), Some((_, value))) = (previous, groups.last_mut()) {
            push_packed(&mut member_bytes, &last, member, &mut text);
            if value.len() + member_bytes.len() <= CHUNK_BYTES_MAX {
                value.extend_from_slice(&member_bytes);
                previous = Some(member.token);
                continue;
            }
            member_bytes.clear();
        }
        // A new group, its first member packed after the key's token (itself).
        push_packed(&mut member_bytes, &member.token, member, &mut text);
        let mut value = Vec::with_capacity(CHUNK_BYTES_MAX.min(1 + 64 * member_bytes.len()));
        value.push(PACKED);
        value.extend_from_slice(&member_bytes);
        groups.push((with_token(prefix, &member.token), value));
        previous = Some(member.token);
    }
    groups
}

/// The most bytes one packed member takes: three numbers of at most 10, 10
/// and 5 bytes, and a transfer id after its length.
const MEMBER_BYTES_MAX: usize = 10 + 10 + 5 + 2 + TRANSFER_ID_BYTES_MAX;

/// An event run read back: events with consecutive cursors from `first`,
/// each the record at its position, from either layout: one batch's run
/// (layout 3: the batch's index, then each event's seq) or a gathered one
/// (the marker, then each event's index and seq).
#[derive(Debug)]
pub(super) struct Run {
    pub(super) first: u64,
    pub(super) positions: Vec<(u64, u32)>,
}

impl Run {
    /// The run under `key` (of a partner's prefix `prefix_len` bytes long).
    pub(super) fn parse(key: &[u8], prefix_len: usize, value: &[u8]) -> Result<Run> {
        let first = parse_u64(key, key.get(prefix_len..).unwrap_or_default())?;
        let bad = || corrupt(key, format!("an event run of {} bytes", value.len()));
        if value.len() > CHUNK_BYTES_MAX {
            return Err(bad());
        }
        let positions = match value.split_first() {
            Some((&PACKED, mut rest)) if !rest.is_empty() => {
                let mut positions = Vec::new();
                let mut previous = (0, 0);
                while !rest.is_empty() {
                    if positions.len() == EVENTS_PER_RUN_MAX {
                        return Err(bad());
                    }
                    previous = position_after(previous, take(key, &mut rest)?);
                    positions.push(previous);
                }
                positions
            }
            Some((&GATHERED, rest)) if !rest.is_empty() && rest.len().is_multiple_of(EVENT_BYTES) => {
                rest.chunks_exact(EVENT_BYTES).map(|at| parse_position(key, at)).collect::<Result<Vec<_>>>()?
            }
            Some(_) if value.len() >= 12 && value.len().is_multiple_of(4) => {
                let (index, seqs) = value.split_at(8);
                let index = parse_u64(key, index)?;
                seqs.chunks_exact(4).map(|seq| (index, u32::from_be_bytes(seq.try_into().expect("4 bytes")))).collect()
            }
            _ => return Err(bad()),
        };
        if first.checked_add(positions.len() as u64 - 1).is_none() {
            return Err(corrupt(key, "cursors past 2^64"));
        }
        Ok(Run { first, positions })
    }

    /// The cursor of its last event.
    pub(super) fn last(&self) -> u64 {
        self.first + (self.positions.len() as u64 - 1)
    }

    /// Each event's cursor and position.
    pub(super) fn events(&self) -> impl Iterator<Item = (u64, (u64, u32))> + '_ {
        self.positions.iter().enumerate().map(|(n, &at)| (self.first + n as u64, at))
    }
}

/// Events by cursor as gathered runs under the partner's `prefix`: runs of
/// consecutive cursors, at most [`EVENTS_PER_RUN_MAX`] each, as keys and
/// values.
pub(super) fn gathered_runs(
    prefix: &[u8],
    events: impl IntoIterator<Item = (u64, (u64, u32))>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    /// A run being packed.
    struct Packing {
        first: u64,
        count: usize,
        last: (u64, u32),
        value: Vec<u8>,
    }
    let mut runs: Vec<Packing> = Vec::new();
    let mut event_bytes = Vec::with_capacity(15);
    for (cursor, at) in events {
        if let Some(run) = runs.last_mut() {
            event_bytes = packed_position(event_bytes, run.last, at);
            if run.count < EVENTS_PER_RUN_MAX
                && run.first.checked_add(run.count as u64) == Some(cursor)
                && run.value.len() + event_bytes.len() <= CHUNK_BYTES_MAX
            {
                run.value.extend_from_slice(&event_bytes);
                run.count += 1;
                run.last = at;
                continue;
            }
        }
        event_bytes = packed_position(event_bytes, (0, 0), at);
        let mut value = vec![PACKED];
        value.extend_from_slice(&event_bytes);
        runs.push(Packing { first: cursor, count: 1, last: at, value });
    }
    runs.into_iter().map(|run| (with_u64(prefix, run.first), run.value)).collect()
}

/// How an event's position differs from the one before it in its run (the
/// first's from position 0): index and seq as wrapping differences read as
/// signed.
type PositionStep = (i64, i32);

/// The position `at` packed after `previous`, into `bytes` (cleared first).
fn packed_position(mut bytes: Vec<u8>, previous: (u64, u32), at: (u64, u32)) -> Vec<u8> {
    bytes.clear();
    let step: PositionStep = (at.0.wrapping_sub(previous.0) as i64, at.1.wrapping_sub(previous.1) as i32);
    postcard::to_extend(&step, bytes).expect("postcard writes numbers to memory")
}

/// The position `step` after `previous`.
fn position_after(previous: (u64, u32), (index, seq): PositionStep) -> (u64, u32) {
    (previous.0.wrapping_add_signed(index), previous.1.wrapping_add_signed(seq))
}

/// The members of one batch that go to groups, as [`super::Derivation`]
/// finds them in its records.
#[derive(Debug, Default)]
pub(super) struct BatchMembers {
    pub(super) listed: Vec<(PartnerId, Member)>,
    pub(super) movements: Vec<(AccountId, ListToken)>,
    /// Each partner's events: cursor to position, a later record taking a
    /// cursor from an earlier one.
    pub(super) events: BTreeMap<PartnerId, BTreeMap<u64, (u64, u32)>>,
}

impl BatchMembers {
    /// Take the record at (`index`, `seq`) if it is a member of a group.
    pub(super) fn add(&mut self, index: u64, seq: u32, record: &Record) {
        match record {
            Record::Listed { partner, transfer, at } => {
                let token = ListToken { at: *at, index, seq };
                self.listed.push((partner.clone(), Member { token, transfer: Some(transfer.clone()) }));
            }
            Record::Movement(movement) => {
                let token = ListToken { at: movement.at, index, seq };
                self.movements.push((movement.debit.clone(), token));
                if movement.credit != movement.debit {
                    self.movements.push((movement.credit.clone(), token));
                }
            }
            Record::Event { partner, event } => {
                self.events.entry(partner.clone()).or_default().insert(event.cursor, (index, seq));
            }
            _ => {}
        }
    }
}

/// One partner's or account's listings or movements: the highest token its
/// groups on disk hold, and the members waiting, in token order, all above it.
#[derive(Debug, Default)]
struct Scope {
    disk: Option<ListToken>,
    waiting: Vec<Member>,
}

impl Scope {
    /// Take `member` to wait, in token order; or give it back if it is not
    /// above every token on disk (it must be written there now).
    fn take(&mut self, member: Member) -> Option<Member> {
        if self.disk.is_some_and(|disk| member.token <= disk) {
            return Some(member);
        }
        match self.waiting.last() {
            Some(last) if member.token < last.token => {
                let at = self.waiting.partition_point(|held| held.token < member.token);
                self.waiting.insert(at, member);
            }
            _ => self.waiting.push(member),
        }
        None
    }

    /// The waiting members after `after` (all if `None`) that `keep`
    /// takes, at most `max`, and the first member waiting (the disk's
    /// members are read below it).
    fn after(&self, after: Option<&ListToken>, keep: impl Fn(&ListToken) -> bool, max: usize) -> Waiting {
        let from = after.map_or(0, |after| self.waiting.partition_point(|held| held.token <= *after));
        Waiting {
            first: self.waiting.first().map(|m| m.token),
            members: self.waiting[from..].iter().filter(|m| keep(&m.token)).take(max).cloned().collect(),
        }
    }
}

/// A partner's events: the highest cursor its runs on disk hold (0 for
/// none), and the events waiting, by cursor, all above it.
#[derive(Debug, Default)]
struct EventScope {
    disk: u64,
    waiting: BTreeMap<u64, (u64, u32)>,
}

/// What a reader takes from the members waiting: the first waiting member's
/// token or cursor (what is on disk at or above it is read from here
/// instead, since a gathering may move it there while the reader reads),
/// and those the reader asked for.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) first: Option<ListToken>,
    pub(super) members: Vec<Member>,
}

/// Members given back by [`Gathered::take`] because their scope holds a
/// higher token on disk: to be written into the groups there with their
/// batch.
#[derive(Debug, Default)]
pub(super) struct OnDisk {
    pub(super) listed: BTreeMap<PartnerId, Vec<Member>>,
    pub(super) movements: BTreeMap<AccountId, Vec<Member>>,
    pub(super) events: BTreeMap<PartnerId, BTreeMap<u64, (u64, u32)>>,
}

/// The members waiting in memory for their groups, per partner and account,
/// and what each scope holds on disk (learnt from the store the first time
/// the scope is seen after opening, a deletion or a failed write).
#[derive(Debug)]
pub(super) struct Gathered {
    /// The groups of every batch through this index are on disk; those of
    /// the later ones wait here.
    pub(super) through: u64,
    /// Batches taken since `through`.
    batches: u64,
    /// The most batches taken before the members go to disk.
    batches_max: u64,
    /// Members waiting.
    members: usize,
    /// By partner and account, hashed with FxHash: their ids are the
    /// operator's, not a partner's choice.
    listed: FxHashMap<PartnerId, Scope>,
    accounts: FxHashMap<AccountId, Scope>,
    events: FxHashMap<PartnerId, EventScope>,
}

/// The scope of `key` in `map`, learning what it holds on disk if it is new.
fn scope_of<'a, K: std::hash::Hash + Eq + Clone>(
    map: &'a mut FxHashMap<K, Scope>,
    key: &K,
    highest: impl FnOnce() -> Result<Option<ListToken>>,
) -> Result<&'a mut Scope> {
    if !map.contains_key(key) {
        let disk = highest()?;
        map.insert(key.clone(), Scope { disk, waiting: Vec::new() });
    }
    Ok(map.get_mut(key).expect("a scope just inserted"))
}

impl Gathered {
    /// Nothing waiting, every batch through `through` on disk, members
    /// going to disk every `batches_max` batches.
    pub(super) fn new(through: u64, batches_max: u64) -> Gathered {
        Gathered {
            through,
            batches: 0,
            batches_max: batches_max.max(1),
            members: 0,
            listed: FxHashMap::default(),
            accounts: FxHashMap::default(),
            events: FxHashMap::default(),
        }
    }

    /// Forget what each scope holds on disk (after a deletion changed it);
    /// nothing may be waiting.
    pub(super) fn forget_disk(&mut self) {
        debug_assert_eq!(self.members, 0, "nothing waits when the disk's marks are forgotten");
        self.listed.clear();
        self.accounts.clear();
        self.events.clear();
    }

    /// The most batches taken before the members go to disk.
    pub(super) fn batches_max(&self) -> u64 {
        self.batches_max
    }

    /// Count `batches` taken since the last gathering (after taking them
    /// again from the journal: batches without records are not there).
    pub(super) fn set_batches(&mut self, batches: u64) {
        self.batches = batches;
    }

    /// Take the members of one batch: those above what their scope holds on
    /// disk wait; the others are given back. `disk` reads what a scope
    /// holds on disk.
    pub(super) fn take(&mut self, members: BatchMembers, disk: &dyn DiskHighest) -> Result<OnDisk> {
        let mut on_disk = OnDisk::default();
        for (partner, member) in members.listed {
            let held =
                scope_of(&mut self.listed, &partner, || disk.token(&scope(space::LISTED, partner.as_str()), true))?;
            match held.take(member) {
                None => self.members += 1,
                Some(member) => on_disk.listed.entry(partner).or_default().push(member),
            }
        }
        for (account, token) in members.movements {
            let held = scope_of(&mut self.accounts, &account, || disk.token(&account_scope(&account), false))?;
            match held.take(Member { token, transfer: None }) {
                None => self.members += 1,
                Some(member) => on_disk.movements.entry(account).or_default().push(member),
            }
        }
        for (partner, events) in members.events {
            if !self.events.contains_key(&partner) {
                let disk = disk.cursor(&scope(space::EVENT, partner.as_str()))?;
                self.events.insert(partner.clone(), EventScope { disk, waiting: BTreeMap::new() });
            }
            let held = self.events.get_mut(&partner).expect("a scope just inserted");
            for (cursor, at) in events {
                if cursor <= held.disk {
                    on_disk.events.entry(partner.clone()).or_default().insert(cursor, at);
                } else if held.waiting.insert(cursor, at).is_none() {
                    self.members += 1;
                }
            }
        }
        self.batches += 1;
        Ok(on_disk)
    }

    /// Whether the members waiting are due to go to disk.
    pub(super) fn due(&self) -> bool {
        self.batches >= self.batches_max || self.members >= GATHER_MEMBERS_MAX
    }

    /// Every member waiting as group keys and values, to be written with the
    /// batch at `index`; each scope's mark of its disk raised to its highest.
    pub(super) fn drain(&mut self, index: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut writes = Vec::new();
        for (partner, held) in &mut self.listed {
            if let Some(last) = held.waiting.last() {
                held.disk = Some(last.token);
                writes.extend(gathered_groups(&scope(space::LISTED, partner.as_str()), &held.waiting));
                held.waiting.clear();
            }
        }
        for (account, held) in &mut self.accounts {
            if let Some(last) = held.waiting.last() {
                held.disk = Some(last.token);
                writes.extend(gathered_groups(&account_scope(account), &held.waiting));
                held.waiting.clear();
            }
        }
        for (partner, held) in &mut self.events {
            if let Some((&last, _)) = held.waiting.last_key_value() {
                held.disk = last;
                writes.extend(gathered_runs(&scope(space::EVENT, partner.as_str()), std::mem::take(&mut held.waiting)));
            }
        }
        self.through = index;
        self.batches = 0;
        self.members = 0;
        writes
    }

    /// A partner's listings waiting after `after`, at most `max`.
    pub(super) fn listed(&self, partner: &PartnerId, after: Option<&ListToken>, max: usize) -> Waiting {
        match self.listed.get(partner) {
            Some(held) => held.after(after, |_| true, max),
            None => Waiting { first: None, members: Vec::new() },
        }
    }

    /// An account's movements waiting after `after` whose token `keep`
    /// takes, at most `max`.
    pub(super) fn movements(
        &self,
        account: &AccountId,
        after: Option<&ListToken>,
        keep: impl Fn(&ListToken) -> bool,
        max: usize,
    ) -> Waiting {
        match self.accounts.get(account) {
            Some(held) => held.after(after, keep, max),
            None => Waiting { first: None, members: Vec::new() },
        }
    }

    /// A partner's events waiting with a cursor above `after`, at most
    /// `max`, and the lowest cursor waiting.
    pub(super) fn events(&self, partner: &PartnerId, after: u64, max: usize) -> (Option<u64>, Vec<EventAt>) {
        match self.events.get(partner) {
            Some(held) => (
                held.waiting.keys().next().copied(),
                held.waiting.range(after.saturating_add(1)..).take(max).map(|(&c, &at)| (c, at)).collect(),
            ),
            None => (None, Vec::new()),
        }
    }
}

/// Reads what a scope holds on disk.
pub(super) trait DiskHighest {
    /// The highest token the listing (`listing`) or statement groups under
    /// `prefix` hold.
    fn token(&self, prefix: &[u8], listing: bool) -> Result<Option<ListToken>>;
    /// The highest cursor the event runs under `prefix` hold (0 for none).
    fn cursor(&self, prefix: &[u8]) -> Result<u64>;
}
