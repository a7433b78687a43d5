//! Limiter tests. Every body runs against the in-process backend and against a real Redis
//! (127.0.0.1:6379, or `CORTEX_TEST_REDIS_URL`); a missing Redis fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::future::Future;
use std::time::{Duration, Instant};

use cortex_limits::{LimitError, Limiter, Quota, RedisFailureMode};
use cortex_testkit::TempRedis;

mod budget;

fn redis_url() -> String {
    std::env::var("CORTEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test (or test run) uses.
fn prefix() -> String {
    format!("cortex-test-{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

async fn redis_limiter(prefix: &str) -> Limiter {
    Limiter::redis(&redis_url(), prefix, RedisFailureMode::FailClosed)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is required for this test and is not reachable at {}: {e}",
                redis_url()
            )
        })
}

async fn on_both<F, Fut>(body: F)
where
    F: Fn(Limiter) -> Fut,
    Fut: Future<Output = ()>,
{
    body(Limiter::in_process()).await;
    body(redis_limiter(&prefix()).await).await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(cortex_limits::Limiter::in_process()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::redis_limiter(&super::prefix()).await).await
            }
        }
    )*};
}

async fn burst_then_refusal_then_recovery(limiter: Limiter) {
    let quota = Quota {
        rate_per_second: 10.0,
        burst: 3,
    };
    for expected in [2, 1, 0] {
        let decision = limiter.check_rate("k", quota).await.unwrap();
        assert!(decision.allowed);
        assert_eq!(decision.remaining, expected);
        assert_eq!(decision.limit, 3);
    }
    let refused = limiter.check_rate("k", quota).await.unwrap();
    assert!(!refused.allowed);
    let retry = refused.retry_after.unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(110),
        "{retry:?}"
    );
    // Another key is independent.
    assert!(limiter.check_rate("other", quota).await.unwrap().allowed);
    tokio::time::sleep(retry + Duration::from_millis(20)).await;
    assert!(limiter.check_rate("k", quota).await.unwrap().allowed);
}

async fn slots_cap_and_free_on_drop(limiter: Limiter) {
    let lease = Duration::from_secs(5);
    let a = limiter
        .acquire_slot("s", 2, lease)
        .await
        .unwrap()
        .expect("first slot");
    let b = limiter
        .acquire_slot("s", 2, lease)
        .await
        .unwrap()
        .expect("second slot");
    assert!(
        limiter.acquire_slot("s", 2, lease).await.unwrap().is_none(),
        "third slot must be refused"
    );
    drop(a);
    // Release on Redis is sent from a spawned task; poll briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    let c = loop {
        if let Some(slot) = limiter.acquire_slot("s", 2, lease).await.unwrap() {
            break slot;
        }
        assert!(Instant::now() < deadline, "a dropped slot was not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop((b, c));
}

async fn token_windows(limiter: Limiter) {
    assert_eq!(limiter.tokens_in_window("t").await.unwrap(), 0);
    limiter.charge_tokens("t", 120).await.unwrap();
    limiter.charge_tokens("t", 30).await.unwrap();
    let used = limiter.tokens_in_window("t").await.unwrap();
    assert!((150..=150).contains(&used) || used >= 150 - 1, "{used}");
    assert_eq!(limiter.tokens_in_window("t2").await.unwrap(), 0);
}

both_backends!(
    burst_then_refusal_then_recovery,
    slots_cap_and_free_on_drop,
    token_windows
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lease_expires_when_the_holder_dies() {
    let limiter = redis_limiter(&prefix()).await;
    let lease = Duration::from_millis(300);
    let held = limiter
        .acquire_slot("crash", 1, lease)
        .await
        .unwrap()
        .unwrap();
    // While held (and renewed), the slot stays taken past its first lease.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        limiter
            .acquire_slot("crash", 1, lease)
            .await
            .unwrap()
            .is_none(),
        "renewal must keep the slot"
    );
    held.abandon();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if limiter
            .acquire_slot("crash", 1, lease)
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an abandoned lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_global_limit() {
    let shared = prefix();
    let a = redis_limiter(&shared).await;
    let b = redis_limiter(&shared).await;
    let quota = Quota {
        rate_per_second: 5.0,
        burst: 5,
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            limiter.check_rate("global", quota).await.unwrap().allowed
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the burst took too long to be meaningful"
    );
    assert!((5..=10).contains(&admitted), "admitted {admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_or_closed_as_configured_and_recovers() {
    let mut redis = TempRedis::start();
    let url = redis.url();
    let open = Limiter::redis(&url, "t", RedisFailureMode::FailOpen)
        .await
        .unwrap();
    let closed = Limiter::redis(&url, "t", RedisFailureMode::FailClosed)
        .await
        .unwrap();
    let quota = Quota {
        rate_per_second: 1.0,
        burst: 1,
    };
    assert!(closed.check_rate("x", quota).await.unwrap().allowed);
    assert!(
        !open.check_rate("x", quota).await.unwrap().allowed,
        "both share the Redis bucket"
    );

    redis.stop();
    // Fail open: the in-process limiter answers (its own fresh bucket allows).
    assert!(open.check_rate("x", quota).await.unwrap().allowed);
    // Fail closed: refused as unavailable.
    assert!(matches!(
        closed.check_rate("x", quota).await,
        Err(LimitError::Unavailable)
    ));

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if closed.check_rate("y", quota).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the limiter did not reconnect to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back on Redis: both instances share a bucket again.
    assert!(
        !open.check_rate("y", quota).await.unwrap().allowed
            || !closed.check_rate("y", quota).await.unwrap().allowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_agree_on_a_sequence() {
    on_both(|limiter| async move {
        let quota = Quota {
            rate_per_second: 2.0,
            burst: 2,
        };
        let answers: Vec<bool> = futures_like(&limiter, quota).await;
        assert_eq!(answers, vec![true, true, false, false]);
    })
    .await;
}

async fn futures_like(limiter: &Limiter, quota: Quota) -> Vec<bool> {
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(limiter.check_rate("seq", quota).await.unwrap().allowed);
    }
    answers
}

async fn peeking_does_not_count(limiter: Limiter) {
    let quota = Quota {
        rate_per_second: 1.0,
        burst: 2,
    };
    for _ in 0..5 {
        assert!(limiter.peek_rate("p", quota).await.unwrap().allowed);
    }
    assert!(limiter.check_rate("p", quota).await.unwrap().allowed);
    assert!(limiter.check_rate("p", quota).await.unwrap().allowed);
    assert!(
        !limiter.peek_rate("p", quota).await.unwrap().allowed,
        "a peek sees the exhausted bucket"
    );
    assert!(!limiter.check_rate("p", quota).await.unwrap().allowed);
}

both_backends!(peeking_does_not_count);

/// Login throttling charges before it checks and refunds a success: a refund gives back exactly
/// one request, and refunds never make a bucket bigger than its burst.
async fn a_refund_gives_back_one_request(limiter: Limiter) {
    let quota = Quota {
        rate_per_second: 1.0 / 60.0,
        burst: 3,
    };
    for _ in 0..3 {
        assert!(limiter.check_rate("r", quota).await.unwrap().allowed);
    }
    assert!(!limiter.check_rate("r", quota).await.unwrap().allowed);
    limiter.refund_rate("r", quota).await.unwrap();
    assert!(limiter.check_rate("r", quota).await.unwrap().allowed);
    assert!(!limiter.check_rate("r", quota).await.unwrap().allowed);

    // More refunds than charges leave a full bucket, not a larger one.
    assert!(limiter.check_rate("f", quota).await.unwrap().allowed);
    for _ in 0..5 {
        limiter.refund_rate("f", quota).await.unwrap();
    }
    limiter.refund_rate("never-charged", quota).await.unwrap();
    for _ in 0..3 {
        assert!(limiter.check_rate("f", quota).await.unwrap().allowed);
    }
    assert!(!limiter.check_rate("f", quota).await.unwrap().allowed);
}

both_backends!(a_refund_gives_back_one_request);
