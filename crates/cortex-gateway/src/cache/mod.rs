//! The response cache (SPEC §21): exact-match answers, kept per organization, in process
//! (bounded in bytes) or in Redis (shared by every instance).
//!
//! The pipeline's use of it is a few calls, between the spend limits and translation:
//!
//! 1. the effective policy has a [`CacheSpec`](cortex_domain::policy::CacheSpec) and
//!    [`temperature_allows`] the body → [`cache_key`];
//! 2. unless [`CacheDirectives::no_cache`], [`ResponseCache::get`]: a hit is replayed (one JSON
//!    body, or the stream's chunks as SSE) and metered with the entry's usage;
//! 3. on a miss, a 200 answer is collected as it is sent (the body, or each chunk) and, unless
//!    [`CacheDirectives::no_store`], handed to [`ResponseCache::put`] with the policy's TTL.
//!
//! Neither call can fail a request: a lookup that cannot be answered is a miss, and a store
//! happens off the request's path (in memory under a short lock, to Redis on a spawned task).
//!
//! - `key.rs`: what two requests must share to share an answer; `Cache-Control`; temperature.
//! - `entry.rs`: a cached answer and its binary form.
//! - `memory.rs`, `redis.rs`: the two backends; `stats.rs`: what they count.

mod entry;
mod key;
mod memory;
mod redis;
mod stats;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cortex_config::{CacheBackend, Config};
use cortex_domain::Clock;
use secrecy::ExposeSecret;

pub use entry::{CachedAnswer, DecodeError};
pub use key::{
    cache_key, key_of, parse_object, temperature_allows, temperature_allows_in, CacheDirectives,
    CacheKey, NotCacheable, EXCLUDED_FIELDS,
};
pub use redis::MAX_PENDING_WRITES;
pub use stats::{CacheError, CacheStats};

use self::memory::MemoryCache;
use self::redis::RedisCache;
use self::stats::Counters;

enum Backend {
    Memory(MemoryCache),
    Redis(Arc<RedisCache>),
}

struct Inner {
    backend: Backend,
    max_entry_bytes: u64,
    counters: Arc<Counters>,
}

/// The response cache. Cheap to clone (one `Arc`); every clone is the same cache.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

impl ResponseCache {
    /// An in-process cache of at most `max_bytes`, storing entries of at most
    /// `max_entry_bytes` (capped at `max_bytes`); expiry is read from `clock`.
    pub fn in_memory(max_bytes: u64, max_entry_bytes: u64, clock: Arc<dyn Clock>) -> Self {
        ResponseCache {
            inner: Arc::new(Inner {
                backend: Backend::Memory(MemoryCache::new(max_bytes, clock)),
                max_entry_bytes: max_entry_bytes.min(max_bytes),
                counters: Arc::new(Counters::new()),
            }),
        }
    }

    /// A cache in the Redis at `url` (a `rediss://` URL trusting only `ca_pem`'s CAs when
    /// given), its keys under `<prefix>:cache:`. Nothing is connected yet: the first lookup
    /// or store connects, so a Redis that is down means misses, not a failed start.
    pub fn redis(
        url: &str,
        ca_pem: Option<&[u8]>,
        prefix: &str,
        max_entry_bytes: u64,
    ) -> Result<Self, CacheError> {
        Ok(ResponseCache {
            inner: Arc::new(Inner {
                backend: Backend::Redis(Arc::new(RedisCache::new(url, ca_pem, prefix)?)),
                max_entry_bytes,
                counters: Arc::new(Counters::new()),
            }),
        })
    }

    /// The cache the settings ask for (`CORTEX_CACHE_*`); Redis keys under `cortex:cache:`.
    pub fn from_config(
        config: &Config,
        redis_ca: Option<&[u8]>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CacheError> {
        let settings = &config.cache;
        match settings.backend {
            CacheBackend::Memory => Ok(Self::in_memory(
                settings.max_bytes,
                settings.max_entry_bytes,
                clock,
            )),
            CacheBackend::Redis => {
                let url = config.redis_url.as_ref().ok_or_else(|| {
                    CacheError::Config("CORTEX_CACHE_BACKEND=redis needs REDIS_URL".to_owned())
                })?;
                Self::redis(
                    url.expose_secret(),
                    redis_ca,
                    "cortex",
                    settings.max_entry_bytes,
                )
            }
        }
    }

    /// The answer stored under `key`, if any and not expired. Counted as a hit or a miss; a
    /// backend that cannot answer is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        let inner = &*self.inner;
        let found = match &inner.backend {
            Backend::Memory(memory) => {
                let (found, bytes) = memory.get(key);
                inner.counters.holding(bytes);
                found
            }
            Backend::Redis(redis) => {
                let limit = usize::try_from(inner.max_entry_bytes).unwrap_or(usize::MAX);
                redis.get(key, limit).await.map(Arc::new)
            }
        };
        inner.counters.looked_up(found.is_some());
        found
    }

    /// Stores `answer` under `key` for `ttl`, without waiting: in process under a short lock,
    /// to Redis on a spawned task. An answer larger than the entry limit (or with a zero TTL)
    /// is not stored.
    pub fn put(&self, key: CacheKey, answer: CachedAnswer, ttl: Duration) {
        let inner = &*self.inner;
        let size = answer.size_bytes();
        if size > inner.max_entry_bytes || ttl.is_zero() || !answer.is_well_formed() {
            return;
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match &inner.backend {
            Backend::Memory(memory) => {
                let stored =
                    memory.put(key, answer, size, i64::try_from(ttl_ms).unwrap_or(i64::MAX));
                inner.counters.stored();
                inner.counters.evicted(stored.evicted);
                inner.counters.holding(stored.bytes);
            }
            Backend::Redis(redis) => {
                if let Some(encoded) = answer.encode() {
                    redis.put(&key, encoded, ttl_ms, inner.counters.clone());
                }
            }
        }
    }

    /// Drops `org_id`'s entries (every entry for `None`); returns how many were dropped.
    pub async fn purge(&self, org_id: Option<&str>) -> Result<u64, CacheError> {
        let inner = &*self.inner;
        match &inner.backend {
            Backend::Memory(memory) => {
                let (removed, bytes) = memory.purge(org_id);
                inner.counters.holding(bytes);
                Ok(removed)
            }
            Backend::Redis(redis) => redis.purge(org_id).await,
        }
    }

    /// Waits until the stores handed to Redis so far have finished (tests, shutdown); at once
    /// in process.
    pub async fn flush(&self) {
        if let Backend::Redis(redis) = &self.inner.backend {
            redis.flush().await;
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let counters = &inner.counters;
        let (backend, entries, bytes, max_bytes) = match &inner.backend {
            Backend::Memory(memory) => {
                let (entries, bytes) = memory.usage();
                (
                    "memory",
                    Some(entries),
                    Some(bytes),
                    Some(memory.max_bytes()),
                )
            }
            Backend::Redis(_) => ("redis", None, None, None),
        };
        CacheStats {
            backend,
            entries,
            bytes,
            max_bytes,
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            stores: counters.stores.load(Ordering::Relaxed),
            evictions: counters.evictions.load(Ordering::Relaxed),
        }
    }

    /// The largest entry stored, in [`CachedAnswer::size_bytes`].
    pub fn max_entry_bytes(&self) -> u64 {
        self.inner.max_entry_bytes
    }
}

#[cfg(test)]
mod tests;
