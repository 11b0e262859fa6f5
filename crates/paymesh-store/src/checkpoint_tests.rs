// The checkpoint store's tests, shared by `checkpoint.rs`'s test module (which
// supplies `open_failing`, `generations` and `damage` for its layout).

fn meta(index: u64) -> SnapshotMeta {
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), index);
    SnapshotMeta { last_log_id: Some(log_id), last_membership: Default::default(), snapshot_id: format!("s-{index}") }
}

/// Data of a few chunks, different for each index.
fn data(index: u64) -> Vec<u8> {
    (0..200_000u64).map(|i| (i.wrapping_mul(31) ^ index) as u8).collect()
}

/// The `tracing` output of `f`, at warn and above.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn two_generations_are_kept_and_a_third_save_drops_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_failing(dir.path(), Arc::new(AtomicBool::new(false)));
    store.save(&meta(10), &data(10)).unwrap();
    store.save(&meta(20), &data(20)).unwrap();
    assert_eq!(generations(&store, dir.path()), [1, 2]);
    store.save(&meta(30), &data(30)).unwrap();
    assert_eq!(generations(&store, dir.path()), [2, 3]);
    let (loaded_meta, loaded) = store.load().unwrap().unwrap();
    assert_eq!((loaded_meta, loaded), (meta(30), data(30)));
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_failing(dir.path(), Arc::new(AtomicBool::new(false)));
    store.save(&meta(10), &data(10)).unwrap();
    store.save(&meta(20), &data(20)).unwrap();
    damage(&store, dir.path(), 2);
    let (loaded, log) = logged(|| store.load());
    let (loaded_meta, loaded) = loaded.unwrap().unwrap();
    assert_eq!((loaded_meta, loaded), (meta(10), data(10)));
    assert!(log.contains("WARN") && log.contains("generation=2"), "the fallback is logged: {log}");
}

#[test]
fn both_generations_damaged_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_failing(dir.path(), Arc::new(AtomicBool::new(false)));
    store.save(&meta(10), &data(10)).unwrap();
    store.save(&meta(20), &data(20)).unwrap();
    damage(&store, dir.path(), 1);
    damage(&store, dir.path(), 2);
    let error = store.load().unwrap_err().to_string();
    assert!(error.contains("generation 1") && error.contains("generation 2"), "{error}");
}

#[test]
fn a_save_whose_sync_fails_is_an_error_and_the_previous_checkpoint_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let store = open_failing(dir.path(), fail.clone());
    store.save(&meta(10), &data(10)).unwrap();
    fail.store(true, Ordering::SeqCst);
    assert!(store.save(&meta(20), &data(20)).is_err(), "a failed sync fails the save");
    let (loaded_meta, loaded) = store.load().unwrap().unwrap();
    assert_eq!((loaded_meta, loaded), (meta(10), data(10)));
    drop(store);
    // And after a restart.
    fail.store(false, Ordering::SeqCst);
    let store = open_failing(dir.path(), fail);
    let (loaded_meta, loaded) = store.load().unwrap().unwrap();
    assert_eq!((loaded_meta, loaded), (meta(10), data(10)));
}
