//! A token bucket for per-client reducer call limits, on explicit time.

use std::time::Duration;

use crate::config::RateLimit;

/// A token bucket: starts full (`burst` tokens), refills at `calls_per_second`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: &RateLimit, now: Duration) -> Self {
        TokenBucket {
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * limit.calls_per_second).min(f64::from(limit.burst));
    }

    /// Takes one token at `now` if there is one.
    pub fn try_take(&mut self, limit: &RateLimit, now: Duration) -> bool {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (an idle entry that may be forgotten).
    pub fn is_full(&mut self, limit: &RateLimit, now: Duration) -> bool {
        self.refill(limit, now);
        self.tokens >= f64::from(limit.burst)
    }
}

/// Token buckets by key (a source address, an identity), shared by the tasks that admit
/// requests before they cost anything. At most `max_tracked` keys are remembered; when full,
/// idle (full) buckets are forgotten, and if none is idle a new key is refused: a flood of
/// keys cannot grow memory, and keys already tracked keep their share.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    limit: RateLimit,
    max_tracked: usize,
    buckets: std::sync::Mutex<rustc_hash::FxHashMap<K, TokenBucket>>,
}

/// Per source address: minting identities and connect tokens.
pub type AddressLimiter = KeyedLimiter<std::net::IpAddr>;

impl<K: std::hash::Hash + Eq> KeyedLimiter<K> {
    /// A limiter allowing `limit` per key, remembering at most `max_tracked` keys.
    pub fn new(limit: RateLimit, max_tracked: usize) -> Self {
        KeyedLimiter {
            limit,
            max_tracked: max_tracked.max(1),
            buckets: std::sync::Mutex::new(rustc_hash::FxHashMap::default()),
        }
    }

    /// The limit applied.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes one request from `key`'s bucket at `now`; false if it is over its limit.
    pub fn admit(&self, key: K, now: Duration) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.max_tracked && !buckets.contains_key(&key) {
            let limit = &self.limit;
            buckets.retain(|_, bucket| !bucket.is_full(limit, now));
            if buckets.len() >= self.max_tracked {
                return false;
            }
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(&self.limit, now))
            .try_take(&self.limit, now)
    }
}

/// The error text of a rate-limited call.
pub fn rate_limited_message(limit: &RateLimit) -> String {
    format!(
        "rate limited: at most {} reducer calls per second (burst {})",
        limit.calls_per_second, limit.burst
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_have_their_own_buckets_and_a_bounded_table() {
        let limit = RateLimit {
            calls_per_second: 1.0,
            burst: 2,
        };
        let limiter = AddressLimiter::new(limit, 2);
        let (a, b, c) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let t0 = Duration::from_secs(100);
        assert!(limiter.admit(a, t0) && limiter.admit(a, t0));
        assert!(!limiter.admit(a, t0), "burst spent");
        assert!(limiter.admit(b, t0), "another address has its own bucket");
        assert!(!limiter.admit(c, t0), "table full and nobody idle: refused");
        assert!(limiter.admit(a, t0 + Duration::from_secs(1)), "refilled");
        // Once a and b are idle (full again) they are forgotten to make room.
        assert!(limiter.admit(c, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let limit = RateLimit {
            calls_per_second: 10.0,
            burst: 3,
        };
        let t0 = Duration::from_secs(100);
        let mut b = TokenBucket::new(&limit, t0);
        assert!((0..3).all(|_| b.try_take(&limit, t0)));
        assert!(!b.try_take(&limit, t0));
        assert!(!b.try_take(&limit, t0 + Duration::from_millis(50)));
        assert!(b.try_take(&limit, t0 + Duration::from_millis(100)));
        assert!(b.is_full(&limit, t0 + Duration::from_secs(10)));
    }
}
