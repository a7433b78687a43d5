//! GCRA arithmetic (the generic cell rate algorithm), pure so it can be tested with any clock.
//! The same formulas run inside the Redis script, so both backends answer alike.
//!
//! State per key is one number, the theoretical arrival time (TAT). With emission interval `T`
//! (1 / rate) and burst `b`, a request at `now` is allowed when `max(TAT, now) + T - b·T <= now`.

/// The outcome of one decision, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcraOutcome {
    pub allowed: bool,
    /// The TAT to store (unchanged when refused).
    pub new_tat: f64,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after_ms: f64,
    /// Until a request would be allowed (0 when allowed).
    pub retry_after_ms: f64,
}

const EPSILON_MS: f64 = 1e-6;

pub fn decide(tat: Option<f64>, now: f64, emission_ms: f64, burst: u32) -> GcraOutcome {
    let burst_f = f64::from(burst.max(1));
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + emission_ms;
    let allow_at = new_tat - emission_ms * burst_f;
    // Compared with a little slack: `now + T - b·T` is not always exactly `now` in floating
    // point, and a request exactly on time must not be refused by a rounding error.
    if now + EPSILON_MS < allow_at {
        return GcraOutcome {
            allowed: false,
            new_tat: tat,
            remaining: 0,
            reset_after_ms: tat - now,
            retry_after_ms: allow_at - now,
        };
    }
    // The epsilon absorbs floating-point error (199.99999 must count as two intervals).
    let remaining = ((now - allow_at) / emission_ms + EPSILON_MS)
        .floor()
        .clamp(0.0, burst_f - 1.0) as u32;
    GcraOutcome {
        allowed: true,
        new_tat,
        remaining,
        reset_after_ms: new_tat - now,
        retry_after_ms: 0.0,
    }
}

/// The TAT after giving back one request: one emission interval earlier. `None` when the
/// bucket is then full (a TAT at or before `now` carries no information), so the key can be
/// dropped; a refund can never make room beyond the burst.
pub fn refund(tat: Option<f64>, now: f64, emission_ms: f64) -> Option<f64> {
    let refunded = tat? - emission_ms;
    (refunded > now).then_some(refunded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_recovery() {
        let t = 200.0; // 5 per second
        let mut tat = None;
        for expected_remaining in (0..5).rev() {
            let out = decide(tat, 1000.0, t, 5);
            assert!(out.allowed);
            assert_eq!(out.remaining, expected_remaining);
            tat = Some(out.new_tat);
        }
        let refused = decide(tat, 1000.0, t, 5);
        assert!(!refused.allowed);
        assert!((refused.retry_after_ms - 200.0).abs() < 1e-9);
        // One emission interval later exactly one more fits.
        let later = decide(tat, 1200.0, t, 5);
        assert!(later.allowed);
        assert!(!decide(Some(later.new_tat), 1200.0, t, 5).allowed);
        // After a long pause the bucket is full again.
        assert_eq!(decide(tat, 10_000.0, t, 5).remaining, 4);
    }

    #[test]
    fn a_refund_gives_back_one_request_and_never_more_than_the_burst() {
        let t = 200.0;
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(decide(tat, 1000.0, t, 5).new_tat);
        }
        assert!(!decide(tat, 1000.0, t, 5).allowed);
        tat = refund(tat, 1000.0, t);
        let again = decide(tat, 1000.0, t, 5);
        assert!(again.allowed);
        assert!(!decide(Some(again.new_tat), 1000.0, t, 5).allowed);
        // Refunding more than was charged leaves a full bucket, not a bigger one.
        let mut tat = Some(decide(None, 1000.0, t, 5).new_tat);
        for _ in 0..3 {
            tat = refund(tat, 1000.0, t);
        }
        assert_eq!(tat, None);
        assert_eq!(decide(tat, 1000.0, t, 5).remaining, 4);
    }

    #[test]
    fn exact_arrivals_are_not_refused_by_rounding() {
        for i in 0..10_000 {
            let now = f64::from(i) * 0.333_333_7 + 1.7e12;
            assert!(decide(None, now, 1000.0, 1).allowed, "{now}");
            assert!(decide(None, now, 3.3, 7).allowed, "{now}");
        }
    }
}
