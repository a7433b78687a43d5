//! The Redis backend, shared by every instance: `<prefix>:cache:<org>:<hex digest>` holds an
//! entry's binary form (`entry.rs`), written with `SET … PX ttl` so Redis expires it.
//!
//! Redis is a cache here, never a dependency of a request: a failed or slow lookup is a miss,
//! a write happens on a spawned task (at most [`MAX_PENDING_WRITES`] at once; beyond that a
//! store is dropped), and after a failure the backend answers "miss" at once for a second
//! rather than make every request wait for the timeout. The connection is made on first use, so
//! a Redis that is down at start-up only means misses until it is back.
//!
//! An organization's id is escaped into its key segment: anything but ASCII letters, digits,
//! `-`, `_` and `.` is written `%XX`. So the segment holds no glob character (`*?[]\^`) and no
//! `:`, and a purge's `SCAN MATCH <prefix>:cache:<org>:*` matches that organization's keys
//! and no other's.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{OnceCell, Semaphore};

use super::entry::CachedAnswer;
use super::key::CacheKey;
use super::stats::{CacheError, Counters};

/// Stores on their way to Redis at once; more are dropped (a cache may forget).
pub const MAX_PENDING_WRITES: u32 = 64;
/// How long lookups are skipped after a Redis failure.
const DOWN_FOR_MS: i64 = 1_000;
/// The longest a lookup waits for Redis, connecting included; then it is a miss.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// Keys asked for per `SCAN` step, and unlinked per `UNLINK`.
const SCAN_COUNT: usize = 500;

pub(super) struct RedisCache {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    /// `<prefix>:cache:`.
    namespace: String,
    writes: Arc<Semaphore>,
    down_until_ms: AtomicI64,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `org_id` as a key segment: no glob characters, no `:`, and different ids never share one.
pub(super) fn org_segment(org_id: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !org_id.is_empty() && org_id.bytes().all(plain) {
        return Cow::Borrowed(org_id);
    }
    let mut out = String::with_capacity(org_id.len() * 3 + 1);
    // An empty id still gets a segment of its own (`%`, which no escaped id is alone).
    if org_id.is_empty() {
        out.push('%');
    }
    for b in org_id.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

impl RedisCache {
    /// Checks the URL and prefix; connects on first use. `prefix` is a plain word (letters,
    /// digits, `-`, `_`): it is part of the purge's match pattern.
    pub fn new(url: &str, ca_pem: Option<&[u8]>, prefix: &str) -> Result<RedisCache, CacheError> {
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(CacheError::Config(
                "the cache's Redis prefix must be letters, digits, - or _".to_owned(),
            ));
        }
        let client = cortex_limits::redis_client(url, ca_pem)
            .map_err(|e| CacheError::Config(e.to_string()))?;
        Ok(RedisCache {
            client,
            connection: OnceCell::new(),
            namespace: format!("{prefix}:cache:"),
            writes: Arc::new(Semaphore::new(MAX_PENDING_WRITES as usize)),
            down_until_ms: AtomicI64::new(0),
        })
    }

    pub fn redis_key(&self, key: &CacheKey) -> String {
        format!(
            "{}{}:{}",
            self.namespace,
            org_segment(key.org_id()),
            key.hex()
        )
    }

    fn is_down(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > wall_ms()
    }

    fn mark_down(&self) {
        self.down_until_ms
            .store(wall_ms().saturating_add(DOWN_FOR_MS), Ordering::Relaxed);
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let client = self.client.clone();
        self.connection
            .get_or_try_init(|| async move {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_millis(500))
                    .set_response_timeout(Duration::from_millis(500))
                    // No retries here: the next lookup after the pause is the retry, and a
                    // request never waits for a backoff.
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(client, config).await
            })
            .await
            .cloned()
    }

    /// The stored entry, or `None` for absent, unreadable or Redis failing (logged at debug;
    /// a cache that cannot answer is a miss).
    pub async fn get(&self, key: &CacheKey, max_bytes: usize) -> Option<CachedAnswer> {
        if self.is_down() {
            return None;
        }
        let lookup = async {
            let mut connection = self.connection().await?;
            redis::cmd("GET")
                .arg(self.redis_key(key))
                .query_async::<Option<Vec<u8>>>(&mut connection)
                .await
        };
        let Ok(result) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await else {
            self.mark_down();
            tracing::debug!("the cache's Redis lookup timed out; a miss");
            return None;
        };
        match result {
            Ok(Some(bytes)) => match CachedAnswer::decode(Bytes::from(bytes), max_bytes) {
                Ok(answer) => Some(answer),
                Err(e) => {
                    tracing::debug!(error = %e, "ignoring an unreadable cache entry");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.mark_down();
                tracing::debug!(kind = ?e.kind(), "the cache's Redis lookup failed; a miss");
                None
            }
        }
    }

    /// Hands the write to a spawned task, which counts it in `counters` once Redis has it.
    /// `false` when it was dropped instead (too many pending, no runtime, Redis marked down).
    pub fn put(
        self: &Arc<Self>,
        key: &CacheKey,
        encoded: Bytes,
        ttl_ms: u64,
        counters: Arc<Counters>,
    ) -> bool {
        if self.is_down() {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return false;
        };
        let this = self.clone();
        let redis_key = self.redis_key(key);
        runtime.spawn(async move {
            let _permit = permit;
            let result: Result<(), redis::RedisError> = async {
                let mut connection = this.connection().await?;
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(encoded.as_ref())
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .query_async(&mut connection)
                    .await
            }
            .await;
            match result {
                Ok(()) => counters.stored(),
                Err(e) => {
                    this.mark_down();
                    tracing::debug!(kind = ?e.kind(), "the cache's Redis write failed");
                }
            }
        });
        true
    }

    /// Waits until the writes handed out so far have finished.
    pub async fn flush(&self) {
        if let Ok(all) = self.writes.acquire_many(MAX_PENDING_WRITES).await {
            drop(all);
        }
    }

    /// Unlinks `org_id`'s entries (every entry under the prefix for `None`).
    pub async fn purge(&self, org_id: Option<&str>) -> Result<u64, CacheError> {
        let pattern = match org_id {
            Some(org) => format!("{}{}:*", self.namespace, org_segment(org)),
            None => format!("{}*", self.namespace),
        };
        let redis_error = |e: redis::RedisError| CacheError::Redis(format!("{:?}", e.kind()));
        let mut connection = self.connection().await.map_err(redis_error)?;
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut connection)
                .await
                .map_err(redis_error)?;
            if !keys.is_empty() {
                let count: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(redis_error)?;
                removed += count;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_segments_hold_no_glob_and_stay_distinct() {
        assert_eq!(org_segment("default"), "default");
        assert_eq!(org_segment("org-1_a.b"), "org-1_a.b");
        let tricky = [
            "*", "a*", "a:b", "a?", "[a]", "a\\", "a^", "%2A", "", "%", "é",
        ];
        let mut seen = std::collections::HashSet::new();
        for org in tricky {
            let segment = org_segment(org);
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b)),
                "{org:?} → {segment}"
            );
            assert!(seen.insert(segment.into_owned()), "{org:?} collides");
        }
        assert!(!seen.contains("default"));
    }
}
