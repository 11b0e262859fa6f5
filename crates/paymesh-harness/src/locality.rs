//! The data-locality scan: each region's data stays in that region. A
//! payer's personal data (name, account, reference) is stored by the
//! payer's region only; the payee region gets an opaque payer token.
//!
//! The workload's payers of region `r` carry `r`'s marker
//! ([`pii_marker`], `PIIMARK-<r>-`) in all three fields. [`scan`] reads
//! every file of every node of every region (data directories with their
//! log segments and checkpoints, configuration, the node's captured output)
//! as raw bytes, once the mesh has stopped (the chaos run) or while it runs
//! (`paymesh demo`), and counts every region's marker in it. Another region's marker in a region's file is a violation
//! of the `data_locality` checker; the region's own marker is evidence that
//! the scan sees payer data where it belongs.
//!
//! Files are streamed in chunks of [`CHUNK_BYTES`], each chunk searched
//! together with the last (longest marker − 1) bytes of the one before, so a
//! marker across a chunk's edge is found, once; memory stays at one chunk
//! whatever a file's size. Symbolic links are not followed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::history::{LocalityScan, MarkerFound, RegionScan};

/// The start of every payer's marker: a payer of region `r` carries
/// [`pii_marker`]`(r)`, `PIIMARK-<r>-`, in its name, account and reference,
/// so a marker found in a file names the region whose payer's data it is
/// (the `data_locality` checker searches every node's files for the other
/// regions' markers).
pub const PII_MARKER_PREFIX: &str = "PIIMARK-";

/// The marker in the personal data of region `region`'s payers.
pub fn pii_marker(region: &str) -> String {
    format!("{PII_MARKER_PREFIX}{region}-")
}

/// The personal data (name, account, reference) of the payer of worker
/// `client`'s payment `sequence` from a wallet of `region`: each field holds
/// the region's [`pii_marker`]. The simulation's payers carry the same.
pub fn payer_fields(region: &str, client: u32, sequence: u64) -> [String; 3] {
    let marker = pii_marker(region);
    [
        format!("Tourist {marker}{client}-{sequence} 旅客"),
        format!("acct-{marker}{client}-{sequence}"),
        format!("ref-{marker}{client}-{sequence}"),
    ]
}

/// How much of a file is read at a time.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Offsets kept per file and marker (every occurrence is counted).
pub const OFFSETS_KEPT: usize = 5;

/// A file or a directory (scanned whole) of a region, and whose it is: a
/// node id (`1`, `2`, `3`) or [`crate::history::REGION_FILES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRoot {
    /// The region whose file or directory it is.
    pub region: String,
    /// The node it belongs to, or `region` for the region's own files.
    pub owner: String,
    /// The file or directory.
    pub path: PathBuf,
}

impl ScanRoot {
    /// `path`, of `owner` in `region`.
    pub fn new(region: &str, owner: impl Into<String>, path: impl Into<PathBuf>) -> ScanRoot {
        ScanRoot { region: region.to_owned(), owner: owner.into(), path: path.into() }
    }
}

/// Every region's marker, by region.
pub fn markers(regions: &[&str]) -> BTreeMap<String, String> {
    regions.iter().map(|r| ((*r).to_owned(), pii_marker(r))).collect()
}

/// Scans every file under `roots` for every marker of `markers` (region →
/// marker), in chunks of [`CHUNK_BYTES`].
pub fn scan(roots: &[ScanRoot], markers: &BTreeMap<String, String>) -> LocalityScan {
    scan_in_chunks(roots, markers, CHUNK_BYTES)
}

/// [`scan`] with chunks of `chunk` bytes (at least 1).
pub fn scan_in_chunks(roots: &[ScanRoot], markers: &BTreeMap<String, String>, chunk: usize) -> LocalityScan {
    let started = Instant::now();
    let needles: Vec<(&str, &[u8])> =
        markers.iter().filter(|(_, m)| !m.is_empty()).map(|(r, m)| (r.as_str(), m.as_bytes())).collect();
    let mut searcher = Searcher::new(&needles, chunk.max(1));
    let mut out = LocalityScan { markers: markers.clone(), ..LocalityScan::default() };
    for region in markers.keys() {
        out.regions.insert(region.clone(), RegionScan::default());
    }
    for root in roots {
        let mut files = Vec::new();
        if let Err(e) = walk(&root.path, &mut files) {
            out.not_scanned.push(format!("{}: {e}", root.path.display()));
        }
        for path in files {
            let found = match searcher.file(&path) {
                Ok(found) => found,
                // Listed, then removed (a running node compacts): it holds nothing now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.not_scanned.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let region = out.regions.entry(root.region.clone()).or_default();
            let read = region.nodes.entry(root.owner.clone()).or_default();
            read.files += 1;
            read.bytes += found.bytes;
            for ((marker_region, _), hits) in needles.iter().zip(found.hits) {
                if hits.count == 0 {
                    continue;
                }
                if *marker_region == root.region {
                    region.own_markers += hits.count;
                } else {
                    out.found.push(MarkerFound {
                        region: root.region.clone(),
                        node: root.owner.clone(),
                        path: path.display().to_string(),
                        marker_region: (*marker_region).to_owned(),
                        count: hits.count,
                        offsets: hits.offsets,
                    });
                }
            }
        }
    }
    out.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    out
}

/// Every regular file under `path` (itself, if it is one), in name order;
/// symbolic links and special files are skipped. A directory that cannot be
/// listed is an error (the files listed so far are kept); an entry removed
/// after its directory was listed is skipped, as is a file removed after it
/// was listed (a running node's compaction removes files; a stopped mesh's
/// files stay put).
fn walk(path: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    let kind = std::fs::symlink_metadata(path)?.file_type();
    if kind.is_file() {
        files.push(path.to_owned());
        return Ok(());
    }
    if !kind.is_dir() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    for entry in entries {
        match walk(&entry, files) {
            // Listed, then removed by a running node: nothing to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            walked => walked?,
        }
    }
    Ok(())
}

/// One marker's occurrences in one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Hits {
    count: u64,
    offsets: Vec<u64>,
}

/// What one file held.
#[derive(Debug)]
struct FileFound {
    bytes: u64,
    /// Per needle, in the searcher's order.
    hits: Vec<Hits>,
}

/// Searches files for a few needles, one chunk in memory at a time.
struct Searcher<'n> {
    needles: &'n [(&'n str, &'n [u8])],
    /// The needles' distinct first bytes.
    firsts: Vec<u8>,
    /// Bytes kept from one chunk to the next: the longest needle's length − 1.
    overlap: usize,
    chunk: usize,
    buffer: Vec<u8>,
}

impl<'n> Searcher<'n> {
    fn new(needles: &'n [(&'n str, &'n [u8])], chunk: usize) -> Searcher<'n> {
        let overlap = needles.iter().map(|(_, n)| n.len()).max().unwrap_or(1).saturating_sub(1);
        let mut firsts: Vec<u8> = needles.iter().filter_map(|(_, n)| n.first().copied()).collect();
        firsts.sort_unstable();
        firsts.dedup();
        Searcher { needles, firsts, overlap, chunk, buffer: vec![0; overlap + chunk] }
    }

    fn file(&mut self, path: &Path) -> io::Result<FileFound> {
        let mut file = File::open(path)?;
        let mut found = FileFound { bytes: 0, hits: vec![Hits::default(); self.needles.len()] };
        // buffer[..carried] is the end of the previous chunk; `base` is the
        // file offset of buffer[0].
        let (mut carried, mut base) = (0usize, 0u64);
        loop {
            let read = fill(&mut file, &mut self.buffer[carried..carried + self.chunk])?;
            if read == 0 {
                break;
            }
            found.bytes += read as u64;
            let len = carried + read;
            self.search(&self.buffer[..len], carried, base, &mut found.hits);
            let keep = self.overlap.min(len);
            self.buffer.copy_within(len - keep..len, 0);
            base += (len - keep) as u64;
            carried = keep;
        }
        Ok(found)
    }

    /// Every occurrence in `hay` that ends past its first `carried` bytes
    /// (those wholly inside were found with the previous chunk).
    fn search(&self, hay: &[u8], carried: usize, base: u64, hits: &mut [Hits]) {
        for &first in &self.firsts {
            let mut from = 0;
            while let Some(at) = hay[from..].iter().position(|&b| b == first) {
                let start = from + at;
                for ((_, needle), hits) in self.needles.iter().zip(hits.iter_mut()) {
                    if start + needle.len() > carried && hay[start..].starts_with(needle) {
                        hits.count += 1;
                        if hits.offsets.len() < OFFSETS_KEPT {
                            hits.offsets.push(base + start as u64);
                        }
                    }
                }
                from = start + 1;
            }
        }
    }
}

/// Reads into `buffer` until it is full or the file ends; the bytes read.
fn fill(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::REGION_FILES;

    const A: &str = "us-west";
    const B: &str = "cn-east";

    fn world() -> BTreeMap<String, String> {
        markers(&[A, B, "ap-southeast"])
    }

    /// A fake region B of one node: `data-1/` under `dir`.
    fn node_dir(dir: &Path) -> PathBuf {
        let data = dir.join(B).join("data-1");
        std::fs::create_dir_all(data.join("raft")).expect("mkdir");
        std::fs::write(data.join("raft/meta"), b"nothing personal here").expect("write");
        data
    }

    #[test]
    fn another_regions_marker_in_a_nodes_file_is_found_with_its_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = node_dir(dir.path());
        let mut text = b"segment header ".to_vec();
        let offset = text.len() as u64;
        text.extend_from_slice(payer_fields(A, 3, 17)[1].replace("acct-", "").as_bytes());
        text.extend_from_slice(b" more bytes");
        std::fs::write(data.join("raft/segment-000001"), &text).expect("write");
        let scan = scan(&[ScanRoot::new(B, "1", &data)], &world());

        assert_eq!(scan.found.len(), 1, "{scan:#?}");
        let found = &scan.found[0];
        assert_eq!((found.region.as_str(), found.node.as_str(), found.marker_region.as_str()), (B, "1", A));
        assert!(found.path.ends_with("raft/segment-000001"), "{}", found.path);
        assert_eq!((found.count, found.offsets.clone()), (1, vec![offset]));
        assert_eq!(scan.hits(), 1);
        let read = scan.regions[B].nodes["1"];
        assert_eq!(read.files, 2);
        assert_eq!(read.bytes, text.len() as u64 + b"nothing personal here".len() as u64);
        assert!(scan.not_scanned.is_empty());
    }

    #[test]
    fn a_marker_across_a_chunk_edge_is_found_once() {
        let marker = pii_marker(A);
        // With 1 MiB chunks, and with tiny ones where every marker crosses
        // several edges and several lie in one chunk's carried bytes.
        for (chunk, starts) in [(CHUNK_BYTES, vec![CHUNK_BYTES - 5, 2 * CHUNK_BYTES - 1]), (7, vec![0, 30, 52, 74])] {
            let dir = tempfile::tempdir().expect("tempdir");
            let data = node_dir(dir.path());
            let mut bytes = vec![b'x'; starts.last().copied().unwrap_or(0) + marker.len() + 3];
            for start in &starts {
                bytes[*start..*start + marker.len()].copy_from_slice(marker.as_bytes());
            }
            std::fs::write(data.join("checkpoint"), &bytes).expect("write");
            let scan = scan_in_chunks(&[ScanRoot::new(B, "1", &data)], &world(), chunk);
            assert_eq!(scan.found.len(), 1, "chunk {chunk}: {scan:#?}");
            let offsets: Vec<u64> = starts.iter().map(|s| *s as u64).collect();
            assert_eq!(scan.found[0].count, starts.len() as u64, "chunk {chunk}");
            assert_eq!(scan.found[0].offsets, offsets, "chunk {chunk}");
        }
    }

    #[test]
    fn a_regions_own_marker_in_its_own_files_is_no_violation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = node_dir(dir.path());
        let [name, account, reference] = payer_fields(B, 1, 2);
        std::fs::write(data.join("raft/segment-000001"), format!("{name}\n{account}\n{reference}")).expect("write");
        let log = dir.path().join(B).join("node-1.log");
        std::fs::write(&log, format!("a line about {account}")).expect("write");
        let roots = [ScanRoot::new(B, "1", &data), ScanRoot::new(B, "1", &log)];
        let scan = scan(&roots, &world());
        assert!(scan.found.is_empty(), "{scan:#?}");
        assert_eq!(scan.regions[B].own_markers, 4);
        assert_eq!(scan.regions[B].files(), 3);
    }

    #[test]
    fn files_are_counted_by_owner_and_missing_roots_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = node_dir(dir.path());
        let certs = dir.path().join(B).join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        std::fs::write(certs.join("ca.pem"), b"-----BEGIN CERTIFICATE-----").expect("write");
        let missing = dir.path().join(B).join("node-2.log");
        let roots =
            [ScanRoot::new(B, "1", &data), ScanRoot::new(B, REGION_FILES, &certs), ScanRoot::new(B, "2", &missing)];
        let scan = scan(&roots, &world());
        assert_eq!(scan.regions[B].nodes["1"].files, 1);
        assert_eq!(scan.regions[B].nodes[REGION_FILES].files, 1);
        assert!(!scan.regions[B].nodes.contains_key("2"));
        assert_eq!(scan.regions[A], RegionScan::default(), "every region is listed, scanned or not");
        assert_eq!(scan.not_scanned.len(), 1);
        assert!(scan.not_scanned[0].contains("node-2.log"), "{:?}", scan.not_scanned);
    }

    #[test]
    fn markers_name_their_region_and_none_contains_another() {
        let all = world();
        for (region, marker) in &all {
            assert!(marker.contains(region.as_str()));
            for (other, theirs) in &all {
                assert!(other == region || !marker.contains(theirs.as_str()), "{marker} holds {theirs}");
            }
            let fields = payer_fields(region, 1, 1);
            assert!(fields.iter().all(|f| f.contains(marker.as_str())), "{fields:?}");
        }
    }
}
