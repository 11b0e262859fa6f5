//! Which nodes may speak for the region: the admission check of every call a
//! node of the region makes to another (Raft, cluster operations, forwarded
//! batches).
//!
//! A node certificate stays valid after `paymesh node remove`, so a
//! certificate alone cannot tell a member from a node the region removed.
//! The state machine keeps the set of retired nodes (members that were
//! removed and not added back), derived from the membership entries in log
//! order, so every replica holds the same set. A caller is admitted when the
//! latest membership this node knows names it, refused when it is retired,
//! and otherwise admitted: a node never seen as a member here may be one this
//! node has not learnt of yet (it was down while the node was added), and
//! refusing its AppendEntries would leave this node behind for good. Only
//! the region's CA issues node certificates, so such a caller is a node the
//! operator certified for the region.

use paymesh_store::raft_types::Raft;
use paymesh_store::{NodeId, StateMachineStore};
use tonic::Status;

/// The admission check for calls from the region's nodes.
#[derive(Clone)]
pub struct Members {
    raft: Raft,
    state_machine: StateMachineStore,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members").finish_non_exhaustive()
    }
}

impl Members {
    /// The check for the group `raft` over `state_machine`.
    pub fn new(raft: Raft, state_machine: StateMachineStore) -> Members {
        Members { raft, state_machine }
    }

    /// Ok if node `id` of this region may call this node; PERMISSION_DENIED
    /// if it was removed from the region.
    pub fn admit(&self, id: NodeId) -> Result<(), Status> {
        let member = self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
        if member || !self.state_machine.is_retired(id) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "node {id} was removed from the region's membership; its certificate no longer speaks for the \
             region (add the node back to readmit it)"
        )))
    }
}
