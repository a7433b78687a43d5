//! A circuit breaker per provider (SPEC §16): closed while requests succeed; open after
//! `failures` consecutive failures, so the provider is passed over while another one can
//! serve; half-open once `cooldown` has passed, when one request at a time probes it; closed
//! again on the first success, open again (for another cooldown) on a failure.
//!
//! Lock-free: two atomics per provider, read on every routing decision. The clock is the
//! caller's (milliseconds), so the state machine is tested without sleeping.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (SPEC default 5).
    pub failures: u32,
    /// How long an open breaker refuses before it lets a probe through (default 30 s).
    pub cooldown_millis: i64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown_millis: 30_000,
        }
    }
}

/// What a breaker says about its provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Failing: passed over until the cooldown ends.
    Open,
    /// The cooldown is over: the next request is a probe.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Default)]
pub struct Breaker {
    consecutive_failures: AtomicU32,
    /// 0 when closed; otherwise when the open breaker lets its next probe through.
    open_until_millis: AtomicI64,
}

impl Breaker {
    pub fn state(&self, now_millis: i64) -> BreakerState {
        match self.open_until_millis.load(Ordering::Relaxed) {
            0 => BreakerState::Closed,
            until if until > now_millis => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// A request reached the provider and was answered (not a 5xx): the breaker closes.
    /// Returns true when it was not closed before. Reads first, so the common case (closed,
    /// no failures) writes nothing to memory other threads read.
    pub fn record_success(&self) -> bool {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        self.open_until_millis.load(Ordering::Relaxed) != 0
            && self.open_until_millis.swap(0, Ordering::Relaxed) != 0
    }

    /// Opens the breaker until `until_millis` without a failure of its own: another instance
    /// saw the provider fail (SPEC §16, breakers shared through Redis). An open breaker that
    /// would stay open longer is left as it is.
    pub fn open_until(&self, until_millis: i64) {
        self.open_until_millis
            .fetch_max(until_millis.max(1), Ordering::Relaxed);
    }

    /// A request to the provider failed. Returns true when this failure opened the breaker
    /// (the `failures`-th in a row, or a failed half-open probe).
    pub fn record_failure(&self, settings: BreakerSettings, now_millis: i64) -> bool {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let reopen = self.state(now_millis) == BreakerState::HalfOpen;
        if failures >= settings.failures.max(1) || reopen {
            let until = now_millis.saturating_add(settings.cooldown_millis.max(1));
            let was = self.open_until_millis.swap(until, Ordering::Relaxed);
            // Opened now, or reopened after a failed probe; a failure while already open (a
            // request that was under way) only pushes the cooldown.
            return was == 0 || was <= now_millis;
        }
        false
    }

    /// Lets one probe through a half-open breaker: the first caller after the cooldown moves
    /// the reopening time forward by `cooldown`, so concurrent requests do not all probe.
    pub fn try_probe(&self, settings: BreakerSettings, now_millis: i64) -> bool {
        let until = self.open_until_millis.load(Ordering::Relaxed);
        if until == 0 || until > now_millis {
            return false;
        }
        let next = now_millis.saturating_add(settings.cooldown_millis.max(1));
        self.open_until_millis
            .compare_exchange(until, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failures: 3,
        cooldown_millis: 1_000,
    };

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::default();
        assert!(!breaker.record_failure(SETTINGS, 0));
        assert!(!breaker.record_failure(SETTINGS, 0));
        breaker.record_success();
        assert!(!breaker.record_failure(SETTINGS, 0));
        assert!(!breaker.record_failure(SETTINGS, 0));
        assert_eq!(breaker.state(0), BreakerState::Closed);
        assert!(
            breaker.record_failure(SETTINGS, 10),
            "the third in a row opens it"
        );
        assert_eq!(breaker.state(10), BreakerState::Open);
        assert_eq!(breaker.state(1_009), BreakerState::Open);
        assert_eq!(breaker.state(1_010), BreakerState::HalfOpen);
    }

    #[test]
    fn one_probe_at_a_time_and_its_outcome_decides() {
        let breaker = Breaker::default();
        for _ in 0..3 {
            breaker.record_failure(SETTINGS, 0);
        }
        assert!(!breaker.try_probe(SETTINGS, 500), "still cooling down");
        assert!(breaker.try_probe(SETTINGS, 1_000));
        assert!(!breaker.try_probe(SETTINGS, 1_001), "one probe only");
        // The probe failed: open for a cooldown from the failure.
        breaker.record_failure(SETTINGS, 1_200);
        assert_eq!(breaker.state(2_100), BreakerState::Open);
        assert!(breaker.try_probe(SETTINGS, 2_200));
        breaker.record_success();
        assert_eq!(breaker.state(2_201), BreakerState::Closed);
        assert!(
            !breaker.record_failure(SETTINGS, 2_300),
            "counting starts again"
        );
    }
}
