//! The in-process cache, through its public API, with a clock that moves only when told.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_domain::clock::ManualClock;
use cortex_wire::{Endpoint, TokenUsage};

use super::*;

fn key(org: &str, n: u32) -> CacheKey {
    let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{n}"}}]}}"#);
    cache_key(org, "m", Endpoint::Chat, body.as_bytes(), b"").unwrap()
}

fn answer(len: usize) -> CachedAnswer {
    CachedAnswer::whole(
        Bytes::from(vec![b'x'; len]),
        TokenUsage {
            prompt_tokens: 3,
            completion_tokens: 4,
        },
        "p",
    )
}

const MINUTE: Duration = Duration::from_secs(60);

fn memory(max_bytes: u64, max_entry_bytes: u64) -> (ResponseCache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    (
        ResponseCache::in_memory(max_bytes, max_entry_bytes, clock.clone()),
        clock,
    )
}

#[tokio::test]
async fn a_stored_answer_comes_back_and_counts() {
    let (cache, _) = memory(1 << 20, 1 << 16);
    assert_eq!(cache.get(&key("o", 1)).await, None);
    let stored = answer(100);
    cache.put(key("o", 1), stored.clone(), MINUTE);
    assert_eq!(cache.get(&key("o", 1)).await.as_deref(), Some(&stored));
    // Another organization with the same body does not see it.
    assert_eq!(cache.get(&key("p", 1)).await, None);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.backend,
            stats.entries,
            stats.hits,
            stats.misses,
            stats.stores
        ),
        ("memory", Some(1), 1, 2, 1)
    );
    assert_eq!(stats.bytes, Some(stored.size_bytes()));
    assert_eq!(stats.max_bytes, Some(1 << 20));
}

#[tokio::test]
async fn expired_entries_are_misses() {
    let (cache, clock) = memory(1 << 20, 1 << 16);
    cache.put(key("o", 1), answer(10), Duration::from_secs(5));
    clock.advance_millis(4_999);
    assert!(cache.get(&key("o", 1)).await.is_some());
    clock.advance_millis(1);
    assert_eq!(cache.get(&key("o", 1)).await, None);
    // The expired entry was dropped, and its bytes with it.
    assert_eq!(cache.stats().entries, Some(0));
    assert_eq!(cache.stats().bytes, Some(0));
    // A zero TTL stores nothing.
    cache.put(key("o", 2), answer(10), Duration::ZERO);
    assert_eq!(cache.stats().entries, Some(0));
}

#[tokio::test]
async fn the_least_recently_used_go_first_at_the_byte_bound() {
    let size = answer(1_000).size_bytes();
    // Room for exactly three entries.
    let (cache, _) = memory(size * 3, size);
    for n in 0..3 {
        cache.put(key("o", n), answer(1_000), MINUTE);
    }
    assert_eq!(cache.stats().entries, Some(3));
    // Reading 0 makes 1 the least recently used.
    assert!(cache.get(&key("o", 0)).await.is_some());
    cache.put(key("o", 3), answer(1_000), MINUTE);
    assert_eq!(cache.get(&key("o", 1)).await, None, "1 was not evicted");
    for n in [0, 2, 3] {
        assert!(cache.get(&key("o", n)).await.is_some(), "{n} was evicted");
    }
    let stats = cache.stats();
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.bytes, Some(size * 3));
    // A bigger entry evicts as many as it needs.
    let (cache, _) = memory(size * 3, size * 3);
    for n in 0..3 {
        cache.put(key("o", n), answer(1_000), MINUTE);
    }
    let big = answer(2_000);
    cache.put(key("o", 9), big.clone(), MINUTE);
    assert_eq!(cache.stats().evictions, 2);
    assert!(cache.stats().bytes.unwrap() <= size * 3);
    assert!(cache.get(&key("o", 2)).await.is_some());
    assert!(cache.get(&key("o", 9)).await.is_some());
}

#[tokio::test]
async fn entries_over_the_entry_limit_are_not_stored() {
    let (cache, _) = memory(1 << 20, 2_000);
    cache.put(key("o", 1), answer(5_000), MINUTE);
    assert_eq!(cache.get(&key("o", 1)).await, None);
    assert_eq!(cache.stats().stores, 0);
    // The entry limit never exceeds the whole bound.
    let (cache, _) = memory(3_000, 1 << 20);
    assert_eq!(cache.max_entry_bytes(), 3_000);
    cache.put(key("o", 1), answer(5_000), MINUTE);
    assert_eq!(cache.stats().entries, Some(0));
}

#[tokio::test]
async fn replacing_an_entry_does_not_count_its_bytes_twice() {
    let (cache, _) = memory(1 << 20, 1 << 16);
    cache.put(key("o", 1), answer(100), MINUTE);
    cache.put(key("o", 1), answer(300), MINUTE);
    assert_eq!(cache.stats().entries, Some(1));
    assert_eq!(cache.stats().bytes, Some(answer(300).size_bytes()));
}

#[tokio::test]
async fn purge_drops_one_organization_or_all() {
    let (cache, _) = memory(1 << 20, 1 << 16);
    for n in 0..3 {
        cache.put(key("a", n), answer(10), MINUTE);
        cache.put(key("b", n), answer(10), MINUTE);
    }
    cache.put(key("a*", 0), answer(10), MINUTE);
    assert_eq!(cache.purge(Some("a")).await, Ok(3));
    assert_eq!(cache.get(&key("a", 0)).await, None);
    assert!(cache.get(&key("a*", 0)).await.is_some());
    assert!(cache.get(&key("b", 0)).await.is_some());
    assert_eq!(cache.stats().bytes, Some(answer(10).size_bytes() * 4));
    assert_eq!(cache.purge(None).await, Ok(4));
    assert_eq!(cache.stats().entries, Some(0));
    assert_eq!(cache.stats().bytes, Some(0));
}

#[tokio::test]
async fn clones_are_the_same_cache() {
    let (cache, _) = memory(1 << 20, 1 << 16);
    let other = cache.clone();
    cache.put(key("o", 1), answer(10), MINUTE);
    assert!(other.get(&key("o", 1)).await.is_some());
    other.flush().await;
}
