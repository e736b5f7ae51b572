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
