//! The two state machines of a cross-border transfer.
//!
//! The **coordinator** is the payer's region; it decides. The **participant** is
//! the payee's region; it prepares and then waits for the decision, never
//! deciding a prepared transfer on its own.
//!
//! ```text
//! coordinator:  Received ─Reserve──────► Reserved ─Prepared─► Prepared ─DecideCommit─► Committed
//!                  │ └─PostLocal (same region) ──────────────────────────────────────► Committed
//!                  └─ReserveRejected─► Aborted ◄─PrepareRejected | DeadlineExpired─┘  └─DecideAbort─► Aborted
//!
//! participant:  (none) ─Prepare─► Prepared ─Commit─► Committed
//!                  │                  └─Abort─► Aborted
//!                  ├─PrepareRefused─► Aborted
//!                  └─Abort─► Tombstone      (an abort that overtook its prepare; the
//!                                            late prepare is then refused)
//! ```
//!
//! Each machine is a total function over (state, event): every pair is either a
//! move, an idempotent no-op (a message delivered again or late), or an
//! [`IllegalTransition`]. Only events that arrive from the network may be no-ops;
//! events the state machine generates itself must never repeat, so a repeat is
//! illegal. The tables are tested exhaustively.

use serde::{Deserialize, Serialize};

/// Where a transfer stands in its coordinating (payer) region. This is the state
/// a partner sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CoordinatorState {
    /// Accepted for processing; nothing reserved yet. Transient within one apply.
    Received,
    /// The payer's funds are reserved (pending); a Prepare is on its way.
    Reserved,
    /// The payee region has prepared; the decision follows.
    Prepared,
    /// Decided and posted: money moved. Final.
    Committed,
    /// Decided against, or refused; reservations voided. Final.
    Aborted,
}

impl CoordinatorState {
    /// Every state, for exhaustive tests.
    pub const ALL: [CoordinatorState; 5] = [
        CoordinatorState::Received,
        CoordinatorState::Reserved,
        CoordinatorState::Prepared,
        CoordinatorState::Committed,
        CoordinatorState::Aborted,
    ];

    /// Whether the state is final.
    pub fn is_final(self) -> bool {
        matches!(self, CoordinatorState::Committed | CoordinatorState::Aborted)
    }
}

/// What can happen to a transfer in its coordinating region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CoordinatorEvent {
    /// The payer's reservation succeeded (cross-border).
    Reserve,
    /// A check or the reservation failed before anything was reserved.
    ReserveRejected,
    /// Same-region transfer: every leg posted in one step.
    PostLocal,
    /// The payee region reported PREPARED. From the network.
    Prepared,
    /// The payee region refused the prepare. From the network.
    PrepareRejected,
    /// The deadline passed while still reserved.
    DeadlineExpired,
    /// The coordinator decides to commit.
    DecideCommit,
    /// The coordinator decides to abort a prepared transfer.
    DecideAbort,
}

impl CoordinatorEvent {
    /// Every event, for exhaustive tests.
    pub const ALL: [CoordinatorEvent; 8] = [
        CoordinatorEvent::Reserve,
        CoordinatorEvent::ReserveRejected,
        CoordinatorEvent::PostLocal,
        CoordinatorEvent::Prepared,
        CoordinatorEvent::PrepareRejected,
        CoordinatorEvent::DeadlineExpired,
        CoordinatorEvent::DecideCommit,
        CoordinatorEvent::DecideAbort,
    ];
}

/// Where a transfer stands in the payee's region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ParticipantState {
    /// The payee's credit is pending; waiting for the coordinator's decision.
    Prepared,
    /// Posted: the payee was credited. Final.
    Committed,
    /// Voided, or the prepare was refused. Final.
    Aborted,
    /// An abort arrived before any prepare; a late prepare will be refused. Final.
    Tombstone,
}

impl ParticipantState {
    /// Every state, for exhaustive tests.
    pub const ALL: [ParticipantState; 4] = [
        ParticipantState::Prepared,
        ParticipantState::Committed,
        ParticipantState::Aborted,
        ParticipantState::Tombstone,
    ];

    /// Whether the state is final.
    pub fn is_final(self) -> bool {
        !matches!(self, ParticipantState::Prepared)
    }
}

/// What can happen to a transfer in the payee's region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ParticipantEvent {
    /// A Prepare that passed validation. From the network.
    Prepare,
    /// A first Prepare that failed validation (unknown payee, suspended, …).
    PrepareRefused,
    /// The coordinator's Commit decision. From the network.
    Commit,
    /// The coordinator's Abort decision. From the network.
    Abort,
}

impl ParticipantEvent {
    /// Every event, for exhaustive tests.
    pub const ALL: [ParticipantEvent; 4] = [
        ParticipantEvent::Prepare,
        ParticipantEvent::PrepareRefused,
        ParticipantEvent::Commit,
        ParticipantEvent::Abort,
    ];
}

/// The result of a legal event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<S> {
    /// The transfer moves to this state.
    Move(S),
    /// The event was already applied or arrived late: nothing changes.
    Unchanged,
}

/// An event that may not happen in a state. For network events this is a
/// protocol violation by the other region; for local ones, a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum IllegalTransition {
    /// In the coordinating region.
    #[error("illegal coordinator transition: {event:?} in state {from:?}")]
    Coordinator {
        /// The state the transfer was in.
        from: CoordinatorState,
        /// The event.
        event: CoordinatorEvent,
    },
    /// In the payee's region.
    #[error("illegal participant transition: {event:?} in state {from:?}")]
    Participant {
        /// The state the transfer was in (`None`: no record).
        from: Option<ParticipantState>,
        /// The event.
        event: ParticipantEvent,
    },
}

/// The coordinator's transition table.
pub fn coordinator_step(
    from: CoordinatorState,
    event: CoordinatorEvent,
) -> Result<Step<CoordinatorState>, IllegalTransition> {
    use CoordinatorEvent as E;
    use CoordinatorState as S;
    let step = match (from, event) {
        (S::Received, E::Reserve) => Step::Move(S::Reserved),
        (S::Received, E::ReserveRejected) => Step::Move(S::Aborted),
        (S::Received, E::PostLocal) => Step::Move(S::Committed),
        (S::Reserved, E::Prepared) => Step::Move(S::Prepared),
        (S::Reserved, E::PrepareRejected) => Step::Move(S::Aborted),
        (S::Reserved, E::DeadlineExpired) => Step::Move(S::Aborted),
        (S::Prepared, E::DecideCommit) => Step::Move(S::Committed),
        (S::Prepared, E::DecideAbort) => Step::Move(S::Aborted),
        // A PREPARED reply delivered again, or late after the deadline abort.
        (S::Prepared | S::Committed | S::Aborted, E::Prepared) => Step::Unchanged,
        // A refusal delivered again, or late after the deadline abort.
        (S::Aborted, E::PrepareRejected) => Step::Unchanged,
        _ => return Err(IllegalTransition::Coordinator { from, event }),
    };
    Ok(step)
}

/// The participant's transition table; `None` means no record of the transfer.
pub fn participant_step(
    from: Option<ParticipantState>,
    event: ParticipantEvent,
) -> Result<Step<ParticipantState>, IllegalTransition> {
    use ParticipantEvent as E;
    use ParticipantState as S;
    let step = match (from, event) {
        (None, E::Prepare) => Step::Move(S::Prepared),
        (None, E::PrepareRefused) => Step::Move(S::Aborted),
        (None, E::Abort) => Step::Move(S::Tombstone),
        (Some(S::Prepared), E::Commit) => Step::Move(S::Committed),
        (Some(S::Prepared), E::Abort) => Step::Move(S::Aborted),
        // Duplicates and late arrivals: the recorded answer stands.
        (Some(_), E::Prepare) => Step::Unchanged,
        (Some(S::Committed), E::Commit) => Step::Unchanged,
        (Some(S::Aborted | S::Tombstone), E::Abort) => Step::Unchanged,
        _ => return Err(IllegalTransition::Participant { from, event }),
    };
    Ok(step)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The coordinator table, written out independently of the match above:
    /// every legal pair and its result; every other pair must be illegal.
    #[test]
    fn coordinator_table_is_exactly_as_designed() {
        use CoordinatorEvent as E;
        use CoordinatorState as S;
        let legal: BTreeMap<(S, E), Option<S>> = [
            ((S::Received, E::Reserve), Some(S::Reserved)),
            ((S::Received, E::ReserveRejected), Some(S::Aborted)),
            ((S::Received, E::PostLocal), Some(S::Committed)),
            ((S::Reserved, E::Prepared), Some(S::Prepared)),
            ((S::Reserved, E::PrepareRejected), Some(S::Aborted)),
            ((S::Reserved, E::DeadlineExpired), Some(S::Aborted)),
            ((S::Prepared, E::DecideCommit), Some(S::Committed)),
            ((S::Prepared, E::DecideAbort), Some(S::Aborted)),
            ((S::Prepared, E::Prepared), None),
            ((S::Committed, E::Prepared), None),
            ((S::Aborted, E::Prepared), None),
            ((S::Aborted, E::PrepareRejected), None),
        ]
        .into_iter()
        .collect();
        let mut checked = 0;
        for from in S::ALL {
            for event in E::ALL {
                let actual = coordinator_step(from, event);
                match legal.get(&(from, event)) {
                    Some(Some(to)) => assert_eq!(actual, Ok(Step::Move(*to)), "{from:?} + {event:?}"),
                    Some(None) => assert_eq!(actual, Ok(Step::Unchanged), "{from:?} + {event:?}"),
                    None => assert_eq!(actual, Err(IllegalTransition::Coordinator { from, event })),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 40);
    }

    #[test]
    fn participant_table_is_exactly_as_designed() {
        use ParticipantEvent as E;
        use ParticipantState as S;
        let legal: BTreeMap<(Option<S>, E), Option<S>> = [
            ((None, E::Prepare), Some(S::Prepared)),
            ((None, E::PrepareRefused), Some(S::Aborted)),
            ((None, E::Abort), Some(S::Tombstone)),
            ((Some(S::Prepared), E::Commit), Some(S::Committed)),
            ((Some(S::Prepared), E::Abort), Some(S::Aborted)),
            ((Some(S::Prepared), E::Prepare), None),
            ((Some(S::Committed), E::Prepare), None),
            ((Some(S::Aborted), E::Prepare), None),
            ((Some(S::Tombstone), E::Prepare), None),
            ((Some(S::Committed), E::Commit), None),
            ((Some(S::Aborted), E::Abort), None),
            ((Some(S::Tombstone), E::Abort), None),
        ]
        .into_iter()
        .collect();
        let mut checked = 0;
        let states = std::iter::once(None).chain(S::ALL.into_iter().map(Some));
        for from in states {
            for event in E::ALL {
                let actual = participant_step(from, event);
                match legal.get(&(from, event)) {
                    Some(Some(to)) => assert_eq!(actual, Ok(Step::Move(*to)), "{from:?} + {event:?}"),
                    Some(None) => assert_eq!(actual, Ok(Step::Unchanged), "{from:?} + {event:?}"),
                    None => assert_eq!(actual, Err(IllegalTransition::Participant { from, event })),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 20);
    }

    /// Once decided, a transfer stays decided on both sides: no event moves a
    /// final state (late and repeated messages are no-ops or illegal).
    #[test]
    fn final_states_do_not_move() {
        for from in CoordinatorState::ALL.into_iter().filter(|s| s.is_final()) {
            for event in CoordinatorEvent::ALL {
                assert!(!matches!(coordinator_step(from, event), Ok(Step::Move(_))), "{from:?} + {event:?}");
            }
        }
        for from in ParticipantState::ALL.into_iter().filter(|s| s.is_final()) {
            for event in ParticipantEvent::ALL {
                assert!(!matches!(participant_step(Some(from), event), Ok(Step::Move(_))), "{from:?} + {event:?}");
            }
        }
    }
}
