//! The payee region's receiver: one inter-region batch from its arrival to
//! its answer.
//!
//! A batch holds 1 to [`BATCH_ITEMS_MAX`] items ([`admit`]). Each item is
//! parsed by the node's conversions: a malformed one is answered at once
//! (`PROTOCOL_VIOLATION`, or `REGION_MISMATCH` when it names another
//! origin), never by failing its batch; every other becomes one core
//! command (`Prepare`, `Decide`) for the driver to propose through the
//! leader's proposer, so a batch of a thousand items costs a few Raft
//! entries, and the state machine makes each idempotent by (transfer id,
//! phase). Each command's outcome is the item's answer; once every item
//! has one the batch is answered in the items' order. An outcome the
//! protocol does not produce fails the whole batch (the caller retries).
//!
//! The driver is the inter-region service (`crate::interregion`); the
//! simulation drives the same type.

use paymesh_core::command::{CommandBody, Decision, PrepareReply};
use paymesh_core::id::{RegionId, TransferId};
use paymesh_core::{Outcome, RejectCode};
use paymesh_proto::interregion::v1 as wire;

use crate::interregion::{ack, decision_in, prepare_in, reply_out, BATCH_ITEMS_MAX};

/// Whether a batch of `items` items may be served: 1 to
/// [`BATCH_ITEMS_MAX`]. The refusal says why.
pub fn admit(items: usize) -> Result<(), String> {
    if items == 0 || items > BATCH_ITEMS_MAX {
        return Err(format!("items: send 1 to {BATCH_ITEMS_MAX} items, not {items}"));
    }
    Ok(())
}

/// A command to propose for one item of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The item's place in its batch.
    pub item: usize,
    /// The command.
    pub body: CommandBody,
}

/// An outcome the protocol does not produce for an item's command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected outcome of a {phase}: {outcome:?}")]
pub struct Unexpected {
    /// "prepare" or "decision".
    pub phase: &'static str,
    /// The outcome.
    pub outcome: Outcome,
}

/// A decision the payee region's records contradict (the region answers it
/// as a protocol violation; operators must look).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contradiction {
    /// The transfer.
    pub transfer: TransferId,
    /// The decision received.
    pub decision: Decision,
    /// Why the state machine refused it.
    pub code: RejectCode,
}

/// The answers of a batch, one per item, `None` until known.
#[derive(Clone, Debug)]
enum Answers {
    Prepares(Vec<(String, Option<wire::PrepareReply>)>),
    Decisions(Vec<(String, Option<wire::Ack>)>),
}

/// A batch's answer, whole.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// To a Prepare batch.
    Prepares(wire::PrepareReplyBatch),
    /// To a decision batch.
    Acks(wire::AckBatch),
}

/// One batch being answered.
#[derive(Clone, Debug)]
pub struct Inbound {
    answers: Answers,
    /// The decisions proposed, by item, to name a contradiction.
    decisions: Vec<Option<(TransferId, Decision)>>,
    pending: usize,
}

impl Inbound {
    /// A Prepare batch from `from` (admitted, see [`admit`]), and the
    /// commands to propose for it.
    pub fn prepares(batch: &wire::PrepareBatch, from: &RegionId) -> (Inbound, Vec<Proposal>) {
        let mut replies = Vec::with_capacity(batch.items.len());
        let mut proposals = Vec::new();
        for (item, wire_item) in batch.items.iter().enumerate() {
            match prepare_in(wire_item, from) {
                Err(code) => {
                    let reply = reply_out(&wire_item.transfer_id, PrepareReply::Rejected(code));
                    replies.push((wire_item.transfer_id.clone(), Some(reply)));
                }
                Ok(preparing) => {
                    replies.push((wire_item.transfer_id.clone(), None));
                    proposals.push(Proposal { item, body: preparing.into_command() });
                }
            }
        }
        let inbound = Inbound { answers: Answers::Prepares(replies), decisions: Vec::new(), pending: proposals.len() };
        (inbound, proposals)
    }

    /// A decision batch from `from` (admitted, see [`admit`]), and the
    /// commands to propose for it.
    pub fn decisions(batch: &wire::DecisionBatch, from: &RegionId) -> (Inbound, Vec<Proposal>) {
        let mut acks = Vec::with_capacity(batch.items.len());
        let mut decisions = Vec::with_capacity(batch.items.len());
        let mut proposals = Vec::new();
        for (item, wire_item) in batch.items.iter().enumerate() {
            match decision_in(wire_item, from) {
                None => {
                    acks.push((
                        wire_item.transfer_id.clone(),
                        Some(ack(&wire_item.transfer_id, wire::AckResult::ProtocolViolation)),
                    ));
                    decisions.push(None);
                }
                Some((transfer, decision)) => {
                    acks.push((wire_item.transfer_id.clone(), None));
                    decisions.push(Some((transfer.clone(), decision)));
                    let body = CommandBody::DecideInWindow { transfer, decision, window: wire_item.window };
                    proposals.push(Proposal { item, body });
                }
            }
        }
        let inbound = Inbound { answers: Answers::Decisions(acks), decisions, pending: proposals.len() };
        (inbound, proposals)
    }

    /// Item `item`'s command was applied with `outcome`: its answer. A
    /// decision the records contradict is answered as a protocol violation
    /// and returned, for the driver to report.
    pub fn answered(&mut self, item: usize, outcome: Outcome) -> Result<Option<Contradiction>, Unexpected> {
        let mut contradiction = None;
        match &mut self.answers {
            Answers::Prepares(replies) => {
                let reply = match outcome {
                    Outcome::PrepareReply(reply) => reply,
                    Outcome::Rejected(code) => PrepareReply::Rejected(code),
                    outcome => return Err(Unexpected { phase: "prepare", outcome }),
                };
                if let Some((id, answer)) = replies.get_mut(item) {
                    *answer = Some(reply_out(id, reply));
                }
            }
            Answers::Decisions(acks) => {
                let result = match outcome {
                    Outcome::Acked => wire::AckResult::Acked,
                    Outcome::Rejected(code) => {
                        if let Some(Some((transfer, decision))) = self.decisions.get(item) {
                            contradiction =
                                Some(Contradiction { transfer: transfer.clone(), decision: *decision, code });
                        }
                        wire::AckResult::ProtocolViolation
                    }
                    outcome => return Err(Unexpected { phase: "decision", outcome }),
                };
                if let Some((id, answer)) = acks.get_mut(item) {
                    *answer = Some(ack(id, result));
                }
            }
        }
        self.pending = self.pending.saturating_sub(1);
        Ok(contradiction)
    }

    /// Whether every item has its answer.
    pub fn complete(&self) -> bool {
        self.pending == 0
    }

    /// The batch's answer from `region`, which runs `protocol`, once
    /// [`Inbound::complete`]; an item without an answer (never, when
    /// complete) is left out.
    pub fn reply(self, region: &RegionId, protocol: u32) -> Reply {
        let from_region = region.to_string();
        match self.answers {
            Answers::Prepares(replies) => Reply::Prepares(wire::PrepareReplyBatch {
                from_region,
                replies: replies.into_iter().filter_map(|(_, reply)| reply).collect(),
                protocol,
            }),
            Answers::Decisions(acks) => Reply::Acks(wire::AckBatch {
                from_region,
                acks: acks.into_iter().filter_map(|(_, ack)| ack).collect(),
                protocol,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
