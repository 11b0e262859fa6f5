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
    assert_eq!((recovery.records, recovery.truncated_bytes, recovery.synced_segments), (0, 0, 0));
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
    encode_record(&mut partial, Version::V3, Append { first: 11, last: 11 }, 11, &payload(11));
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

/// A log of records `1..=n` in one segment, each its own append and sync (as
/// openraft appends one acknowledged batch at a time). Returns the segment's
/// path and each record's byte offset.
fn synced_one_by_one(dir: &Path, n: u64) -> (PathBuf, Vec<u64>) {
    let (mut log, _) = SegmentLog::open(dir, 1).unwrap();
    for i in 1..=n {
        append_range(&mut log, i..i + 1);
        log.sync().unwrap();
    }
    let offsets = log.segments[0].records.iter().map(|(_, offset)| *offset).collect();
    (log.segments[0].path.clone(), offsets)
}

fn flip_byte(path: &Path, at: u64) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
}

#[test]
fn a_flipped_byte_in_an_acknowledged_record_refuses_to_open_and_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = synced_one_by_one(dir.path(), 10);
    // Flip one payload byte of record 6 of 10: records 7 to 10 were appended
    // (and acknowledged) after it was synced.
    flip_byte(&path, offsets[5] + HEADER_BYTES as u64 + 2);
    let before = fs::read(&path).unwrap();
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err();
    let message = refused.to_string();
    assert!(message.contains(&path.display().to_string()), "names the file: {message}");
    assert!(message.contains(&format!("at byte {}", offsets[5])), "names the offset: {message}");
    assert!(message.contains("6..=10"), "names the indexes at stake: {message}");
    assert!(message.contains("refuses to start"), "{message}");
    assert_eq!(fs::read(&path).unwrap(), before, "nothing is cut");
    // And it goes on refusing: nothing was repaired behind the operator's back.
    assert!(SegmentLog::open(dir.path(), 1).is_err());
}

#[test]
fn a_flipped_length_byte_is_damage_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = synced_one_by_one(dir.path(), 10);
    // The low byte of record 4's length: read as is, the scan would land in
    // the middle of a record or skip records.
    flip_byte(&path, offsets[3]);
    let before = fs::read(&path).unwrap();
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err().to_string();
    assert!(refused.contains(&format!("at byte {}", offsets[3])) && refused.contains("4..=10"), "{refused}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_flipped_length_byte_of_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = synced_one_by_one(dir.path(), 10);
    flip_byte(&path, offsets[9] + 1);
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, log.last_index()), (9, Some(9)));
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[9]);
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = synced_one_by_one(dir.path(), 5);
    let length = fs::metadata(&path).unwrap().len();
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&garbage).unwrap();
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, recovery.truncated_bytes), (5, 300));
    assert_eq!((log.last_index(), fs::metadata(&path).unwrap().len()), (Some(5), length));
    // Zeros (a file extended but never written) likewise.
    drop(log);
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0u8; 4096]).unwrap();
    let (_, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, recovery.truncated_bytes), (5, 4096));
}

#[test]
fn a_bad_record_inside_the_final_unsynced_batch_is_torn() {
    // Records 1..=5 one by one, then 6..=10 in one write that a crash caught
    // half way: its pages may reach the disk in any order, so record 8 is bad
    // while 9 and 10 look fine. Nothing of a later append follows, so the
    // batch was never acknowledged: cut at record 8.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = synced_one_by_one(dir.path(), 5);
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    append_range(&mut log, 6..11);
    log.sync().unwrap();
    let eighth = log.segments[0].offset_of(8).unwrap();
    drop(log);
    flip_byte(&path, eighth + HEADER_BYTES as u64 + 1);
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, log.last_index()), (7, Some(7)));
    assert_eq!(fs::metadata(&path).unwrap().len(), eighth);
    // Its header damaged instead of its payload: the same.
    drop(log);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = synced_one_by_one(dir.path(), 5);
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    append_range(&mut log, 6..11);
    log.sync().unwrap();
    let sixth = log.segments[0].offset_of(6).unwrap();
    drop(log);
    flip_byte(&path, sixth + 9);
    let (log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.last_index(), Some(5));
}

#[test]
fn a_bad_record_followed_by_a_later_batch_is_damage() {
    // The same bad record 8, but another append (11..=12) followed the
    // batch: that append was made only after 6..=10 were synced and
    // acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = synced_one_by_one(dir.path(), 5);
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    append_range(&mut log, 6..11);
    log.sync().unwrap();
    append_range(&mut log, 11..13);
    log.sync().unwrap();
    let eighth = log.segments[0].offset_of(8).unwrap();
    drop(log);
    flip_byte(&path, eighth + HEADER_BYTES as u64 + 1);
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err().to_string();
    assert!(refused.contains(&format!("at byte {eighth}")) && refused.contains("8..=12"), "{refused}");
}

#[test]
fn a_bad_record_in_an_acknowledged_append_followed_by_a_torn_later_write_is_damage() {
    // Records 1..=3 in one append, synced (and so possibly acknowledged);
    // then 4..=5 in a second append that a crash tore after 9 bytes of
    // record 4's header; then a flipped byte in record 2's payload. Only
    // record 3, of record 2's own append, follows it readably, but the 9
    // bytes after record 3, the end of that append, were written by a later
    // write: record 2's append had been synced.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    append_range(&mut log, 1..4);
    log.sync().unwrap();
    append_range(&mut log, 4..6);
    log.sync().unwrap();
    let (path, second, fourth) =
        (log.segments[0].path.clone(), log.segments[0].offset_of(2).unwrap(), log.segments[0].offset_of(4).unwrap());
    drop(log);
    OpenOptions::new().write(true).open(&path).unwrap().set_len(fourth + 9).unwrap();
    flip_byte(&path, second + HEADER_BYTES as u64 + 3);
    let before = fs::read(&path).unwrap();
    let checked = SegmentLog::check(dir.path());
    assert!(matches!(checked, Err(LogError::Damage { first: 2, .. })), "{checked:?}");
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err().to_string();
    assert!(refused.contains(&format!("at byte {second}")) && refused.contains("2..=3"), "{refused}");
    assert_eq!(fs::read(&path).unwrap(), before, "nothing is cut");
}

#[test]
fn a_torn_final_append_whose_middle_record_is_bad_is_cut() {
    // Records 1..=5 one by one, then 6..=10 in one write that a crash cut
    // short inside record 10, with record 8 bad as well: the append's end
    // never reached the file, nothing follows it, so it is cut at record 8.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = synced_one_by_one(dir.path(), 5);
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    append_range(&mut log, 6..11);
    log.sync().unwrap();
    let (eighth, tenth) = (log.segments[0].offset_of(8).unwrap(), log.segments[0].offset_of(10).unwrap());
    drop(log);
    OpenOptions::new().write(true).open(&path).unwrap().set_len(tenth + HEADER_BYTES as u64 + 2).unwrap();
    flip_byte(&path, eighth + HEADER_BYTES as u64 + 1);
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, log.last_index()), (7, Some(7)));
    assert_eq!(fs::metadata(&path).unwrap().len(), eighth);
}

#[test]
fn an_unreadable_header_of_a_one_record_append_before_the_last_append_is_damage() {
    // Records 1..=10 one by one (a leader's appends): record 9's length is
    // flipped, so its header and the end of its append are unknown. Record
    // 10 follows, and its header says its append started at 10, not at 9:
    // it is a later append, so record 9 was synced and may be acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = synced_one_by_one(dir.path(), 10);
    flip_byte(&path, offsets[8]);
    let before = fs::read(&path).unwrap();
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err().to_string();
    assert!(refused.contains(&format!("at byte {}", offsets[8])) && refused.contains("9..=10"), "{refused}");
    assert!(refused.contains("record 10 of a later append"), "{refused}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

/// A version 2 segment file, by hand: its file header, then each append's
/// records with `batch` the append's first index.
fn version_2_segment(appends: &[std::ops::Range<u64>]) -> (Vec<u8>, Vec<u64>) {
    let mut file = b"pmlog\0\0\x02".to_vec();
    let mut offsets = Vec::new();
    for append in appends {
        for index in append.clone() {
            offsets.push(file.len() as u64);
            let payload = payload(index);
            let mut header = Vec::new();
            header.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            header.extend_from_slice(&index.to_le_bytes());
            header.extend_from_slice(&append.start.to_le_bytes());
            header.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            let crc = crc32fast::hash(&header);
            file.extend_from_slice(&header);
            file.extend_from_slice(&crc.to_le_bytes());
            file.extend_from_slice(&payload);
        }
    }
    (file, offsets)
}

#[test]
fn a_version_2_log_opens_and_goes_on_in_version_3_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = version_2_segment(&[1..4, 4..6]);
    let old_path = dir.path().join("00000000000000000001.seg");
    fs::write(&old_path, &old).unwrap();
    assert_eq!(SegmentLog::check(dir.path()).unwrap().records, 5);
    let (mut log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, recovery.truncated_bytes, log.last_index()), (5, 0, Some(5)));
    assert_eq!(log.read_range(1, 6).unwrap(), (1..6).map(|i| (i, payload(i))).collect::<Vec<_>>());
    // Appends go to a new segment of this format; the old file is untouched.
    append_range(&mut log, 6..9);
    log.sync().unwrap();
    drop(log);
    assert_eq!(fs::read(&old_path).unwrap(), old);
    assert_eq!(segment_files(dir.path()), ["00000000000000000001.seg", "00000000000000000006.seg"]);
    let new = fs::read(dir.path().join("00000000000000000006.seg")).unwrap();
    assert!(new.starts_with(&SEGMENT_MAGIC));
    let (mut log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, log.last_index()), (8, Some(8)));
    assert_eq!(log.read_range(1, 9).unwrap(), (1..9).map(|i| (i, payload(i))).collect::<Vec<_>>());
    // A conflicting suffix reaching back into the old file: the appends
    // that follow it there are written in its format, and read back.
    log.truncate_from(5).unwrap();
    append_range(&mut log, 5..7);
    log.sync().unwrap();
    drop(log);
    assert_eq!(segment_files(dir.path()), ["00000000000000000001.seg"]);
    let (expected, _) = version_2_segment(&[1..4, 4..5, 5..7]);
    assert_eq!(fs::read(&old_path).unwrap(), expected);
    let (log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.read_range(1, 9).unwrap(), (1..7).map(|i| (i, payload(i))).collect::<Vec<_>>());
    assert_eq!(segment_files(dir.path()), ["00000000000000000001.seg", "00000000000000000007.seg"]);

    // An empty version 2 segment is started again in this format.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000001.seg");
    fs::write(&path, b"pmlog\0\0\x02").unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!(fs::read(&path).unwrap(), SEGMENT_MAGIC);
    append_range(&mut log, 1..3);
    log.sync().unwrap();
    drop(log);
    assert_eq!(SegmentLog::open(dir.path(), 1).unwrap().0.last_index(), Some(2));
}

#[test]
fn a_version_2_segment_is_judged_by_the_version_2_rule() {
    // The final append 6..=10 of a version 2 file with record 8 bad: torn.
    let dir = tempfile::tempdir().unwrap();
    let (mut file, offsets) = version_2_segment(&[1..2, 2..3, 3..4, 4..5, 5..6, 6..11]);
    file[offsets[7] as usize + HEADER_BYTES + 1] ^= 0x10;
    let path = dir.path().join("00000000000000000001.seg");
    fs::write(&path, &file).unwrap();
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, log.last_index()), (7, Some(7)));
    assert_eq!(fs::metadata(&path).unwrap().len(), offsets[7]);
    // Record 8 bad and a later append 11..=12 after it: damage.
    let dir = tempfile::tempdir().unwrap();
    let (mut file, offsets) = version_2_segment(&[1..6, 6..11, 11..13]);
    file[offsets[7] as usize + HEADER_BYTES + 1] ^= 0x10;
    let path = dir.path().join("00000000000000000001.seg");
    fs::write(&path, &file).unwrap();
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err().to_string();
    assert!(refused.contains("record 11 of a later append") && refused.contains("8..=12"), "{refused}");
    assert_eq!(fs::read(&path).unwrap(), file);
}

#[test]
fn opening_syncs_every_segment_and_the_directory() {
    // Records written by a process that died before its sync are readable
    // from the page cache: opening makes them durable before they are used.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 0, 300).unwrap();
    for start in (0..60).step_by(3) {
        append_range(&mut log, start..start + 3);
    }
    drop(log);
    let segments = segment_files(dir.path()).len() as u64;
    assert!(segments > 3);
    let (_, recovery) = SegmentLog::open_with(dir.path(), 0, 300).unwrap();
    assert_eq!((recovery.synced_segments, recovery.synced_dir), (segments, true));
    assert_eq!(recovery.truncated_bytes, 0);
}

#[test]
fn a_segment_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A version 1 segment: records with no file header.
    let mut old = Vec::new();
    old.extend_from_slice(&3u32.to_le_bytes());
    old.extend_from_slice(&crc32fast::hash(b"abc").to_le_bytes());
    old.extend_from_slice(&1u64.to_le_bytes());
    old.extend_from_slice(b"abc");
    let path = dir.path().join("00000000000000000001.seg");
    fs::write(&path, &old).unwrap();
    let refused = SegmentLog::open(dir.path(), 1).unwrap_err().to_string();
    assert!(refused.contains("older paymesh") && refused.contains(&path.display().to_string()), "{refused}");
    assert_eq!(fs::read(&path).unwrap(), old);
    // A last segment whose header never reached the disk (created just
    // before a crash) is started again.
    fs::write(&path, &SEGMENT_MAGIC[..3]).unwrap();
    let (mut log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!(recovery.truncated_bytes, 3);
    append_range(&mut log, 1..3);
    log.sync().unwrap();
    drop(log);
    assert_eq!(SegmentLog::open(dir.path(), 1).unwrap().0.last_index(), Some(2));
}

#[test]
fn check_reports_damage_and_torn_tails_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = synced_one_by_one(dir.path(), 10);
    assert_eq!(SegmentLog::check(dir.path()).unwrap().records, 10);
    OpenOptions::new().append(true).open(&path).unwrap().write_all(b"torn").unwrap();
    let found = SegmentLog::check(dir.path()).unwrap();
    assert_eq!((found.records, found.truncated_bytes), (10, 4));
    flip_byte(&path, offsets[2] + HEADER_BYTES as u64);
    let before = fs::read(&path).unwrap();
    assert!(matches!(SegmentLog::check(dir.path()), Err(LogError::Damage { first: 3, last: 10, .. })));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_length_read_from_disk_is_checked_before_anything_is_allocated() {
    // A header written with a valid CRC but a huge length (a bug, or a
    // forged file) is neither allocated for nor read past the file.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = synced_one_by_one(dir.path(), 3);
    let header = Header { length: (1 << LENGTH_BITS) - 1, index: 4, batch: 4, from_first: 0, payload_crc: 0 };
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&header.encode(Version::V3)).unwrap();
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!((recovery.records, recovery.truncated_bytes, log.last_index()), (3, HEADER_BYTES as u64, Some(3)));
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
    assert!(matches!(refused, LogError::Damage { .. }), "{refused}");
    assert!(refused.to_string().contains("not in the last segment"), "{refused}");
    let middle_name: u64 = files[2].trim_end_matches(SEGMENT_SUFFIX).parse().unwrap();
    let next_name: u64 = files[3].trim_end_matches(SEGMENT_SUFFIX).parse().unwrap();
    assert!(refused.to_string().contains(&format!("..={}", next_name - 1)), "{refused}");
    assert!(middle_name < next_name);

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

/// No single damaged byte turns a segment header of one known version into
/// another's: a flipped version byte must be refused, not misread.
#[test]
fn no_damaged_byte_turns_one_segment_version_into_another() {
    let known = [SEGMENT_MAGIC, *b"pmlog\0\0\x02"];
    for magic in known {
        for at in 0..magic.len() {
            for xor in 1..=255u8 {
                let mut damaged = magic;
                damaged[at] ^= xor;
                assert!(!known.contains(&damaged), "{magic:?} with byte {at} ^ {xor:#x} reads as {damaged:?}");
            }
        }
    }
}

#[test]
fn what_a_sync_made_durable_leaves_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 1).unwrap();
    let record = vec![5u8; 64 * 1024];
    for index in 1..=128 {
        log.append([(index, record.as_slice())]).unwrap();
    }
    let path = log.active_segment().path.clone();
    assert!(durable::cached_bytes(&path) > 4 * 1024 * 1024, "8 MiB written and not synced are cached");
    log.syncer().sync().unwrap();
    let cached = durable::cached_bytes(&path);
    assert!(cached <= PAGE_BYTES, "{cached} bytes still cached after the sync; only the page appends continue may be");
    // Read back from the disk, and appended to where the cache was dropped.
    assert_eq!(log.read(7).unwrap(), Some(record.clone()));
    log.append([(129, b"after".as_slice())]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, recovery) = SegmentLog::open(dir.path(), 1).unwrap();
    assert_eq!(recovery.records, 129);
    assert_eq!(log.read(128).unwrap(), Some(record));
    assert_eq!(log.read(129).unwrap(), Some(b"after".to_vec()));
}

#[test]
fn a_closed_segment_leaves_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open_with(dir.path(), 1, 1024 * 1024).unwrap();
    let record = vec![6u8; 256 * 1024];
    for index in 1..=6 {
        log.append([(index, record.as_slice())]).unwrap();
    }
    let segments: Vec<PathBuf> = log.segments.iter().map(|segment| segment.path.clone()).collect();
    assert!(segments.len() >= 2, "the segments rolled: {segments:?}");
    let closed = durable::cached_bytes(&segments[0]);
    assert_eq!(closed, 0, "a closed segment is synced and dropped from the cache");
}
