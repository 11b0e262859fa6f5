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
use crate::segment_log::SegmentLog;

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
    while !rest.is_empty() {
        rest = match postcard::take_from_bytes::<Batch>(rest) {
            Ok((batch, after)) => {
                state.apply_batch(&batch);
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
    fn fuzz_inputs_checkpoints_load() {
        replay("checkpoints_load", checkpoints_load);
    }
}
