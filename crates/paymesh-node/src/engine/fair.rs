//! The proposer's queue: one lane per partner and one for the region's own
//! commands (operators, ticks, inter-region messages), served round-robin.
//!
//! Each lane is a FIFO; an entry is filled by taking one command from each
//! lane that has one, in turn, until it is full or every lane is empty. A
//! partner with thousands of commands waiting therefore delays another
//! lane's next command by at most one round (one command from each other
//! busy lane), not by its whole backlog. Each lane is bounded
//! ([`FairQueue::lane_max`]; the region's own lane by the whole queue's
//! bound), and so is the whole queue: beyond either, a new command is
//! refused at once.

use std::collections::{HashMap, VecDeque};

use paymesh_core::id::PartnerId;

/// Whose command it is: which lane it waits in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The region's own: operators, ticks, inter-region messages.
    Region,
    /// A partner's quotes and transfers.
    Partner(PartnerId),
}

/// Why a command was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Its lane holds its most commands.
    Lane,
    /// The whole queue holds its most commands.
    Queue,
}

/// Per-lane FIFOs served round-robin.
#[derive(Clone, Debug)]
pub struct FairQueue<T> {
    lanes: HashMap<Lane, VecDeque<T>>,
    /// Lanes with a command waiting, in serving order; each appears once.
    ring: VecDeque<Lane>,
    len: usize,
    lane_max: usize,
    total_max: usize,
}

impl<T> FairQueue<T> {
    /// A queue of at most `total_max` commands, `lane_max` per partner.
    pub fn new(lane_max: usize, total_max: usize) -> FairQueue<T> {
        FairQueue { lanes: HashMap::new(), ring: VecDeque::new(), len: 0, lane_max, total_max }
    }

    /// Commands waiting in all lanes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no command waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Commands waiting in `lane`.
    pub fn lane_len(&self, lane: &Lane) -> usize {
        self.lanes.get(lane).map_or(0, VecDeque::len)
    }

    /// The most commands a partner's lane holds.
    pub fn lane_max(&self) -> usize {
        self.lane_max
    }

    /// Queue `item` at the end of `lane`, unless the lane or the queue is full.
    pub fn push(&mut self, lane: Lane, item: T) -> Result<(), (Full, T)> {
        if self.len >= self.total_max {
            return Err((Full::Queue, item));
        }
        let bound = if lane == Lane::Region { self.total_max } else { self.lane_max };
        let queue = self.lanes.entry(lane.clone()).or_default();
        if queue.len() >= bound {
            return Err((Full::Lane, item));
        }
        if queue.is_empty() {
            self.ring.push_back(lane);
        }
        queue.push_back(item);
        self.len += 1;
        Ok(())
    }

    /// Take up to `max` commands, one from each waiting lane in turn.
    pub fn take(&mut self, max: usize) -> Vec<T> {
        let mut taken = Vec::with_capacity(max.min(self.len));
        while taken.len() < max {
            let Some(lane) = self.ring.pop_front() else { break };
            let queue = self.lanes.get_mut(&lane).expect("a lane in the ring has a queue");
            taken.push(queue.pop_front().expect("a lane in the ring is not empty"));
            self.len -= 1;
            if queue.is_empty() {
                self.lanes.remove(&lane);
            } else {
                self.ring.push_back(lane);
            }
        }
        taken
    }

    /// Take every command, in serving order.
    pub fn drain(&mut self) -> Vec<T> {
        self.take(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(name: &str) -> Lane {
        Lane::Partner(PartnerId::new(name).unwrap())
    }

    #[test]
    fn a_flooding_partners_backlog_delays_another_partners_command_by_one_round_at_most() {
        let mut queue = FairQueue::new(4_096, 32_768);
        for n in 0..4_096 {
            queue.push(partner("flood"), ("flood", n)).unwrap();
        }
        queue.push(partner("calm"), ("calm", 0)).unwrap();
        let first = queue.take(1_024);
        let position = first.iter().position(|(who, _)| *who == "calm").expect("served in the first entry");
        assert!(position <= 1, "calm's command waited behind {position} of flood's");
        // The flood keeps its order.
        let flood: Vec<u32> = first.iter().filter(|(who, _)| *who == "flood").map(|(_, n)| *n).collect();
        assert_eq!(flood, (0..1_023).collect::<Vec<_>>());
    }

    #[test]
    fn every_lane_gets_one_command_per_round_the_region_lane_too() {
        let mut queue = FairQueue::new(100, 1_000);
        for n in 0..50 {
            queue.push(partner("a"), format!("a{n}")).unwrap();
            queue.push(partner("b"), format!("b{n}")).unwrap();
        }
        queue.push(Lane::Region, "tick".to_owned()).unwrap();
        queue.push(partner("c"), "c0".to_owned()).unwrap();
        let round = queue.take(4);
        assert_eq!(round, ["a0", "b0", "tick", "c0"]);
        assert_eq!(queue.take(3), ["a1", "b1", "a2"]);
        assert_eq!(queue.len(), 95);
        let rest = queue.drain();
        assert_eq!(rest.len(), 95);
        assert!(queue.is_empty());
        assert_eq!(queue.take(10), Vec::<String>::new());
    }

    #[test]
    fn a_partners_lane_and_the_whole_queue_are_bounded() {
        let mut queue = FairQueue::new(3, 5);
        for n in 0..3 {
            queue.push(partner("a"), n).unwrap();
        }
        assert_eq!(queue.push(partner("a"), 3), Err((Full::Lane, 3)));
        assert_eq!(queue.lane_len(&partner("a")), 3);
        queue.push(partner("b"), 10).unwrap();
        // The region's lane is bounded by the queue only.
        queue.push(Lane::Region, 20).unwrap();
        assert_eq!(queue.push(Lane::Region, 21), Err((Full::Queue, 21)));
        assert_eq!(queue.push(partner("c"), 30), Err((Full::Queue, 30)));
        assert_eq!(queue.take(2), [0, 10]);
        queue.push(partner("c"), 30).unwrap();
    }
}
