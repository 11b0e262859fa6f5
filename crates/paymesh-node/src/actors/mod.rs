//! The leader's actors (actix): the group-commit [`proposer`], and an actor
//! per [`partner`] and per [`corridor`], held by the [`registry`] of the
//! current leadership term.
//!
//! They run on one actix `System` on its own thread (actix cannot start
//! actors on tokio's worker threads) and are reached from the gRPC handlers
//! through `Addr`s the registry hands out. Actors exist only while this node
//! leads: on gaining leadership the registry starts a proposer for the new
//! term; on losing it, it stops every actor, and the waiting requests are
//! told this node is no longer the leader. Actors rebuild what they need
//! from the state machine, which stays the source of truth.

// Actors and their messages hold addresses, Raft handles and reply channels;
// none is ever printed, so they do not implement Debug.
#![allow(missing_debug_implementations)]

pub mod corridor;
pub mod partner;
pub mod proposer;
pub mod registry;

use std::collections::HashMap;
use std::thread::JoinHandle;

use actix::prelude::*;
use paymesh_core::Outcome;
use tokio::sync::oneshot;

use crate::engine::admission::Ticket;
pub use registry::{Registry, Setting};

/// New entries were applied on this node: the registry passes it on to
/// every partner actor, which pushes new events to its subscribers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EntriesApplied;

/// Why the actors did not produce an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This node is not the leader (or stopped leading meanwhile).
    NotLeader,
    /// A bound was hit: the queue, the partner's rate or in-flight limit.
    Overloaded(&'static str),
    /// The Raft group could not take the write.
    Unavailable(String),
}

impl Refusal {
    /// The gRPC status for this refusal (UNAVAILABLE or RESOURCE_EXHAUSTED).
    pub fn status(&self) -> tonic::Status {
        match self {
            Refusal::NotLeader => tonic::Status::unavailable("this node is not the leader; retry on the leader"),
            Refusal::Overloaded(why) => tonic::Status::resource_exhausted(*why),
            Refusal::Unavailable(why) => {
                tonic::Status::unavailable(format!("the region cannot take writes now: {why}"))
            }
        }
    }
}

/// Where a command's outcome goes, one channel whoever settles it (the
/// proposer with the outcome or a refusal, a corridor's actor with a
/// refusal): the caller waiting for it, and for a partner's admitted
/// request also its actor, which answers the requests joined to it and
/// counts it out of those in flight ([`partner::Completed`]). Dropped
/// unanswered (its actor stopped), it answers that this node no longer
/// leads.
pub struct Reply {
    answer: Option<Answer>,
    admitted: Option<(Addr<partner::PartnerActor>, Ticket)>,
}

/// Where a caller waits for a command's outcome.
pub type Answer = oneshot::Sender<Result<Outcome, Refusal>>;

impl Reply {
    /// A reply to `answer` alone.
    pub fn new(answer: Answer) -> Reply {
        Reply { answer: Some(answer), admitted: None }
    }

    /// A reply to `answer` and to the partner's `actor`, which admitted the
    /// request under `ticket`.
    pub fn admitted(answer: Answer, actor: Addr<partner::PartnerActor>, ticket: Ticket) -> Reply {
        Reply { answer: Some(answer), admitted: Some((actor, ticket)) }
    }

    /// Give the command's `result`.
    pub fn send(self, result: Result<Outcome, Refusal>) {
        Reply::send_all([(self, result)]);
    }

    /// Give each command its result: each partner's actor hears of the
    /// requests it admitted in one message ([`partner::Completed`]), then
    /// the callers get theirs (an entry's outcomes, settled together).
    pub fn send_all(settled: impl IntoIterator<Item = (Reply, Result<Outcome, Refusal>)>) {
        let mut answers = Vec::new();
        // By actor: an entry takes its commands from the partners' lanes in
        // turn, so one partner's are seldom next to each other. An address
        // hashes and compares as its channel's pointer, which never changes.
        #[allow(clippy::mutable_key_type)]
        let mut completed: HashMap<Addr<partner::PartnerActor>, partner::Completed> = HashMap::new();
        for (mut reply, result) in settled {
            if let Some((actor, ticket)) = reply.admitted.take() {
                // Only a request others joined needs its result there.
                let joined = ticket.joined().then(|| result.clone());
                completed
                    .entry(actor)
                    .or_insert_with(|| partner::Completed { done: Vec::new() })
                    .done
                    .push((ticket, joined));
            }
            if let Some(answer) = reply.answer.take() {
                answers.push((answer, result));
            }
        }
        for (actor, message) in completed {
            actor.do_send(message);
        }
        for (answer, result) in answers {
            let _ = answer.send(result);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.answer.is_some() || self.admitted.is_some() {
            let unanswered = Reply { answer: self.answer.take(), admitted: self.admitted.take() };
            unanswered.send(Err(Refusal::NotLeader));
        }
    }
}

/// Start the actor system on its own thread, its actors made with
/// `setting`; returns the registry and the thread (joined on shutdown).
pub fn start(setting: Setting) -> std::io::Result<(Registry, ActorThread)> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("paymesh-actors".into()).spawn(move || {
        let system = System::new();
        system.block_on(async move {
            let _ = sender.send((Arbiter::current(), System::current()));
        });
        if let Err(e) = system.run() {
            tracing::error!(%e, "actor system stopped with an error");
        }
    })?;
    let (arbiter, system) = receiver.recv().map_err(|_| std::io::Error::other("the actor system did not start"))?;
    Ok((Registry::new(setting, arbiter), ActorThread { system, thread: Some(thread) }))
}

/// The actor system's thread; stops the system when dropped.
pub struct ActorThread {
    system: System,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ActorThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorThread").finish_non_exhaustive()
    }
}

impl ActorThread {
    /// The actor system, for tests that stop it under a serving node.
    #[doc(hidden)]
    pub fn system(&self) -> &System {
        &self.system
    }
}

impl Drop for ActorThread {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
