//! The simulation's engine: the event queue ordered by simulated time, the
//! regions' proposal pipeline and elections, and the faults.
//!
//! One event at a time, in (time, insertion) order, on one thread: the same
//! seed gives the same sequence of events and so the same history.

use std::collections::BTreeMap;

use paymesh_core::limits::TICK_WORK_MAX;
use std::time::Duration;

use paymesh_core::id::PartnerId;
use paymesh_core::{Batch, Command, CommandBody, CommandId, Outcome, Timestamp};
use paymesh_node::engine::fair::Lane;
use paymesh_node::engine::proposer::{Entry, Proposer, ProposerBug, Refused};
use paymesh_node::engine::shipper::{Shipper, ShipperBug};

use super::nemesis::{FaultKind, PlannedFault};
use super::net::Network;
use super::region::{Leadership, Node, Region, Waiter};
use super::rng::Rng;
use super::ship::Message;
use super::workload::{Follower, Worker};
use super::{engine_time, sim_ms, Bug, Ms, SimConfig, Stats};
use crate::world::REGIONS;
use paymesh_harness::history::{self, Op};

/// The simulated run starts at 2026-01-01T00:10:00Z (away from a UTC day's
/// edge, where daily caps reset).
pub(crate) const START: Timestamp = Timestamp::from_unix_ms(1_767_226_200_000);

/// From an entry's proposal to its commit: the append, replication to a
/// majority and their fsyncs (the proposer's linger comes before, the
/// engine's own).
const COMMIT_MS: Ms = 2;
/// Without a majority, the leader tries to commit again this often.
const NO_QUORUM_RETRY_MS: Ms = 50;
/// An election takes this long after a leader is lost (election timeout
/// and vote), at least and at most.
const ELECTION_MS: (Ms, Ms) = (300, 1_200);
/// The leader looks whether a `Tick` is due this often (`TICK_INTERVAL`).
const TICK_INTERVAL_MS: Ms = 250;
/// How often the run looks whether everything has settled, after the workload.
const SETTLE_CHECK_MS: Ms = 500;
/// A replica's clock is off by at most this much, either way.
const SKEW_MAX_MS: u64 = 200;

/// Something that happens at a simulated time.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// The leader of `region` in `term` polls its proposer for an entry.
    Poll { region: usize, term: u64 },
    /// The leader of `region` in `term` commits the entry it appended.
    Commit { region: usize, term: u64 },
    /// The leader of `region` ships its outbox.
    Scan { region: usize },
    /// The leader of `region` proposes a `Tick` if one is due.
    TickCheck { region: usize },
    /// `region` elects a leader.
    Election { region: usize },
    /// A message arrives.
    Deliver { from: usize, to: usize, message: Message },
    /// A shipper's call gives up.
    CallTimeout { region: usize, term: u64, dest: usize, call: u64 },
    /// A shipper's probe asks a region whose breaker is open for its health.
    Probe { region: usize, term: u64, dest: usize, call: u64 },
    /// A partner's call makes its next attempt.
    ClientRetry { call: u64 },
    /// An attempt of a partner's call gives up.
    ClientAttemptTimeout { call: u64, attempt: u32 },
    /// A worker takes its next step.
    WorkerWake { worker: usize },
    /// An event follower reads its stream.
    FollowerPoll { follower: usize },
    /// Fault `fault` starts.
    FaultStart { fault: usize },
    /// Fault `fault` heals.
    FaultEnd { fault: usize },
    /// The workload stops.
    StopWorkload,
    /// Has everything settled?
    SettleCheck,
}

/// The partner whose quote or transfer `body` is, if it is one.
pub(crate) fn partner_of(body: &CommandBody) -> Option<PartnerId> {
    match body {
        CommandBody::CreateQuote { partner, .. } => Some(partner.clone()),
        CommandBody::CreateKeyedQuote(request) => Some(request.partner.clone()),
        CommandBody::CreateTransfer(request) | CommandBody::CreateFreshTransfer { request, .. } => {
            Some(request.partner.clone())
        }
        CommandBody::CreatePayment(request) | CommandBody::CreateFreshPayment { request, .. } => {
            Some(request.partner.clone())
        }
        CommandBody::CreateRefund(request) => Some(request.partner.clone()),
        _ => None,
    }
}

/// The proposer lane of a command: its partner's for a partner's quote or
/// transfer, the region's for everything else (as the node's actors choose).
pub(crate) fn lane_of(body: &CommandBody) -> Lane {
    partner_of(body).map_or(Lane::Region, Lane::Partner)
}

/// One seed's simulation.
#[derive(Debug)]
pub(crate) struct Sim<'c> {
    pub(crate) config: &'c SimConfig,
    pub(crate) seed: u64,
    /// Simulated milliseconds since the run started.
    pub(crate) now: Ms,
    pub(crate) rng: Rng,
    queue: BTreeMap<(Ms, u64), Event>,
    next_event: u64,
    pub(crate) regions: Vec<Region>,
    pub(crate) net: Network,
    pub(crate) calls: BTreeMap<u64, super::workload::ClientCall>,
    pub(crate) sdk: Vec<super::workload::SdkClient>,
    pub(crate) next_id: u64,
    pub(crate) workers: Vec<Worker>,
    pub(crate) followers: Vec<Follower>,
    pub(crate) ops: Vec<Op>,
    pub(crate) planned: Vec<PlannedFault>,
    pub(crate) faults: Vec<history::Fault>,
    /// Faults healed whose recovery (every region led again) is not seen yet.
    awaiting_recovery: Vec<usize>,
    pub(crate) stopping: bool,
    /// When the workload finished (its last call answered).
    pub(crate) workload_done_ms: Option<Ms>,
    pub(crate) resolved_ms: Option<Ms>,
    finished: bool,
    pub(crate) stats: Stats,
}

impl<'c> Sim<'c> {
    /// The world of `seed`, configured, with its workload and faults planned.
    pub(crate) fn new(seed: u64, config: &'c SimConfig) -> anyhow::Result<Sim<'c>> {
        let mut rng = Rng::new(seed);
        let mut regions = Vec::new();
        for name in REGIONS {
            let id = paymesh_core::id::RegionId::new(name)?;
            let nodes = (0..3)
                .map(|_| {
                    let skew = i64::try_from(rng.range(0, 2 * SKEW_MAX_MS)).unwrap_or(0)
                        - i64::try_from(SKEW_MAX_MS).unwrap_or(0);
                    Node::new(id.clone(), skew)
                })
                .collect();
            let mut region = Region {
                id,
                nodes,
                log: Vec::new(),
                leader: None,
                deposed: None,
                term: 0,
                election_at: None,
                scan_at: None,
                partners_loss: Vec::new(),
            };
            // The world, configured by operators before the run: one entry.
            let commands = super::setup::commands(name, START)?
                .into_iter()
                .enumerate()
                .map(|(i, body)| Command { id: CommandId { session: 0, sequence: i as u64 + 1 }, body })
                .collect();
            let batch = Batch::new(START, commands)?;
            let outcomes = region.nodes[0].apply(&batch);
            if let Some(refused) = outcomes.iter().find(|o| !matches!(o, Outcome::Done)) {
                anyhow::bail!("configuring {name}: {refused:?}");
            }
            region.log.push(batch);
            region.replicate();
            regions.push(region);
        }
        let net = Network::new(&mut rng);
        let workers = (0..config.workers).map(|id| Worker::new(id, &rng)).collect();
        let followers = Follower::all()?;
        let planned = if config.faults { super::nemesis::plan(&mut rng, config.duration_ms) } else { Vec::new() };
        let mut sim = Sim {
            config,
            seed,
            now: 0,
            rng,
            queue: BTreeMap::new(),
            next_event: 0,
            regions,
            net,
            calls: BTreeMap::new(),
            sdk: super::workload::SdkClient::all(),
            next_id: 1,
            workers,
            followers,
            ops: Vec::new(),
            planned,
            faults: Vec::new(),
            awaiting_recovery: Vec::new(),
            stopping: false,
            workload_done_ms: None,
            resolved_ms: None,
            finished: false,
            stats: Stats::default(),
        };
        for region in 0..sim.regions.len() {
            sim.elect(region);
            sim.at(TICK_INTERVAL_MS, Event::TickCheck { region });
        }
        for worker in 0..sim.workers.len() {
            let start = sim.rng.range(0, 200);
            sim.at(start, Event::WorkerWake { worker });
        }
        for follower in 0..sim.followers.len() {
            let start = sim.rng.range(0, 200);
            sim.at(start, Event::FollowerPoll { follower });
        }
        for (fault, planned) in sim.planned.iter().enumerate() {
            sim.queue.insert((planned.start, sim.next_event), Event::FaultStart { fault });
            sim.next_event += 1;
        }
        sim.at(config.duration_ms, Event::StopWorkload);
        Ok(sim)
    }

    /// Run until everything settled, the bound passed, or the event budget
    /// ran out.
    pub(crate) fn run(&mut self) {
        while let Some(((time, _), event)) = self.queue.pop_first() {
            if self.stats.events >= self.config.events_max {
                self.stats.budget_exhausted = true;
                break;
            }
            self.now = time;
            self.stats.events += 1;
            self.handle(event);
            if self.finished {
                break;
            }
            if !self.awaiting_recovery.is_empty() && self.regions.iter().all(|r| r.leader.is_some()) {
                for fault in std::mem::take(&mut self.awaiting_recovery) {
                    let record = &mut self.faults[fault];
                    record.recovered_after_ms = Some(self.now.saturating_sub(record.end_ms));
                }
            }
        }
    }

    /// Schedule `event` at simulated time `time` (not before now).
    pub(crate) fn at(&mut self, time: Ms, event: Event) {
        self.queue.insert((time.max(self.now), self.next_event), event);
        self.next_event += 1;
    }

    /// A fresh id for a call, batch or message.
    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether the deliberate bug `bug` is switched on (tests only).
    pub(crate) fn bug(&self, bug: Bug) -> bool {
        #[cfg(test)]
        {
            self.config.bug == Some(bug)
        }
        #[cfg(not(test))]
        {
            let _ = bug;
            false
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Poll { region, term } => self.poll(region, term),
            Event::Commit { region, term } => self.commit(region, term),
            Event::Scan { region } => self.scan(region),
            Event::TickCheck { region } => self.tick_check(region),
            Event::Election { region } => {
                self.regions[region].election_at = None;
                self.elect(region);
            }
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::CallTimeout { region, term, dest, call } => self.call_timed_out(region, term, dest, call),
            Event::Probe { region, term, dest, call } => self.probe(region, term, dest, call),
            Event::ClientRetry { call } => self.client_send(call),
            Event::ClientAttemptTimeout { call, attempt } => self.client_attempt_timeout(call, attempt),
            Event::WorkerWake { worker } => self.worker_wake(worker),
            Event::FollowerPoll { follower } => self.follower_poll(follower),
            Event::FaultStart { fault } => self.fault_start(fault),
            Event::FaultEnd { fault } => self.fault_end(fault),
            Event::StopWorkload => {
                self.stopping = true;
                self.at(self.now, Event::SettleCheck);
            }
            Event::SettleCheck => self.settle_check(),
        }
    }

    // ---- the proposal pipeline --------------------------------------------------

    /// Propose `body` to `region`'s leader, in its partner's lane or the
    /// region's; `false` if there is no leader, or its proposer refused the
    /// command (a partner's call is then failed, RESOURCE_EXHAUSTED).
    pub(crate) fn propose(&mut self, region: usize, body: CommandBody, waiter: Waiter) -> bool {
        let now = engine_time(self.now);
        let Some(leader) = self.regions[region].leader.as_mut() else { return false };
        match leader.proposer.submit(now, lane_of(&body), body, waiter) {
            Ok(()) => {
                self.schedule_poll(region);
                true
            }
            Err(Refused { waiter, .. }) => {
                if let Waiter::Client { call, .. } = waiter {
                    self.attempt_refused(call);
                }
                false
            }
        }
    }

    /// Poll the leader's proposer when it says (unless a poll is due sooner).
    fn schedule_poll(&mut self, region: usize) {
        let Some(leader) = self.regions[region].leader.as_mut() else { return };
        let Some(wake) = leader.proposer.next_wake().map(sim_ms) else { return };
        if leader.poll_at.is_none_or(|at| wake < at) {
            leader.poll_at = Some(wake);
            let term = leader.term;
            self.at(wake, Event::Poll { region, term });
        }
    }

    /// The leader's proposer gives the entry due, if any: appended, and
    /// committed `COMMIT_MS` later if a majority serves then.
    fn poll(&mut self, index: usize, term: u64) {
        let now = self.now;
        let Some(leader) = self.regions[index].leader.as_mut().filter(|l| l.term == term) else { return };
        if leader.poll_at.is_some_and(|at| at <= now) {
            leader.poll_at = None;
        }
        if leader.entry.is_none() {
            if let Some(entry) = leader.proposer.poll(engine_time(now)) {
                leader.entry = Some(entry);
                self.at(now + COMMIT_MS, Event::Commit { region: index, term });
            }
        }
        self.schedule_poll(index);
    }

    fn commit(&mut self, index: usize, term: u64) {
        let now = self.now;
        let region = &mut self.regions[index];
        let quorum = region.quorum();
        let Some(leader) = region.leader.as_mut().filter(|l| l.term == term) else { return };
        if leader.entry.is_none() {
            return;
        }
        if !quorum {
            // Appended, not committed: wait for a majority (or the end of this leadership).
            self.at(now + NO_QUORUM_RETRY_MS, Event::Commit { region: index, term });
            return;
        }
        let Some(Entry { commands, waiters }) = leader.entry.take() else { return };
        leader.proposer.settled(engine_time(now));
        let node = leader.node;
        let stamp = region.clock(node, START, now);
        let Ok(batch) = Batch::new(stamp, commands) else { return };
        let outcomes = region.commit(batch);
        let outbox_waiting = region.leader_state().is_some_and(|s| s.outbox().next().is_some());
        self.stats.commands += waiters.len() as u64;
        for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
            self.answered(index, waiter, outcome);
        }
        if outbox_waiting {
            self.request_scan(index, now);
        }
        self.schedule_poll(index);
    }

    /// A command's outcome reached whoever waits for it.
    fn answered(&mut self, region: usize, waiter: Waiter, outcome: Outcome) {
        match waiter {
            Waiter::Client { call, attempt } => {
                for joined in self.admitted_outcome(region, call, attempt) {
                    if let Waiter::Client { call, attempt } = joined {
                        self.client_reply(call, attempt, super::workload::Answer::Outcome(outcome.clone()));
                    }
                }
                self.client_reply(call, attempt, super::workload::Answer::Outcome(outcome));
            }
            Waiter::Shipper { dest, call } => self.shipper_recorded(region, dest, call),
            Waiter::Inbound { batch, item } => self.inbound_answered(region, batch, item, outcome),
            Waiter::Tick => {
                let full = matches!(&outcome, Outcome::Ticked(report)
                    if report.aborted as usize + report.purged as usize >= TICK_WORK_MAX);
                let again = self.regions[region].leader.as_mut().is_some_and(|leader| leader.proposer.ticked(full));
                if again {
                    self.try_tick(region);
                }
            }
            Waiter::Nobody => {}
        }
    }

    fn tick_check(&mut self, index: usize) {
        self.try_tick(index);
        if !self.finished {
            self.at(self.now + TICK_INTERVAL_MS, Event::TickCheck { region: index });
        }
    }

    /// Propose a `Tick` if the leader's proposer says so: housekeeping due
    /// by the leader's clock, and none in flight.
    fn try_tick(&mut self, index: usize) {
        let region = &mut self.regions[index];
        let Some(leader) = region.leader.as_ref() else { return };
        let now = region.clock(leader.node, START, self.now);
        let due = region.nodes[leader.node].state.tick_due(now);
        if region.leader.as_mut().is_some_and(|leader| leader.proposer.tick(due)) {
            self.propose(index, CommandBody::Tick, Waiter::Tick);
        }
    }

    // ---- leadership -------------------------------------------------------------

    /// Elect a leader among the serving replicas if a majority serves;
    /// otherwise try again later.
    fn elect(&mut self, index: usize) {
        let region = &mut self.regions[index];
        if region.leader.is_some() {
            return;
        }
        let candidates: Vec<usize> = (0..region.nodes.len()).filter(|&n| region.nodes[n].serving()).collect();
        if !region.quorum() || candidates.is_empty() {
            self.ensure_election(index);
            return;
        }
        let node = candidates[self.rng.index(candidates.len())];
        let mut proposer = Proposer::new(node as u64 + 1, self.rng.next_u64(), Duration::ZERO);
        if self.bug(Bug::SessionPerNode) {
            proposer.inject(ProposerBug::SessionPerNode);
        }
        let region = &mut self.regions[index];
        // A new leader applies every committed entry before it serves.
        let log = &region.log;
        region.nodes[node].catch_up(log);
        region.term += 1;
        // One shipper per region (the one to itself never polled), each
        // with an empty memory and its own jitter.
        let ids: Vec<_> = self.regions.iter().map(|r| r.id.clone()).collect();
        let mut shippers: Vec<Shipper> = ids.into_iter().map(|id| Shipper::new(id, self.rng.next_u64())).collect();
        let bugs = [
            (Bug::AckFailedDecisions, ShipperBug::AckFailedDecisions),
            (Bug::NewLeaderTrustsMemory, ShipperBug::NewLeaderTrustsMemory),
        ];
        for (bug, injected) in bugs {
            if self.bug(bug) {
                shippers.iter_mut().for_each(|shipper| shipper.inject(injected));
            }
        }
        let region = &mut self.regions[index];
        region.leader = Some(Leadership {
            node,
            term: region.term,
            proposer,
            entry: None,
            poll_at: None,
            admissions: BTreeMap::new(),
            tickets: BTreeMap::new(),
            shippers,
            inbound: BTreeMap::new(),
        });
        self.stats.elections += 1;
        self.request_scan(index, self.now);
    }

    /// Schedule an election unless a leader exists or one is scheduled.
    pub(crate) fn ensure_election(&mut self, index: usize) {
        let region = &self.regions[index];
        if region.leader.is_some() || region.election_at.is_some() {
            return;
        }
        let at = self.now + self.rng.range(ELECTION_MS.0, ELECTION_MS.1);
        self.regions[index].election_at = Some(at);
        self.at(at, Event::Election { region: index });
    }

    /// The leader of `index` dies (killed, its region restarted): its memory
    /// is lost, and the connections to it break. The entry it had appended
    /// may still have reached a majority and commit under the next leader,
    /// or may be lost; nobody is told either way. Commands still waiting in
    /// its proposer are lost.
    fn lose_leadership(&mut self, index: usize) {
        let now = self.now;
        let Some(leader) = self.regions[index].leader.take() else { return };
        let replicated = self.regions[index].nodes.iter().enumerate().any(|(i, n)| i != leader.node && n.serving());
        if let Some(Entry { commands, .. }) = leader.entry.filter(|_| replicated && self.rng.chance(500)) {
            let region = &mut self.regions[index];
            let stamp = region.clock(leader.node, START, now);
            if let Ok(batch) = Batch::new(stamp, commands) {
                region.commit(batch);
                self.stats.posthumous_commits += 1;
            }
        }
        self.stats.leader_losses += 1;
        self.leadership_lost(index, leader.term);
        self.ensure_election(index);
    }

    // ---- faults -----------------------------------------------------------------

    fn fault_start(&mut self, fault: usize) {
        let planned = self.planned[fault].clone();
        let mut target_node = None;
        match planned.kind {
            FaultKind::Kill { region, node } => {
                target_node = Some(node);
                self.kill(region, node);
            }
            FaultKind::KillLeader { region } => {
                if let Some(node) = self.regions[region].leader.as_ref().map(|l| l.node) {
                    target_node = Some(node);
                    self.kill(region, node);
                }
            }
            FaultKind::Isolate { region, node } => {
                target_node = Some(node);
                self.regions[region].nodes[node].isolated += 1;
                self.depose(region, node);
            }
            FaultKind::Pause { region, node } => {
                target_node = Some(node);
                self.regions[region].nodes[node].paused += 1;
                self.depose(region, node);
            }
            FaultKind::Lag { region } => {
                // A follower: the leader always applies what it commits.
                let leader = self.regions[region].leader.as_ref().map(|l| l.node);
                let node = (0..3).find(|n| Some(*n) != leader).unwrap_or(0);
                target_node = Some(node);
                self.regions[region].nodes[node].lagging += 1;
            }
            FaultKind::RestartRegion { region } => {
                for node in &mut self.regions[region].nodes {
                    node.down += 1;
                }
                self.lose_leadership(region);
                for node in 0..3 {
                    self.step_down(region, node);
                }
            }
            FaultKind::Partition { a, b } => self.net.cut(a, b, true),
            FaultKind::CutRegion { region } => {
                for other in (0..REGIONS.len()).filter(|o| *o != region) {
                    self.net.cut(region, other, true);
                }
            }
            FaultKind::Wan { a, b, conditions } => self.net.degrade(a, b, fault, conditions),
            FaultKind::PartnerLink { region, loss_permille } => {
                self.regions[region].partners_loss.push((fault, loss_permille));
            }
        }
        self.planned[fault].node = target_node;
        self.planned[fault].record = Some(self.faults.len());
        self.faults.push(history::Fault {
            nemesis: planned.kind.nemesis().to_owned(),
            target: planned.kind.target(target_node),
            start_ms: self.now,
            end_ms: self.now + planned.hold,
            recovered_after_ms: None,
            elected_after_ms: None,
        });
        self.at(self.now + planned.hold, Event::FaultEnd { fault });
    }

    fn kill(&mut self, region: usize, node: usize) {
        self.regions[region].nodes[node].down += 1;
        if self.regions[region].leader.as_ref().is_some_and(|l| l.node == node) {
            self.lose_leadership(region);
        }
        self.step_down(region, node);
    }

    /// The leader `node` of `region` is cut off from its region or paused:
    /// the others elect a new leader, while it goes on believing it leads
    /// (partners reaching it wait in vain; nothing it queues commits).
    fn depose(&mut self, region: usize, node: usize) {
        let r = &mut self.regions[region];
        if r.leader.as_ref().is_some_and(|l| l.node == node) {
            if let Some(previous) = r.deposed.take() {
                // Deposed twice over: the older one is long gone.
                let term = previous.term;
                self.leadership_lost(region, term);
            }
            let r = &mut self.regions[region];
            r.deposed = r.leader.take();
            self.stats.leader_losses += 1;
            self.ensure_election(region);
        }
    }

    /// A deposed leader on `node` learns of the new term (or dies): it
    /// steps down, refusing what it had queued (none of it was committed).
    fn step_down(&mut self, region: usize, node: usize) {
        let r = &mut self.regions[region];
        if r.deposed.as_ref().is_some_and(|l| l.node == node) {
            if let Some(deposed) = r.deposed.take() {
                self.leadership_lost(region, deposed.term);
            }
        }
    }

    /// A replica isolated or paused is back when nothing holds it any more.
    fn rejoin(&mut self, region: usize, node: usize) {
        if self.regions[region].nodes[node].serving() {
            self.step_down(region, node);
        }
        self.regions[region].replicate();
        self.ensure_election(region);
    }

    fn fault_end(&mut self, fault: usize) {
        let planned = self.planned[fault].clone();
        match planned.kind {
            FaultKind::Kill { region, .. } | FaultKind::KillLeader { region } => {
                if let Some(node) = planned.node {
                    self.revive(region, node);
                }
            }
            FaultKind::Isolate { region, node } => {
                let n = &mut self.regions[region].nodes[node];
                n.isolated = n.isolated.saturating_sub(1);
                self.rejoin(region, node);
            }
            FaultKind::Pause { region, node } => {
                let n = &mut self.regions[region].nodes[node];
                n.paused = n.paused.saturating_sub(1);
                self.rejoin(region, node);
            }
            FaultKind::Lag { region } => {
                if let Some(node) = planned.node {
                    let n = &mut self.regions[region].nodes[node];
                    n.lagging = n.lagging.saturating_sub(1);
                    self.regions[region].replicate();
                }
            }
            FaultKind::RestartRegion { region } => {
                for node in 0..3 {
                    self.revive(region, node);
                }
            }
            FaultKind::Partition { a, b } => self.net.cut(a, b, false),
            FaultKind::CutRegion { region } => {
                for other in (0..REGIONS.len()).filter(|o| *o != region) {
                    self.net.cut(region, other, false);
                }
            }
            FaultKind::Wan { a, b, .. } => self.net.restore(a, b, fault),
            FaultKind::PartnerLink { region, .. } => self.regions[region].partners_loss.retain(|(f, _)| *f != fault),
        }
        if let Some(record) = planned.record {
            self.faults[record].end_ms = self.now;
            self.awaiting_recovery.push(record);
        }
    }

    /// Restart a killed replica once no kill holds it down: it loads its
    /// checkpoint and applies the log after it.
    fn revive(&mut self, region: usize, node: usize) {
        let n = &mut self.regions[region].nodes[node];
        n.down = n.down.saturating_sub(1);
        if n.down == 0 {
            n.restart();
            self.stats.restarts += 1;
        }
        self.regions[region].replicate();
        self.ensure_election(region);
    }

    // ---- the end ----------------------------------------------------------------

    fn settle_check(&mut self) {
        let workload_done = self.workers.iter().all(|w| w.done) && self.followers.iter().all(|f| f.done);
        if workload_done && self.workload_done_ms.is_none() {
            self.workload_done_ms = Some(self.now);
        }
        let healed = self.faults.iter().map(|f| f.end_ms).max().unwrap_or(0);
        let all_healed = self.planned.iter().all(|p| p.record.is_some()) && self.now >= healed;
        if workload_done && all_healed && self.settled() {
            self.resolved_ms = Some(self.now);
            self.finished = true;
            return;
        }
        let bound = u64::try_from(crate::run::RESOLVE_BOUND.as_millis()).unwrap_or(u64::MAX);
        if self.now > self.config.duration_ms.max(healed) + bound {
            self.finished = true;
            return;
        }
        self.at(self.now + SETTLE_CHECK_MS, Event::SettleCheck);
    }

    /// Every transfer final in every region, and every replica up and
    /// caught up.
    fn settled(&self) -> bool {
        self.regions.iter().all(|region| {
            let state = &region.freshest().state;
            region.converged()
                && state.transfers().all(|t| t.view.state.is_final())
                && state.participations().all(|(_, p)| p.state.is_final())
                && state.refunds().all(|r| r.view.state.is_final())
                && state.refund_participations().all(|(_, p)| p.state.is_final())
        })
    }
}
