//! Per-connection rate limits: token buckets for incoming messages and for joins, and a count
//! of refusals that turns sustained abuse into a close. Pure state, driven by `state.rs`.
//!
//! Why buckets and not fixed windows: a client may burst (phoenix.js rejoins every channel at
//! once after a reconnect, an app pushes a batch) but not sustain more than the rate.

use std::time::{Duration, Instant};

/// How long refusals are counted before the count starts again.
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// The limits of one connection (from `Config`). A rate of 0 turns that limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimits {
    pub messages_per_sec: u32,
    pub message_burst: u32,
    pub joins_per_sec: u32,
    pub join_burst: u32,
    /// Refused messages within `STRIKE_WINDOW` beyond which the connection is closed (1008).
    pub max_refusals: u32,
}

/// What happens to one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Answered with `{"reason":"rate limited"}`.
    Refuse,
    /// Too many refusals: close the connection.
    Evict,
}

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Debug)]
struct Bucket {
    per_sec: u32,
    burst: u32,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_sec: u32, burst: u32, now: Instant) -> Bucket {
        Bucket { per_sec, burst: burst.max(1), tokens: f64::from(burst.max(1)), last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.per_sec)).min(f64::from(self.burst));
        self.last = now;
    }

    /// True if a token was available (always, for a bucket that is off).
    fn has_token(&mut self, now: Instant) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

#[derive(Debug)]
pub(crate) struct Rates {
    messages: Bucket,
    joins: Bucket,
    max_refusals: u32,
    refusals: u32,
    window_start: Instant,
}

impl Rates {
    pub fn new(limits: RateLimits, now: Instant) -> Rates {
        Rates {
            messages: Bucket::new(limits.messages_per_sec, limits.message_burst, now),
            joins: Bucket::new(limits.joins_per_sec, limits.join_burst, now),
            max_refusals: limits.max_refusals,
            refusals: 0,
            window_start: now,
        }
    }

    /// Charges one message (and one join if `join`). A refused message costs no token, so a
    /// client that backs off recovers at the refill rate.
    pub fn charge(&mut self, join: bool, now: Instant) -> Verdict {
        let passes = self.messages.has_token(now) && (!join || self.joins.has_token(now));
        if passes {
            if self.messages.per_sec > 0 {
                self.messages.take();
            }
            if join && self.joins.per_sec > 0 {
                self.joins.take();
            }
            return Verdict::Pass;
        }
        self.strike(now)
    }

    fn strike(&mut self, now: Instant) -> Verdict {
        if now.saturating_duration_since(self.window_start) >= STRIKE_WINDOW {
            self.window_start = now;
            self.refusals = 0;
        }
        self.refusals += 1;
        if self.refusals > self.max_refusals { Verdict::Evict } else { Verdict::Refuse }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RateLimits = RateLimits {
        messages_per_sec: 10,
        message_burst: 30,
        joins_per_sec: 1,
        join_burst: 2,
        max_refusals: 3,
    };

    fn verdicts(rates: &mut Rates, join: bool, n: usize, now: Instant) -> Vec<Verdict> {
        (0..n).map(|_| rates.charge(join, now)).collect()
    }

    #[test]
    fn a_burst_passes_then_refusals_then_eviction() {
        let now = Instant::now();
        let mut rates = Rates::new(LIMITS, now);
        assert!(verdicts(&mut rates, false, 30, now).iter().all(|v| *v == Verdict::Pass));
        assert_eq!(verdicts(&mut rates, false, 3, now), vec![Verdict::Refuse; 3]);
        assert_eq!(rates.charge(false, now), Verdict::Evict);
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let now = Instant::now();
        let mut rates = Rates::new(LIMITS, now);
        verdicts(&mut rates, false, 30, now);
        assert_eq!(rates.charge(false, now), Verdict::Refuse);
        let later = now + Duration::from_millis(500); // 5 tokens at 10/s
        assert_eq!(verdicts(&mut rates, false, 5, later), vec![Verdict::Pass; 5]);
        assert_eq!(rates.charge(false, later), Verdict::Refuse);
    }

    #[test]
    fn joins_have_their_own_budget() {
        let now = Instant::now();
        let mut rates = Rates::new(LIMITS, now);
        assert_eq!(verdicts(&mut rates, true, 2, now), vec![Verdict::Pass; 2]);
        assert_eq!(rates.charge(true, now), Verdict::Refuse);
        assert_eq!(rates.charge(false, now), Verdict::Pass, "other messages still pass");
        assert_eq!(rates.charge(true, now + Duration::from_secs(1)), Verdict::Pass);
    }

    #[test]
    fn refusals_are_counted_per_window() {
        let now = Instant::now();
        let mut rates = Rates::new(LIMITS, now);
        verdicts(&mut rates, false, 30, now);
        assert_eq!(verdicts(&mut rates, false, 3, now), vec![Verdict::Refuse; 3]);
        // A later window starts the count again (the bucket refilled meanwhile too).
        let later = now + STRIKE_WINDOW;
        verdicts(&mut rates, false, 30, later);
        assert_eq!(verdicts(&mut rates, false, 3, later), vec![Verdict::Refuse; 3]);
    }

    #[test]
    fn a_rate_of_zero_is_off() {
        let now = Instant::now();
        let off = RateLimits { messages_per_sec: 0, joins_per_sec: 0, ..LIMITS };
        let mut rates = Rates::new(off, now);
        assert!(verdicts(&mut rates, true, 10_000, now).iter().all(|v| *v == Verdict::Pass));
    }
}
