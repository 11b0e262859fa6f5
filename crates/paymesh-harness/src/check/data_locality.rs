//! Each region's data stays in that region: no file of any node of a region
//! holds the personal data of another region's payers.
//!
//! The run scans every node's files once the mesh has stopped
//! (`crate::locality`) and records what it read and what it found in the
//! history. A violation is:
//!
//! * another region's payer marker in a region's file (one per file and
//!   marker, with its node, path, count and first byte offsets);
//! * a file that could not be read, or a place a node may have written to
//!   that the scan could not reach, since it was not scanned;
//! * no file scanned at all, none of a region, or none of a node the run
//!   observed: a scan that read nothing proves nothing;
//! * a region whose payers' transfers were acknowledged but whose own files
//!   hold none of its own marker: the scan does not see payer data where it
//!   certainly is, so its silence elsewhere proves nothing either;
//! * no scan recorded, for a run of real processes or containers (the
//!   simulation has no files, and nothing to check here).

use std::collections::BTreeSet;

use super::{Checker, Violation};
use crate::history::{History, Outcome, Request, TransferState};

/// No region's files hold another region's payer data.
#[derive(Clone, Copy, Debug, Default)]
pub struct DataLocality;

impl Checker for DataLocality {
    fn name(&self) -> &'static str {
        "data_locality"
    }

    fn describe(&self) -> &'static str {
        "no file of any node of a region holds another region's payer personal data"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let v = |detail: String| Violation::new(self.name(), detail);
        let Some(scan) = &history.locality else {
            if history.backend == "sim" {
                return Vec::new();
            }
            return vec![v(format!("the {} run recorded no scan of its nodes' files", history.backend))];
        };
        let mut found = Vec::new();
        if scan.files() == 0 {
            found.push(v("no file was scanned: a scan of nothing proves nothing".to_owned()));
        }
        for (region, read) in &scan.regions {
            if read.files() == 0 {
                found.push(v(format!("no file of {region} was scanned")));
            }
        }
        if let Some(observation) = &history.observation {
            for (region, held) in &observation.regions {
                for replica in &held.replicas {
                    let node = replica.node_id.to_string();
                    let files = scan.regions.get(region).and_then(|r| r.nodes.get(&node)).map_or(0, |n| n.files);
                    if files == 0 {
                        found.push(v(format!("no file of {region} node {node} was scanned")));
                    }
                }
            }
        }
        // Regions whose payers' data certainly is in their files: those where
        // a transfer was acknowledged, or was observed committed at its origin.
        let mut paying: BTreeSet<&str> = history
            .ops
            .iter()
            .filter(|op| op.outcome == Outcome::Ok)
            .filter_map(|op| match &op.request {
                Request::CreateTransfer { region, .. } => Some(region.as_str()),
                _ => None,
            })
            .collect();
        if let Some(observation) = &history.observation {
            paying.extend(
                observation
                    .transfers()
                    .filter(|(region, t)| t.state == TransferState::Committed && t.is_origin_side_in(region))
                    .map(|(region, _)| region),
            );
        }
        for region in paying {
            let seen = scan.regions.get(region).map_or(0, |r| r.own_markers);
            if seen == 0 && scan.markers.contains_key(region) {
                found.push(v(format!(
                    "{region}'s payers' transfers were acknowledged, yet no file of {region} holds its own marker \
                     {:?}: the scan does not see payer data where it is",
                    scan.markers[region]
                )));
            }
        }
        for hit in &scan.found {
            let offsets: Vec<String> = hit.offsets.iter().map(u64::to_string).collect();
            found.push(v(format!(
                "{} node {}: {} holds {}'s payer marker {:?} {} time(s), first at byte offset(s) {}",
                hit.region,
                hit.node,
                hit.path,
                hit.marker_region,
                scan.markers.get(&hit.marker_region).map_or("", String::as_str),
                hit.count,
                offsets.join(", ")
            )));
        }
        for not_scanned in &scan.not_scanned {
            found.push(v(format!("not scanned: {not_scanned}")));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::check::fixtures;
    use crate::history::{FilesRead, LocalityScan, MarkerFound, RegionScan, REGION_FILES};
    use crate::locality;

    /// The fixture as a process run whose scan read every observed node's
    /// files and saw each paying region's own marker.
    fn scanned() -> History {
        let mut history = fixtures::good_history();
        history.backend = "process".to_owned();
        let observation = history.observation.as_ref().expect("observed");
        let regions: Vec<&str> = observation.regions.keys().map(String::as_str).collect();
        let mut scan = LocalityScan { markers: locality::markers(&regions), ..LocalityScan::default() };
        for (region, held) in &observation.regions {
            let mut read = RegionScan { own_markers: 10, ..RegionScan::default() };
            for replica in &held.replicas {
                read.nodes.insert(replica.node_id.to_string(), FilesRead { files: 4, bytes: 4096 });
            }
            read.nodes.insert(REGION_FILES.to_owned(), FilesRead { files: 2, bytes: 100 });
            scan.regions.insert(region.clone(), read);
        }
        history.locality = Some(scan);
        history
    }

    fn scan_mut(history: &mut History) -> &mut LocalityScan {
        history.locality.as_mut().expect("scanned")
    }

    #[test]
    fn a_clean_scan_passes() {
        assert_eq!(DataLocality.check(&scanned()), Vec::new());
    }

    #[test]
    fn the_simulation_has_nothing_to_scan_but_a_real_run_must_scan() {
        assert_eq!(DataLocality.check(&fixtures::good_history()), Vec::new(), "sim");
        let mut history = scanned();
        history.locality = None;
        let found = DataLocality.check(&history);
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("no scan"), "{found:?}");
    }

    #[test]
    fn another_regions_marker_is_a_violation_naming_region_node_file_offset_and_marker() {
        let mut history = scanned();
        scan_mut(&mut history).found.push(MarkerFound {
            region: fixtures::CN.to_owned(),
            node: "2".to_owned(),
            path: "/run/cn-east/data-2/raft/segment-7".to_owned(),
            marker_region: fixtures::US.to_owned(),
            count: 3,
            offsets: vec![128, 4096, 9000],
        });
        let found = DataLocality.check(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        let detail = &found[0].detail;
        for part in ["cn-east node 2", "/run/cn-east/data-2/raft/segment-7", "us-west's", "PIIMARK-us-west-", "128"] {
            assert!(detail.contains(part), "{part} not in {detail}");
        }
        assert_eq!(found[0].checker, "data_locality");
    }

    #[test]
    fn scanning_nothing_proves_nothing() {
        let mut history = scanned();
        for read in scan_mut(&mut history).regions.values_mut() {
            read.nodes.clear();
        }
        let found = DataLocality.check(&history);
        assert!(found.iter().any(|f| f.detail.starts_with("no file was scanned")), "{found:?}");
        let observation = history.observation.as_ref().expect("observed");
        let nodes: usize = observation.regions.values().map(|r| r.replicas.len()).sum();
        assert_eq!(found.len(), 1 + observation.regions.len() + nodes, "{found:?}");
    }

    #[test]
    fn a_node_never_read_and_a_file_not_scanned_are_violations() {
        let mut history = scanned();
        let scan = scan_mut(&mut history);
        scan.regions.get_mut(fixtures::US).expect("region").nodes.remove("2");
        scan.not_scanned.push("/run/us-west/data-1/x: Permission denied".to_owned());
        let found = DataLocality.check(&history);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].detail.contains("us-west node 2"), "{found:?}");
        assert!(found[1].detail.contains("Permission denied"), "{found:?}");
    }

    #[test]
    fn a_paying_region_without_its_own_marker_means_the_scan_is_blind() {
        let mut history = scanned();
        let paying: BTreeMap<_, _> = history
            .ops
            .iter()
            .filter(|op| op.outcome.is_ok())
            .filter_map(|op| match &op.request {
                Request::CreateTransfer { region, .. } => Some((region.clone(), ())),
                _ => None,
            })
            .collect();
        let region = paying.keys().next().expect("the fixture acknowledges a transfer").clone();
        scan_mut(&mut history).regions.get_mut(&region).expect("region").own_markers = 0;
        let found = DataLocality.check(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("own marker"), "{found:?}");
    }

    #[test]
    fn a_region_observed_paying_without_its_own_marker_means_the_scan_is_blind_with_no_requests_recorded() {
        // `paymesh demo` records no requests: its committed transfers say
        // which regions' files must hold their own payers' markers.
        let mut history = scanned();
        history.ops.clear();
        assert_eq!(DataLocality.check(&history), Vec::new());
        scan_mut(&mut history).regions.get_mut(fixtures::US).expect("region").own_markers = 0;
        let found = DataLocality.check(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("us-west's payers"), "{found:?}");
    }

    #[test]
    fn a_real_scan_of_a_leak_fails_the_checker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut history = scanned();
        let data = dir.path().join(fixtures::CN).join("data-1");
        std::fs::create_dir_all(&data).expect("mkdir");
        let [name, ..] = locality::payer_fields(fixtures::US, 0, 1);
        std::fs::write(data.join("checkpoint-5"), format!("state {name} end")).expect("write");
        let markers = scan_mut(&mut history).markers.clone();
        let real = locality::scan(&[locality::ScanRoot::new(fixtures::CN, "1", &data)], &markers);
        scan_mut(&mut history).found = real.found;
        let found = DataLocality.check(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("checkpoint-5") && found[0].detail.contains("offset(s) 14"), "{found:?}");
    }
}
