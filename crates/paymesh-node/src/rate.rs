//! Partners' request rates on this node: a token bucket per partner, sized by
//! the partner's replicated limits (`PartnerLimits::requests_per_second`,
//! `requests_burst`).
//!
//! Checked by the gateway on the handler's (tokio) thread, before a request
//! is handed to the leader's actors: a partner over its rate is refused
//! there, and costs the single actor thread, which serves every partner,
//! nothing. Event subscriptions draw from the same bucket. Only configured
//! partners reach it, so it holds one small entry per partner at most.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use paymesh_core::id::PartnerId;
use paymesh_core::partner::PartnerLimits;

/// Why a request above the partner's rate is refused.
pub const RATE_REFUSAL: &str =
    "this partner's request rate is above its limit (requests_per_second, requests_burst); retry with backoff";

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
    /// Take a token from `partner`'s bucket, if one is left: the bucket holds
    /// at most `limits.requests_burst` and refills at
    /// `limits.requests_per_second` (a new bucket starts full).
    pub fn admit(&self, partner: &PartnerId, limits: PartnerLimits) -> bool {
        let now = Instant::now();
        let burst = f64::from(limits.requests_burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(partner.clone()).or_insert(Bucket { tokens: burst, refilled: now });
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * f64::from(limits.requests_per_second);
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_gets_its_burst_then_its_rate_and_another_partner_its_own() {
        let rates = Rates::default();
        let limits = PartnerLimits { requests_per_second: 1, requests_burst: 3, ..PartnerLimits::DEFAULT };
        let a = PartnerId::new("a").unwrap();
        let b = PartnerId::new("b").unwrap();
        assert_eq!((0..5).filter(|_| rates.admit(&a, limits)).count(), 3);
        assert!(rates.admit(&b, limits), "b has a bucket of its own");
        // A smaller limit takes effect at once.
        let one = PartnerLimits { requests_burst: 1, ..limits };
        assert!(rates.admit(&b, one));
        assert!(!rates.admit(&b, one));
    }
}
