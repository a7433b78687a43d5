//! API keys held in memory so that the `/v1` hot path never queries the database.
//!
//! Every instance loads all keys at start and then polls for rows whose `updated_at` moved (one
//! indexed query a second, off the hot path), so a key created, revoked or rotated anywhere —
//! another instance, the CLI — is seen everywhere within about a second. Changes made through
//! this instance are applied to the cache at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use cortex_crypto::api_key::KeyHash;
use cortex_domain::{KeyLimits, Scope};
use cortex_store::keys::ApiKeyRow;
use cortex_store::{Store, StoreResult};

/// A key as the hot path needs it.
#[derive(Debug)]
pub struct CachedKey {
    pub id: String,
    pub public_id: String,
    pub name: String,
    pub owner_user_id: String,
    pub secret_hash: KeyHash,
    pub scopes: Vec<Scope>,
    pub models: Option<Vec<String>>,
    pub limits: KeyLimits,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// The row's `updated_at`: which of two versions of a key is the newer.
    pub updated_at: i64,
}

impl CachedKey {
    fn from_row(row: &ApiKeyRow) -> Option<CachedKey> {
        let secret_hash = KeyHash::from_hex(&row.secret_hash).ok()?;
        Some(CachedKey {
            id: row.id.clone(),
            public_id: row.public_id.clone(),
            name: row.name.clone(),
            owner_user_id: row.owner_user_id.clone(),
            secret_hash,
            scopes: row.scopes.clone(),
            models: row.models.clone(),
            limits: row.limits.clone(),
            expires_at: row.expires_at,
            revoked: row.revoked_at.is_some(),
            updated_at: row.updated_at,
        })
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }
}

/// Whether `incoming` may replace `cached`. A poll reads rows without a lock on the cache, so
/// it can read a key just before this instance revokes it and apply that row just after the
/// revocation was applied: an older row never replaces a newer one, and at the same instant a
/// revoked version wins, so a revocation cannot be undone by a stale read, even for the second
/// until the next poll.
fn replaces(cached: &CachedKey, incoming: &CachedKey) -> bool {
    match incoming.updated_at.cmp(&cached.updated_at) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => incoming.revoked || !cached.revoked,
    }
}

/// Rows changed up to this long before the newest one seen are read again on every poll, so
/// writers whose clocks lag a little behind are not missed.
const POLL_OVERLAP_MILLIS: i64 = 60_000;

#[derive(Default)]
pub struct KeyCache {
    by_public_id: RwLock<HashMap<String, Arc<CachedKey>>>,
    newest_seen: AtomicI64,
}

impl KeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, public_id: &str) -> Option<Arc<CachedKey>> {
        // A poisoned lock only means a writer panicked mid-insert; the map is still usable.
        let map = self.by_public_id.read().unwrap_or_else(|e| e.into_inner());
        map.get(public_id).cloned()
    }

    pub fn apply(&self, row: &ApiKeyRow) {
        let Some(key) = CachedKey::from_row(row) else {
            tracing::error!(key_id = %row.id, "stored key hash is malformed; key not usable");
            return;
        };
        self.newest_seen
            .fetch_max(row.updated_at, Ordering::Relaxed);
        let mut map = self.by_public_id.write().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = map.get(&row.public_id) {
            if !replaces(cached, &key) {
                return;
            }
        }
        map.insert(row.public_id.clone(), Arc::new(key));
    }

    /// True when some cached key satisfies `predicate`.
    pub fn any(&self, predicate: impl Fn(&CachedKey) -> bool) -> bool {
        self.by_public_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|k| predicate(k))
    }

    pub fn len(&self) -> usize {
        self.by_public_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every key (at start) or the recently changed ones (each poll).
    pub async fn refresh(&self, store: &Store) -> StoreResult<usize> {
        let since = self
            .newest_seen
            .load(Ordering::Relaxed)
            .saturating_sub(POLL_OVERLAP_MILLIS);
        let rows = if self.is_empty() {
            store.list_api_keys(None).await?
        } else {
            store.api_keys_changed_since(since).await?
        };
        for row in &rows {
            self.apply(row);
        }
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(updated_at: i64, revoked_at: Option<i64>) -> ApiKeyRow {
        ApiKeyRow {
            id: "key_1".into(),
            public_id: "pub1".into(),
            secret_hash: cortex_crypto::api_key::hash_key_secret("s").to_hex(),
            name: "k".into(),
            owner_user_id: "u".into(),
            scopes: Scope::ALL.to_vec(),
            models: None,
            limits: KeyLimits::default(),
            expires_at: None,
            revoked_at,
            rotated_to: None,
            created_at: 1,
            updated_at,
            last_used_at: None,
        }
    }

    fn revoked(cache: &KeyCache) -> bool {
        cache.get("pub1").is_some_and(|k| k.revoked)
    }

    #[test]
    fn a_stale_read_does_not_undo_a_revocation() {
        let cache = KeyCache::new();
        cache.apply(&row(1, None));
        // Revoked here at t=5; then a poll that read the row at t=1 applies it.
        cache.apply(&row(5, Some(5)));
        cache.apply(&row(1, None));
        assert!(revoked(&cache));
        // Same instant: the revoked version stays.
        cache.apply(&row(5, None));
        assert!(revoked(&cache));
    }

    #[test]
    fn newer_rows_replace_older_ones() {
        let cache = KeyCache::new();
        cache.apply(&row(1, None));
        assert!(!revoked(&cache));
        cache.apply(&row(2, Some(2)));
        assert!(revoked(&cache));
        // A newer version (say, restored from a backup taken before the revocation) wins.
        cache.apply(&row(3, None));
        assert!(!revoked(&cache));
    }
}
