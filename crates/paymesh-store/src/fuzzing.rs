//! Entry points for the fuzz targets in `fuzz/` (see docs/ARCHITECTURE.md,
//! "Fuzzing"), and the stable tests that replay their seed corpora and every
//! crash they found. Each takes arbitrary bytes and must never panic; what a
//! function returns is not the point.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use paymesh_core::command::Batch;
use paymesh_core::id::RegionId;
use paymesh_core::state::State;

use crate::checkpoint::Checkpoints;
use crate::raft_types::SnapshotMeta;
use crate::segment_log::{SegmentLog, SEGMENT_MAGIC};

/// The region every target's state belongs to.
fn region() -> RegionId {
    RegionId::new("us-west").expect("a valid region id")
}

/// `data` read as a sequence of postcard-encoded [`Batch`]es (an
/// undecodable byte is skipped), applied in order to a new state, which must
/// then pass [`State::verify`].
pub fn apply_batches(data: &[u8]) {
    let mut state = State::new(region());
    let mut rest = data;
    let mut index = 0;
    while !rest.is_empty() {
        rest = match postcard::take_from_bytes::<Batch>(rest) {
            Ok((batch, after)) => {
                index += 1;
                state.apply_batch(index, &batch, &paymesh_core::history::NoHistory);
                after
            }
            Err(_) => &rest[1..],
        };
    }
    if let Err(broken) = state.verify() {
        panic!("state invariants broken after applying: {broken}");
    }
}

/// A snapshot image (as a peer sends or a checkpoint holds) decoded and
/// verified, as a follower installing it does.
pub fn decode_image(data: &[u8]) {
    let meta = SnapshotMeta::default();
    let _ = crate::state_machine::decode_image_bytes(&region(), &meta, data);
}

/// A fresh directory under the system's temporary directory, removed when
/// dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("paymesh-fuzz-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `data` as the first segment file of a Raft log: opened (recovering a torn
/// tail), every record read back, then one record appended and read.
pub fn segment_log_open(data: &[u8]) {
    let scratch = Scratch::new("segments");
    std::fs::write(scratch.path().join(format!("{:020}.seg", 1)), data).expect("writing the segment");
    let Ok((mut log, _recovery)) = SegmentLog::open_with(scratch.path(), 1, 1 << 20) else { return };
    if let Some(last) = log.last_index() {
        let _ = log.read_range(log.first_index(), last.saturating_add(1).min(log.first_index() + 10_000));
    }
    let next = log.next_index();
    if log.append([(next, &b"fuzz"[..])]).is_ok() {
        assert_eq!(log.read(next).ok().flatten().as_deref(), Some(&b"fuzz"[..]), "an appended record reads back");
    }
}

/// `data` as the newest checkpoint file, loaded (and verified) as a node
/// starting up does.
pub fn checkpoints_load(data: &[u8]) {
    let scratch = Scratch::new("checkpoints");
    let Ok(checkpoints) = Checkpoints::open(scratch.path()) else { return };
    std::fs::write(checkpoints.path_of(1), data).expect("writing the checkpoint");
    let _ = checkpoints.load();
}

/// `data` as a backup file up to its end frame, given the end frame its
/// digest asks for (so that mutations reach past the checksum), checked and
/// restored into a new node's state directory as `paymesh restore` does.
pub fn backup_restore(data: &[u8]) {
    let _ = restore_backup(data);
}

/// [`backup_restore`]'s work, with the restore's outcome.
fn restore_backup(data: &[u8]) -> Result<crate::backup::Restored, crate::backup::BackupError> {
    use sha2::Digest;
    let scratch = Scratch::new("backup");
    let mut file = data.to_vec();
    file.push(255);
    file.extend_from_slice(&32u32.to_le_bytes());
    file.extend_from_slice(&sha2::Sha256::digest(data));
    let path = scratch.path().join("fuzz.pmbackup");
    std::fs::write(&path, &file).expect("writing the backup");
    let members = vec![(1, crate::NodeAddr::default())];
    let target = crate::backup::RestoreTarget { region: region(), members, gap: 1, reconcile_with: Vec::new() };
    crate::backup::check(&path)?;
    crate::backup::restore(&path, &scratch.path().join("state"), &target)
}

/// Bytes that a structured target reads one at a time; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.next(), self.next()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The payload the structured log target writes at `index` (its length is
/// the fuzzer's choice, its content a pattern so a mix-up shows).
fn payload(index: u64, len: u8) -> Vec<u8> {
    (0..len % 48).map(|k| (index as u8).wrapping_mul(31).wrapping_add(k)).collect()
}

fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .expect("the scratch directory lists")
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let len = std::fs::metadata(&path).expect("a segment's metadata").len();
            (path, len)
        })
        .collect();
    files.sort();
    files
}

/// A log the fuzzer shapes and then damages, with an oracle: `data` chooses
/// the appends (1-6 batches of 1-4 records, small segments so several
/// files exist), synced; then up to 8 faults: a byte flipped anywhere, the
/// last segment torn or zeroed within the final append, bytes of garbage
/// after it. Reopened, the log must:
///
/// * never return a record that differs from what was written at its index;
/// * when it opens after a single kind of fault, hold every record of every
///   append before the final one (those were synced and may have been
///   acknowledged). With two (damage before the final append, and the final
///   append torn, lost or followed by garbage) it may not: a damaged record
///   whose header no longer says where its append ends, followed by a torn
///   write, looks like a torn final append (see the segment log's module
///   documentation); it must still never return a changed record;
/// * refuse to open only when a fault touched something before the final
///   append, or garbage was added (which can forge a record of a later
///   append); a torn or zeroed final append alone is cut, not refused.
///
/// These hold when at most one byte before the final append was changed;
/// with more, the fuzzer can forge a checksum, and only the absence of a
/// panic is checked. This reaches the recovery code past the checksums,
/// which mutated raw segment files ([`segment_log_open`]) rarely do.
pub fn segment_log_damage(data: &[u8]) {
    let mut bytes = Bytes(data);
    let scratch = Scratch::new("damage");
    let dir = scratch.path();
    let mut written: Vec<Vec<u8>> = Vec::new();
    let mut acknowledged = 0usize;
    let mut final_start = 0u64;
    {
        let (mut log, _) = SegmentLog::open_with(dir, 1, 160).expect("a new log opens");
        let batches = 1 + bytes.next() % 6;
        for batch in 0..batches {
            acknowledged = written.len();
            let before = segment_files(dir);
            let records: Vec<(u64, Vec<u8>)> = (0..1 + bytes.next() % 4)
                .map(|_| {
                    let index = (written.len() + 1) as u64;
                    let record = payload(index, bytes.next());
                    written.push(record.clone());
                    (index, record)
                })
                .collect();
            log.append(records.iter().map(|(index, record)| (*index, record.as_slice()))).expect("an append");
            log.sync().expect("a sync");
            if batch + 1 == batches {
                let after = segment_files(dir);
                final_start = match (before.last(), after.last()) {
                    (Some((old, len)), Some((new, _))) if old == new && *len > 8 => *len,
                    _ => SEGMENT_MAGIC.len() as u64,
                };
            }
        }
    }
    let mut files = segment_files(dir);
    let last = files.len() - 1;
    let saved: Vec<Vec<u8>> = files.iter().map(|(path, _)| std::fs::read(path).expect("a segment reads")).collect();
    let mut garbage = false;
    for _ in 0..8 {
        if bytes.is_empty() {
            break;
        }
        let kind = bytes.next();
        let (which, at, value) = (bytes.next(), bytes.u16(), bytes.next());
        let (path, len) = match kind % 4 {
            0 => files[usize::from(which) % files.len()].clone(),
            _ => files[last].clone(),
        };
        let mut contents = std::fs::read(&path).expect("a segment reads");
        match kind % 4 {
            0 if len > 0 => {
                let at = u64::from(at) % len;
                contents[at as usize] ^= value | 1;
            }
            1 => {
                let keep = final_start + u64::from(at) % (len.saturating_sub(final_start) + 1);
                contents.truncate(keep.min(len) as usize);
            }
            2 => {
                let from = final_start + u64::from(at) % (len.saturating_sub(final_start) + 1);
                let to = (from + u64::from(value % 32)).min(len);
                contents[from.min(len) as usize..to as usize].fill(0);
            }
            3 => {
                garbage = true;
                contents.extend((0..1 + value % 64).map(|k| which.wrapping_add(k.wrapping_mul(at as u8 | 1))));
            }
            _ => {}
        }
        std::fs::write(&path, &contents).expect("a segment writes");
        files = segment_files(dir);
    }
    // Whether a fault changed a byte written before the final append (two
    // flips of one byte undo each other).
    // How many bytes written before the final append a fault changed (two
    // flips of one byte undo each other). Flips only change bytes: the
    // files before the last, and the last up to the final append, keep their
    // lengths.
    let changed_before_final: usize = files
        .iter()
        .zip(&saved)
        .enumerate()
        .map(|(n, ((path, _), before))| {
            let now = std::fs::read(path).expect("a segment reads");
            let end = if n == last { final_start as usize } else { before.len() };
            now[..end].iter().zip(&before[..end]).filter(|(a, b)| a != b).count()
        })
        .sum();
    let damaged_before_final = changed_before_final > 0;
    // Whether a fault changed the final append or what follows it.
    let final_touched = std::fs::read(&files[last].0).expect("a segment reads").get(final_start as usize..)
        != saved[last].get(final_start as usize..);
    let opened = SegmentLog::open_with(dir, 1, 160);
    if changed_before_final > 1 {
        // Several bytes changed may forge a checksum (CRC-32 catches every
        // error within 32 bits, and others all but once in 2^32; the fuzzer
        // searches for that one): what the log returns is then not checked,
        // only that nothing panics. Bit rot does not forge checksums.
        return;
    }
    match opened {
        Ok((log, _)) => {
            let end = log.last_index().map_or(1, |last| last + 1);
            let found = log.read_range(1, end).expect("an opened log reads");
            for (index, record) in &found {
                if let Some(expected) = written.get(*index as usize - 1) {
                    assert_eq!(record, expected, "record {index} reads back as written");
                } else {
                    assert!(garbage, "record {index} was never written");
                }
            }
            let held = found.iter().take_while(|(index, _)| *index as usize <= written.len()).count();
            if !(damaged_before_final && final_touched) {
                assert!(held >= acknowledged, "{held} records held, {acknowledged} written before the final append");
            }
        }
        Err(e) => assert!(damaged_before_final || garbage, "a torn final append alone refused: {e}"),
    }
}

/// Two checkpoint generations saved, then the fuzzer's faults on either file
/// (a byte flipped, the file cut short, bytes added). Loading must give the
/// newest generation no fault touched, or fail when both were touched:
/// never a damaged image, never an older one when the newest is whole.
pub fn checkpoints_damage(data: &[u8]) {
    let mut bytes = Bytes(data);
    let scratch = Scratch::new("checkpoint-damage");
    let checkpoints = Checkpoints::open(scratch.path()).expect("a new checkpoint store opens");
    let images: Vec<(SnapshotMeta, Vec<u8>)> = (0..2u8)
        .map(|generation| {
            let meta = SnapshotMeta { snapshot_id: format!("generation-{generation}"), ..SnapshotMeta::default() };
            let len = bytes.next();
            (meta, (0..len).map(|k| k ^ generation).collect())
        })
        .collect();
    for (meta, image) in &images {
        checkpoints.save(meta, image).expect("a checkpoint saves");
    }
    let paths = [checkpoints.path_of(1), checkpoints.path_of(2)];
    let saved = paths.clone().map(|path| std::fs::read(path).expect("a checkpoint reads"));
    for _ in 0..4 {
        if bytes.is_empty() {
            break;
        }
        let kind = bytes.next();
        let which = usize::from(kind >> 7);
        let (at, value) = (bytes.u16(), bytes.next());
        let path = &paths[which];
        let mut contents = std::fs::read(path).expect("a checkpoint reads");
        match kind % 3 {
            0 if !contents.is_empty() => {
                let at = usize::from(at) % contents.len();
                contents[at] ^= value | 1;
            }
            1 => contents.truncate(usize::from(at) % contents.len().max(1)),
            2 => contents.extend(std::iter::repeat_n(value, 1 + usize::from(at % 16))),
            _ => continue,
        }
        std::fs::write(path, &contents).expect("a checkpoint writes");
    }
    // Two faults can undo each other: what counts is whether the file differs.
    let damaged = [0, 1].map(|g| std::fs::read(&paths[g]).expect("a checkpoint reads") != saved[g]);
    let expected = (0..2).rev().find(|&g| !damaged[g]).map(|g| images[g].clone());
    match (checkpoints.load(), expected) {
        (Ok(Some(loaded)), Some(expected)) => assert!(loaded == expected, "the newest whole generation loads"),
        (Err(_), None) => {}
        (loaded, expected) => panic!(
            "loaded {:?}, expected {:?}",
            loaded.map(|l| l.map(|(meta, _)| meta.snapshot_id)),
            expected.map(|(meta, _)| meta.snapshot_id)
        ),
    }
}

/// Every seed and every crash input of the fuzz target `target` kept under
/// `fuzz/` (`corpus/<target>` and `regressions/<target>`), for the stable
/// tests that replay them.
pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut found = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("a fuzz input's directory entry").path();
            let data = std::fs::read(&path).expect("a fuzz input reads");
            found.push((path, data));
        }
    }
    found
}

/// Run `run` on every input of `target` ([`inputs`]); panics, naming the
/// input, if there is none or if one panics.
pub fn replay(target: &str, run: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no seeds for {target}");
    for (path, data) in inputs {
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} panics", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_inputs_apply_batches() {
        replay("apply_batches", apply_batches);
    }

    #[test]
    fn fuzz_inputs_decode_image() {
        replay("decode_image", decode_image);
    }

    #[test]
    fn fuzz_inputs_segment_log_open() {
        replay("segment_log_open", segment_log_open);
    }

    #[test]
    fn fuzz_inputs_backup_restore() {
        replay("backup_restore", backup_restore);
    }

    /// The seed is a whole backup once given its end, so the fuzzer starts
    /// from inputs that reach the restore's every step.
    #[test]
    fn the_backup_seed_restores() {
        let seeds = inputs("backup_restore");
        let (path, seed) = seeds.iter().find(|(path, _)| path.ends_with("small-region")).expect("the seed");
        let restored = restore_backup(seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((restored.header.index, restored.history_batches), (6, 5), "{restored:?}");
    }

    #[test]
    fn fuzz_inputs_checkpoints_load() {
        replay("checkpoints_load", checkpoints_load);
    }

    #[test]
    fn fuzz_inputs_segment_log_damage() {
        replay("segment_log_damage", segment_log_damage);
    }

    #[test]
    fn fuzz_inputs_checkpoints_damage() {
        replay("checkpoints_damage", checkpoints_damage);
    }
}
