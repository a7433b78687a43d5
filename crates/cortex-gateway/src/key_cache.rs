//! API keys held in memory so that the `/v1` hot path never queries the database.
//!
//! Every instance loads all keys at start and then polls for rows with a version above the
//! highest it has read (one indexed query a second, off the hot path), so a key created,
//! revoked, rotated or suspended anywhere — another instance, the CLI — is seen everywhere
//! within about a second. Changes made through this instance are applied to the cache at once.
//!
//! Versions are assigned by the database, one counter for all key writes, taken first in the
//! writing transaction (`cortex_store::keys`). Wall clocks play no part: a revocation written
//! by a host whose clock is behind is still the newer version. Why the poll misses nothing:
//! the counter row serializes key-writing transactions, so one with version `v` committed
//! before any with a higher version could take its number; a poll that reads a row of version
//! `v` therefore reads, in the same snapshot, every row of every version up to `v`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use cortex_crypto::api_key::KeyHash;
use cortex_domain::{AllowedIps, KeyLimits, Scope};
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
    /// The models the key may use: its own allow-list narrowed by its organization's
    /// (`None`: every model).
    pub models: Option<Vec<String>>,
    pub limits: KeyLimits,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// The owner is disabled: refused until they are enabled again.
    pub owner_disabled: bool,
    /// The row's database-assigned version: of two versions of a key, the higher is newer.
    pub version: i64,
    /// The budget levels its requests reserve at (none when neither it nor anything above it
    /// has a budget), made once here rather than on every request.
    pub budget_levels: Vec<cortex_limits::BudgetLevel>,
    /// Its team's and organization's tokens-per-minute windows (name, limit).
    pub token_levels: Vec<(String, u64)>,
    /// Where it may be used from (`None`: anywhere).
    pub allowed_ips: Option<AllowedIps>,
    /// The key's organization and team, for its usage records (SPEC §18).
    pub org_id: String,
    pub team_id: Option<String>,
}

/// The models a key may use: every model its own list and its organization's both allow.
fn effective_models(key: Option<&Vec<String>>, org: Option<&Vec<String>>) -> Option<Vec<String>> {
    match (key, org) {
        (None, None) => None,
        (Some(only), None) | (None, Some(only)) => Some(only.clone()),
        (Some(key), Some(org)) => Some(key.iter().filter(|m| org.contains(m)).cloned().collect()),
    }
}

impl CachedKey {
    fn from_row(row: &ApiKeyRow) -> Option<CachedKey> {
        let secret_hash = KeyHash::from_hex(&row.secret_hash).ok()?;
        // A stored list that does not parse makes the key unusable (like a malformed hash),
        // never usable from anywhere.
        let allowed_ips = match &row.allowed_ips {
            Some(entries) => Some(AllowedIps::parse(entries).ok()?),
            None => None,
        };
        Some(CachedKey {
            id: row.id.clone(),
            public_id: row.public_id.clone(),
            name: row.name.clone(),
            owner_user_id: row.owner_user_id.clone(),
            secret_hash,
            scopes: row.scopes.clone(),
            models: effective_models(row.models.as_ref(), row.org_models.as_ref()),
            limits: row.limits.clone(),
            expires_at: row.expires_at,
            revoked: row.revoked_at.is_some(),
            owner_disabled: row.owner_disabled,
            version: row.version,
            budget_levels: crate::budget::levels_of(row),
            token_levels: crate::budget::token_levels_of(row),
            allowed_ips,
            org_id: row.org_id.clone(),
            team_id: row.team_id.clone(),
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
/// revocation was applied: an older version never replaces a newer one, so a revocation cannot
/// be undone by a stale read, even for the second until the next poll. Two reads of the same
/// version are the same committed row.
fn replaces(cached: &CachedKey, incoming: &CachedKey) -> bool {
    incoming.version > cached.version
}

#[derive(Default)]
pub struct KeyCache {
    by_public_id: RwLock<HashMap<String, Arc<CachedKey>>>,
    /// The highest version a poll has read: every version up to it is in the cache. Only a
    /// poll moves it, never a row applied after a local write: that row's version can be above
    /// another instance's commit that no poll has read yet, which must not be skipped.
    polled_up_to: AtomicI64,
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

    /// Reads every key (at start) or those written since the last poll (each poll).
    pub async fn refresh(&self, store: &Store) -> StoreResult<usize> {
        let after = self.polled_up_to.load(Ordering::Acquire);
        let rows = if self.is_empty() {
            store
                .list_api_keys(&cortex_store::Tenant::All, None)
                .await?
        } else {
            store.api_keys_changed_after(after).await?
        };
        let mut newest = after;
        for row in &rows {
            self.apply(row);
            newest = newest.max(row.version);
        }
        // Two polls at once (the timer and a Redis announcement) each read a complete prefix
        // of the versions; the longer one wins.
        self.polled_up_to.fetch_max(newest, Ordering::AcqRel);
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64, revoked_at: Option<i64>) -> ApiKeyRow {
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
            updated_at: 1,
            last_used_at: None,
            owner_disabled: false,
            version,
            org_id: "default".into(),
            team_id: None,
            org_models: None,
            allowed_ips: None,
            above: Default::default(),
        }
    }

    #[test]
    fn a_stored_allow_list_that_does_not_parse_makes_the_key_unusable_not_open() {
        let cache = KeyCache::new();
        let mut bad = row(1, None);
        bad.allowed_ips = Some(vec!["10.0.0.0/8".into(), "not-a-range".into()]);
        cache.apply(&bad);
        assert!(cache.get("pub1").is_none());
        let mut good = row(2, None);
        good.allowed_ips = Some(vec!["10.0.0.0/8".into()]);
        cache.apply(&good);
        let key = cache.get("pub1").unwrap();
        let allowed = key.allowed_ips.as_ref().unwrap();
        assert!(allowed.allows("10.1.2.3".parse().unwrap()));
        assert!(!allowed.allows("11.1.2.3".parse().unwrap()));
    }

    fn revoked(cache: &KeyCache) -> bool {
        cache.get("pub1").is_some_and(|k| k.revoked)
    }

    #[test]
    fn a_stale_read_does_not_undo_a_revocation() {
        let cache = KeyCache::new();
        cache.apply(&row(1, None));
        // Revoked here as version 5; then a poll that read version 1 applies it.
        cache.apply(&row(5, Some(5)));
        cache.apply(&row(1, None));
        assert!(revoked(&cache));
        // The same version read again changes nothing.
        cache.apply(&row(5, Some(5)));
        assert!(revoked(&cache));
    }

    #[test]
    fn newer_versions_replace_older_ones_whatever_the_clocks_said() {
        let cache = KeyCache::new();
        let mut created = row(1, None);
        created.updated_at = 1_000_000;
        cache.apply(&created);
        assert!(!revoked(&cache));
        // Revoked by a host whose clock is five minutes behind: still the newer version.
        let mut revocation = row(2, Some(700_000));
        revocation.updated_at = 700_000;
        cache.apply(&revocation);
        assert!(revoked(&cache));
        // Only a newer version can change it again.
        cache.apply(&row(3, None));
        assert!(!revoked(&cache));
    }

    #[test]
    fn a_suspension_is_carried_and_lifted_by_versions() {
        let cache = KeyCache::new();
        cache.apply(&row(1, None));
        let mut suspended = row(2, None);
        suspended.owner_disabled = true;
        cache.apply(&suspended);
        assert!(cache.get("pub1").is_some_and(|k| k.owner_disabled));
        cache.apply(&row(1, None));
        assert!(cache.get("pub1").is_some_and(|k| k.owner_disabled));
        cache.apply(&row(3, None));
        assert!(cache.get("pub1").is_some_and(|k| !k.owner_disabled));
    }

    #[test]
    fn an_organizations_allow_list_narrows_every_key_of_it() {
        let cache = KeyCache::new();
        let mut key = row(1, None);
        key.org_models = Some(vec!["llama".into(), "qwen".into()]);
        cache.apply(&key);
        let cached = cache.get("pub1").unwrap();
        assert!(cached.allows_model("llama"));
        assert!(!cached.allows_model("mistral"));
        // The key's own list and the organization's: only what both allow.
        key.version = 2;
        key.models = Some(vec!["mistral".into(), "qwen".into()]);
        cache.apply(&key);
        let cached = cache.get("pub1").unwrap();
        assert!(cached.allows_model("qwen"));
        assert!(!cached.allows_model("mistral"));
        assert!(!cached.allows_model("llama"));
        // Lifted: the key's own list again.
        key.version = 3;
        key.org_models = None;
        cache.apply(&key);
        assert!(cache.get("pub1").unwrap().allows_model("mistral"));
    }
}
