//! History's engine runs one background thread, whatever the cores, below
//! the priority of the node's other threads.
//!
//! With two or more, fjall's first worker sends every compaction request
//! it receives back to the queue it shares with the others and takes it
//! again while they are busy: a core spinning for as long as a compaction
//! lasts (docs/BENCHMARKS.md, "The engine's spinning worker"). fjall's
//! default is one worker per core up to four, so on any machine with more
//! than one core this test fails if history opens its engine with the
//! default. Its flushes and compactions run at nice 10, so that on a busy
//! node they take the cores' idle time before the payments' (docs/BENCHMARKS.md,
//! "The engine's thread below the payments").
//!
//! A test binary of its own: it counts the process's threads by name, and
//! no other test here opens an engine beside it.

use std::fs;

use paymesh_store::state_machine::HISTORY_MEMORY_BYTES;
use paymesh_store::History;

/// The nice value of each thread of this process named `name`
/// (`/proc/self/task/*/comm`, and the 19th field of its `stat`).
fn threads_named(name: &str) -> Vec<i32> {
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .filter_map(|task| {
            let path = task.ok()?.path();
            (fs::read_to_string(path.join("comm")).ok()?.trim_end() == name).then_some(path)
        })
        .map(|path| {
            let stat = fs::read_to_string(path.join("stat")).expect("a thread's stat");
            // The fields after the name in parentheses begin with the 3rd.
            let after = stat.rsplit_once(')').expect("a stat names its thread").1;
            after.split_whitespace().nth(19 - 3).and_then(|nice| nice.parse().ok()).expect("a nice value")
        })
        .collect()
}

#[test]
fn history_opens_its_engine_with_one_worker_thread_at_nice_10() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(threads_named("fjall:worker"), Vec::<i32>::new(), "no engine is open yet");
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(dir.path(), HISTORY_MEMORY_BYTES).unwrap();
    assert_eq!(threads_named("fjall:worker"), [10], "history's engine workers on {cores} cores, and their nice");
    drop(history);
}
