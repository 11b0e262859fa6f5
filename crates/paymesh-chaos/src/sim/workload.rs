//! The bank workload of `crate::workload`, in simulated time: wallets
//! paying merchants at home and abroad with idempotency keys, sending a
//! request again with the same key while its outcome is unknown (up to four
//! times), one in ten answered requests sent a second time on purpose,
//! reads of transfers and positions, and every partner's event stream
//! followed and resumed from its cursor. Every request is recorded as the
//! real workload records it.
//!
//! A partner's call follows the SDK's rules (`paymesh_client::Region::call`
//! with the workload's policy): at most 3 attempts within 5 s, each limited
//! to 3 s; a follower's leader hint is followed at once, any other
//! UNAVAILABLE or a timeout after a pause of 50 ms doubling; the node that
//! answered last is tried first. A dead node refuses the connection, a
//! paused one answers nothing, a deposed leader queues what never commits;
//! past its attempts the call's outcome is unknown, although the command
//! may have been, or may still be, applied. The partners' links may lose
//! requests and answers. On the leader, new quotes and transfers to a region
//! whose breaker is open are refused (the gateway's check), and every other
//! partner command goes through the node's own admission engine
//! (`paymesh_node::engine::admission`), one per partner: a request already
//! applied is answered from the state, one the state would refuse is
//! refused, an identical one in flight is joined, the rest proposed.
//!
//! Merchants refund: after one in six payments, the worker has the payee of
//! a payment it saw accepted give back all or half of it (through the
//! merchant's own SDK client, with its own idempotency key, sent again
//! while its outcome is unknown), so refunds cross the same faults as
//! payments, and some ask for more than is left and are refused.

use paymesh_core::command::{PayerDetails, PayerField, RefundRequest, TransferRequest};
use paymesh_core::corridor::QuoteAmount;
use paymesh_core::id::{IdempotencyKey, PartnerId, RegionId, TransferId};
use paymesh_core::outcome::Quote;
use paymesh_core::transfer::CoordinatorState;
use paymesh_core::{CommandBody, Currency, Money, Outcome};
use paymesh_harness::world::Merchant;
use paymesh_node::convert;
use paymesh_node::engine::admission::{link_refuses, Step as Admitted};

use super::engine::Event;
use super::region::Waiter;
use super::rng::Rng;
use super::{Ms, Sim};
use crate::world::{self, MERCHANTS, REGIONS, WALLETS};
use paymesh_harness::history::{Amount, Op, Outcome as Ended, Position, Request, TransferState};
use paymesh_harness::locality::payer_fields;
use paymesh_harness::observe::{position_of, state_of};

/// The payments a worker keeps for its merchants to refund, the newest.
const REFUNDABLE_KEPT: usize = 16;

/// Attempts of one CreateTransfer with one key while its outcome is unknown.
const ATTEMPTS: u32 = 4;
/// The SDK's attempts per call (the workload's `RetryPolicy`).
const SDK_ATTEMPTS: u32 = 3;
/// How long the SDK keeps trying one call (`SDK_DEADLINE`).
const SDK_DEADLINE_MS: Ms = 5_000;
/// The SDK's pause after a failed attempt, doubling up to [`SDK_BACKOFF_MAX_MS`].
const SDK_BACKOFF_FIRST_MS: Ms = 50;
/// See [`SDK_BACKOFF_FIRST_MS`].
const SDK_BACKOFF_MAX_MS: Ms = 250;
/// One attempt's time limit (the workload's `CALL_TIMEOUT`).
const ATTEMPT_TIMEOUT_MS: Ms = 3_000;
/// A follower's stream connection ends after this many events.
const EVENTS_PER_CONNECTION: usize = 500;
/// How often a follower's stream delivers what happened.
const FOLLOW_POLL_MS: Ms = 250;
/// One in this many polls ends the stream connection (a reconnect from the
/// cursor, as after a network blip).
const RECONNECT_ONE_IN: u64 = 40;

/// Who made a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A payment worker.
    Worker(usize),
}

/// What a call asks.
#[derive(Clone, Debug)]
pub(crate) enum Ask {
    /// A command for the leader to propose.
    Propose(CommandBody),
    /// GetTransfer.
    GetTransfer { partner: PartnerId, transfer: TransferId },
    /// GetPosition.
    GetPosition { partner: PartnerId },
}

/// How a call ended.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// The command was applied with this outcome.
    Outcome(Outcome),
    /// GetTransfer found the transfer in this state.
    Transfer(Option<TransferState>),
    /// GetPosition answered.
    Position(Option<Position>),
    /// Refused before anything was proposed (a definite no).
    Refused(String),
    /// No answer within the deadline.
    Unknown(String),
}

/// A partner's call in progress: the SDK's attempts within its deadline
/// (`paymesh_client::Region::call` with the workload's retry policy).
#[derive(Clone, Debug)]
pub(crate) struct ClientCall {
    owner: Owner,
    /// The SDK client (one per partner) making it.
    client: usize,
    region: usize,
    ask: Ask,
    started: Ms,
    /// Attempts made so far.
    attempt: u32,
    /// The pause before the next attempt after a failure.
    backoff_ms: Ms,
    /// The round-robin position over the region's nodes.
    next: usize,
    /// The attempt waiting for its answer, and the leadership term it
    /// reached (`None`: the request was lost on the way).
    waiting: Option<(u32, Option<u64>)>,
}

/// How an attempt failed, for the SDK's retry rules.
enum Failed {
    /// UNAVAILABLE naming the leader: follow at once.
    Redirect(usize),
    /// UNAVAILABLE, DEADLINE_EXCEEDED: pause, then the next node.
    Retry(&'static str),
}

/// One payment in progress.
#[derive(Clone, Debug)]
struct Payment {
    wallet: usize,
    merchant: &'static Merchant,
    request: TransferRequest,
    debit: Amount,
    credit: Amount,
    duplicate: bool,
    attempts: u32,
    sends: u32,
    invoked: Ms,
}

/// What a worker is doing.
#[derive(Clone, Debug)]
enum Step {
    /// Between payments.
    Idle,
    /// Waiting for a quote.
    Quoting { wallet: usize, merchant: &'static Merchant, qr: paymesh_core::id::QrPayload },
    /// Waiting for a CreateTransfer attempt.
    Sending(Payment),
    /// Pausing before the next attempt.
    Pausing(Payment),
    /// Waiting for a GetTransfer.
    Reading { wallet: usize, transfer: TransferId, invoked: Ms },
    /// Waiting for a GetPosition.
    Positioning { wallet: usize, invoked: Ms },
    /// Waiting for a CreateRefund attempt by a merchant.
    Refunding(RefundAsk),
    /// Pausing before the refund's next attempt.
    PausingRefund(RefundAsk),
}

/// A refund a worker has a merchant ask for.
#[derive(Clone, Debug)]
struct RefundAsk {
    /// The merchant's SDK client.
    client: usize,
    request: RefundRequest,
    attempts: u32,
}

/// A payment a worker saw accepted, which its merchant may refund.
#[derive(Clone, Debug)]
struct Refundable {
    merchant: &'static Merchant,
    transfer: TransferId,
    destination: Money,
}

/// One payment worker (`crate::workload::worker`).
#[derive(Clone, Debug)]
pub(crate) struct Worker {
    id: u32,
    rng: Rng,
    sequence: u64,
    /// The wallet of its current (or last) payment.
    wallet: usize,
    acknowledged: Vec<(usize, TransferId)>,
    /// Payments it saw accepted, the newest few, for refunds.
    refundable: Vec<Refundable>,
    /// Refunds it asked for.
    refunds: u64,
    step: Step,
    /// Whether it stopped for good.
    pub(crate) done: bool,
}

impl Worker {
    /// Worker `id`, drawing from its own stream of `rng`.
    pub(crate) fn new(id: u32, rng: &Rng) -> Worker {
        Worker {
            id,
            rng: rng.fork(u64::from(id) + 1),
            sequence: 0,
            wallet: 0,
            acknowledged: Vec::new(),
            refundable: Vec::new(),
            refunds: 0,
            step: Step::Idle,
            done: false,
        }
    }
}

/// A partner's SDK client of its region (`paymesh_client::Region`), shared
/// by the workers paying from that partner, as the real workload shares it.
#[derive(Clone, Debug)]
pub(crate) struct SdkClient {
    region: usize,
    /// The node that last answered or was named leader.
    preferred: Option<usize>,
}

impl SdkClient {
    /// One client per wallet, in `WALLETS` order, then one per merchant,
    /// in `MERCHANTS` order (for refunds).
    pub(crate) fn all() -> Vec<SdkClient> {
        let regions = WALLETS.iter().map(|w| w.0).chain(MERCHANTS.iter().map(|m| m.0));
        regions.map(|region| SdkClient { region: region_index(region), preferred: None }).collect()
    }
}

/// A stream connection of a follower.
#[derive(Clone, Debug)]
struct Connection {
    invoked: Ms,
    from_cursor: u64,
    term: u64,
    events: Vec<(u64, String, TransferState)>,
}

/// One partner's event stream follower (`crate::workload::follow`).
#[derive(Clone, Debug)]
pub(crate) struct Follower {
    region: usize,
    partner: PartnerId,
    cursor: u64,
    open: Option<Connection>,
    /// Whether it stopped for good.
    pub(crate) done: bool,
}

impl Follower {
    /// A follower of every wallet, then every merchant.
    pub(crate) fn all() -> anyhow::Result<Vec<Follower>> {
        let partners = WALLETS.iter().map(|w| (w.0, w.1)).chain(MERCHANTS.iter().map(|m| (m.0, m.1)));
        partners
            .map(|(region, partner)| {
                Ok(Follower {
                    region: region_index(region),
                    partner: PartnerId::new(partner)?,
                    cursor: 0,
                    open: None,
                    done: false,
                })
            })
            .collect()
    }
}

/// The index of a region of `world::REGIONS`.
pub(crate) fn region_index(name: &str) -> usize {
    REGIONS.iter().position(|r| *r == name).unwrap_or(0)
}

fn amount(money: &Money) -> Amount {
    Amount { amount: money.amount(), currency: money.currency().code().to_owned() }
}

fn history_state(state: CoordinatorState) -> TransferState {
    match state {
        CoordinatorState::Received => TransferState::Received,
        CoordinatorState::Reserved => TransferState::Reserved,
        CoordinatorState::Prepared => TransferState::Prepared,
        CoordinatorState::Committed => TransferState::Committed,
        CoordinatorState::Aborted => TransferState::Aborted,
    }
}

impl Sim<'_> {
    // ---- calls ------------------------------------------------------------------------

    fn call(&mut self, owner: Owner, client: usize, ask: Ask) {
        let id = self.fresh_id();
        let region = self.sdk[client].region;
        let call = ClientCall {
            owner,
            client,
            region,
            ask,
            started: self.now,
            attempt: 0,
            backoff_ms: SDK_BACKOFF_FIRST_MS,
            next: 0,
            waiting: None,
        };
        self.calls.insert(id, call);
        self.client_send(id);
    }

    /// The SDK's next attempt of a call: to the node it prefers (the last
    /// that answered or was named leader), or the next in turn.
    pub(crate) fn client_send(&mut self, id: u64) {
        let now = self.now;
        let Some(call) = self.calls.get_mut(&id).filter(|c| c.waiting.is_none()) else { return };
        call.attempt += 1;
        let (region, client, attempt) = (call.region, call.client, call.attempt);
        let target = self.sdk[client].preferred.take().unwrap_or_else(|| {
            call.next += 1;
            (call.next - 1) % 3
        });
        let ask = call.ask.clone();
        if self.rng.chance(self.regions[region].partners_loss_permille()) {
            // Lost on the way: the attempt times out.
            call.waiting = Some((attempt, None));
            self.at(now + ATTEMPT_TIMEOUT_MS, Event::ClientAttemptTimeout { call: id, attempt });
            return;
        }
        let node = &self.regions[region].nodes[target];
        let deposed = self.regions[region].deposed.as_ref().filter(|l| l.node == target).map(|l| l.term);
        if node.paused > 0 || deposed.is_some() {
            self.deposed_attempt(id, attempt, target, deposed);
            return;
        }
        let leader = self.regions[region].leader.as_ref();
        let Some(leader) = leader.filter(|l| l.node == target) else {
            let failed = match leader {
                // A follower names the leader it knows.
                Some(l) if node.serving() => Failed::Redirect(l.node),
                _ if node.down > 0 => Failed::Retry("UNAVAILABLE: connection refused"),
                _ => Failed::Retry("UNAVAILABLE: no leader"),
            };
            self.attempt_failed(id, failed);
            return;
        };
        let term = leader.term;
        let state = &node.state;
        let answer = match &ask {
            Ask::Propose(body) => {
                let open = |region: &RegionId| leader.shippers[region_index(region.as_str())].open_since();
                if link_refuses(body, state, &node.history, open).is_some() {
                    self.stats.breaker_refusals += 1;
                    Some(Answer::Refused("UNAVAILABLE: RegionUnreachable (breaker open)".to_owned()))
                } else {
                    None
                }
            }
            Ask::GetTransfer { partner, transfer } => {
                Some(match state.transfer_for(partner, transfer, &node.history) {
                    Some(found) => {
                        Answer::Transfer(convert::transfer_out(&found, partner).and_then(|t| state_of(t.state)))
                    }
                    None => Answer::Refused("NOT_FOUND: TransferNotFound".to_owned()),
                })
            }
            Ask::GetPosition { partner } => {
                Some(Answer::Position(state.position(partner).and_then(|p| position_of(&convert::position_out(&p)))))
            }
        };
        self.sdk[client].preferred = Some(target);
        match (answer, ask) {
            (Some(answer), _) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.waiting = Some((attempt, Some(term)));
                }
                self.client_reply(id, attempt, answer);
            }
            (None, Ask::Propose(body)) => self.admit_call(region, id, attempt, term, body),
            (None, _) => {}
        }
    }

    /// A partner's command reaches the leader: the node's admission engine
    /// (one per partner) answers it from the applied state, joins it to an
    /// identical request in flight, or has it proposed; a proposal's outcome
    /// answers the requests joined to it too ([`Sim::admitted_outcome`]).
    fn admit_call(&mut self, region: usize, id: u64, attempt: u32, term: u64, body: CommandBody) {
        let now = self.now;
        let clock = match self.regions[region].leader.as_ref() {
            Some(leader) => self.regions[region].clock(leader.node, super::engine::START, now),
            None => return,
        };
        let super::region::Region { leader, nodes, .. } = &mut self.regions[region];
        let Some(leader) = leader.as_mut() else { return };
        let node = &nodes[leader.node];
        let Some(partner) = super::engine::partner_of(&body) else { return };
        let admission = leader.admissions.entry(partner.clone()).or_default();
        if let Err(why) = admission.admit() {
            self.attempt_failed(id, Failed::Retry(why));
            return;
        }
        let waiter = Waiter::Client { call: id, attempt };
        let step = match body {
            CommandBody::CreateTransfer(request) => {
                admission.transfer(request, waiter, (&node.state, node.applied as u64), &node.history, clock)
            }
            CommandBody::CreateRefund(request) => admission.refund(request, waiter, &node.state, &node.history, clock),
            quote => admission.quote(quote, waiter, &node.state, clock),
        };
        if let Some(call) = self.calls.get_mut(&id) {
            call.waiting = Some((attempt, Some(term)));
        }
        match step {
            Admitted::Answer(_, outcome) => {
                self.stats.admission.0 += 1;
                self.client_reply(id, attempt, Answer::Outcome(outcome));
            }
            Admitted::Joined => {
                self.stats.admission.1 += 1;
                self.at(now + ATTEMPT_TIMEOUT_MS, Event::ClientAttemptTimeout { call: id, attempt });
            }
            Admitted::Propose { body, waiter, ticket } => {
                leader.tickets.insert((id, attempt), (partner, ticket));
                if self.propose(region, body, waiter) {
                    self.at(now + ATTEMPT_TIMEOUT_MS, Event::ClientAttemptTimeout { call: id, attempt });
                } else {
                    self.admitted_outcome(region, id, attempt);
                }
            }
        }
    }

    /// A partner's admitted command completed: the requests joined to it,
    /// to answer with its outcome too.
    pub(crate) fn admitted_outcome(&mut self, region: usize, id: u64, attempt: u32) -> Vec<Waiter> {
        let Some(leader) = self.regions[region].leader.as_mut() else { return Vec::new() };
        let Some((partner, ticket)) = leader.tickets.remove(&(id, attempt)) else { return Vec::new() };
        leader.admissions.get_mut(&partner).map(|admission| admission.completed(ticket)).unwrap_or_default()
    }

    /// An attempt reached a paused node (which answers nothing) or a leader
    /// deposed without knowing it: that one runs its partners' admission
    /// engines on its (stale) state as any leader does, answering a retried
    /// transfer from its record or refusing what its state refuses, but what
    /// it proposes never commits (its proposer is never polled again) and
    /// its reads cannot be confirmed, so the attempt otherwise waits until
    /// it times out or the node steps down.
    fn deposed_attempt(&mut self, id: u64, attempt: u32, target: usize, term: Option<u64>) {
        let now = self.now;
        let Some(call) = self.calls.get_mut(&id) else { return };
        let region = call.region;
        call.waiting = Some((attempt, term));
        let ask = call.ask.clone();
        let clock = self.regions[region].clock(target, super::engine::START, now);
        let r = &mut self.regions[region];
        let paused = r.nodes[target].paused > 0;
        let mut answered = None;
        if let (Some(leader), false, Ask::Propose(body)) = (r.deposed.as_mut(), paused, ask) {
            let node = &r.nodes[target];
            let admission = super::engine::partner_of(&body).map(|p| leader.admissions.entry(p).or_default());
            if let Some(admission) = admission.filter(|a| a.admit().is_ok()) {
                let waiter = Waiter::Client { call: id, attempt };
                let applied = (&node.state, node.applied as u64);
                let step = match body {
                    CommandBody::CreateTransfer(request) => {
                        admission.transfer(request, waiter, applied, &node.history, clock)
                    }
                    CommandBody::CreateRefund(request) => {
                        admission.refund(request, waiter, &node.state, &node.history, clock)
                    }
                    quote => admission.quote(quote, waiter, &node.state, clock),
                };
                match step {
                    Admitted::Answer(_, outcome) => answered = Some(outcome),
                    Admitted::Joined => {}
                    Admitted::Propose { body, waiter, .. } => {
                        let lane = super::engine::lane_of(&body);
                        let _ = leader.proposer.submit(super::engine_time(now), lane, body, waiter);
                    }
                }
            }
        }
        match answered {
            Some(outcome) => self.client_reply(id, attempt, Answer::Outcome(outcome)),
            None => self.at(now + ATTEMPT_TIMEOUT_MS, Event::ClientAttemptTimeout { call: id, attempt }),
        }
    }

    /// An attempt was refused at once by the leader's proposer (its queue
    /// full): RESOURCE_EXHAUSTED, retried as the SDK retries.
    pub(crate) fn attempt_refused(&mut self, id: u64) {
        self.attempt_failed(id, Failed::Retry("RESOURCE_EXHAUSTED: the proposal queue is full"));
    }

    /// An attempt failed: follow a leader hint at once, or pause and try
    /// the next node, within the SDK's attempts and deadline; past them the
    /// call gives up and its outcome is unknown.
    fn attempt_failed(&mut self, id: u64, failed: Failed) {
        let now = self.now;
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.waiting = None;
        let reason = match failed {
            Failed::Redirect(leader) if call.attempt < SDK_ATTEMPTS => {
                // A leader hint is a redirect, not a failure: no pause.
                self.sdk[call.client].preferred = Some(leader);
                self.at(now, Event::ClientRetry { call: id });
                return;
            }
            Failed::Redirect(_) => "UNAVAILABLE: not the leader",
            Failed::Retry(reason) => reason,
        };
        let backoff = call.backoff_ms;
        if call.attempt >= SDK_ATTEMPTS || now - call.started + backoff > SDK_DEADLINE_MS {
            let gave_up = format!("gave up after {} attempts: {reason}", call.attempt);
            self.client_answered(id, Answer::Unknown(gave_up));
            return;
        }
        call.backoff_ms = (backoff * 2).min(SDK_BACKOFF_MAX_MS);
        self.at(now + backoff, Event::ClientRetry { call: id });
    }

    /// An answer travels back to the partner, unless it is lost on the
    /// partners' link (then the attempt times out) or the SDK gave up on
    /// that attempt.
    pub(crate) fn client_reply(&mut self, id: u64, attempt: u32, answer: Answer) {
        let Some(call) = self.calls.get(&id) else { return };
        let loss = self.regions[call.region].partners_loss_permille();
        if call.waiting.map(|(a, _)| a) != Some(attempt) {
            return;
        }
        if self.rng.chance(loss) {
            self.at(self.now + ATTEMPT_TIMEOUT_MS, Event::ClientAttemptTimeout { call: id, attempt });
            return;
        }
        self.client_answered(id, answer);
    }

    /// An attempt got no answer in time (DEADLINE_EXCEEDED).
    pub(crate) fn client_attempt_timeout(&mut self, id: u64, attempt: u32) {
        let waiting = self.calls.get(&id).and_then(|c| c.waiting).map(|(a, _)| a);
        if waiting == Some(attempt) {
            self.attempt_failed(id, Failed::Retry("DEADLINE_EXCEEDED"));
        }
    }

    /// `region`'s leader of `term` is gone: the connections to it break
    /// (UNAVAILABLE) and the SDK retries the calls waiting on it.
    pub(crate) fn leadership_lost(&mut self, region: usize, term: u64) {
        let broken: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.region == region && c.waiting.is_some_and(|(_, t)| t == Some(term)))
            .map(|(id, _)| *id)
            .collect();
        for id in broken {
            self.attempt_failed(id, Failed::Retry("UNAVAILABLE: connection reset"));
        }
    }

    /// The call ended; its owner goes on.
    pub(crate) fn client_answered(&mut self, id: u64, answer: Answer) {
        let Some(call) = self.calls.remove(&id) else { return };
        match call.owner {
            Owner::Worker(worker) => self.worker_answered(worker, answer),
        }
    }

    fn record(&mut self, client: u32, invoked_ms: u64, request: Request, outcome: Ended) {
        self.ops.push(Op { client, invoked_ms, completed_ms: self.now, request, outcome });
    }

    // ---- workers ------------------------------------------------------------------------

    /// A worker's next step: a new payment, or the next attempt of one.
    pub(crate) fn worker_wake(&mut self, index: usize) {
        let step = std::mem::replace(&mut self.workers[index].step, Step::Idle);
        match step {
            Step::Pausing(payment) => self.attempt(index, payment),
            Step::PausingRefund(ask) => self.ask_refund(index, ask),
            Step::Idle if self.stopping => self.workers[index].done = true,
            Step::Idle => self.start_payment(index),
            other => self.workers[index].step = other,
        }
    }

    fn start_payment(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        worker.sequence += 1;
        let wallet = worker.rng.index(WALLETS.len());
        worker.wallet = wallet;
        let payees = world::payees_of(&WALLETS[wallet]);
        let abroad: Vec<&'static Merchant> =
            MERCHANTS.iter().filter(|m| payees.contains(m) && m.0 != WALLETS[wallet].0).collect();
        let home: Vec<&'static Merchant> =
            MERCHANTS.iter().filter(|m| payees.contains(m) && m.0 == WALLETS[wallet].0).collect();
        let merchant = if worker.rng.below(10) < 7 || home.is_empty() {
            abroad[worker.rng.index(abroad.len())]
        } else {
            home[worker.rng.index(home.len())]
        };
        let number = worker.rng.below(1000);
        // 5.00 to 500.00 in the wallet's currency (more for the weak ones).
        let currency = WALLETS[wallet].2;
        let scale = if currency == "USD" { 1 } else { 10 };
        let units = worker.rng.range(500, 49_999) * scale;
        let quote = (|| -> anyhow::Result<CommandBody> {
            let partner = PartnerId::new(WALLETS[wallet].1)?;
            let amount = Money::from_units(units, Currency::parse(currency)?)?;
            let payee = super::setup::qr_of(merchant, number)?;
            Ok(CommandBody::CreateQuote { partner, payee, amount: QuoteAmount::Source(amount) })
        })();
        let Ok(body) = quote else {
            self.pause(index, Step::Idle, 50);
            return;
        };
        let CommandBody::CreateQuote { payee, .. } = &body else { return };
        self.workers[index].step = Step::Quoting { wallet, merchant, qr: payee.clone() };
        self.call(Owner::Worker(index), wallet, Ask::Propose(body));
    }

    fn pause(&mut self, index: usize, step: Step, ms: Ms) {
        self.workers[index].step = step;
        self.at(self.now + ms, Event::WorkerWake { worker: index });
    }

    fn worker_answered(&mut self, index: usize, answer: Answer) {
        let step = std::mem::replace(&mut self.workers[index].step, Step::Idle);
        match step {
            Step::Quoting { wallet, merchant, qr } => match answer {
                Answer::Outcome(Outcome::Quote(quote)) => self.quoted(index, wallet, merchant, qr, &quote),
                _ => self.pause(index, Step::Idle, 50),
            },
            Step::Sending(payment) => self.sent(index, payment, answer),
            Step::Refunding(ask) => self.refund_answered(index, ask, answer),
            Step::Reading { wallet, transfer, invoked } => {
                let (state, outcome) = match answer {
                    Answer::Transfer(state) => (state, Ended::Ok),
                    Answer::Unknown(reason) => (None, Ended::Unknown { reason }),
                    other => (None, Ended::Failed { reason: format!("{other:?}") }),
                };
                let (region, partner) = (WALLETS[wallet].0.to_owned(), WALLETS[wallet].1.to_owned());
                let request = Request::GetTransfer { region, partner, transfer_id: transfer.to_string(), state };
                let client = self.workers[index].id;
                self.record(client, invoked, request, outcome);
                self.after_reads(index, true);
            }
            Step::Positioning { wallet, invoked } => {
                let (position, outcome) = match answer {
                    Answer::Position(position) => (position, Ended::Ok),
                    Answer::Unknown(reason) => (None, Ended::Unknown { reason }),
                    other => (None, Ended::Failed { reason: format!("{other:?}") }),
                };
                let (region, partner) = (WALLETS[wallet].0.to_owned(), WALLETS[wallet].1.to_owned());
                let client = self.workers[index].id;
                self.record(client, invoked, Request::GetPosition { region, partner, position }, outcome);
                self.after_reads(index, false);
            }
            other => self.workers[index].step = other,
        }
    }

    fn quoted(
        &mut self,
        index: usize,
        wallet: usize,
        merchant: &'static Merchant,
        qr: paymesh_core::id::QrPayload,
        quote: &Quote,
    ) {
        let worker = &mut self.workers[index];
        let (id, sequence) = (worker.id, worker.sequence);
        let duplicate = worker.rng.below(10) == 0;
        let [name, account, reference] = payer_fields(WALLETS[wallet].0, id, sequence);
        let request = (|| -> anyhow::Result<TransferRequest> {
            Ok(TransferRequest {
                partner: PartnerId::new(WALLETS[wallet].1)?,
                idempotency_key: IdempotencyKey::new(format!("sim-{}-{id}-{sequence}", self.seed))?,
                quote: quote.id.clone(),
                payee: qr,
                payer: PayerDetails {
                    name: PayerField::new(name)?,
                    account: PayerField::new(account)?,
                    reference: PayerField::new(reference)?,
                },
            })
        })();
        let Ok(request) = request else {
            self.pause(index, Step::Idle, 50);
            return;
        };
        let payment = Payment {
            wallet,
            merchant,
            request,
            debit: amount(&quote.priced.total_debit),
            credit: amount(&quote.priced.destination),
            duplicate,
            attempts: 0,
            sends: 0,
            invoked: self.now,
        };
        self.attempt(index, payment);
    }

    /// The next attempt of a payment, if the loop of the real workload
    /// makes one; otherwise the payment is over.
    fn attempt(&mut self, index: usize, mut payment: Payment) {
        if payment.attempts >= ATTEMPTS || (self.stopping && payment.attempts > 0) {
            self.payment_over(index);
            return;
        }
        payment.attempts += 1;
        payment.invoked = self.now;
        let (wallet, body) = (payment.wallet, CommandBody::CreateTransfer(payment.request.clone()));
        self.workers[index].step = Step::Sending(payment);
        self.call(Owner::Worker(index), wallet, Ask::Propose(body));
    }

    fn sent(&mut self, index: usize, mut payment: Payment, answer: Answer) {
        let (outcome, view) = match answer {
            Answer::Outcome(Outcome::Transfer(view)) => (Ended::Ok, Some(view)),
            Answer::Outcome(Outcome::Rejected(code)) => (Ended::Failed { reason: format!("reject {code:?}") }, None),
            Answer::Outcome(other) => (Ended::Failed { reason: format!("unexpected {other:?}") }, None),
            Answer::Refused(reason) => (Ended::Failed { reason }, None),
            Answer::Unknown(reason) => (Ended::Unknown { reason }, None),
            Answer::Transfer(_) | Answer::Position(_) => (Ended::Failed { reason: "a read's answer".into() }, None),
        };
        let unknown = matches!(outcome, Ended::Unknown { .. });
        let wallet = &WALLETS[payment.wallet];
        let request = Request::CreateTransfer {
            region: wallet.0.to_owned(),
            partner: wallet.1.to_owned(),
            idempotency_key: payment.request.idempotency_key.to_string(),
            payee_partner: payment.merchant.1.to_owned(),
            payee_region: payment.merchant.0.to_owned(),
            debit: payment.debit.clone(),
            credit: payment.credit.clone(),
            transfer_id: view.as_ref().map(|v| v.id.to_string()),
            state: view.as_ref().map(|v| history_state(v.state)),
        };
        if let Some(view) = &view {
            let worker = &mut self.workers[index];
            worker.acknowledged.push((payment.wallet, view.id.clone()));
            if view.state != CoordinatorState::Aborted {
                if worker.refundable.len() >= REFUNDABLE_KEPT {
                    worker.refundable.remove(0);
                }
                let destination = view.priced.destination;
                worker.refundable.push(Refundable {
                    merchant: payment.merchant,
                    transfer: view.id.clone(),
                    destination,
                });
            }
        }
        let client = self.workers[index].id;
        self.record(client, payment.invoked, request, outcome);
        payment.sends += 1;
        if unknown {
            let pause = 200 * u64::from(payment.attempts);
            self.pause(index, Step::Pausing(payment), pause);
        } else if payment.duplicate && payment.sends == 1 {
            self.attempt(index, payment);
        } else {
            self.payment_over(index);
        }
    }

    fn payment_over(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        if !self.stopping && worker.rng.below(6) == 0 && !worker.refundable.is_empty() {
            let refundable = worker.refundable[worker.rng.index(worker.refundable.len())].clone();
            let Some(client) = MERCHANTS.iter().position(|m| std::ptr::eq(m, refundable.merchant)) else { return };
            worker.refunds += 1;
            let half = refundable.destination.units() / 2;
            let units = if worker.rng.below(2) == 0 || half == 0 { refundable.destination.units() } else { half };
            let request = (|| -> anyhow::Result<RefundRequest> {
                Ok(RefundRequest {
                    partner: PartnerId::new(refundable.merchant.1)?,
                    idempotency_key: IdempotencyKey::new(format!(
                        "sim-refund-{}-{}-{}",
                        self.seed, worker.id, worker.refunds
                    ))?,
                    transfer: refundable.transfer.clone(),
                    amount: Money::from_units(units, refundable.destination.currency())?,
                })
            })();
            if let Ok(request) = request {
                self.stats.refunds.0 += 1;
                self.ask_refund(index, RefundAsk { client: WALLETS.len() + client, request, attempts: 0 });
                return;
            }
        }
        let worker = &mut self.workers[index];
        if worker.rng.below(4) == 0 && !worker.acknowledged.is_empty() {
            let (wallet, transfer) = worker.acknowledged[worker.rng.index(worker.acknowledged.len())].clone();
            let Ok(partner) = PartnerId::new(WALLETS[wallet].1) else { return };
            worker.step = Step::Reading { wallet, transfer: transfer.clone(), invoked: self.now };
            self.call(Owner::Worker(index), wallet, Ask::GetTransfer { partner, transfer });
            return;
        }
        self.after_reads(index, true);
    }

    /// The next attempt of a refund, while its outcome is unknown; then the
    /// worker goes on to its reads.
    fn ask_refund(&mut self, index: usize, mut ask: RefundAsk) {
        if ask.attempts >= ATTEMPTS || (self.stopping && ask.attempts > 0) {
            self.after_reads(index, true);
            return;
        }
        ask.attempts += 1;
        let (client, body) = (ask.client, CommandBody::CreateRefund(ask.request.clone()));
        self.workers[index].step = Step::Refunding(ask);
        self.call(Owner::Worker(index), client, Ask::Propose(body));
    }

    fn refund_answered(&mut self, index: usize, ask: RefundAsk, answer: Answer) {
        match answer {
            Answer::Unknown(_) => {
                let pause = 200 * u64::from(ask.attempts);
                self.pause(index, Step::PausingRefund(ask), pause);
            }
            Answer::Outcome(Outcome::Rejected(_)) | Answer::Refused(_) => {
                self.stats.refunds.1 += 1;
                self.after_reads(index, true);
            }
            _ => self.after_reads(index, true),
        }
    }

    /// After the optional GetTransfer (`transfer_read_done`), the optional
    /// GetPosition, then the next payment after the worker's think time.
    fn after_reads(&mut self, index: usize, transfer_read_done: bool) {
        let worker = &mut self.workers[index];
        if transfer_read_done && worker.rng.below(8) == 0 {
            let wallet = worker.wallet;
            if let Ok(partner) = PartnerId::new(WALLETS[wallet].1) {
                worker.step = Step::Positioning { wallet, invoked: self.now };
                self.call(Owner::Worker(index), wallet, Ask::GetPosition { partner });
                return;
            }
        }
        let (low, high) = self.config.think_ms;
        let think = self.workers[index].rng.range(low, high);
        self.pause(index, Step::Idle, think);
    }

    // ---- event followers ------------------------------------------------------------------

    /// A follower's stream: open it, deliver what happened since its
    /// cursor, or end the connection (and record it).
    pub(crate) fn follower_poll(&mut self, index: usize) {
        let region = self.followers[index].region;
        // A cut partners' link breaks the stream like a lost leadership.
        let leader = self.regions[region].leader.as_ref().map(|l| (l.term, l.node));
        let leader = leader.filter(|_| self.regions[region].partners_loss.is_empty());
        let follower = &mut self.followers[index];
        let Some(mut connection) = follower.open.take() else {
            if self.stopping {
                follower.done = true;
                return;
            }
            if let Some((term, _)) = leader {
                let from_cursor = follower.cursor;
                follower.open = Some(Connection { invoked: self.now, from_cursor, term, events: Vec::new() });
            }
            self.at(self.now + FOLLOW_POLL_MS, Event::FollowerPoll { follower: index });
            return;
        };
        let ended = match leader {
            Some((term, node)) if term == connection.term => {
                let node = &self.regions[region].nodes[node];
                let room = EVENTS_PER_CONNECTION.saturating_sub(connection.events.len());
                if let Ok(events) = node.state.events_after(&follower.partner, follower.cursor, room, &node.history) {
                    for event in events {
                        let wire = convert::event_out(&event);
                        follower.cursor = event.cursor;
                        if let Some(state) = state_of(wire.state) {
                            connection.events.push((event.cursor, wire.transfer_id, state));
                        }
                    }
                }
                let full = connection.events.len() >= EVENTS_PER_CONNECTION;
                (self.stopping || full || self.rng.below(RECONNECT_ONE_IN) == 0).then_some(Ended::Ok)
            }
            // The stream ends with UNAVAILABLE when leadership moves.
            _ => Some(Ended::Unknown { reason: "UNAVAILABLE: the stream ended".to_owned() }),
        };
        match ended {
            None => self.followers[index].open = Some(connection),
            Some(outcome) => {
                let request = Request::Events {
                    region: REGIONS[region].to_owned(),
                    partner: self.followers[index].partner.to_string(),
                    from_cursor: connection.from_cursor,
                    events: connection.events,
                };
                let client = 1_000 + u32::try_from(index).unwrap_or(0);
                self.record(client, connection.invoked, request, outcome);
            }
        }
        self.at(self.now + FOLLOW_POLL_MS, Event::FollowerPoll { follower: index });
    }
}
