use std::collections::BTreeMap;
use std::fs::OpenOptions;

use proptest::prelude::*;

use super::*;

fn payload(index: u64) -> Vec<u8> {
    format!("entry {index} ").repeat((index % 7 + 1) as usize).into_bytes()
}

fn append_range(log: &mut SegmentLog, range: std::ops::Range<u64>) {
    let payloads: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
    log.append(payloads.iter().map(|(i, p)| (*i, p.as_slice()))).unwrap();
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(SEGMENT_SUFFIX))
        .collect();
    names.sort();
    names
}

#[test]
fn records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, recovery) = SegmentLog::open(dir.path(), 0).unwrap();
    assert_eq!(recovery, Recovery::default());
    assert_eq!((log.next_index(), log.last_index()), (0, None));
    append_range(&mut log, 0..100);
    log.sync().unwrap();
    assert_eq!(log.read(42).unwrap(), Some(payload(42)));
    assert_eq!(log.read(100).unwrap(), None);
    drop(log);
    let (log, recovery) = SegmentLog::open(dir.path(), 0).unwrap();
    assert_eq!(recovery.records, 100);
    assert_eq!(log.last_index(), Some(99));
    let all = log.read_range(0, 200).unwrap();
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|(i, p)| *p == payload(*i)));
}

#[test]
fn appends_must_increase() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 5).unwrap();
    log.append([(5, b"a".as_slice()), (6, b"b".as_slice())]).unwrap();
    let repeat = log.append([(6, b"c".as_slice())]);
    assert!(matches!(repeat, Err(LogError::NotIncreasing { index: 6, last: 6 })));
    let backwards = log.append([(7, b"c".as_slice()), (7, b"d".as_slice())]);
    assert!(matches!(backwards, Err(LogError::NotIncreasing { index: 7, last: 7 })));
    let huge = vec![0u8; RECORD_PAYLOAD_BYTES_MAX + 1];
    assert!(matches!(log.append([(7, huge.as_slice())]), Err(LogError::TooLarge { .. })));
    // A refused append writes nothing.
    assert_eq!((log.last_index(), log.read(7).unwrap()), (Some(6), None));
    // Gaps are allowed (Raft never makes them, the storage does not insist).
    log.append([(9, b"i".as_slice())]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = SegmentLog::open(dir.path(), 5).unwrap();
    assert_eq!(log.read(8).unwrap(), None);
    assert_eq!(log.read(9).unwrap(), Some(b"i".to_vec()));
    assert_eq!(log.read_range(0, 100).unwrap().iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5, 6, 9]);
}

#[test]
fn an_empty_log_starts_at_its_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 0).unwrap();
    log.append([(3, b"c".as_slice()), (4, b"d".as_slice())]).unwrap();
    log.sync().unwrap();
    assert_eq!(log.read(2).unwrap(), None);
    assert_eq!(log.read_range(0, 10).unwrap().len(), 2, "a range reaching below the start reads what exists");
    drop(log);
    let (log, _) = SegmentLog::open(dir.path(), 0).unwrap();
    assert_eq!((log.next_index(), log.read(3).unwrap()), (5, Some(b"c".to_vec())));
    assert_eq!(segment_files(dir.path()), ["00000000000000000003.seg"]);
}

#[test]
fn a_torn_tail_is_cut_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    append_range(&mut log, 1..11);
    log.sync().unwrap();
    drop(log);
    // A crash in the middle of the next write leaves half a record.
    let path = dir.path().join(segment_files(dir.path())[0].clone());
    let mut partial = Vec::new();
    encode_record(&mut partial, 11, &payload(11));
    partial.truncate(partial.len() / 2);
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&partial).unwrap();
    let (mut log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!(recovery.records, 10);
    assert_eq!(recovery.truncated_bytes, partial.len() as u64);
    assert_eq!(log.next_index(), 11);
    append_range(&mut log, 11..13);
    log.sync().unwrap();
    drop(log);
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, recovery.truncated_bytes), (12, 0));
    assert_eq!(log.read(12).unwrap(), Some(payload(12)));
}

#[test]
fn a_corrupt_record_ends_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 0).unwrap();
    append_range(&mut log, 0..10);
    log.sync().unwrap();
    let offset = log.segments[0].records[6].1;
    drop(log);
    // Flip one payload byte of record 6.
    let path = dir.path().join(segment_files(dir.path())[0].clone());
    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset + HEADER_BYTES as u64 + 2).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], offset + HEADER_BYTES as u64 + 2).unwrap();
    let (log, recovery) = SegmentLog::open(dir.path(), 0).unwrap();
    assert_eq!(recovery.records, 6);
    assert!(recovery.truncated_bytes > 0);
    assert_eq!(log.last_index(), Some(5));
}

#[test]
fn reading_a_record_corrupted_after_opening_is_an_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 0).unwrap();
    append_range(&mut log, 0..3);
    log.sync().unwrap();
    let offset = log.segments[0].records[1].1;
    let path = log.segments[0].path.clone();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"XX", offset + HEADER_BYTES as u64).unwrap();
    assert!(matches!(log.read(1), Err(LogError::Corrupt { index: 1, .. })));
}

#[test]
fn segments_roll_and_damage_before_the_last_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 1_000).unwrap();
    for start in (0..200).step_by(10) {
        append_range(&mut log, start..start + 10);
    }
    log.sync().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() > 5, "{files:?}");
    assert_eq!(log.read_range(0, 200).unwrap().len(), 200);
    drop(log);
    assert_eq!(SegmentLog::open_with(dir.path(), 0, 1_000).unwrap().1.records, 200);

    // A bad byte in a segment that is not the last: acknowledged entries may
    // be gone, so the log refuses to open rather than cut them away.
    let damaged_copy = tempfile::tempdir().unwrap();
    for name in &files {
        fs::copy(dir.path().join(name), damaged_copy.path().join(name)).unwrap();
    }
    let middle = damaged_copy.path().join(&files[2]);
    let length = fs::metadata(&middle).unwrap().len();
    OpenOptions::new().write(true).open(&middle).unwrap().write_all_at(b"\xff\xff", length - 2).unwrap();
    let refused = SegmentLog::open_with(damaged_copy.path(), 0, 1_000).unwrap_err();
    assert!(matches!(refused, LogError::Damaged { .. }), "{refused}");
    assert!(refused.to_string().contains("not the last"), "{refused}");

    // A missing segment likewise.
    fs::remove_file(dir.path().join(&files[3])).unwrap();
    let refused = SegmentLog::open_with(dir.path(), 0, 1_000).unwrap_err();
    assert!(refused.to_string().contains("does not follow"), "{refused}");
}

#[test]
fn truncation_removes_a_suffix_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 500).unwrap();
    for start in (0..100).step_by(5) {
        append_range(&mut log, start..start + 5);
    }
    log.truncate_from(37).unwrap();
    assert_eq!(log.next_index(), 37);
    assert_eq!(log.read(37).unwrap(), None);
    log.append([(37, b"new".as_slice())]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = SegmentLog::open_with(dir.path(), 0, 500).unwrap();
    assert_eq!(log.last_index(), Some(37));
    assert_eq!(log.read(37).unwrap(), Some(b"new".to_vec()));
    assert_eq!(log.read(36).unwrap(), Some(payload(36)));
    // Truncating at a segment's first record and at the very start.
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 500).unwrap();
    log.truncate_from(0).unwrap();
    assert_eq!((log.next_index(), log.last_index()), (0, None));
}

#[test]
fn purging_drops_whole_segments_and_may_pass_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 500).unwrap();
    for start in (0..100).step_by(5) {
        append_range(&mut log, start..start + 5);
    }
    log.sync().unwrap();
    let before = segment_files(dir.path()).len();
    log.purge_through(49).unwrap();
    assert!(segment_files(dir.path()).len() < before);
    assert_eq!(log.read(49).unwrap(), None);
    assert_eq!(log.read(50).unwrap(), Some(payload(50)));
    assert_eq!(log.first_index(), 50);
    drop(log);
    let (mut log, _) = SegmentLog::open_with(dir.path(), 50, 500).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (50, Some(99)));
    // A snapshot installed beyond the log's end: the next record is 1_001.
    log.purge_through(1_000).unwrap();
    assert_eq!((log.next_index(), log.last_index()), (1_001, None));
    assert_eq!(segment_files(dir.path()), ["00000000000000001001.seg"]);
    log.append([(1_001, b"after".as_slice())]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = SegmentLog::open_with(dir.path(), 1_001, 500).unwrap();
    assert_eq!(log.read(1_001).unwrap(), Some(b"after".to_vec()));
}

#[test]
fn a_purge_cut_short_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 300).unwrap();
    for start in (0..60).step_by(3) {
        append_range(&mut log, start..start + 3);
    }
    log.sync().unwrap();
    drop(log);
    // The purge point (40) was recorded, but the segments were not deleted.
    let (log, _) = SegmentLog::open_with(dir.path(), 40, 300).unwrap();
    assert_eq!(log.read(39).unwrap(), None);
    assert_eq!(log.read(40).unwrap(), Some(payload(40)));
    let first_kept: u64 = segment_files(dir.path())[0].trim_end_matches(SEGMENT_SUFFIX).parse().unwrap();
    assert!(first_kept <= 40);
    // And if everything is below the purge point, the log restarts there.
    drop(log);
    let (log, _) = SegmentLog::open_with(dir.path(), 500, 300).unwrap();
    assert_eq!((log.next_index(), log.last_index()), (500, None));
}

#[test]
fn the_syncer_works_from_another_thread_across_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 200).unwrap();
    let syncer = log.syncer();
    let worker = std::thread::spawn(move || {
        for _ in 0..50 {
            syncer.sync().unwrap();
        }
    });
    for start in (0..300).step_by(3) {
        append_range(&mut log, start..start + 3);
    }
    worker.join().unwrap();
    log.syncer().sync().unwrap();
    assert_eq!(log.read_range(0, 300).unwrap().len(), 300);
}

#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    Truncate(u8),
    Purge(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Append),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever mix of appends, truncations, purges and reopens, the log reads
    /// back exactly what a simple map of index to payload says it holds.
    #[test]
    fn the_log_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 256).unwrap();
        let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut first = 0u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let start = log.next_index();
                    append_range(&mut log, start..start + u64::from(n));
                    for i in start..start + u64::from(n) {
                        model.insert(i, payload(i));
                    }
                }
                Op::Truncate(at) => {
                    let at = first + u64::from(at) % (log.next_index() - first + 1);
                    log.truncate_from(at).unwrap();
                    model.retain(|i, _| *i < at);
                }
                Op::Purge(through) => {
                    let through = first + u64::from(through) % (log.next_index() - first + 8);
                    log.purge_through(through).unwrap();
                    first = first.max(through + 1);
                    model.retain(|i, _| *i >= first);
                }
                Op::Reopen => {
                    log.sync().unwrap();
                    drop(log);
                    log = SegmentLog::open_with(dir.path(), first, 256).unwrap().0;
                }
            }
            let expected_next = model.keys().next_back().map_or(first, |last| last + 1);
            prop_assert_eq!(log.next_index(), expected_next);
            let read: BTreeMap<u64, Vec<u8>> = log.read_range(first, log.next_index()).unwrap().into_iter().collect();
            prop_assert_eq!(&read, &model);
        }
    }
}
