//! History's engine runs one background thread, whatever the cores.
//!
//! With two or more, fjall's first worker sends every compaction request
//! it receives back to the queue it shares with the others and takes it
//! again while they are busy: a core spinning for as long as a compaction
//! lasts (docs/BENCHMARKS.md, "The engine's spinning worker"). fjall's
//! default is one worker per core up to four, so on any machine with more
//! than one core this test fails if history opens its engine with the
//! default.
//!
//! A test binary of its own: it counts the process's threads by name, and
//! no other test here opens an engine beside it.

use std::fs;

use paymesh_store::state_machine::HISTORY_MEMORY_BYTES;
use paymesh_store::History;

/// The threads of this process named `name` (`/proc/self/task/*/comm`).
fn threads_named(name: &str) -> usize {
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn history_opens_its_engine_with_one_worker_thread() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(threads_named("fjall:worker"), 0, "no engine is open yet");
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path(), HISTORY_MEMORY_BYTES).unwrap();
    assert_eq!(threads_named("fjall:worker"), 1, "history's engine workers on {cores} cores");
    drop(history);
}
