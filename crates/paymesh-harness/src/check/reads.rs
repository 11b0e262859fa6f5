//! Reads agree with the truth: what GetTransfer, GetPosition and
//! StreamEvents told a partner during the run is consistent with what the
//! regions hold after it (a final state never changes) and with itself.

use std::fmt;

use rust_decimal::Decimal;

use super::{Checker, Holdings, Violation};
use crate::history::{History, Outcome, Request, TransferState};

/// A transfer read (by GetTransfer answered `Ok`, or as an event) is held by
/// the region read, concerns the partner reading, and if it was read final it
/// is held in that state (a refund's event, likewise its refund); an event stream's cursors rise strictly from the
/// cursor it resumed after; a position read is within its net debit cap.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reads;

impl Checker for Reads {
    fn name(&self) -> &'static str {
        "reads"
    }

    fn describe(&self) -> &'static str {
        "reads agree with the truth: a transfer read final is held in that state, event cursors rise strictly, \
         positions read are within their cap"
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let Some(observation) = &history.observation else { return Vec::new() };
        let holdings = Holdings::new(observation);
        let mut found = Vec::new();
        for op in &history.ops {
            match &op.request {
                Request::GetTransfer { region, partner, transfer_id, state: Some(state) }
                    if op.outcome == Outcome::Ok =>
                {
                    let read = Read { region, partner, via: Via::GetTransfer { completed_ms: op.completed_ms } };
                    read.check(&holdings, transfer_id, *state, &mut found);
                }
                Request::Events { region, partner, from_cursor, events } => {
                    let mut last = *from_cursor;
                    for (cursor, id, state) in events {
                        let read =
                            Read { region, partner, via: Via::Event { cursor: *cursor, from_cursor: *from_cursor } };
                        if *cursor <= last {
                            found.push(format!("{read} came after cursor {last}: cursors must rise strictly"));
                        }
                        last = last.max(*cursor);
                        read.check(&holdings, id, *state, &mut found);
                    }
                }
                Request::GetPosition { region, partner, position: Some(p) } if op.outcome == Outcome::Ok => {
                    if p.posted_balance < -p.net_debit_cap {
                        found.push(format!(
                            "{partner} read its {} position in {region} at {} ms with posted balance {} below minus \
                             its net debit cap {}",
                            p.currency, op.completed_ms, p.posted_balance, p.net_debit_cap
                        ));
                    }
                    if p.pending_debits < Decimal::ZERO || p.pending_credits < Decimal::ZERO {
                        found.push(format!(
                            "{partner} read its {} position in {region} at {} ms with negative pending amounts \
                             (debits {}, credits {})",
                            p.currency, op.completed_ms, p.pending_debits, p.pending_credits
                        ));
                    }
                }
                _ => {}
            }
        }
        found.into_iter().map(|detail| Violation::new(self.name(), detail)).collect()
    }
}

/// How a transfer was read.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A GetTransfer answered `Ok`.
    GetTransfer { completed_ms: u64 },
    /// An event of a stream.
    Event { cursor: u64, from_cursor: u64 },
}

/// One read of a transfer's state, by a partner from a region.
#[derive(Clone, Copy, Debug)]
struct Read<'a> {
    region: &'a str,
    partner: &'a str,
    via: Via,
}

impl fmt::Display for Read<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Via::GetTransfer { completed_ms } => write!(f, "{} (GetTransfer at {completed_ms} ms)", self.partner),
            Via::Event { cursor, from_cursor } => {
                write!(f, "{} (event {cursor} of a stream from {from_cursor})", self.partner)
            }
        }
    }
}

impl Read<'_> {
    /// Checks that transfer `id`, read in `state`, is held by the region
    /// read, concerns the partner reading, and if final is held so; what is
    /// wrong goes to `found`.
    fn check(&self, holdings: &Holdings<'_>, id: &str, state: TransferState, found: &mut Vec<String>) {
        let region = self.region;
        let Some(held) = holdings.get(region, id) else {
            // A refund's own events name the refund.
            if let Some(refund) = holdings.refund(region, id, self.partner) {
                if state.is_final() && refund.state != state {
                    found.push(format!(
                        "{self} read refund {id} {state:?} from {region}, which holds it {:?}",
                        refund.state
                    ));
                }
                return;
            }
            found.push(format!("{self} read transfer {id} {state:?} from {region}, which holds no such transfer"));
            return;
        };
        if held.payer_partner != self.partner && held.payee_partner != self.partner {
            // The payee side of a cross-border transfer does not know its payer.
            let payer = if held.payer_partner.is_empty() { "a payer abroad" } else { held.payer_partner.as_str() };
            found.push(format!("{self} read transfer {id} of {payer} to {} from {region}", held.payee_partner));
        }
        if state.is_final() && held.state != state {
            found.push(format!("{self} read transfer {id} {state:?} from {region}, which holds it {:?}", held.state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{self, dec, CN, T_ABORTED, T_COMMITTED, US};

    #[test]
    fn truthful_reads_pass() {
        assert_eq!(Reads.check(&fixtures::good_history()), Vec::new());
    }

    #[test]
    fn a_committed_read_of_a_transfer_held_aborted_is_flagged() {
        let mut history = fixtures::good_history();
        fixtures::transfer_mut(&mut history, US, T_COMMITTED).state = TransferState::Aborted;
        let found = Reads.check(&history);
        // The GetTransfer and the payer's Committed event.
        assert_eq!(found.len(), 2, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("GetTransfer"), "{}", found[0].detail);
        assert!(found[1].detail.contains("event 4"), "{}", found[1].detail);
    }

    #[test]
    fn events_out_of_order_or_of_others_are_flagged() {
        let mut history = fixtures::good_history();
        let Request::Events { events, .. } = &mut history.ops[8].request else { panic!("the fixture's stream") };
        events.swap(1, 2);
        let found = Reads.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("event 2 of a stream from 0) came after cursor 3"), "{}", found[0].detail);

        let mut history = fixtures::good_history();
        let Request::Events { from_cursor, .. } = &mut history.ops[9].request else { panic!("the fixture's stream") };
        *from_cursor = 1;
        fixtures::transfer_mut(&mut history, CN, T_ABORTED).payee_partner = "alipay-cn".to_owned();
        let Request::Events { events, .. } = &mut history.ops[9].request else { panic!("the fixture's stream") };
        events.push((3, T_ABORTED.to_owned(), TransferState::Aborted));
        let found = Reads.check(&history);
        let details = fixtures::details(&found);
        assert_eq!(found.len(), 2, "{details:?}");
        assert!(details[0].contains("came after cursor 1"), "{details:?}");
        assert!(details[1].contains("read transfer t-x2 of a payer abroad to alipay-cn"), "{details:?}");
    }

    #[test]
    fn a_read_of_a_transfer_nobody_holds_is_flagged() {
        let mut history = fixtures::good_history();
        let Request::GetTransfer { transfer_id, .. } = &mut history.ops[6].request else {
            panic!("the fixture's read")
        };
        *transfer_id = "t-nowhere".to_owned();
        let found = Reads.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("holds no such transfer"), "{}", found[0].detail);
    }

    #[test]
    fn a_position_read_beyond_its_cap_is_flagged() {
        let mut history = fixtures::good_history();
        let Request::GetPosition { position: Some(p), .. } = &mut history.ops[7].request else {
            panic!("the fixture's position read")
        };
        p.posted_balance = dec("-100.01");
        let found = Reads.check(&history);
        assert_eq!(found.len(), 1, "{:?}", fixtures::details(&found));
        assert!(found[0].detail.contains("below minus its net debit cap 100"), "{}", found[0].detail);
    }
}
