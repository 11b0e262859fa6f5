//! Archives: a round trip from a journal to a file and back, the range an
//! export takes, the node's confirmation digest, and each kind of damage
//! refused with its offset and the check it broke.

use paymesh_core::history::Record;

use super::*;
use crate::history::tests::{finished, journal, ms, open, reopen};
use crate::history::{Deletable, DeletionStop};

/// Records of the young batches are at least this old (ms since the epoch).
const YOUNG: u64 = 1_000_000;

fn region() -> RegionId {
    RegionId::new("us-west").unwrap()
}

/// History with `old` finished transfers, one batch each at odd indexes
/// (at 1,000 + n ms) with an empty batch after each, then `young` more at
/// YOUNG + n ms, one batch each.
fn history(dir: &Path, old: u64, young: u64) -> History {
    let history = open(dir);
    for n in 1..=old {
        history.write(2 * n - 1, &finished(n, 1_000 + n)).unwrap();
        history.write(2 * n, &[]).unwrap();
    }
    for n in 1..=young {
        history.write(2 * old + n, &finished(old + n, YOUNG + n)).unwrap();
    }
    history
}

/// Export `history`'s records older than `before` to `path` in chunks of
/// about `chunk_bytes`; the export's range, the file's summary and the
/// chunks' record counts.
fn export_to(
    history: &History,
    before: u64,
    path: &Path,
    chunk_bytes: usize,
) -> (ExportRange, ArchiveSummary, Vec<u64>) {
    let export = Export::new(history, ms(before));
    let header = ArchiveHeader {
        region: region(),
        first_index: export.first_index(),
        last_index: history.last_index(),
        created_at: ms(42),
        node_id: 3,
    };
    let mut writer = ArchiveWriter::create(path, header).unwrap();
    let mut chunks = Vec::new();
    let range = export
        .run(chunk_bytes, |chunk| {
            // Whole batches: the chunk starts a batch, and counts what it holds.
            assert_eq!(split_payload(&chunk.frames[FRAME_HEAD_BYTES..]).unwrap().1, 0, "a chunk starts a batch");
            chunks.push(chunk.records);
            let written = writer.write_frames(&chunk.frames).map_err(|e| e.to_string())?;
            assert_eq!(written, chunk.records);
            Ok(())
        })
        .unwrap();
    let summary = writer.finish(range.last_index).unwrap();
    (range, summary, chunks)
}

/// The archive of 20 old transfers (and 5 younger ones left out), its
/// bytes and each frame's offset.
fn sample(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u64>) {
    let history = history(&dir.join("history"), 20, 5);
    let path = dir.join("sample.pmarchive");
    export_to(&history, YOUNG, &path, 2_000);
    let mut reader = ArchiveReader::open_file(&path).unwrap();
    let mut offsets = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        offsets.push(frame.offset);
    }
    (path.clone(), fs::read(&path).unwrap(), offsets)
}

fn verify_bytes(bytes: &[u8]) -> Result<ArchiveSummary> {
    ArchiveReader::new(bytes)?.verify()
}

#[test]
fn an_archive_holds_every_record_of_its_range_and_reads_back_as_the_journal_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let history = history(&dir.path().join("history"), 20, 5);
    let path = dir.path().join("old.pmarchive");
    let (range, summary, chunks) = export_to(&history, YOUNG, &path, 2_000);

    // Through the empty batch after the last old transfer, not into the young.
    assert_eq!((range.first_index, range.last_index), (1, 40));
    assert_eq!(range.records, 20 * 9);
    assert!(chunks.len() > 3 && chunks.iter().all(|n| n % 9 == 0), "chunks of whole batches: {chunks:?}");
    assert_eq!(summary.records, range.records);
    assert_eq!(summary.sha256, range.sha256);
    assert_eq!(summary.frame_bytes, range.frame_bytes);
    assert_eq!(summary.header.last_index, 40);
    assert_eq!(summary.last_batch, 39);
    assert!(!dir.path().join(".old.pmarchive.partial").exists(), "the temporary name is gone");
    assert_eq!(fs::metadata(&path).unwrap().len(), summary.file_bytes);

    // Verified from the file: the same summary, the header as written.
    let verified = verify_file(&path).unwrap();
    assert_eq!(verified, summary);
    assert_eq!(
        verified.header,
        ArchiveHeader { region: region(), first_index: 1, last_index: 40, created_at: ms(42), node_id: 3 }
    );

    // Every record, in journal order, with its index and position.
    let mut reader = ArchiveReader::open_file(&path).unwrap();
    let mut read = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        read.push((frame.index, frame.record));
    }
    let held: Vec<(u64, Record)> = journal(&history).into_iter().filter(|(index, _)| *index <= 40).collect();
    assert_eq!(read, held);

    // The node's recomputation over the same range gives the same digest.
    assert_eq!(range_digest(&history, 1, 40).unwrap(), (range.records, range.sha256));
    assert_ne!(range_digest(&history, 1, 41).unwrap().1, range.sha256);
}

#[test]
fn a_frame_is_postcard_of_index_position_and_record_and_writers_agree() {
    let record = finished(7, 1_234).remove(1);
    let frame = encode_frame(300, 2, &record);
    let payload = postcard::to_stdvec(&(300u64, 2u32, &record)).unwrap();
    assert_eq!(&frame[FRAME_HEAD_BYTES..], payload.as_slice());
    assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, payload.len());
    assert_eq!(u32::from_be_bytes(frame[4..8].try_into().unwrap()), crc32fast::hash(&payload));

    // Record by record, the same file as the export's chunks.
    let dir = tempfile::tempdir().unwrap();
    let history = history(&dir.path().join("history"), 6, 2);
    let (_, exported, _) = export_to(&history, YOUNG, &dir.path().join("a"), 1 << 20);
    let header = exported.header.clone();
    let mut writer = ArchiveWriter::create(&dir.path().join("b"), header).unwrap();
    for (index, records) in history.journal_after(0, usize::MAX).unwrap() {
        if index > 12 {
            break;
        }
        for (seq, record) in records.iter().enumerate() {
            writer.write_record(index, seq as u32, record).unwrap();
        }
    }
    let written = writer.finish(12).unwrap();
    assert_eq!(written, exported);
    assert_eq!(fs::read(dir.path().join("a")).unwrap(), fs::read(dir.path().join("b")).unwrap());
}

#[test]
fn an_export_stops_before_the_first_batch_with_a_record_not_older_than_its_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let history = history(&dir.path().join("history"), 10, 3);
    // finished(n, at) holds the transfer at at + 1: the batch of n = 4 (at
    // 1,004, index 7) holds one record of 1,005 and the rest of 1,004.
    let (range, summary, _) = export_to(&history, 1_005, &dir.path().join("a"), 1 << 20);
    assert_eq!((range.first_index, range.last_index, range.records), (1, 6, 27));
    assert_eq!(summary.last_batch, 5);
    // A cutoff after everything: through the last index written.
    let (range, _, _) = export_to(&history, u64::MAX, &dir.path().join("b"), 1 << 20);
    assert_eq!((range.last_index, range.records), (history.last_index(), 13 * 9));
    // Nothing old enough: an empty archive, which verifies.
    let (range, summary, chunks) = export_to(&history, 0, &dir.path().join("c"), 1 << 20);
    assert_eq!((range.first_index, range.last_index, range.records), (1, 0, 0));
    assert!(chunks.is_empty());
    assert_eq!(verify_file(&dir.path().join("c")).unwrap(), summary);
    assert_eq!(summary.sha256, <[u8; 32]>::from(Sha256::digest(b"")));
}

#[test]
fn confirmation_and_the_retention_window_bound_what_may_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history");
    let history = history(&path, 10, 3);
    let everything_old = ms(u64::MAX);
    // Nothing archived: nothing may go, however old.
    assert_eq!(
        history.deletable_through(u64::MAX, everything_old).unwrap(),
        Deletable { through: 0, stop: DeletionStop::Archive }
    );
    assert!(history.confirm_archived(history.last_index() + 1).is_err(), "not beyond the last index");
    assert_eq!(history.confirm_archived(12).unwrap(), 12);
    assert_eq!(history.confirm_archived(4).unwrap(), 12, "never lowered");
    // Archived through 12: as far as that, not further, whatever is asked.
    assert_eq!(
        history.deletable_through(u64::MAX, everything_old).unwrap(),
        Deletable { through: 12, stop: DeletionStop::Archive }
    );
    assert_eq!(
        history.deletable_through(9, everything_old).unwrap(),
        Deletable { through: 9, stop: DeletionStop::Requested }
    );
    // Within the window: before the first batch holding a record that young.
    assert_eq!(
        history.deletable_through(u64::MAX, ms(1_005)).unwrap(),
        Deletable { through: 6, stop: DeletionStop::Retention { index: 7, at: ms(1_005) } }
    );
    assert_eq!(
        history.deletable_through(u64::MAX, ms(1_001)).unwrap(),
        Deletable { through: 0, stop: DeletionStop::Retention { index: 1, at: ms(1_001) } }
    );
    // The backlog check: the batch after the archive waits only for one.
    assert_eq!(history.first_batch_older_than(12, ms(YOUNG)).unwrap(), Some(13));
    assert_eq!(history.first_batch_older_than(12, ms(1_007)).unwrap(), None);
    assert_eq!(history.first_batch_older_than(20, ms(YOUNG)).unwrap(), None, "the young follow");

    let deleted = history.delete_through(6).unwrap();
    assert_eq!(deleted, 27);
    // The deleted range cannot be confirmed again; what follows it can.
    let error = range_digest(&history, 1, 12).unwrap_err().to_string();
    assert!(error.contains("deleted through 6, so it starts at 7"), "{error}");
    let (records, _) = range_digest(&history, 7, 12).unwrap();
    assert_eq!(records, 27);
    assert_eq!(Export::new(&history, ms(YOUNG)).first_index(), 7);
    assert!(range_digest(&history, 7, history.last_index() + 1).is_err());

    // Remembered across a restart.
    drop(history);
    let history = reopen(&path).unwrap();
    assert_eq!((history.archived_through(), history.deleted_through()), (12, 6));
}

/// `bytes` with the trailer's fields replaced by `edit` and its CRC made
/// right again.
fn forge_trailer(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut forged = bytes.to_vec();
    let start = forged.len() - TRAILER_BYTES;
    edit(&mut forged[start..]);
    let crc = crc32fast::hash(&forged[start..forged.len() - 4]);
    let end = forged.len();
    forged[end - 4..].copy_from_slice(&crc.to_be_bytes());
    forged
}

#[test]
fn each_kind_of_damage_is_refused_naming_its_offset_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, offsets) = sample(dir.path());
    let good = verify_bytes(&bytes).unwrap();
    let trailer_at = bytes.len() - TRAILER_BYTES;
    let frame = |n: usize| offsets[n] as usize;

    // A byte flipped inside a frame's record.
    let mut flipped = bytes.clone();
    flipped[frame(3) + 20] ^= 0x10;
    let e = verify_bytes(&flipped).unwrap_err();
    assert_eq!(e.offset, offsets[3]);
    assert!(matches!(e.problem, Problem::FrameChecksum { frame: 3, .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("byte {}: frame 3: checksum mismatch", offsets[3])), "{e}");

    // Truncated: in the header, in a frame, where the trailer should be, in it.
    for (cut, at, part) in [
        (20, 0, "the header"),
        (frame(5) + 11, offsets[5], "frame 5's payload"),
        (frame(5) + 3, offsets[5], "frame 5's length and checksum, or the trailer"),
        (trailer_at, trailer_at as u64, "frame 180's length and checksum, or the trailer"),
        (trailer_at + 30, trailer_at as u64, "the trailer"),
        (bytes.len() - 1, trailer_at as u64, "the trailer"),
    ] {
        let e = verify_bytes(&bytes[..cut]).unwrap_err();
        assert_eq!(e.offset, at, "cut at {cut}: {e}");
        match &e.problem {
            Problem::Truncated { part: named, .. } => assert_eq!(named, part, "cut at {cut}"),
            other => panic!("cut at {cut}: {other}"),
        }
    }

    // A wrong hash in a trailer whose own checksum was made to match.
    let forged = forge_trailer(&bytes, |t| t[20] ^= 1);
    let e = verify_bytes(&forged).unwrap_err();
    assert_eq!(e.offset, trailer_at as u64);
    assert!(matches!(e.problem, Problem::Digest { .. }), "{e}");
    assert!(e.to_string().contains(&format!("frames hash to {}", hex::encode(good.sha256))), "{e}");
    // The same damage without the forgery: the trailer's checksum.
    let mut damaged = bytes.clone();
    damaged[trailer_at + 20] ^= 1;
    assert!(matches!(verify_bytes(&damaged).unwrap_err().problem, Problem::TrailerChecksum { .. }));
    // A count that lies.
    let forged = forge_trailer(&bytes, |t| t[15] ^= 1);
    let e = verify_bytes(&forged).unwrap_err();
    assert!(matches!(e.problem, Problem::RecordCount { counted: 180, .. }), "{e}");

    // Lying lengths: beyond any record (refused before anything is
    // allocated), zero, and plausible but wrong.
    for (length, check) in [(u32::MAX - 7, "length"), (0x7fff_ffff, "length"), (0, "length"), (1, "checksum")] {
        let mut lying = bytes.clone();
        lying[frame(2)..frame(2) + 4].copy_from_slice(&length.to_be_bytes());
        let e = verify_bytes(&lying).unwrap_err();
        assert_eq!(e.offset, offsets[2], "{length}: {e}");
        match (&e.problem, check) {
            (Problem::FrameLength { frame: 2, length: claimed }, "length") => assert_eq!(*claimed, length),
            (Problem::FrameChecksum { frame: 2, .. }, "checksum") => {}
            (other, _) => panic!("{length}: {other}"),
        }
    }
    let mut longer = bytes.clone();
    let length = u32::from_be_bytes(bytes[frame(2)..frame(2) + 4].try_into().unwrap());
    longer[frame(2)..frame(2) + 4].copy_from_slice(&(length + 4).to_be_bytes());
    assert!(matches!(verify_bytes(&longer).unwrap_err().problem, Problem::FrameChecksum { frame: 2, .. }));

    // Frames whose checksums hold but out of journal order.
    let mut swapped = bytes[..frame(9)].to_vec();
    swapped.extend_from_slice(&bytes[frame(18)..frame(27)]);
    swapped.extend_from_slice(&bytes[frame(9)..frame(18)]);
    swapped.extend_from_slice(&bytes[frame(27)..]);
    // Index 5's batch right after index 1's is in order; index 3's after it is not.
    let e = verify_bytes(&swapped).unwrap_err();
    assert_eq!(e.offset, offsets[9] + (offsets[27] - offsets[18]));
    assert!(matches!(e.problem, Problem::FramePlace { frame: 18, index: 3, seq: 0, .. }), "{e}");
    let mut missing = bytes[..frame(10)].to_vec();
    missing.extend_from_slice(&bytes[frame(11)..]);
    let e = verify_bytes(&missing).unwrap_err();
    assert!(matches!(e.problem, Problem::FramePlace { frame: 10, index: 3, seq: 2, .. }), "{e}");

    // The header: its checksum, its magic, its version; bytes after the end.
    let mut header = bytes.clone();
    header[20] ^= 0x01;
    assert!(matches!(verify_bytes(&header).unwrap_err().problem, Problem::HeaderChecksum { .. }));
    let mut magic = bytes.clone();
    magic[0] = b'x';
    assert!(matches!(verify_bytes(&magic).unwrap_err().problem, Problem::NotAnArchive { .. }));
    let mut version = bytes.clone();
    version[9] = 2;
    assert!(matches!(verify_bytes(&version).unwrap_err().problem, Problem::Version(2)));
    let mut region = bytes.clone();
    region[10] = 200;
    assert!(matches!(verify_bytes(&region).unwrap_err().problem, Problem::Header(_)));
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"more");
    let e = verify_bytes(&trailing).unwrap_err();
    assert!(matches!(e.problem, Problem::TrailingBytes(4)) && e.offset == bytes.len() as u64, "{e}");
}

#[test]
fn a_writer_refuses_frames_that_are_damaged_or_out_of_order_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let header = ArchiveHeader { region: region(), first_index: 5, last_index: 9, created_at: ms(1), node_id: 1 };
    let record = finished(1, 1).remove(0);
    let mut writer = ArchiveWriter::create(&dir.path().join("x"), header.clone()).unwrap();
    writer.write_frames(&encode_frame(5, 0, &record)).unwrap();
    let e = writer.write_frames(&encode_frame(5, 2, &record)).unwrap_err();
    assert!(matches!(e.problem, Problem::FramePlace { frame: 1, index: 5, seq: 2, .. }), "{e}");
    let e = writer.write_frames(&encode_frame(4, 0, &record)).unwrap_err();
    assert!(matches!(e.problem, Problem::FramePlace { .. }), "{e}");
    let mut damaged = encode_frame(6, 0, &record);
    damaged[12] ^= 1;
    let e = writer.write_frames(&damaged).unwrap_err();
    assert!(matches!(e.problem, Problem::FrameChecksum { frame: 1, .. }), "{e}");
    let e = writer.write_frames(&encode_frame(6, 0, &record)[..10]).unwrap_err();
    assert!(matches!(e.problem, Problem::Truncated { .. }), "{e}");
    writer.write_frames(&encode_frame(7, 0, &record)).unwrap();
    // A last index below a record written.
    let e = writer.finish(6).unwrap_err();
    assert!(matches!(e.problem, Problem::FramePlace { index: 7, .. }), "{e}");
    assert!(!dir.path().join("x").exists() && !dir.path().join(".x.partial").exists());
}
