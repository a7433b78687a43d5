//! Budget reservations (SPEC §18): the same bodies on the in-process backend and on a real
//! Redis, plus two instances on one Redis, Redis data loss and Redis outages on a private
//! `redis-server`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_limits::{
    BudgetDecision, BudgetLevel, LimitError, Limiter, Period, RedisFailureMode, Reservation,
    SpendLedger,
};
use cortex_testkit::TempRedis;

/// 2026-12-06T00:00:00Z.
const DEC_6_2026: i64 = 1_796_515_200_000;
const DAY: i64 = 86_400_000;

/// Usage records as the gateway's ledger would sum them, counting the queries per scope.
#[derive(Default)]
struct FakeLedger {
    rows: Mutex<Vec<(String, i64, i64)>>,
    calls: Mutex<HashMap<String, usize>>,
    delay: Duration,
    fail: bool,
}

impl FakeLedger {
    fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    fn record(&self, scope: &str, at_millis: i64, micro_usd: i64) {
        self.rows
            .lock()
            .unwrap()
            .push((scope.to_owned(), at_millis, micro_usd));
    }

    fn calls(&self, scope: &str) -> usize {
        self.calls.lock().unwrap().get(scope).copied().unwrap_or(0)
    }
}

impl SpendLedger for FakeLedger {
    fn spent_since<'a>(
        &'a self,
        scope: &'a str,
        from_millis: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, LimitError>> + Send + 'a>> {
        Box::pin(async move {
            *self
                .calls
                .lock()
                .unwrap()
                .entry(scope.to_owned())
                .or_default() += 1;
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.fail {
                return Err(LimitError::Ledger("the database is away".to_owned()));
            }
            Ok(self
                .rows
                .lock()
                .unwrap()
                .iter()
                .filter(|(s, at, _)| s == scope && *at >= from_millis)
                .map(|(_, _, cost)| cost)
                .sum())
        })
    }
}

fn level(scope: &str, limit_micro_usd: i64, period: Period) -> BudgetLevel {
    BudgetLevel {
        scope: scope.to_owned(),
        limit_micro_usd,
        period,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn reserved(decision: BudgetDecision) -> Reservation {
    match decision {
        BudgetDecision::Reserved(reservation) => reservation,
        BudgetDecision::Exceeded { scope } => panic!("refused at {scope}, expected a reservation"),
    }
}

fn exceeded(decision: &BudgetDecision) -> Option<&str> {
    match decision {
        BudgetDecision::Exceeded { scope } => Some(scope),
        BudgetDecision::Reserved(_) => None,
    }
}

/// Deletes a test's keys from the shared Redis: budget windows are kept for days, a `total`
/// window for weeks, which test runs should not leave behind.
async fn forget(prefix: &str) {
    let mut connection = redis::Client::open(super::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Runs a body on the in-process backend and on the shared Redis (its own prefix).
macro_rules! budget_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(cortex_limits::Limiter::in_process()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let prefix = super::super::prefix();
                super::$name(super::super::redis_limiter(&prefix).await).await;
                super::forget(&prefix).await;
            }
        }
    )*};
}

async fn a_team_level_refuses_a_second_key(limiter: Limiter) {
    let ledger = FakeLedger::default();
    let now = now_ms();
    let key_a = [
        level("key:a", 10_000, Period::Daily),
        level("team:t", 1_000, Period::Monthly),
    ];
    let key_b = [
        level("key:b", 10_000, Period::Daily),
        level("team:t", 1_000, Period::Monthly),
    ];
    let r = reserved(
        limiter
            .reserve_budget(&key_a, 1_000, now, &ledger)
            .await
            .unwrap(),
    );
    assert_eq!(r.amount_micro_usd(), 1_000);
    let counters: Vec<(String, i64)> = r.counters().map(|(k, a)| (k.to_owned(), a)).collect();
    assert_eq!(counters.len(), 2);
    assert!(counters[0].0.starts_with("key:a:d"), "{counters:?}");
    assert!(counters[1].0.starts_with("team:t:m"), "{counters:?}");
    assert!(r.expires_millis() > r.created_millis());
    limiter.settle_budget(r, 1_000, &ledger).await.unwrap();

    // The team is spent: key b, with its own budget untouched, is refused at the team level,
    // and the refusal reserves nothing at the key level.
    let refused = limiter
        .reserve_budget(&key_b, 1, now, &ledger)
        .await
        .unwrap();
    assert_eq!(exceeded(&refused), Some("team:t"));
    assert_eq!(
        limiter.budget_usage(&key_b[0], now, &ledger).await.unwrap(),
        (0, 0)
    );
    assert_eq!(
        limiter.budget_usage(&key_b[1], now, &ledger).await.unwrap(),
        (1_000, 0)
    );
    // Key a is refused at its first spent level, in the order given.
    let levels = [
        level("key:a", 1_000, Period::Daily),
        level("team:t", 1_000, Period::Monthly),
    ];
    let refused = limiter
        .reserve_budget(&levels, 1, now, &ledger)
        .await
        .unwrap();
    assert_eq!(exceeded(&refused), Some("key:a"));
    // Without the team level, key b is free.
    let r = reserved(
        limiter
            .reserve_budget(&key_b[..1], 5, now, &ledger)
            .await
            .unwrap(),
    );
    limiter.settle_budget(r, 5, &ledger).await.unwrap();
}

/// 200 concurrent reserve → settle (actual = reserved) against a budget that covers 20 of
/// them, spread over `limiters` (instances sharing one store).
async fn two_hundred_concurrent_requests(limiters: &[Limiter]) {
    let ledger = Arc::new(FakeLedger::default());
    let now = now_ms();
    let amount = 100;
    // 19.5 requests' worth: the 20th is admitted (the level was not yet spent) and overshoots.
    let limit = 1_950;
    let levels = Arc::new(vec![
        level("key:exact", limit, Period::Daily),
        level("org:exact", 1_000_000, Period::Monthly),
    ]);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let limiter = limiters[i as usize % limiters.len()].clone();
        let (ledger, levels) = (ledger.clone(), levels.clone());
        tasks.push(tokio::spawn(async move {
            match limiter
                .reserve_budget(&levels, amount, now, &*ledger)
                .await
                .unwrap()
            {
                BudgetDecision::Reserved(r) => {
                    tokio::time::sleep(Duration::from_millis(i % 7)).await;
                    limiter.settle_budget(r, amount, &*ledger).await.unwrap();
                    1
                }
                BudgetDecision::Exceeded { scope } => {
                    assert_eq!(scope, "key:exact");
                    0
                }
            }
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    let (spent, held) = limiters[0]
        .budget_usage(&levels[0], now, &*ledger)
        .await
        .unwrap();
    assert_eq!(held, 0);
    assert!(
        spent <= limit + amount,
        "spent {spent} past {limit} + {amount}"
    );
    // Actual = reserved makes it deterministic: exactly the 20 the budget covers.
    assert_eq!(admitted, 20);
    assert_eq!(spent, 20 * amount);
    assert_eq!(
        limiters[0]
            .budget_usage(&levels[1], now, &*ledger)
            .await
            .unwrap(),
        (2_000, 0)
    );

    // Cheaper than reserved (the usual case): the bound is one reservation past the limit.
    let levels = Arc::new(vec![level("key:cheaper", limit, Period::Total)]);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let limiter = limiters[i as usize % limiters.len()].clone();
        let (ledger, levels) = (ledger.clone(), levels.clone());
        tasks.push(tokio::spawn(async move {
            if let BudgetDecision::Reserved(r) = limiter
                .reserve_budget(&levels, amount, now, &*ledger)
                .await
                .unwrap()
            {
                tokio::time::sleep(Duration::from_millis(i % 5)).await;
                limiter.settle_budget(r, 37, &*ledger).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Room freed by cheaper settles is used until a request finds the level spent.
    while let BudgetDecision::Reserved(r) = limiters[0]
        .reserve_budget(&levels, amount, now, &*ledger)
        .await
        .unwrap()
    {
        limiters[0].settle_budget(r, 37, &*ledger).await.unwrap();
    }
    let (spent, held) = limiters[0]
        .budget_usage(&levels[0], now, &*ledger)
        .await
        .unwrap();
    assert_eq!(held, 0);
    assert!(spent >= limit && spent < limit + amount, "spent {spent}");
}

async fn exactness_under_concurrency(limiter: Limiter) {
    two_hundred_concurrent_requests(&[limiter]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactness_across_two_instances_on_one_redis() {
    let shared = super::prefix();
    let a = super::redis_limiter(&shared).await;
    let b = super::redis_limiter(&shared).await;
    two_hundred_concurrent_requests(&[a, b]).await;
    forget(&shared).await;
}

async fn release_gives_the_room_back(limiter: Limiter) {
    let ledger = FakeLedger::default();
    let now = now_ms();
    let levels = [level("key:r", 100, Period::Monthly)];
    let r = reserved(
        limiter
            .reserve_budget(&levels, 100, now, &ledger)
            .await
            .unwrap(),
    );
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (0, 100)
    );
    let refused = limiter
        .reserve_budget(&levels, 1, now, &ledger)
        .await
        .unwrap();
    assert_eq!(exceeded(&refused), Some("key:r"));
    limiter.release_budget(r).await.unwrap();
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (0, 0)
    );
    let r = reserved(
        limiter
            .reserve_budget(&levels, 100, now, &ledger)
            .await
            .unwrap(),
    );
    limiter.settle_budget(r, 0, &ledger).await.unwrap();
    // A reservation with no levels is trivially granted and settles as a no-op.
    let r = reserved(
        limiter
            .reserve_budget(&[], 100, now, &ledger)
            .await
            .unwrap(),
    );
    limiter.settle_budget(r, 100, &ledger).await.unwrap();
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (0, 0)
    );
}

/// Settling without IO: in process it happens at once (the same result as the async settle);
/// on Redis the reservation is handed back for the async path, unchanged.
async fn settling_now_is_the_same_settle_or_hands_the_reservation_back(limiter: Limiter) {
    let ledger = FakeLedger::default();
    let now = now_ms();
    let levels = [
        level("key:now", 1_000, Period::Daily),
        level("team:now", 5_000, Period::Total),
    ];
    let r = reserved(
        limiter
            .reserve_budget(&levels, 300, now, &ledger)
            .await
            .unwrap(),
    );
    match limiter.settle_budget_now(r, 120) {
        Ok(()) => {
            for level in &levels {
                assert_eq!(
                    limiter.budget_usage(level, now, &ledger).await.unwrap(),
                    (120, 0)
                );
            }
        }
        Err(r) => {
            assert_eq!(r.amount_micro_usd(), 300, "handed back whole");
            limiter.settle_budget(r, 120, &ledger).await.unwrap();
            for level in &levels {
                assert_eq!(
                    limiter.budget_usage(level, now, &ledger).await.unwrap(),
                    (120, 0)
                );
            }
        }
    }
    // A negative cost is never settled at once: the async path refuses it and releases.
    let r = reserved(
        limiter
            .reserve_budget(&levels, 300, now, &ledger)
            .await
            .unwrap(),
    );
    let r = limiter.settle_budget_now(r, -1).unwrap_err();
    assert!(limiter.settle_budget(r, -1, &ledger).await.is_err());
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (120, 0)
    );
}

async fn an_expired_reservation_stops_counting(limiter: Limiter) {
    let limiter = limiter.with_reservation_expiry(Duration::from_millis(300));
    let ledger = FakeLedger::default();
    let now = now_ms();
    let levels = [level("key:crash", 100, Period::Daily)];
    let started = Instant::now();
    // An instance reserves and dies: the reservation is never settled nor released.
    let abandoned = reserved(
        limiter
            .reserve_budget(&levels, 100, now, &ledger)
            .await
            .unwrap(),
    );
    assert!((250..=1_000).contains(&(abandoned.expires_millis() - abandoned.created_millis())));
    let again = loop {
        match limiter
            .reserve_budget(&levels, 60, now, &ledger)
            .await
            .unwrap()
        {
            BudgetDecision::Reserved(r) => break r,
            BudgetDecision::Exceeded { .. } => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "an abandoned reservation never expired"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (0, 60)
    );
    limiter.settle_budget(again, 60, &ledger).await.unwrap();
    // A late settle of an expired reservation still charges what the request cost.
    limiter.settle_budget(abandoned, 30, &ledger).await.unwrap();
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (90, 0)
    );
}

async fn windows_roll_at_utc_day_and_month_boundaries(limiter: Limiter) {
    let ledger = FakeLedger::default();
    let spend_all = async |levels: &[BudgetLevel], at: i64| {
        let r = reserved(
            limiter
                .reserve_budget(levels, 100, at, &ledger)
                .await
                .unwrap(),
        );
        limiter.settle_budget(r, 100, &ledger).await.unwrap();
        let refused = limiter
            .reserve_budget(levels, 1, at, &ledger)
            .await
            .unwrap();
        assert!(exceeded(&refused).is_some(), "spent at {at}");
    };
    let admits = async |levels: &[BudgetLevel], at: i64| {
        let r = reserved(
            limiter
                .reserve_budget(levels, 1, at, &ledger)
                .await
                .unwrap(),
        );
        limiter.release_budget(r).await.unwrap();
    };

    let daily = [level("key:day", 100, Period::Daily)];
    let last_ms_of_dec_6 = DEC_6_2026 + DAY - 1;
    spend_all(&daily, DEC_6_2026 + 3_600_000).await;
    let refused = limiter
        .reserve_budget(&daily, 1, last_ms_of_dec_6, &ledger)
        .await
        .unwrap();
    assert!(exceeded(&refused).is_some(), "the same UTC day");
    admits(&daily, last_ms_of_dec_6 + 1).await;

    let monthly = [level("key:month", 100, Period::Monthly)];
    let new_year = DEC_6_2026 + 26 * DAY; // 2027-01-01T00:00:00Z
    assert_eq!(Period::Monthly.window(new_year).id, "m2027-01");
    spend_all(&monthly, DEC_6_2026).await;
    let refused = limiter
        .reserve_budget(&monthly, 1, new_year - 1, &ledger)
        .await
        .unwrap();
    assert!(exceeded(&refused).is_some(), "the same UTC month");
    admits(&monthly, new_year).await;
    assert_eq!(
        limiter
            .budget_usage(&monthly[0], new_year, &ledger)
            .await
            .unwrap(),
        (0, 0)
    );

    let total = [level("key:total", 100, Period::Total)];
    spend_all(&total, DEC_6_2026).await;
    for later in [new_year, new_year + 4 * 365 * DAY] {
        let refused = limiter
            .reserve_budget(&total, 1, later, &ledger)
            .await
            .unwrap();
        assert_eq!(exceeded(&refused), Some("key:total"), "total never rolls");
    }
}

async fn a_missing_counter_is_seeded_from_the_ledger_once(limiter: Limiter) {
    let ledger = FakeLedger::slow(Duration::from_millis(50));
    let now = now_ms();
    let today = Period::Daily.window(now).start_millis;
    // Earlier today, and yesterday (another window: not counted).
    ledger.record("key:s", today, 600);
    ledger.record("key:s", today + 1, 100);
    ledger.record("key:s", today - 1, 5_000);
    let levels = [level("key:s", 1_000, Period::Daily)];
    for round in 1..=5 {
        let r = reserved(
            limiter
                .reserve_budget(&levels, 50, now, &ledger)
                .await
                .unwrap(),
        );
        limiter.settle_budget(r, 50, &ledger).await.unwrap();
        assert_eq!(
            limiter
                .budget_usage(&levels[0], now, &ledger)
                .await
                .unwrap(),
            (700 + 50 * round, 0)
        );
    }
    assert_eq!(ledger.calls("key:s"), 1);

    // Fifty requests miss a fresh counter at once: one ledger query between them.
    ledger.record("key:herd", today, 10);
    let ledger = Arc::new(ledger);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (limiter, ledger) = (limiter.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let levels = [level("key:herd", 1_000, Period::Monthly)];
            let r = reserved(
                limiter
                    .reserve_budget(&levels, 1, now, &*ledger)
                    .await
                    .unwrap(),
            );
            limiter.settle_budget(r, 1, &*ledger).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(ledger.calls("key:herd"), 1);
    assert_eq!(
        limiter
            .budget_usage(&level("key:herd", 1_000, Period::Monthly), now, &*ledger)
            .await
            .unwrap(),
        (60, 0)
    );
}

async fn bad_input_is_a_clear_error(limiter: Limiter) {
    let ledger = FakeLedger::default();
    let now = now_ms();
    let good = [level("key:ok", 1_000, Period::Daily)];
    let invalid = |result: Result<BudgetDecision, LimitError>, words: &str| match result {
        Err(err @ LimitError::InvalidBudget(_)) => {
            assert!(err.to_string().contains(words), "{err}")
        }
        other => panic!("expected an invalid-budget error about {words}, got {other:?}"),
    };
    invalid(
        limiter.reserve_budget(&good, -1, now, &ledger).await,
        "must not be negative",
    );
    invalid(
        limiter.reserve_budget(&good, 1 << 60, now, &ledger).await,
        "2^53",
    );
    for scope in ["key:a b", "key:a\nb", "key:\r", ""] {
        let levels = [level(scope, 1_000, Period::Daily)];
        let result = limiter.reserve_budget(&levels, 1, now, &ledger).await;
        assert!(
            matches!(result, Err(LimitError::InvalidBudget(_))),
            "{scope:?}: {result:?}"
        );
    }
    let long = [level(
        &format!("key:{}", "x".repeat(197)),
        1_000,
        Period::Daily,
    )];
    invalid(
        limiter.reserve_budget(&long, 1, now, &ledger).await,
        "200 bytes",
    );
    let negative_limit = [level("key:n", -5, Period::Daily)];
    invalid(
        limiter
            .reserve_budget(&negative_limit, 1, now, &ledger)
            .await,
        "budget limit must not be negative",
    );
    let twice = [good[0].clone(), good[0].clone()];
    invalid(
        limiter.reserve_budget(&twice, 1, now, &ledger).await,
        "twice",
    );
    assert!(matches!(
        limiter
            .budget_usage(&level("a b", 1, Period::Total), now, &ledger)
            .await,
        Err(LimitError::InvalidBudget(_))
    ));
    assert!(matches!(
        "weekly".parse::<Period>(),
        Err(LimitError::InvalidBudget(_))
    ));
    // Nothing was reserved by any of those; a refused settle releases its reservation.
    let r = reserved(
        limiter
            .reserve_budget(&good, 400, now, &ledger)
            .await
            .unwrap(),
    );
    let err = limiter.settle_budget(r, -3, &ledger).await.unwrap_err();
    assert!(matches!(err, LimitError::InvalidBudget(_)), "{err:?}");
    assert_eq!(
        limiter.budget_usage(&good[0], now, &ledger).await.unwrap(),
        (0, 0)
    );
}

async fn a_failing_ledger_is_reported(limiter: Limiter) {
    let ledger = FakeLedger {
        fail: true,
        ..FakeLedger::default()
    };
    let levels = [level("key:noledger", 1_000, Period::Daily)];
    let err = limiter
        .reserve_budget(&levels, 1, now_ms(), &ledger)
        .await
        .unwrap_err();
    assert!(matches!(err, LimitError::Ledger(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the spend ledger is unavailable: the database is away"
    );
}

budget_both!(
    a_team_level_refuses_a_second_key,
    exactness_under_concurrency,
    release_gives_the_room_back,
    settling_now_is_the_same_settle_or_hands_the_reservation_back,
    an_expired_reservation_stops_counting,
    windows_roll_at_utc_day_and_month_boundaries,
    a_missing_counter_is_seeded_from_the_ledger_once,
    bad_input_is_a_clear_error,
    a_failing_ledger_is_reported,
);

/// Waits until a limiter reports `expected` for a level: after a restart it leaves Redis alone
/// for a second (answering `Unavailable` when failing closed, from its local book when failing
/// open), then reconnects.
async fn usage_becomes(
    limiter: &Limiter,
    level: &BudgetLevel,
    now: i64,
    ledger: &FakeLedger,
    expected: (i64, i64),
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage = limiter.budget_usage(level, now, ledger).await;
        match usage {
            Ok(usage) if usage == expected => return,
            Ok(_) | Err(LimitError::Unavailable) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected {expected:?} once Redis is back, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_data_loss_reseeds_from_the_ledger_without_double_counting() {
    let mut redis = TempRedis::start();
    let limiter = Limiter::redis(&redis.url(), "loss", RedisFailureMode::FailClosed)
        .await
        .unwrap();
    let ledger = FakeLedger::default();
    let now = now_ms();
    let start = Period::Monthly.window(now).start_millis;
    let levels = [level("key:loss", 800, Period::Monthly)];
    ledger.record("key:loss", start, 500);

    // A finished request: settled, then its usage row written by the usage writer.
    let r = reserved(
        limiter
            .reserve_budget(&levels, 100, now, &ledger)
            .await
            .unwrap(),
    );
    limiter.settle_budget(r, 100, &ledger).await.unwrap();
    ledger.record("key:loss", now, 100);
    assert_eq!(ledger.calls("key:loss"), 1);

    // A request in flight when Redis loses everything: its settle finds no counter, seeds it
    // from the ledger (which does not hold this request yet), then adds its own cost.
    let in_flight = reserved(
        limiter
            .reserve_budget(&levels, 100, now, &ledger)
            .await
            .unwrap(),
    );
    let mut client = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut client)
        .await
        .unwrap();
    limiter
        .settle_budget(in_flight, 100, &ledger)
        .await
        .unwrap();
    ledger.record("key:loss", now, 100);
    assert_eq!(ledger.calls("key:loss"), 2);
    assert_eq!(
        limiter
            .budget_usage(&levels[0], now, &ledger)
            .await
            .unwrap(),
        (700, 0)
    );

    // A restarted server starts empty: the next use rebuilds 700 from the ledger, once.
    redis.restart();
    usage_becomes(&limiter, &levels[0], now, &ledger, (700, 0)).await;
    assert_eq!(ledger.calls("key:loss"), 3);
    let r = reserved(
        limiter
            .reserve_budget(&levels, 100, now, &ledger)
            .await
            .unwrap(),
    );
    let refused = limiter
        .reserve_budget(&levels, 100, now, &ledger)
        .await
        .unwrap();
    assert_eq!(
        exceeded(&refused),
        Some("key:loss"),
        "700 spent + 100 held reach 800"
    );
    limiter.settle_budget(r, 100, &ledger).await.unwrap();
    assert_eq!(ledger.calls("key:loss"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_budgets_closed_unless_they_may_fail_open() {
    let mut redis = TempRedis::start();
    let url = redis.url();
    let open = Limiter::redis(&url, "outage", RedisFailureMode::FailOpen)
        .await
        .unwrap()
        .with_budgets_failing_open();
    // Failing open for rate limits does not make budgets fail open: that takes the opt-in.
    let rates_open = Limiter::redis(&url, "outage", RedisFailureMode::FailOpen)
        .await
        .unwrap();
    let closed = Limiter::redis(&url, "outage", RedisFailureMode::FailClosed)
        .await
        .unwrap();
    let ledger = FakeLedger::default();
    let now = now_ms();
    let levels = [level("key:o", 1_000, Period::Daily)];
    ledger.record("key:o", now, 400);

    // Both share the Redis counter while it is up.
    let r = reserved(
        open.reserve_budget(&levels, 300, now, &ledger)
            .await
            .unwrap(),
    );
    assert_eq!(
        closed.budget_usage(&levels[0], now, &ledger).await.unwrap(),
        (400, 300)
    );
    redis.stop();
    assert!(matches!(
        closed.reserve_budget(&levels, 1, now, &ledger).await,
        Err(LimitError::Unavailable)
    ));
    assert!(matches!(
        rates_open.reserve_budget(&levels, 1, now, &ledger).await,
        Err(LimitError::Unavailable)
    ));
    // The Redis reservation cannot be settled there: fail open accepts it; fail closed says so.
    open.settle_budget(r, 300, &ledger).await.unwrap();
    // Fail open: the local book, seeded from the ledger, decides for this instance alone.
    let local = reserved(
        open.reserve_budget(&levels, 600, now, &ledger)
            .await
            .unwrap(),
    );
    assert_eq!(
        open.budget_usage(&levels[0], now, &ledger).await.unwrap(),
        (400, 600)
    );
    let refused = open.reserve_budget(&levels, 1, now, &ledger).await.unwrap();
    assert_eq!(exceeded(&refused), Some("key:o"));
    open.settle_budget(local, 600, &ledger).await.unwrap();
    assert_eq!(
        open.budget_usage(&levels[0], now, &ledger).await.unwrap(),
        (1_000, 0)
    );

    // Redis is back (and empty): the ledger holds what the gateway recorded meanwhile.
    ledger.record("key:o", now, 300);
    ledger.record("key:o", now, 600);
    redis.restart();
    usage_becomes(&closed, &levels[0], now, &ledger, (1_300, 0)).await;
    usage_becomes(&open, &levels[0], now, &ledger, (1_300, 0)).await;
    let refused = open.reserve_budget(&levels, 1, now, &ledger).await.unwrap();
    assert_eq!(exceeded(&refused), Some("key:o"));
}
