//! Partners' request rates on this node: a token bucket per partner, sized by
//! the partner's replicated limits (`PartnerLimits::requests_per_second`,
//! `requests_burst`).
//!
//! Charged by the gateway for every call a partner makes (writes, reads and
//! event subscriptions alike), on the handler's (tokio) thread, before
//! anything reaches the leader's actors, which serve every partner on one
//! thread.
//!
//! A partner over its rate is **paced, not refused at once**: its request
//! takes a token that has not been refilled yet and waits until it would
//! have been, up to [`PACE_WAIT_MAX`]; a request that would wait longer is
//! refused (RESOURCE_EXHAUSTED), and that answer too is given only after
//! [`PACE_WAIT_MAX`]. A refusal answered at once invites the caller's next
//! request at once, so a client looping as fast as answers come (a retry
//! loop gone wrong, or a flood) would make the node spend its CPU receiving
//! and refusing far more than the partner's rate: measured with `paymesh
//! bench --flood`, a flooder limited to 1,000/s sent 20,000 requests/s that
//! way, and one limited to 1/s (whose 64 loops could not all wait) 25,000/s.
//! Paced, a closed loop runs at the partner's rate, plus one refusal per
//! loop and second beyond what may wait, and a waiting request costs a
//! timer, not CPU. How many requests hold a token while they wait is
//! bounded by `rate × PACE_WAIT_MAX` per partner; how many wait to be
//! refused, by the HTTP/2 streams of the partner's connections.
//!
//! Only configured partners reach it, so it holds one small entry per
//! partner at most.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paymesh_core::id::PartnerId;
use paymesh_core::partner::PartnerLimits;

/// Why a request above the partner's rate is refused.
pub const RATE_REFUSAL: &str =
    "this partner's request rate is above its limit (requests_per_second, requests_burst); retry with backoff";

/// The longest a request over its partner's rate waits for its token.
pub const PACE_WAIT_MAX: Duration = Duration::from_secs(1);

/// What the partner's rate allows a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admission {
    /// Served now.
    Now,
    /// Served after waiting this long (its token is taken).
    After(Duration),
    /// Refused: it would wait longer than [`PACE_WAIT_MAX`].
    Refused,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Every partner's bucket on this node.
#[derive(Default)]
pub struct Rates {
    buckets: Mutex<HashMap<PartnerId, Bucket>>,
}

impl std::fmt::Debug for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rates").finish_non_exhaustive()
    }
}

impl Rates {
    /// Charge a request that counts as `calls` calls (one, or a batch's
    /// items) to `partner`'s bucket, which holds at most
    /// `limits.requests_burst` tokens and refills at
    /// `limits.requests_per_second` (a new bucket starts full). Short of
    /// tokens, the request takes those still to come, to wait for them,
    /// unless that is more than [`PACE_WAIT_MAX`] away.
    pub fn admit(&self, partner: &PartnerId, limits: PartnerLimits, calls: usize) -> Admission {
        self.admit_at(partner, limits, calls, Instant::now())
    }

    fn admit_at(&self, partner: &PartnerId, limits: PartnerLimits, calls: usize, now: Instant) -> Admission {
        let cost = calls as f64;
        let burst = f64::from(limits.requests_burst);
        let rate = f64::from(limits.requests_per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(partner.clone()).or_insert(Bucket { tokens: burst, refilled: now });
        let refill = now.saturating_duration_since(bucket.refilled).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.refilled = now.max(bucket.refilled);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Admission::Now;
        }
        // Tokens below zero are promised to requests already waiting.
        let wait = (cost - bucket.tokens) / rate;
        if rate > 0.0 && wait <= PACE_WAIT_MAX.as_secs_f64() {
            bucket.tokens -= cost;
            Admission::After(Duration::from_secs_f64(wait))
        } else {
            Admission::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> PartnerId {
        PartnerId::new(name).unwrap()
    }

    #[test]
    fn a_partner_gets_its_burst_then_waits_for_its_rate_and_another_partner_has_its_own() {
        let rates = Rates::default();
        let limits = PartnerLimits { requests_per_second: 10, requests_burst: 3, ..PartnerLimits::DEFAULT };
        let (a, b) = (id("a"), id("b"));
        let start = Instant::now();
        let answers: Vec<Admission> = (0..5).map(|_| rates.admit_at(&a, limits, 1, start)).collect();
        let ms = |ms| Admission::After(Duration::from_millis(ms));
        assert_eq!(answers, [Admission::Now, Admission::Now, Admission::Now, ms(100), ms(200)]);
        assert_eq!(rates.admit_at(&b, limits, 1, start), Admission::Now, "b has a bucket of its own");
        // Time refills what the waiting requests were promised first.
        let later = start + Duration::from_millis(250);
        assert_eq!(rates.admit_at(&a, limits, 1, later), ms(50));
    }

    #[test]
    fn a_request_that_would_wait_longer_than_the_bound_is_refused_and_takes_nothing() {
        let rates = Rates::default();
        let limits = PartnerLimits { requests_per_second: 4, requests_burst: 1, ..PartnerLimits::DEFAULT };
        let a = id("a");
        let start = Instant::now();
        let answers: Vec<Admission> = (0..7).map(|_| rates.admit_at(&a, limits, 1, start)).collect();
        // 1 now, then 0.25 s, 0.5 s, 0.75 s, 1 s; beyond the second, refused.
        assert_eq!(answers.iter().filter(|a| matches!(a, Admission::After(_))).count(), 4);
        assert_eq!(&answers[5..], [Admission::Refused, Admission::Refused]);
        // The refusals took no token: a quarter second later one more waits 1 s.
        let later = start + Duration::from_millis(250);
        assert_eq!(rates.admit_at(&a, limits, 1, later), Admission::After(Duration::from_secs(1)));
        // A rate of zero serves the burst and refuses the rest; a smaller
        // limit takes effect at once.
        let none = PartnerLimits { requests_per_second: 0, requests_burst: 1, ..limits };
        let b = id("b");
        assert_eq!(rates.admit_at(&b, none, 1, start), Admission::Now);
        assert_eq!(rates.admit_at(&b, none, 1, start), Admission::Refused);
    }

    #[test]
    fn a_batch_costs_one_token_per_item() {
        let rates = Rates::default();
        let limits = PartnerLimits { requests_per_second: 100, requests_burst: 10, ..PartnerLimits::DEFAULT };
        let a = id("a");
        let start = Instant::now();
        assert_eq!(rates.admit_at(&a, limits, 8, start), Admission::Now);
        // 2 tokens left: 5 more wait for 3 to come, 30 ms.
        assert_eq!(rates.admit_at(&a, limits, 5, start), Admission::After(Duration::from_millis(30)));
        // 101 would wait past the bound: refused, taking nothing.
        assert_eq!(rates.admit_at(&a, limits, 101, start), Admission::Refused);
        assert_eq!(rates.admit_at(&a, limits, 1, start), Admission::After(Duration::from_millis(40)));
    }
}
