//! Protocol versions: what lets a region's nodes run different releases
//! while it is upgraded one node at a time.
//!
//! A release of paymesh *supports* protocols [`PROTOCOL_MIN`] to
//! [`PROTOCOL`]: it reads everything those protocols write. A region *runs*
//! one protocol, held in its replicated state ([`crate::State::protocol`]):
//! every replica writes the encodings of that protocol (log entries, Raft
//! messages, snapshot images) and applies its rules, whichever release it
//! runs. A region starts at protocol 1 and moves up only by the replicated
//! command [`CommandBody::RaiseProtocol`](crate::CommandBody::RaiseProtocol),
//! which an operator's `paymesh upgrade finalize` proposes once every member
//! reports a release that supports the new protocol; from that index on, a
//! node of an older release cannot follow the region and stops rather than
//! apply what it does not understand.
//!
//! So an upgrade is: replace each node's binary in turn (the region keeps
//! running on the old protocol, which the new release still writes), then
//! finalize. A release that changes any encoding or any rule of `apply`
//! raises [`PROTOCOL`] and keeps writing and applying the old protocol's
//! way while the region runs it.
//!
//! The feature `next-release` raises [`PROTOCOL`] by one, for the test
//! that upgrades a region from this release to the next: a build of it is
//! "the next release", whose snapshot images at the raised protocol the
//! release before cannot read.

use serde::{Deserialize, Serialize};

/// The newest protocol this release supports.
#[cfg(not(feature = "next-release"))]
pub const PROTOCOL: u32 = 1;

/// The newest protocol this release supports (raised by one in a test
/// build of the next release).
#[cfg(feature = "next-release")]
pub const PROTOCOL: u32 = 2;

/// The oldest protocol this release supports: a region running an older
/// one must be finalized by a release in between first.
pub const PROTOCOL_MIN: u32 = 1;

const _: () = assert!(PROTOCOL_MIN >= 1 && PROTOCOL_MIN <= PROTOCOL, "a release supports a range of protocols");

/// The protocol a region runs. Starts at 1, never moves down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Protocol(u32);

impl Protocol {
    /// The protocol every region starts at.
    pub const FIRST: Protocol = Protocol(1);

    /// The newest one this release supports.
    pub const SUPPORTED: Protocol = Protocol(PROTOCOL);

    /// A protocol by number, if it is one (numbers start at 1).
    pub fn new(number: u32) -> Option<Protocol> {
        (number >= 1).then_some(Protocol(number))
    }

    /// Its number.
    pub fn number(self) -> u32 {
        self.0
    }

    /// Whether this release can run a region at this protocol.
    pub fn is_supported(self) -> bool {
        (PROTOCOL_MIN..=PROTOCOL).contains(&self.0)
    }
}

impl Default for Protocol {
    fn default() -> Protocol {
        Protocol::FIRST
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_start_at_one_and_this_release_supports_its_range() {
        assert_eq!(Protocol::new(0), None);
        assert_eq!(Protocol::default(), Protocol::FIRST);
        assert!(Protocol::FIRST.is_supported());
        assert!(Protocol::SUPPORTED.is_supported());
        assert!(!Protocol::new(PROTOCOL + 1).unwrap().is_supported());
    }
}
