//! What the cache counts, and how it fails: shared by the cache and its backends.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge};

use crate::metrics as m;

/// Why the cache could not be built, or a purge could not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("response cache: {0}")]
    Config(String),
    #[error("response cache: Redis failed ({0})")]
    Redis(String),
}

/// The cache's counters since this instance started, and what it holds (when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStats {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Entries and bytes held: known in process; `None` for Redis (shared, and bounded by the
    /// server's own `maxmemory`).
    pub entries: Option<u64>,
    pub bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub hits: u64,
    pub misses: u64,
    pub stores: u64,
    pub evictions: u64,
}

/// This instance's counters, and the same counts for Prometheus.
pub(crate) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) stores: AtomicU64,
    pub(super) evictions: AtomicU64,
    meter: Meter,
}

struct Meter {
    hits: Counter,
    misses: Counter,
    stores: Counter,
    evictions: Counter,
    bytes: Gauge,
}

impl Counters {
    pub(super) fn new() -> Counters {
        // The recorder first, so the handles are not the no-op ones of a missing recorder.
        let _ = m::prometheus();
        Counters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            meter: Meter {
                hits: metrics::counter!(m::CACHE_REQUESTS, "result" => "hit"),
                misses: metrics::counter!(m::CACHE_REQUESTS, "result" => "miss"),
                stores: metrics::counter!(m::CACHE_STORES),
                evictions: metrics::counter!(m::CACHE_EVICTIONS),
                bytes: metrics::gauge!(m::CACHE_BYTES),
            },
        }
    }

    pub(super) fn looked_up(&self, hit: bool) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.meter.hits.increment(1);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.meter.misses.increment(1);
        }
    }

    pub(crate) fn stored(&self) {
        self.stores.fetch_add(1, Ordering::Relaxed);
        self.meter.stores.increment(1);
    }

    pub(super) fn evicted(&self, count: u64) {
        if count > 0 {
            self.evictions.fetch_add(count, Ordering::Relaxed);
            self.meter.evictions.increment(count);
        }
    }

    pub(super) fn holding(&self, bytes: u64) {
        self.meter.bytes.set(bytes as f64);
    }
}
