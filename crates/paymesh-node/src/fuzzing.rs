//! Entry points for the fuzz targets in `fuzz/` (see docs/ARCHITECTURE.md,
//! "Fuzzing"), and the stable tests that replay their seed corpora and every
//! crash they found. Each takes arbitrary bytes and must never panic.

use paymesh_core::id::RegionId;
use paymesh_proto::interregion::v1 as wire;
use paymesh_store::raft_types::{SnapshotMeta, TypeConfig};
use paymesh_store::NodeId;
use prost::Message as _;

use crate::codec::decode;

/// `data` as each Raft payload a node decodes from a peer.
pub fn raft_codec(data: &[u8]) {
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<openraft::raft::VoteRequest<NodeId>>(data);
    let _ = decode::<openraft::Vote<NodeId>>(data);
    let _ = decode::<SnapshotMeta>(data);
    let _ = decode::<paymesh_core::command::Batch>(data);
}

/// `data` as an inter-region Prepare item and as a decision item (protobuf),
/// parsed as the payee region does.
pub fn interregion_items(data: &[u8]) {
    let from = RegionId::new("us-west").expect("a valid region id");
    if let Ok(item) = wire::PrepareItem::decode(data) {
        let _ = crate::interregion::prepare_in(&item, &from);
    }
    if let Ok(item) = wire::DecisionItem::decode(data) {
        let _ = crate::interregion::decision_in(&item, &from);
    }
}

/// `data` as a peer's certificate (DER) and as an identity's text.
pub fn identity(data: &[u8]) {
    let _ = crate::identity::identity_from_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::identity::Identity::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use paymesh_store::fuzzing::replay;

    use super::*;

    #[test]
    fn fuzz_inputs_raft_codec() {
        replay("raft_codec", raft_codec);
    }

    #[test]
    fn fuzz_inputs_interregion_items() {
        replay("interregion_items", interregion_items);
    }

    #[test]
    fn fuzz_inputs_identity() {
        replay("identity", identity);
    }
}
