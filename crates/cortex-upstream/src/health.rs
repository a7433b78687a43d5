//! What the gateway knows about each provider's health (SPEC §16): its circuit breaker, a
//! short passive demotion after a failure, an EWMA of time to first byte and the requests in
//! flight (for `least_latency`), the outcomes of its last requests (p50 latency and error rate
//! for `GET /admin/providers/health`), and its last active health check.
//!
//! A provider's state lives in a [`HealthRegistry`] by provider id, not in the routing table:
//! the table is rebuilt whenever the catalogue changes, and a breaker must not close because an
//! operator renamed a model. Everything here is atomics, read on every routing decision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::breaker::{Breaker, BreakerSettings, BreakerState};

/// Outcomes kept for the p50 latency and the error rate.
const SAMPLES: usize = 64;
/// A slot that holds no outcome yet.
const EMPTY: u32 = u32::MAX;
/// A slot that holds a failure.
const FAILED: u32 = u32::MAX - 1;
/// Every this many milliseconds without an answer halves a provider's EWMA as
/// `least_latency` sees it, so a provider that was slow once is tried again after a while
/// (and measured anew) instead of being passed over for good.
const EWMA_HALF_LIFE_MILLIS: i64 = 10_000;
/// The weight of a new time-to-first-byte sample in the EWMA, in 1/1024ths (about 0.2: the
/// average follows a provider that slows down within a handful of requests).
const EWMA_NEW_SHARE: u64 = 205;

/// How a provider looks from the gateway, as `GET /admin/providers/health` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Its breaker is closed, its last check (if any) passed and it has not failed lately.
    Healthy,
    /// Reachable, but it failed a request or a check recently: tried after healthy ones.
    Degraded,
    /// Its breaker is open (or half-open, waiting for a probe): passed over while others serve.
    Open,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Open => "open",
        }
    }

    /// The value of the `gateway_upstream_health` gauge: 1 healthy, 0.5 degraded, 0 open.
    pub fn gauge(self) -> f64 {
        match self {
            HealthState::Healthy => 1.0,
            HealthState::Degraded => 0.5,
            HealthState::Open => 0.0,
        }
    }
}

/// A provider's health at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthView {
    pub state: HealthState,
    pub breaker: BreakerState,
    /// Median time to the answer's head over the last successful requests and checks.
    pub latency_ms_p50: Option<u32>,
    /// Failures among the last outcomes (0 when there are none).
    pub error_rate: f64,
    /// When the last active check ran (Unix milliseconds), and whether it passed.
    pub last_check: Option<(i64, bool)>,
    pub in_flight: u32,
}

#[derive(Debug)]
pub struct ProviderHealth {
    pub breaker: Breaker,
    /// Passive demotion: after a failure the provider is tried after the others for a while.
    demoted_until_millis: AtomicI64,
    /// EWMA of the time to the answer's head in microseconds; 0 until the first answer.
    ewma_ttfb_micros: AtomicU64,
    /// When the EWMA last took a sample (Unix milliseconds).
    last_answer_millis: AtomicI64,
    in_flight: AtomicU32,
    /// The last outcomes: a latency in milliseconds, [`FAILED`] or [`EMPTY`].
    samples: [AtomicU32; SAMPLES],
    next_sample: AtomicUsize,
    /// 0 until the first active check.
    last_check_millis: AtomicI64,
    last_check_ok: AtomicBool,
}

impl Default for ProviderHealth {
    fn default() -> Self {
        Self {
            breaker: Breaker::default(),
            demoted_until_millis: AtomicI64::new(0),
            ewma_ttfb_micros: AtomicU64::new(0),
            last_answer_millis: AtomicI64::new(0),
            in_flight: AtomicU32::new(0),
            samples: std::array::from_fn(|_| AtomicU32::new(EMPTY)),
            next_sample: AtomicUsize::new(0),
            last_check_millis: AtomicI64::new(0),
            last_check_ok: AtomicBool::new(true),
        }
    }
}

impl ProviderHealth {
    /// Not demoted by a recent failure.
    pub fn is_healthy(&self, now_millis: i64) -> bool {
        self.demoted_until_millis.load(Ordering::Relaxed) <= now_millis
    }

    /// Tried after the others until `until_millis`.
    pub fn demote_until(&self, until_millis: i64) {
        self.demoted_until_millis
            .store(until_millis, Ordering::Relaxed);
    }

    /// The provider answered (not a 5xx) at `now_millis`, after `ttfb_micros`: no longer
    /// demoted, its breaker closes, and the answer counts towards its latency. Returns true
    /// when the breaker was not closed before.
    pub fn record_success(&self, ttfb_micros: u64, now_millis: i64) -> bool {
        if self.demoted_until_millis.load(Ordering::Relaxed) != 0 {
            self.demoted_until_millis.store(0, Ordering::Relaxed);
        }
        self.record_latency(ttfb_micros);
        if self.last_answer_millis.load(Ordering::Relaxed) != now_millis {
            self.last_answer_millis.store(now_millis, Ordering::Relaxed);
        }
        self.breaker.record_success()
    }

    /// A request to the provider failed: demoted until `demoted_until_millis`, one more
    /// failure for its breaker. Returns true when this failure opened the breaker.
    pub fn record_failure(
        &self,
        settings: BreakerSettings,
        now_millis: i64,
        demoted_until_millis: i64,
    ) -> bool {
        self.demote_until(demoted_until_millis);
        self.push_sample(FAILED);
        self.breaker.record_failure(settings, now_millis)
    }

    /// An active check ended at `now_millis`: its outcome is remembered for the health page,
    /// and a failed one counts against the breaker like a failed request. A passing check
    /// closes a breaker only once the cooldown is over (it is then the half-open probe), and
    /// otherwise leaves the breaker as it is.
    /// Returns true when a failed check opened the breaker.
    pub fn record_check(
        &self,
        passed: Option<u64>,
        settings: BreakerSettings,
        now_millis: i64,
    ) -> bool {
        self.last_check_millis.store(now_millis, Ordering::Relaxed);
        self.last_check_ok
            .store(passed.is_some(), Ordering::Relaxed);
        match passed {
            Some(micros) => {
                // Only a half-open breaker closes: a passing check says the server is up, not
                // that requests stopped failing, so it leaves the count of failures alone.
                if self.breaker.state(now_millis) == BreakerState::HalfOpen {
                    self.breaker.record_success();
                }
                self.push_sample(latency_ms(micros));
                false
            }
            None => {
                self.push_sample(FAILED);
                self.breaker.record_failure(settings, now_millis)
            }
        }
    }

    fn record_latency(&self, micros: u64) {
        let old = self.ewma_ttfb_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            micros.max(1)
        } else {
            ((old * (1024 - EWMA_NEW_SHARE) + micros * EWMA_NEW_SHARE) / 1024).max(1)
        };
        // A lost update under contention costs one sample; the average stays an average.
        self.ewma_ttfb_micros.store(new, Ordering::Relaxed);
        self.push_sample(latency_ms(micros));
    }

    fn push_sample(&self, value: u32) {
        let slot = self.next_sample.fetch_add(1, Ordering::Relaxed) % SAMPLES;
        self.samples[slot].store(value, Ordering::Relaxed);
    }

    /// EWMA of the time to first byte in microseconds; 0 before the first answer.
    pub fn ewma_ttfb_micros(&self) -> u64 {
        self.ewma_ttfb_micros.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard is dropped (when the answer's body
    /// has been read or abandoned).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// The cost `least_latency` compares at `now_millis`: expected time to first byte
    /// (halved for every [`EWMA_HALF_LIFE_MILLIS`] without an answer), times the requests
    /// ahead of this one. A provider never measured costs 0, so it gets tried.
    pub fn load_score(&self, now_millis: i64) -> u64 {
        let idle = now_millis.saturating_sub(self.last_answer_millis.load(Ordering::Relaxed));
        let halvings = (idle / EWMA_HALF_LIFE_MILLIS).clamp(0, 63) as u32;
        (self.ewma_ttfb_micros() >> halvings).saturating_mul(u64::from(self.in_flight()) + 1)
    }

    pub fn view(&self, now_millis: i64) -> HealthView {
        let breaker = self.breaker.state(now_millis);
        let mut latencies = Vec::with_capacity(SAMPLES);
        let mut failures = 0usize;
        for slot in &self.samples {
            match slot.load(Ordering::Relaxed) {
                EMPTY => {}
                FAILED => failures += 1,
                ms => latencies.push(ms),
            }
        }
        let outcomes = latencies.len() + failures;
        let error_rate = if outcomes == 0 {
            0.0
        } else {
            failures as f64 / outcomes as f64
        };
        latencies.sort_unstable();
        let latency_ms_p50 = latencies
            .get(latencies.len().saturating_sub(1) / 2)
            .copied();
        let last_check = match self.last_check_millis.load(Ordering::Relaxed) {
            0 => None,
            at => Some((at, self.last_check_ok.load(Ordering::Relaxed))),
        };
        let state = match breaker {
            BreakerState::Open | BreakerState::HalfOpen => HealthState::Open,
            BreakerState::Closed
                if !self.is_healthy(now_millis) || last_check.is_some_and(|(_, ok)| !ok) =>
            {
                HealthState::Degraded
            }
            BreakerState::Closed => HealthState::Healthy,
        };
        HealthView {
            state,
            breaker,
            latency_ms_p50,
            error_rate,
            last_check,
            in_flight: self.in_flight(),
        }
    }
}

fn latency_ms(micros: u64) -> u32 {
    u32::try_from(micros / 1_000)
        .unwrap_or(FAILED - 1)
        .min(FAILED - 1)
}

/// A request in flight to a provider; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<ProviderHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every provider's health by provider id. It outlives routing tables: a rebuilt table takes
/// the same [`ProviderHealth`] for the same provider.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    by_id: RwLock<HashMap<String, Arc<ProviderHealth>>>,
}

impl HealthRegistry {
    /// The health of provider `id`, made on first use.
    pub fn for_provider(&self, id: &str) -> Arc<ProviderHealth> {
        if let Some(found) = self.by_id.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Arc::clone(found);
        }
        let mut map = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(id.to_owned()).or_default())
    }

    /// The health of provider `id` if it has any.
    pub fn get(&self, id: &str) -> Option<Arc<ProviderHealth>> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Forgets providers not in `ids` (deleted ones).
    pub fn retain<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = ids.into_iter().collect();
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| keep.contains(id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failures: 2,
        cooldown_millis: 1_000,
    };

    #[test]
    fn the_view_reports_latency_errors_and_state() {
        let health = ProviderHealth::default();
        let fresh = health.view(0);
        assert_eq!(fresh.state, HealthState::Healthy);
        assert_eq!(fresh.latency_ms_p50, None);
        assert_eq!(fresh.error_rate, 0.0);
        for ms in [10, 30, 20] {
            health.record_success(ms * 1_000, 0);
        }
        assert!(!health.record_failure(SETTINGS, 100, 600));
        let view = health.view(100);
        assert_eq!(view.latency_ms_p50, Some(20));
        assert!((view.error_rate - 0.25).abs() < 1e-9);
        assert_eq!(view.state, HealthState::Degraded, "demoted after a failure");
        assert_eq!(health.view(600).state, HealthState::Healthy);
        assert!(health.record_failure(SETTINGS, 700, 800), "second in a row");
        assert_eq!(health.view(700).state, HealthState::Open);
    }

    #[test]
    fn checks_count_against_the_breaker_and_a_passing_one_probes_only_after_the_cooldown() {
        let health = ProviderHealth::default();
        assert!(!health.record_check(None, SETTINGS, 10));
        assert_eq!(health.view(10).state, HealthState::Degraded);
        assert_eq!(health.view(10).last_check, Some((10, false)));
        assert!(health.record_check(None, SETTINGS, 20));
        health.record_check(Some(5_000), SETTINGS, 500);
        assert_eq!(
            health.view(500).state,
            HealthState::Open,
            "still cooling down"
        );
        health.record_check(Some(5_000), SETTINGS, 1_100);
        assert_eq!(health.view(1_100).state, HealthState::Healthy);
    }

    #[test]
    fn in_flight_requests_weigh_on_the_score() {
        let health = Arc::new(ProviderHealth::default());
        assert_eq!(health.load_score(0), 0, "unmeasured providers are tried");
        health.record_success(1_000, 0);
        assert_eq!(health.load_score(0), 1_000);
        let first = health.start_request();
        let second = health.start_request();
        assert_eq!(health.load_score(0), 3_000);
        assert_eq!(
            health.load_score(20_000),
            750,
            "two half-lives without an answer"
        );
        drop((first, second));
        assert_eq!(health.in_flight(), 0);
        health.record_success(2_024, 0);
        let ewma = health.ewma_ttfb_micros();
        assert!(ewma > 1_000 && ewma < 2_024, "{ewma}");
    }

    #[test]
    fn the_registry_keeps_state_across_tables_and_forgets_deleted_providers() {
        let registry = HealthRegistry::default();
        let a = registry.for_provider("a");
        a.demote_until(99);
        assert!(!registry.for_provider("a").is_healthy(0));
        registry.for_provider("b");
        registry.retain(["a"]);
        assert!(registry.get("a").is_some());
        assert!(registry.get("b").is_none());
    }
}
