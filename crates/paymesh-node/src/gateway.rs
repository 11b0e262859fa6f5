//! What the partner and admin services share: the caller's identity, the
//! leader hint for a node that cannot serve a request, the route to the
//! actors, and the mapping of refusals to gRPC statuses.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use paymesh_core::command::CommandBody;
use paymesh_core::id::{PartnerId, RegionId};
use paymesh_core::partner::{BusinessStatus, PartnerLimits};
use paymesh_core::{Outcome, RejectCode, State, Timestamp};
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::actors::{Refusal, Registry};
use crate::engine::admission;
use crate::identity::{Authenticator, Identity};
use crate::members::Members;
use crate::outbox::Links;
use crate::rate::{Admission, Rates};
use crate::telemetry::Traces;

/// What the partner, admin and inter-region services of one node share: the
/// handles they use, each cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    /// The region this node serves.
    pub region: RegionId,
    /// The region's Raft group on this node.
    pub raft: Raft,
    /// The applied state and history, for reads.
    pub state_machine: StateMachineStore,
    /// Who is calling, and whether its certificate is revoked.
    pub auth: Authenticator,
    /// Partners' request rates (see [`crate::rate`]).
    pub rates: Arc<Rates>,
    /// The links to the remote regions (the outbox's destinations).
    pub links: Arc<Links>,
    /// The trace contexts of recent transfers (see [`crate::telemetry`]).
    pub traces: Arc<Traces>,
    /// The leader's actors.
    pub registry: Registry,
    /// Webhook delivery (see [`crate::webhooks`]).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("region", &self.region).finish_non_exhaustive()
    }
}

/// The gRPC status for a reject code that the contract reports as a status
/// rather than in the response: unknown things are NOT_FOUND, suspended ones
/// FAILED_PRECONDITION, a reused idempotency key ALREADY_EXISTS.
pub fn reject_status(code: RejectCode) -> Option<Status> {
    let name = |code: RejectCode| format!("{code:?}");
    match code {
        RejectCode::PartnerNotFound
        | RejectCode::CorridorNotFound
        | RejectCode::TransferNotFound
        | RejectCode::QuoteNotFound
        | RejectCode::PayeeNotFound
        | RejectCode::WindowNotFound
        | RejectCode::WebhookNotFound => Some(Status::not_found(name(code))),
        RejectCode::AlreadySettled => Some(Status::already_exists(
            "AlreadySettled: this account's net of the window was recorded settled with another reference",
        )),
        RejectCode::PartnerSuspended | RejectCode::CorridorSuspended => Some(Status::failed_precondition(name(code))),
        RejectCode::PartnerQuotesExhausted => Some(Status::resource_exhausted(
            "PartnerQuotesExhausted: this partner holds as many unused quotes as its limits allow \
             (quotes_outstanding_max); use or let some expire first",
        )),
        RejectCode::PartnerTransfersExhausted => Some(Status::resource_exhausted(
            "PartnerTransfersExhausted: this partner has as many transfers not yet final as its limits allow \
             (transfers_in_flight_max); the idempotency key was not recorded, retry it later",
        )),
        RejectCode::IdempotencyConflict => Some(Status::already_exists(
            "IdempotencyConflict: this idempotency key was used before with a different request body",
        )),
        _ => None,
    }
}

/// The node's wall clock, the one place it is read: it stamps each entry
/// the leader proposes, and the leader's checks of quotes and transfers
/// (and the operator's calls that need the date) read it.
pub fn now() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp::from_unix_ms(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl Gateway {
    /// The calling partner, configured in this region and active;
    /// PERMISSION_DENIED for another kind of caller, NOT_FOUND for a partner
    /// unknown here, FAILED_PRECONDITION (`PartnerSuspended`) for a suspended
    /// one, on every call, reads and streams included. A
    /// partner this node does not know yet is looked up again after a
    /// linearizable read (this node might lag), so NOT_FOUND is only ever the
    /// leader's up-to-date answer; a follower answers UNAVAILABLE with the
    /// leader's address instead. The call is charged to the partner's rate
    /// here, once, whatever it is: an active partner over its rate waits for
    /// its turn (see [`crate::rate`]).
    pub async fn partner<T>(&self, request: &Request<T>) -> Result<PartnerId, Status> {
        self.partner_charged(request, 1).await
    }

    /// As [`Gateway::partner`], for a request charged as `calls` calls (a
    /// batch of that many items).
    pub async fn partner_charged<T>(&self, request: &Request<T>, calls: usize) -> Result<PartnerId, Status> {
        let id = match self.auth.identify(request)? {
            Identity::Partner(id) => id,
            other => return Err(Status::permission_denied(format!("{other} may not call the partner API"))),
        };
        // The partner's status and its limits, from one copy of the state.
        let status = |gateway: &Gateway| {
            let applied = gateway.state_machine.applied();
            applied.state.partner(&id).map(|p| (p.status, applied.state.partner_limits(&id)))
        };
        let (status, limits) = match status(self) {
            Some(found) => found,
            None => {
                self.linearizable().await?;
                status(self).ok_or_else(|| {
                    Status::not_found(format!("PartnerNotFound: partner {id} is not configured in this region"))
                })?
            }
        };
        // Known to the region: the call's metrics may name it.
        if let Some(slot) = request.extensions().get::<crate::metrics::CallerSlot>() {
            slot.set(&id);
        }
        match status {
            BusinessStatus::Active => {
                self.pace(&id, limits, calls).await?;
                Ok(id)
            }
            BusinessStatus::Suspended => Err(Status::failed_precondition(format!(
                "PartnerSuspended: partner {id} is suspended in this region; every call is refused until an \
                 operator reactivates it"
            ))),
        }
    }

    /// Charge a call to the partner's rate: wait for its token, or, if that
    /// would take too long, RESOURCE_EXHAUSTED after the longest wait (see
    /// [`crate::rate`]).
    async fn pace(&self, partner: &PartnerId, limits: PartnerLimits, calls: usize) -> Result<(), Status> {
        match self.rates.admit(partner, limits, calls) {
            Admission::Now => Ok(()),
            Admission::After(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Admission::Refused => {
                // Refused late, not at once: an immediate refusal invites a
                // looping client's next request at once (see crate::rate).
                tokio::time::sleep(crate::rate::PACE_WAIT_MAX).await;
                Err(Status::resource_exhausted(crate::rate::RATE_REFUSAL))
            }
        }
    }

    /// The admission check for calls from the region's nodes.
    pub fn members(&self) -> Members {
        Members::new(self.raft.clone(), self.state_machine.clone())
    }

    /// Require an operator caller.
    pub fn operator<T>(&self, request: &Request<T>) -> Result<String, Status> {
        match self.auth.identify(request)? {
            Identity::Operator(name) => Ok(name),
            other => Err(Status::permission_denied(format!("{other} may not call the admin API"))),
        }
    }

    /// UNAVAILABLE for a request this node cannot serve, naming the leader's
    /// API address in `paymesh-leader-addr` when it is known.
    pub fn not_leader(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        let mut status = Status::unavailable("this node is not the leader; send the request to the leader");
        if let Some(leader) = metrics.current_leader {
            status.metadata_mut().insert(paymesh_client::LEADER_ID, MetadataValue::from(leader));
            let node = metrics.membership_config.membership().get_node(&leader).cloned();
            if let Some(addr) = node.and_then(|n| MetadataValue::try_from(n.api_addr.as_str()).ok()) {
                status.metadata_mut().insert(paymesh_client::LEADER_ADDR, addr);
            }
        }
        status
    }

    fn refusal(&self, refusal: Refusal) -> Status {
        match refusal {
            Refusal::NotLeader => self.not_leader(),
            other => other.status(),
        }
    }

    /// Ensure reads on this node see every write acknowledged before the
    /// request (a linearizable read through the leader); UNAVAILABLE with the
    /// leader hint on a follower.
    pub async fn linearizable(&self) -> Result<(), Status> {
        self.raft.ensure_linearizable().await.map(|_| ()).map_err(|_| self.not_leader())
    }

    /// Refuse a new quote, transfer or refund to a region whose link's
    /// breaker is open (see [`crate::outbox`]) or that is not linked
    /// ([`admission::link_refuses`]). A transfer or refund request the
    /// region has seen before is let through, so a retry still gets its
    /// recorded outcome.
    fn check_link(&self, body: &CommandBody, state: &State) -> Result<(), Status> {
        let refuses = |region: &RegionId| {
            if state.reconciling_with(region) {
                return Some(crate::outbox::region_unreachable(format!(
                    "RegionUnreachable: this region was restored from a backup and is reconciling with region \
                     {region}; new transfers to it are refused until that is done"
                )));
            }
            self.links.check(region).err()
        };
        match admission::link_refuses(body, state, self.state_machine.history(), refuses) {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }

    /// Submit a partner's command to its actor; the outcome once applied.
    pub async fn submit(&self, partner: PartnerId, body: CommandBody) -> Result<Outcome, Status> {
        let mut outcomes = self.submit_all(&partner, vec![body]).await;
        outcomes.pop().unwrap_or_else(|| Err(self.not_leader()))
    }

    /// Submit one request's commands of a partner (a batch's items, in
    /// order) to its actor in one message; each one's outcome once applied,
    /// or the status it is refused with, in the same order. One copy of the
    /// applied state decides whether the destination's link refuses a
    /// command and which actor prices a quote.
    pub async fn submit_all(&self, partner: &PartnerId, bodies: Vec<CommandBody>) -> Vec<Result<Outcome, Status>> {
        let started = std::time::Instant::now();
        let mut waiting = Vec::with_capacity(bodies.len());
        {
            let applied = self.state_machine.applied();
            let mut commands = Vec::with_capacity(bodies.len());
            for body in bodies {
                waiting.push(self.check_link(&body, &applied.state).map(|()| {
                    let (reply, outcome) = oneshot::channel();
                    commands.push((body, reply));
                    outcome
                }));
            }
            if !commands.is_empty() {
                self.registry.submit(partner, commands, &applied.state, now());
            }
        }
        let mut outcomes = Vec::with_capacity(waiting.len());
        for waited in waiting {
            let outcome = match waited {
                Ok(outcome) => {
                    outcome.await.map_err(|_| self.not_leader()).and_then(|o| o.map_err(|r| self.refusal(r)))
                }
                Err(status) => Err(status),
            };
            if let Ok(outcome) = &outcome {
                crate::metrics::events().answered(partner, outcome, started.elapsed());
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Propose an operator's command; the outcome once applied.
    pub async fn operate(&self, body: CommandBody) -> Result<Outcome, Status> {
        let (reply, outcome) = oneshot::channel();
        self.registry.operate(body, reply);
        outcome.await.map_err(|_| self.not_leader())?.map_err(|r| self.refusal(r))
    }

    /// Propose `operator`'s command wrapped with its name, which the audit
    /// trail keeps ([`CommandBody::ByOperator`]); the outcome once applied.
    pub async fn operate_by(&self, operator: &str, body: CommandBody) -> Result<Outcome, Status> {
        let by = paymesh_core::id::OperatorId::new(operator)
            .map_err(|e| Status::permission_denied(format!("operator name: {e}")))?;
        self.operate(CommandBody::ByOperator { operator: by, command: Box::new(body) }).await
    }

    /// Map a refused outcome: a status for codes the contract reports as one,
    /// otherwise the code for the response.
    pub fn rejected(code: RejectCode) -> Result<i32, Status> {
        match reject_status(code) {
            Some(status) => Err(status),
            None => Ok(crate::convert::reject_code(code)),
        }
    }
}
