//! Budgets that hold exactly across instances (SPEC §18): spend per (scope, calendar window),
//! reserved before a request leaves and settled after it, in process or on Redis.
//!
//! # The admit rule and the bound it gives
//!
//! A level (`key:…`, `team:…`, …) keeps two numbers for its current window: `spent` (settled
//! cost) and `reserved` (the sum of the reservations still held). A request is admitted when,
//! at **every** level, `spent + reserved < limit`, and then reserves its worst-case cost at
//! every level. Check and reservation happen together, atomically (one Lua script on Redis,
//! one lock in process), so no two requests ever decide on the same numbers.
//!
//! Settling replaces a reservation `a` by the actual cost `c`: `spent += c; reserved -= a`. As
//! long as `c <= a` (the reservation is the worst case), `spent + reserved` only grows at an
//! admission, and an admission starts below the limit. Hence at any time, at any concurrency and
//! on any number of instances sharing one Redis:
//!
//! > `spent + reserved < limit + a`, so `spent < limit + a`,
//!
//! where `a` is the largest single reservation: the budget is passed by less than one request's
//! cost. A settle whose actual cost exceeds its reservation adds that excess to the bound.
//!
//! # Expiry
//!
//! A reservation whose instance crashed is never settled; it expires after the limiter's
//! reservation expiry ([`DEFAULT_RESERVATION_EXPIRY`], [`Limiter::with_reservation_expiry`]).
//! Expired reservations are purged at the start of every decision (inside the script), so
//! they stop counting. A request still running when its reservation expires is still charged
//! in full when it settles, but its room was given back early: the expiry must be longer than
//! the longest request (the upstream timeout), or the bound above grows by that request.
//! Expiry runs on the store's clock (Redis `TIME`, or this process's wall clock): instance
//! clocks do not matter. Only the calendar window is chosen from the caller's `now_millis`.
//!
//! # Windows
//!
//! Windows are UTC calendar days and months, or `total` (one window forever). Counters live per
//! (scope, window), so a new day starts at zero without anything being reset. A reservation is
//! settled into the window it was reserved in, even when the request ends after midnight. On
//! Redis a daily or monthly window's keys expire a day after the window ends; a `total`
//! window's keys expire after [`TOTAL_IDLE_KEEP`] without use and are then rebuilt from the
//! ledger, so nothing accumulates.
//!
//! # Rebuilding from the ledger
//!
//! A counter that does not exist (first use, the window's keys expired, or Redis lost its data
//! in a restart or `FLUSHALL`) is seeded from [`SpendLedger::spent_since`] — the usage records
//! of the scope since the window's start — with SET-NX semantics: a live counter is never
//! overwritten, and the seed is written by the same script that then decides, so the seed and
//! the operation are one atomic step. Settling never creates a counter holding only its own
//! amount: a settle that finds its counter gone seeds it first. Concurrent misses of one counter
//! on one instance share a single ledger query.
//!
//! What a rebuild cannot see, and so the bound it gives when Redis loses its data:
//! - usage rows not yet flushed by the usage writer (its queue and retrying batch) are missed:
//!   the counter undercounts by their cost, so spend may pass the budget by up to that much
//!   more (requests that finish later are settled into the counter normally);
//! - reservations held at the moment of the loss are gone: requests in flight then can let
//!   others in; each is still charged when it settles (its settle seeds, then adds);
//! - a request whose usage row was already flushed when the counter was rebuilt, and that
//!   settles after, is counted twice — an overcount, which only refuses earlier (the same holds
//!   for batches the usage writer wrote twice).
//!
//! # When Redis is unreachable
//!
//! The limiter's [`crate::RedisFailureMode`] applies as for the other limits: fail closed
//! answers [`LimitError::Unavailable`]; fail open falls back to this instance's in-process book,
//! seeded from the ledger, which is exact for this instance only. The fallback book is dropped
//! the next time Redis answers, so a later outage starts again from the ledger rather than from
//! stale local numbers. A reservation taken on Redis that cannot be settled there keeps its room
//! on Redis until it expires, and its cost is missing from the Redis counter until that counter
//! is rebuilt; fail open charges it to the in-process book if that book holds the counter, fail
//! closed answers `Unavailable`, which the caller should log.
//!
//! One Redis script touches the counters of every level of a request, so the keys of different
//! scopes must live on one Redis server (no cluster slot spread).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::LimitError;

/// How long a reservation holds budget without being settled or released.
pub const DEFAULT_RESERVATION_EXPIRY: Duration = Duration::from_secs(10 * 60);

/// A `total` window's keys on Redis expire after this long without use (they are rebuilt from
/// the ledger on the next use).
pub const TOTAL_IDLE_KEEP: Duration = Duration::from_secs(35 * 24 * 3600);

/// A daily or monthly window's keys are kept this long past its end, for settles of requests
/// that straddle the boundary and for instances whose clocks lag.
pub(crate) const WINDOW_GRACE_MS: i64 = 24 * 3600 * 1000;

/// Keys are also kept at least this long past their last use beyond the reservation expiry,
/// so a window chosen from a lagging clock still finds its counter.
pub(crate) const KEEP_AFTER_USE_MS: i64 = 3600 * 1000;

pub(crate) const DAY_MS: i64 = 24 * 3600 * 1000;

/// Scripts compute in Lua doubles, which are exact up to 2^53; larger amounts are refused.
pub(crate) const MAX_MICRO_USD: i64 = 1 << 53;

pub(crate) const MAX_SCOPE_BYTES: usize = 200;

/// More levels than any tenancy has (key, user, team, organization); bounds a script's size.
pub(crate) const MAX_LEVELS: usize = 16;

/// A counter can vanish between seeding and deciding only if Redis loses its data again in
/// that instant; after this many rounds the operation gives up.
pub(crate) const SEED_ROUNDS: usize = 4;

/// A budget's period, on the UTC calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Daily,
    Monthly,
    Total,
}

/// One period's window: the counters of a scope in it are independent of every other window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// `d2026-12-06`, `m2026-12` or `t`; part of the counter's key.
    pub id: String,
    /// Inclusive; the Unix epoch for `total`, which covers all recorded usage.
    pub start_millis: i64,
    /// Exclusive; `None` for `total`.
    pub end_millis: Option<i64>,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    /// The window holding `now_millis` (Unix milliseconds, UTC).
    pub fn window(self, now_millis: i64) -> Window {
        let day = now_millis.div_euclid(DAY_MS);
        let (year, month, dom) = civil_from_days(day);
        match self {
            Period::Daily => {
                let start = day.saturating_mul(DAY_MS);
                Window {
                    id: format!("d{year:04}-{month:02}-{dom:02}"),
                    start_millis: start,
                    end_millis: Some(start.saturating_add(DAY_MS)),
                }
            }
            Period::Monthly => {
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                Window {
                    id: format!("m{year:04}-{month:02}"),
                    start_millis: days_from_civil(year, month, 1).saturating_mul(DAY_MS),
                    end_millis: Some(
                        days_from_civil(next_year, next_month, 1).saturating_mul(DAY_MS),
                    ),
                }
            }
            Period::Total => Window {
                id: "t".to_owned(),
                start_millis: 0,
                end_millis: None,
            },
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "daily" => Ok(Period::Daily),
            "monthly" => Ok(Period::Monthly),
            "total" => Ok(Period::Total),
            _ => Err(LimitError::InvalidBudget(
                "a period is daily, monthly or total".to_owned(),
            )),
        }
    }
}

/// One budget a request must fit in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetLevel {
    /// Whose budget: `key:<id>`, `user:<id>`, `team:<id>`, `org:<id>`. Part of a Redis key, so
    /// no whitespace or control characters, and at most 200 bytes.
    pub scope: String,
    pub limit_micro_usd: i64,
    pub period: Period,
}

#[derive(Debug)]
pub enum BudgetDecision {
    Reserved(Reservation),
    /// Nothing was reserved; `scope` is the first level (in the order given) already spent.
    Exceeded {
        scope: String,
    },
}

/// Budget held for one request at every level, until [`Limiter::settle_budget`] or
/// [`Limiter::release_budget`] consumes it (or it expires).
#[derive(Debug)]
#[must_use = "settle or release a reservation; dropped, it holds budget until it expires"]
pub struct Reservation {
    pub(crate) id: String,
    pub(crate) amount: i64,
    pub(crate) counters: Vec<Counter>,
    pub(crate) created_millis: i64,
    pub(crate) expires_millis: i64,
    pub(crate) on_redis: bool,
}

impl Reservation {
    /// Unique across instances; the member name in every counter's reservation set.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What was reserved at each level.
    pub fn amount_micro_usd(&self) -> i64 {
        self.amount
    }

    /// The counters holding it: (`{scope}:{window id}`, amount).
    pub fn counters(&self) -> impl Iterator<Item = (&str, i64)> {
        self.counters.iter().map(|c| (c.key.as_str(), self.amount))
    }

    /// On the store's clock (Redis `TIME`, or this process's wall clock), Unix milliseconds.
    pub fn created_millis(&self) -> i64 {
        self.created_millis
    }

    /// When it stops counting if neither settled nor released.
    pub fn expires_millis(&self) -> i64 {
        self.expires_millis
    }
}

/// Where spend is rebuilt from when a counter is missing (first use, or after Redis lost its
/// data): the sum of recorded usage cost for `scope` from `from_millis` (inclusive) to now.
/// Implemented by the gateway over the usage records.
pub trait SpendLedger: Send + Sync {
    fn spent_since<'a>(
        &'a self,
        scope: &'a str,
        from_millis: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, LimitError>> + Send + 'a>>;
}

/// One (scope, window) counter as the backends see it.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    /// `{scope}:{window id}`; the backends prefix it.
    pub key: String,
    pub scope: String,
    pub window_start: i64,
    pub limit: i64,
    /// Keep the counter at least until then (window end plus grace); 0 for `total`.
    pub keep_until_ms: i64,
    /// ...and at least this long after its last use.
    pub keep_for_ms: i64,
}

/// A backend's answer: done, or these counters (indices) are missing and need a seed.
pub(crate) enum Attempt<T> {
    Done(T),
    Missing(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveOutcome {
    Reserved {
        created_ms: i64,
        expires_ms: i64,
    },
    /// The index of the first spent level.
    Exceeded(usize),
}

/// Why a Redis budget operation did not complete.
pub(crate) enum Failure {
    Redis(redis::RedisError),
    /// The ledger's own error, returned to the caller as is (neither backend can decide
    /// without it).
    Ledger(LimitError),
}

/// Budget state the clones of a [`Limiter`] share.
pub(crate) struct Shared {
    pub(crate) flights: SeedFlights,
    /// The in-process book was used as a fallback for Redis and must be dropped when Redis
    /// answers again.
    pub(crate) fallback_used: AtomicBool,
    /// Reservation ids are this limiter's random prefix and a sequence number: unique across
    /// instances without a random draw (a system call) per request.
    pub(crate) id_prefix: String,
    pub(crate) next_id: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            flights: SeedFlights::default(),
            fallback_used: AtomicBool::new(false),
            id_prefix: random.get(..20).unwrap_or(&random).to_owned(),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub(crate) fn reservation_id(&self) -> String {
        let sequence = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{sequence:x}", self.id_prefix)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map holds only whole entries; a panic elsewhere cannot leave it half-written.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One ledger query per missing counter at a time on this instance: after a Redis restart
/// every request misses at once, and they should not all sum the usage table.
#[derive(Default)]
pub(crate) struct SeedFlights {
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<i64>>>>>,
}

impl SeedFlights {
    async fn spent(&self, counter: &Counter, ledger: &dyn SpendLedger) -> Result<i64, LimitError> {
        // The first to miss creates the flight with its lock already held, so everyone who
        // joins waits for its answer; joiners reuse that answer, later misses start anew.
        let (flight, leader) = {
            let mut flights = lock(&self.flights);
            match flights.get(&counter.key) {
                Some(flight) => (flight.clone(), None),
                None => {
                    let flight = Arc::new(tokio::sync::Mutex::new(None));
                    let guard = flight.clone().try_lock_owned().ok();
                    flights.insert(counter.key.clone(), flight.clone());
                    (flight, guard)
                }
            }
        };
        let mut slot = match leader {
            Some(guard) => guard,
            None => {
                let guard = flight.clone().lock_owned().await;
                if let Some(spent) = *guard {
                    return Ok(spent);
                }
                // The leader failed or was cancelled: ask the ledger ourselves.
                guard
            }
        };
        let spent = ledger
            .spent_since(&counter.scope, counter.window_start)
            .await;
        if let Ok(spent) = spent {
            *slot = Some(spent);
        }
        drop(slot);
        let mut flights = lock(&self.flights);
        if flights
            .get(&counter.key)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            flights.remove(&counter.key);
        }
        spent
    }
}

/// The seeds gathered for one operation's counters while it is retried.
pub(crate) struct Seeds {
    pub(crate) values: Vec<Option<i64>>,
    pub(crate) rounds: usize,
}

impl Seeds {
    pub(crate) fn new(counters: usize) -> Self {
        Self {
            values: vec![None; counters],
            rounds: 0,
        }
    }

    /// Fetches seeds for the counters an attempt reported missing.
    pub(crate) async fn fill(
        &mut self,
        missing: Vec<usize>,
        counters: &[Counter],
        flights: &SeedFlights,
        ledger: &dyn SpendLedger,
    ) -> Result<(), Failure> {
        self.rounds += 1;
        if self.rounds >= SEED_ROUNDS {
            return Err(Failure::Redis(redis::RedisError::from((
                redis::ErrorKind::TryAgain,
                "budget counters disappeared while being seeded",
            ))));
        }
        for index in missing {
            let Some(counter) = counters.get(index) else {
                continue;
            };
            let spent = flights
                .spent(counter, ledger)
                .await
                .map_err(Failure::Ledger)?;
            if let Some(seed) = self.values.get_mut(index) {
                *seed = Some(spent);
            }
        }
        Ok(())
    }
}

pub(crate) fn check_amount(what: &str, micro_usd: i64) -> Result<(), LimitError> {
    if micro_usd < 0 {
        return Err(LimitError::InvalidBudget(format!(
            "{what} must not be negative"
        )));
    }
    if micro_usd > MAX_MICRO_USD {
        return Err(LimitError::InvalidBudget(format!(
            "{what} is above 2^53 micro-USD"
        )));
    }
    Ok(())
}

pub(crate) fn check_scope(scope: &str) -> Result<(), LimitError> {
    if scope.is_empty() {
        return Err(LimitError::InvalidBudget(
            "a scope must not be empty".to_owned(),
        ));
    }
    if scope.len() > MAX_SCOPE_BYTES {
        return Err(LimitError::InvalidBudget(format!(
            "a scope is at most {MAX_SCOPE_BYTES} bytes"
        )));
    }
    if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // The scope itself is not echoed: it may come from stored data.
        return Err(LimitError::InvalidBudget(
            "a scope must not contain spaces or control characters".to_owned(),
        ));
    }
    Ok(())
}

/// (year, month 1–12, day 1–31) of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06T00:00:00Z.
    const DEC_6_2026: i64 = 1_796_515_200_000;

    #[test]
    fn days_match_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 12, 6) * DAY_MS, DEC_6_2026);
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2100, 3, 1) - 1),
            (2100, 2, 28)
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // Every day of four centuries round-trips and follows the previous one.
        let mut previous = civil_from_days(days_from_civil(1999, 12, 31));
        for day in days_from_civil(2000, 1, 1)..days_from_civil(2400, 1, 1) {
            let date = civil_from_days(day);
            assert_eq!(days_from_civil(date.0, date.1, date.2), day);
            assert!(date > previous, "{date:?} after {previous:?}");
            previous = date;
        }
    }

    #[test]
    fn windows_follow_the_utc_calendar() {
        let last_ms = DEC_6_2026 + DAY_MS - 1;
        let day = Period::Daily.window(DEC_6_2026 + 12 * 3600 * 1000);
        assert_eq!(day.id, "d2026-12-06");
        assert_eq!(day.start_millis, DEC_6_2026);
        assert_eq!(day.end_millis, Some(DEC_6_2026 + DAY_MS));
        assert_eq!(Period::Daily.window(last_ms).id, "d2026-12-06");
        assert_eq!(Period::Daily.window(last_ms + 1).id, "d2026-12-07");

        let month = Period::Monthly.window(DEC_6_2026);
        assert_eq!(month.id, "m2026-12");
        assert_eq!(month.start_millis, days_from_civil(2026, 12, 1) * DAY_MS);
        let new_year = days_from_civil(2027, 1, 1) * DAY_MS;
        assert_eq!(month.end_millis, Some(new_year));
        assert_eq!(Period::Monthly.window(new_year - 1).id, "m2026-12");
        assert_eq!(Period::Monthly.window(new_year).id, "m2027-01");
        let leap = days_from_civil(2028, 2, 29) * DAY_MS;
        assert_eq!(Period::Monthly.window(leap).end_millis, Some(leap + DAY_MS));
        assert_eq!(Period::Daily.window(leap).id, "d2028-02-29");

        let total = Period::Total.window(DEC_6_2026);
        assert_eq!(total, Period::Total.window(new_year * 3));
        assert_eq!(
            (total.id.as_str(), total.start_millis, total.end_millis),
            ("t", 0, None)
        );
    }

    #[test]
    fn periods_parse_and_print() {
        for period in [Period::Daily, Period::Monthly, Period::Total] {
            assert_eq!(period.as_str().parse::<Period>().unwrap(), period);
            assert_eq!(period.to_string(), period.as_str());
        }
        assert!(matches!(
            "weekly".parse::<Period>(),
            Err(LimitError::InvalidBudget(_))
        ));
        assert!("Daily".parse::<Period>().is_err());
    }

    #[test]
    fn scopes_and_amounts_are_checked() {
        assert!(check_scope("key:0190a1b2-c3d4").is_ok());
        assert!(check_scope("org:défaut").is_ok());
        for bad in ["", "key:a b", "key:a\nb", "key:a\tb", "key:\u{0}"] {
            assert!(check_scope(bad).is_err(), "{bad:?}");
        }
        assert!(check_scope(&"k".repeat(200)).is_ok());
        assert!(check_scope(&"k".repeat(201)).is_err());
        assert!(check_amount("x", 0).is_ok());
        assert!(check_amount("x", MAX_MICRO_USD).is_ok());
        assert!(check_amount("x", -1).is_err());
        assert!(check_amount("x", MAX_MICRO_USD + 1).is_err());
    }
}
