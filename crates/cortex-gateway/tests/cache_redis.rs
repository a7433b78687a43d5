//! The response cache on a real Redis (127.0.0.1:6379, or `CORTEX_TEST_REDIS_URL`); a missing
//! Redis fails the test. Each test writes under a prefix of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cortex_gateway::cache::{cache_key, CacheKey, CachedAnswer, ResponseCache};
use cortex_wire::{Endpoint, TokenUsage};

fn redis_url() -> String {
    std::env::var("CORTEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test (or test run) uses.
fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "cortex-test-{nanos:x}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    )
}

async fn raw() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is required for this test and is not reachable at {}: {e}",
                redis_url()
            )
        });
    let _: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap();
    connection
}

async fn cache(prefix: &str) -> ResponseCache {
    // Fails the test, not skips it, when Redis is absent.
    let _ = raw().await;
    ResponseCache::redis(&redis_url(), None, prefix, 1 << 20).unwrap()
}

fn key(org: &str, n: u32) -> CacheKey {
    let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{n}"}}]}}"#);
    cache_key(org, "m", Endpoint::Chat, body.as_bytes(), b"policy").unwrap()
}

fn answer() -> CachedAnswer {
    CachedAnswer::streamed(
        vec![
            Bytes::from_static(b"data: {\"choices\":[]}\n\n"),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ],
        TokenUsage {
            prompt_tokens: 5,
            completion_tokens: 7,
        },
        "local",
    )
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn two_instances_share_entries() {
    let prefix = prefix();
    let (one, two) = (cache(&prefix).await, cache(&prefix).await);
    assert_eq!(two.get(&key("org-a", 1)).await, None);
    one.put(key("org-a", 1), answer(), MINUTE);
    one.flush().await;
    assert_eq!(one.stats().stores, 1);
    assert_eq!(two.get(&key("org-a", 1)).await.as_deref(), Some(&answer()));
    // Another organization asking the same does not get it.
    assert_eq!(two.get(&key("org-b", 1)).await, None);
    let stats = two.stats();
    assert_eq!(
        (stats.backend, stats.hits, stats.misses, stats.entries),
        ("redis", 1, 2, None)
    );
    // The key is where the documentation says.
    let mut raw = raw().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}:cache:org-a:{}", key("org-a", 1).hex()))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(exists);
    assert_eq!(one.purge(None).await, Ok(1));
}

#[tokio::test]
async fn entries_expire_with_their_ttl() {
    let prefix = prefix();
    let cache = cache(&prefix).await;
    cache.put(key("org", 1), answer(), MINUTE);
    cache.put(key("org", 2), answer(), Duration::from_millis(40));
    cache.flush().await;
    let mut raw = raw().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:cache:org:{}", key("org", 1).hex()))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((50_000..=60_000).contains(&pttl), "{pttl}");
    let started = Instant::now();
    while cache.get(&key("org", 2)).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the entry outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cache.get(&key("org", 1)).await.is_some());
    cache.purge(None).await.unwrap();
}

#[tokio::test]
async fn a_purge_takes_one_organization_and_no_glob_widens_it() {
    let prefix = prefix();
    let cache = cache(&prefix).await;
    for org in ["org-a", "org-b", "org-a:x", "*"] {
        for n in 0..3 {
            cache.put(key(org, n), answer(), MINUTE);
        }
    }
    cache.flush().await;
    // Glob characters and separators in an id match only that id's own entries.
    for (org, removed) in [("org-?", 0), ("org-[ab]", 0), ("org-a\\", 0), ("*", 3)] {
        assert_eq!(cache.purge(Some(org)).await, Ok(removed), "{org}");
    }
    assert_eq!(cache.purge(Some("org-a")).await, Ok(3));
    assert_eq!(cache.get(&key("org-a", 0)).await, None);
    assert!(cache.get(&key("org-a:x", 0)).await.is_some());
    assert!(cache.get(&key("org-b", 0)).await.is_some());
    // Everything under this prefix, and nothing else.
    let other = prefix_cache_with_one_entry().await;
    assert_eq!(cache.purge(None).await, Ok(6));
    assert!(other.0.get(&key("org-a", 0)).await.is_some());
    other.0.purge(None).await.unwrap();
}

async fn prefix_cache_with_one_entry() -> (ResponseCache, String) {
    let prefix = prefix();
    let cache = cache(&prefix).await;
    cache.put(key("org-a", 0), answer(), MINUTE);
    cache.flush().await;
    (cache, prefix)
}

#[tokio::test]
async fn what_redis_holds_is_not_trusted() {
    let prefix = prefix();
    let cache = cache(&prefix).await;
    let mut raw = raw().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:cache:org:{}", key("org", 1).hex()))
        .arg(&b"CXC\x01\x00garbage"[..])
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(cache.get(&key("org", 1)).await, None);
    assert_eq!(cache.stats().misses, 1);
    // An entry over the entry limit is neither stored nor read back.
    let small = ResponseCache::redis(&redis_url(), None, &prefix, 64).unwrap();
    small.put(key("org", 2), answer(), MINUTE);
    cache.put(key("org", 3), answer(), MINUTE);
    small.flush().await;
    cache.flush().await;
    assert_eq!(small.stats().stores, 0);
    assert_eq!(cache.get(&key("org", 2)).await, None);
    assert_eq!(small.get(&key("org", 3)).await, None);
    assert!(cache.get(&key("org", 3)).await.is_some());
    cache.purge(None).await.unwrap();
}

#[tokio::test]
async fn a_redis_that_is_down_gives_misses_not_errors() {
    // Nothing listens on port 9.
    let cache = ResponseCache::redis("redis://127.0.0.1:9", None, &prefix(), 1 << 20).unwrap();
    let started = Instant::now();
    assert_eq!(cache.get(&key("org", 1)).await, None);
    cache.put(key("org", 1), answer(), MINUTE);
    cache.flush().await;
    // Marked down after the first failure: the next lookups answer at once.
    for _ in 0..20 {
        assert_eq!(cache.get(&key("org", 1)).await, None);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits, stats.stores), (21, 0, 0));
    assert!(cache.purge(Some("org")).await.is_err());
    // A prefix that would widen a purge, or a URL that is not Redis, is refused up front.
    for bad in ["", "a*", "a:b", "a?"] {
        assert!(
            ResponseCache::redis(&redis_url(), None, bad, 1).is_err(),
            "{bad}"
        );
    }
    assert!(ResponseCache::redis("http://127.0.0.1:6379", None, "p", 1).is_err());
}
