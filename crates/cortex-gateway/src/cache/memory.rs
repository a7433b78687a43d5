//! The in-process backend: a least-recently-used map bounded in bytes.
//!
//! Everything happens under one short lock, at the moment of a `get` or `put`: a store evicts
//! the least recently used entries until the total is under the bound, and a lookup that finds
//! an expired entry drops it. There is no background task, so what is evicted is a function of
//! the calls made (a test fills past the bound and sees the oldest go).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cortex_domain::Clock;
use hashlink::LinkedHashMap;

use super::entry::CachedAnswer;
use super::key::CacheKey;

struct Slot {
    answer: Arc<CachedAnswer>,
    expires_at_ms: i64,
    size: u64,
}

struct State {
    /// Least recently used first.
    entries: LinkedHashMap<CacheKey, Slot>,
    bytes: u64,
}

pub(super) struct MemoryCache {
    max_bytes: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// What a store did, for the counters.
pub(super) struct Stored {
    pub evicted: u64,
    pub bytes: u64,
}

impl MemoryCache {
    pub fn new(max_bytes: u64, clock: Arc<dyn Clock>) -> MemoryCache {
        MemoryCache {
            max_bytes,
            clock,
            state: Mutex::new(State {
                entries: LinkedHashMap::new(),
                bytes: 0,
            }),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// A poisoned lock only means another request panicked while holding it; the map is
    /// still consistent (every change is a single map call plus the byte count).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry, made the most recently used; `None` if absent or expired (an expired entry
    /// is dropped). The second value is the byte total after the call.
    pub fn get(&self, key: &CacheKey) -> (Option<Arc<CachedAnswer>>, u64) {
        let now = self.clock.now_millis();
        let mut state = self.lock();
        let expired = match state.entries.to_back(key) {
            None => return (None, state.bytes),
            Some(slot) if slot.expires_at_ms > now => {
                return (Some(slot.answer.clone()), state.bytes)
            }
            Some(_) => true,
        };
        if expired {
            if let Some(slot) = state.entries.remove(key) {
                state.bytes = state.bytes.saturating_sub(slot.size);
            }
        }
        (None, state.bytes)
    }

    /// Stores `answer` (of `size` bytes, at most the bound) for `ttl_ms`, then evicts the least
    /// recently used entries until the total is within the bound.
    pub fn put(&self, key: CacheKey, answer: CachedAnswer, size: u64, ttl_ms: i64) -> Stored {
        let expires_at_ms = self.clock.now_millis().saturating_add(ttl_ms);
        let slot = Slot {
            answer: Arc::new(answer),
            expires_at_ms,
            size,
        };
        let mut state = self.lock();
        if let Some(old) = state.entries.insert(key, slot) {
            state.bytes = state.bytes.saturating_sub(old.size);
        }
        state.bytes = state.bytes.saturating_add(size);
        let mut evicted = 0;
        // The new entry is the most recently used and fits the bound by itself, so it is never
        // the one evicted here.
        while state.bytes > self.max_bytes {
            match state.entries.pop_front() {
                Some((_, old)) => {
                    state.bytes = state.bytes.saturating_sub(old.size);
                    evicted += 1;
                }
                None => {
                    state.bytes = 0;
                    break;
                }
            }
        }
        Stored {
            evicted,
            bytes: state.bytes,
        }
    }

    /// Drops every entry of `org_id` (every entry for `None`); returns how many and the byte
    /// total after.
    pub fn purge(&self, org_id: Option<&str>) -> (u64, u64) {
        let mut state = self.lock();
        let before = state.entries.len() as u64;
        match org_id {
            None => {
                state.entries.clear();
                state.bytes = 0;
            }
            Some(org) => {
                let mut freed = 0u64;
                state.entries.retain(|key, slot| {
                    let keep = key.org_id() != org;
                    if !keep {
                        freed += slot.size;
                    }
                    keep
                });
                state.bytes = state.bytes.saturating_sub(freed);
            }
        }
        (before - state.entries.len() as u64, state.bytes)
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (u64, u64) {
        let state = self.lock();
        (state.entries.len() as u64, state.bytes)
    }
}
