//! Key operations shared by the admin API and the `cortex keys` command: create, rotate and
//! revoke, each with its audit event in the same transaction and the cache updated at once.

use cortex_config::Config;
use cortex_crypto::api_key::{generate_api_key, hash_key_secret};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{AllowedIps, KeyLimits, LimitCeiling, Scope, Tenant};
use cortex_store::keys::{ApiKeyRow, NewApiKey};
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::error::ControlError;
use cortex_gateway::key_cache::KeyCache;

/// What a new key should be.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub name: String,
    pub owner_user_id: String,
    pub scopes: Vec<Scope>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<i64>,
    pub limits: KeyLimits,
    /// The owner's organization: the key belongs to it.
    pub org_id: String,
    /// A team of that organization the owner is a member of, to charge the key to.
    pub team_id: Option<String>,
    /// The CIDRs the key may be used from (`None`: anywhere).
    pub allowed_ips: Option<Vec<String>>,
}

impl KeySpec {
    pub fn validate(&self, now: i64) -> Result<(), ControlError> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ControlError::invalid(
                "`name` must be 1 to 128 printable characters",
            ));
        }
        if self.scopes.is_empty() {
            return Err(ControlError::invalid(
                "`scopes` must name at least one of chat, completions, embeddings",
            ));
        }
        if let Some(models) = &self.models {
            if models.len() > 1000 || models.iter().any(|m| m.is_empty() || m.len() > 256) {
                return Err(ControlError::invalid(
                    "`models` must hold 1 to 256 character names",
                ));
            }
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(ControlError::invalid("`expires_at` must be in the future"));
        }
        if let Some(entries) = &self.allowed_ips {
            AllowedIps::parse(entries).map_err(ControlError::invalid)?;
        }
        self.limits.validate().map_err(ControlError::invalid)
    }
}

/// Refuses own-key limits above the deployment's defaults (403 `limit_above_ceiling`). The
/// admin API calls it for callers who may not manage all keys, so a developer cannot lift
/// their own key's limits; Admin and Operator (and the command line) are bound only by
/// [`KeyLimits::validate`]'s sanity bounds.
pub fn check_limit_ceiling(config: &Config, limits: &KeyLimits) -> Result<(), ControlError> {
    let ceiling = LimitCeiling {
        requests_per_second: config.rate_limit.requests_per_second,
        burst: config.rate_limit.burst,
        max_concurrent_streams: config.concurrency.max_streams_per_id,
    };
    limits
        .check_ceiling(&ceiling)
        .map_err(ControlError::LimitAboveCeiling)
}

/// Why `key` cannot be rotated at `now`, if it cannot: a replacement is only ever issued for a
/// live key, once, and inherits its expiry, so rotation never revives or extends a key.
fn not_rotatable(key: &ApiKeyRow, now: i64) -> Option<ControlError> {
    let reason = if key.revoked_at.is_some() {
        "a revoked key cannot be rotated; create a new key"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "an expired key cannot be rotated; create a new key"
    } else if key.owner_disabled {
        "the key's owner is disabled; enable the owner first"
    } else if key.rotated_to.is_some() {
        "this key was already rotated; rotate its replacement instead"
    } else {
        return None;
    };
    Some(ControlError::KeyNotRotatable(reason))
}

/// A created key: the stored row and the full key, which is shown once and never again.
pub struct IssuedKey {
    pub row: ApiKeyRow,
    pub key: SecretString,
}

/// The row to insert for `spec`, with its allow-list in canonical form (an entry that does not
/// parse is refused here too, never read as "anywhere").
fn new_row(spec: &KeySpec) -> Result<(NewApiKey, SecretString), ControlError> {
    let allowed_ips = match &spec.allowed_ips {
        Some(entries) => Some(
            AllowedIps::parse(entries)
                .map_err(ControlError::invalid)?
                .to_strings(),
        ),
        None => None,
    };
    let generated = generate_api_key();
    let row = NewApiKey {
        id: new_id(),
        public_id: generated.public_id.clone(),
        secret_hash: hash_key_secret(generated.secret.expose_secret()).to_hex(),
        name: spec.name.trim().to_owned(),
        owner_user_id: spec.owner_user_id.clone(),
        scopes: spec.scopes.clone(),
        models: spec.models.clone(),
        limits: spec.limits.clone(),
        expires_at: spec.expires_at,
        org_id: spec.org_id.clone(),
        team_id: spec.team_id.clone(),
        allowed_ips,
    };
    Ok((row, generated.full))
}

const TEAM_REFUSED: &str =
    "`team_id` must name a team of the owner's organization that the owner is a member of";

/// Refuses a team the key's owner may not charge: not a team of the key's organization, or one
/// the owner is not a member of (400; the store checks again in the writing transaction).
async fn check_team(store: &Store, spec: &KeySpec) -> Result<(), ControlError> {
    let Some(team_id) = &spec.team_id else {
        return Ok(());
    };
    let team = store
        .get_team(&Tenant::Org(spec.org_id.clone()), team_id)
        .await?;
    match team {
        Some(team) if team.members.contains(&spec.owner_user_id) => Ok(()),
        _ => Err(ControlError::invalid(TEAM_REFUSED)),
    }
}

pub async fn create(
    store: &Store,
    cache: &KeyCache,
    spec: &KeySpec,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<IssuedKey, ControlError> {
    spec.validate(now)?;
    check_team(store, spec).await?;
    let (row, full) = new_row(spec)?;
    let audit = NewAuditEvent::new(actor, "key.create", &row.id)
        .with_details(&json!({
            "name": row.name,
            "owner": row.owner_user_id,
            "scopes": Scope::join(&row.scopes),
            "org_id": row.org_id,
            "team_id": row.team_id,
        }))
        .with_ip(ip)
        .with_org(&row.org_id);
    let stored = match store.create_api_key(&row, &audit, now).await {
        Ok(stored) => stored,
        // The membership went between the check and the write.
        Err(StoreError::NotFound) => return Err(ControlError::invalid(TEAM_REFUSED)),
        Err(other) => return Err(other.into()),
    };
    cache.apply(&stored);
    Ok(IssuedKey {
        row: stored,
        key: full,
    })
}

/// Issues a replacement with the same settings and expiry; the old key stays valid for the
/// grace period. Refused (409 `key_not_rotatable`) for a key that is revoked, expired,
/// suspended with its owner or already rotated. Who may receive the secret is the caller's
/// decision (the admin API: the owner or an Admin; the command line: the local operator).
pub async fn rotate(
    store: &Store,
    cache: &KeyCache,
    old: &ApiKeyRow,
    grace_period_seconds: u64,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<IssuedKey, ControlError> {
    if let Some(refusal) = not_rotatable(old, now) {
        return Err(refusal);
    }
    if grace_period_seconds > 30 * 24 * 3600 {
        return Err(ControlError::invalid(
            "`grace_period_seconds` must be at most 30 days",
        ));
    }
    let spec = KeySpec {
        name: old.name.clone(),
        owner_user_id: old.owner_user_id.clone(),
        scopes: old.scopes.clone(),
        models: old.models.clone(),
        expires_at: old.expires_at,
        limits: old.limits.clone(),
        org_id: old.org_id.clone(),
        team_id: old.team_id.clone(),
        allowed_ips: old.allowed_ips.clone(),
    };
    let (row, full) = new_row(&spec)?;
    let grace_millis = i64::try_from(grace_period_seconds).unwrap_or(0) * 1000;
    let audit = NewAuditEvent::new(actor, "key.rotate", &old.id)
        .with_details(
            &json!({ "replacement": row.id, "grace_period_seconds": grace_period_seconds }),
        )
        .with_ip(ip)
        .with_org(&old.org_id);
    let stored = match store
        .rotate_api_key(&old.id, &row, now + grace_millis, &audit, now)
        .await
    {
        Ok(stored) => stored,
        // Changed since the caller read it (revoked, suspended, rotated by someone else):
        // say which, from the row as it is now.
        Err(StoreError::NotFound) => {
            let current = store.get_api_key(&Tenant::All, &old.id).await?;
            return Err(current
                .and_then(|key| not_rotatable(&key, now))
                .unwrap_or(ControlError::NotFound));
        }
        Err(other) => return Err(other.into()),
    };
    cache.apply(&stored);
    if let Some(old_now) = store.get_api_key(&Tenant::All, &old.id).await? {
        cache.apply(&old_now);
    }
    Ok(IssuedKey {
        row: stored,
        key: full,
    })
}

/// Revokes key `key_id` if `tenant` sees it (`NotFound` otherwise, or when it is revoked
/// already); the event belongs to the key's organization.
pub async fn revoke(
    store: &Store,
    cache: &KeyCache,
    tenant: &Tenant,
    key_id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let key = store
        .get_api_key(tenant, key_id)
        .await?
        .ok_or(ControlError::NotFound)?;
    let audit = NewAuditEvent::new(actor, "key.revoke", key_id)
        .with_ip(ip)
        .with_org(&key.org_id);
    if !store.revoke_api_key(tenant, key_id, &audit, now).await? {
        return Err(ControlError::NotFound);
    }
    if let Some(row) = store.get_api_key(tenant, key_id).await? {
        cache.apply(&row);
    }
    Ok(())
}
