//! Rate and concurrency limits for Cortex: GCRA request limits, stream slots held as leases,
//! sliding token windows, spend counters and budgets held by reservation (`budget`) — in
//! process, or shared by every instance on Redis with one atomic script (one round trip) per
//! decision.
//!
//! When Redis is unreachable the [`RedisFailureMode`] decides: fail open to this instance's
//! in-process limiter, or fail closed with [`LimitError::Unavailable`]. After a failure Redis is
//! not retried for a second, so an outage does not add a connect attempt to every request.

mod budget;
mod budget_ops;
mod error;
mod gcra;
mod in_process;
mod redis_backend;

use std::sync::Arc;
use std::time::Duration;

pub use budget::{
    BudgetDecision, BudgetLevel, Period, Reservation, SpendLedger, Window,
    DEFAULT_RESERVATION_EXPIRY, TOTAL_IDLE_KEEP,
};
pub use error::{LimitError, RedisFailureMode};
pub use gcra::{decide, refund, GcraOutcome};
pub use redis_backend::redis_client;

/// A request quota: `rate_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub rate_per_second: f64,
    pub burst: u32,
}

impl Quota {
    fn emission_ms(self) -> f64 {
        1000.0 / self.rate_per_second.max(1e-9)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_after: Duration,
    pub retry_after: Option<Duration>,
}

impl RateDecision {
    fn from_outcome(out: GcraOutcome, burst: u32) -> Self {
        let ms = |v: f64| Duration::from_micros((v.max(0.0) * 1000.0) as u64);
        RateDecision {
            allowed: out.allowed,
            limit: burst,
            remaining: out.remaining,
            reset_after: ms(out.reset_after_ms),
            retry_after: (!out.allowed).then(|| ms(out.retry_after_ms)),
        }
    }
}

/// Holds one concurrency slot; dropping it frees the slot.
pub struct SlotGuard {
    inner: SlotInner,
}

enum SlotInner {
    InProcess(in_process::Slot),
    Redis(redis_backend::Slot),
}

impl SlotGuard {
    /// Stops renewing the lease without releasing it, as a crashed instance would; the slot
    /// frees itself when the lease runs out. For fault tests.
    pub fn abandon(self) {
        match self.inner {
            SlotInner::InProcess(slot) => slot.release_now(),
            SlotInner::Redis(slot) => slot.abandon(),
        }
    }
}

/// The limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    local: Arc<in_process::InProcess>,
    redis: Option<Arc<redis_backend::RedisBackend>>,
    budgets: Arc<budget::Shared>,
    reservation_expiry: Duration,
    /// Whether budgets follow a fail-open Redis into the in-process book (off by default:
    /// budgets fail closed).
    budgets_fail_open: bool,
}

impl Limiter {
    pub fn in_process() -> Self {
        Self {
            local: Arc::new(in_process::InProcess::new()),
            redis: None,
            budgets: Arc::default(),
            reservation_expiry: DEFAULT_RESERVATION_EXPIRY,
            budgets_fail_open: false,
        }
    }

    pub async fn redis(
        url: &str,
        prefix: &str,
        failure_mode: RedisFailureMode,
    ) -> Result<Self, LimitError> {
        Self::redis_with_ca(url, None, prefix, failure_mode).await
    }

    /// Like [`Limiter::redis`], with the CA bundle a `rediss://` server's certificate chains to.
    pub async fn redis_with_ca(
        url: &str,
        ca_pem: Option<&[u8]>,
        prefix: &str,
        failure_mode: RedisFailureMode,
    ) -> Result<Self, LimitError> {
        let backend =
            redis_backend::RedisBackend::connect(url, ca_pem, prefix, failure_mode).await?;
        Ok(Self {
            local: Arc::new(in_process::InProcess::new()),
            redis: Some(Arc::new(backend)),
            budgets: Arc::default(),
            reservation_expiry: DEFAULT_RESERVATION_EXPIRY,
            budgets_fail_open: false,
        })
    }

    /// Runs `remote` on Redis when it is configured and up; otherwise (or on failure, in
    /// fail-open mode) `local` on the in-process limiter.
    async fn either<T, R, L>(&self, remote: R, local: L) -> Result<T, LimitError>
    where
        R: AsyncFnOnce(&redis_backend::RedisBackend) -> Result<T, redis::RedisError>,
        L: FnOnce(&in_process::InProcess) -> T,
    {
        let Some(redis) = &self.redis else {
            return Ok(local(&self.local));
        };
        if redis.is_up() {
            match remote(redis).await {
                Ok(value) => return Ok(value),
                Err(err) => redis.mark_down(&err),
            }
        }
        match redis.failure_mode() {
            RedisFailureMode::FailOpen => Ok(local(&self.local)),
            RedisFailureMode::FailClosed => Err(LimitError::Unavailable),
        }
    }

    /// Decides and, when allowed, counts the request.
    pub async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, LimitError> {
        self.rate(key, quota, true).await
    }

    /// Gives back one request counted by [`Limiter::check_rate`] on the same key and quota.
    /// Login throttling charges every attempt before checking the password (so parallel
    /// attempts cannot all slip past the limit) and refunds the ones that succeed. A refund
    /// never makes more room than a full bucket; refunding a key that is already full is a
    /// no-op.
    pub async fn refund_rate(&self, key: &str, quota: Quota) -> Result<(), LimitError> {
        let emission = quota.emission_ms();
        self.either(
            async |r| r.refund_rate(key, emission).await,
            |l| l.refund_rate(key, emission),
        )
        .await
    }

    /// Decides without counting: "would a request be allowed now?".
    pub async fn peek_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, LimitError> {
        self.rate(key, quota, false).await
    }

    async fn rate(
        &self,
        key: &str,
        quota: Quota,
        commit: bool,
    ) -> Result<RateDecision, LimitError> {
        let emission = quota.emission_ms();
        let outcome = self
            .either(
                async |r| r.check_rate(key, emission, quota.burst, commit).await,
                |l| l.check_rate(key, emission, quota.burst, commit),
            )
            .await?;
        Ok(RateDecision::from_outcome(outcome, quota.burst))
    }

    /// A slot of at most `max` concurrent holders of `key`; `None` when all are taken.
    pub async fn acquire_slot(
        &self,
        key: &str,
        max: u32,
        lease: Duration,
    ) -> Result<Option<SlotGuard>, LimitError> {
        let slot = self
            .either(
                async |r| {
                    r.acquire_slot(key, max, lease)
                        .await
                        .map(|s| s.map(SlotInner::Redis))
                },
                |l| l.acquire_slot(key, max).map(SlotInner::InProcess),
            )
            .await?;
        Ok(slot.map(|inner| SlotGuard { inner }))
    }

    pub async fn tokens_in_window(&self, key: &str) -> Result<u64, LimitError> {
        self.either(
            async |r| r.tokens_in_window(key).await,
            |l| l.tokens_in_window(key),
        )
        .await
    }

    pub async fn charge_tokens(&self, key: &str, tokens: u64) -> Result<(), LimitError> {
        self.either(
            async |r| r.charge_tokens(key, tokens).await,
            |l| l.charge_tokens(key, tokens),
        )
        .await
    }
}
