//! API keys: only the SHA-256 of the secret is stored; lookup is by public id.
//!
//! Every transaction that writes key rows starts with [`next_key_version`] and stamps the
//! number on each row it writes (the last-used time is not a change and takes none). The one
//! counter row serializes those transactions, so versions commit in order and a cache that read
//! version `v` has seen everything up to `v` ([`Store::api_keys_changed_after`]). Taking the
//! counter first also orders a key write after any user change it must see: a key created while
//! its owner is being disabled either is suspended by that change or reads the owner as disabled.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Budget, KeyLimits, Scope, Tenant};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::append_in_tx;
use crate::{Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: String,
    pub public_id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_hash: String,
    pub name: String,
    pub owner_user_id: String,
    pub scopes: Vec<Scope>,
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    pub limits: KeyLimits,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub rotated_to: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    /// True while the owner is disabled; lifted (unlike a revocation) when they are enabled.
    pub owner_disabled: bool,
    /// Assigned by the database from one counter in the writing transaction: of two versions of
    /// a key, the higher is the newer, whatever the writers' clocks said.
    pub version: i64,
    /// The organization the key belongs to (its owner's when it was created).
    pub org_id: String,
    /// The team the key is charged to, if any: one of its organization's teams the owner is a
    /// member of.
    pub team_id: Option<String>,
    /// The organization's model allow-list, read with the key (`None`: every model). A change
    /// to it gives every key of the organization a new version, so caches re-read it.
    pub org_models: Option<Vec<String>>,
    /// The CIDRs the key may be used from (`None`: anywhere).
    pub allowed_ips: Option<Vec<String>>,
    /// The limits of the levels above the key, read with it; a change to any of them gives the
    /// keys under it a new version, so caches re-read them (SPEC §18).
    pub above: LevelsAbove,
}

/// The budgets and token rates that apply to a key's requests from above it: its owner's
/// budget, its team's and its organization's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LevelsAbove {
    pub user_budget: Option<Budget>,
    pub team_budget: Option<Budget>,
    pub team_tokens_per_minute: Option<i64>,
    pub org_budget: Option<Budget>,
    pub org_tokens_per_minute: Option<i64>,
}

impl ApiKeyRow {
    /// Usable at `now`: not revoked, not suspended with its owner, and not expired.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none()
            && !self.owner_disabled
            && self.expires_at.is_none_or(|at| at > now)
    }
}

/// Takes the next key version; the first statement of every transaction that writes key rows.
/// The counter row stays locked (PostgreSQL) or the database write-locked (SQLite) until the
/// transaction ends, so versions commit in the order they were taken.
pub(crate) async fn next_key_version(conn: &mut sqlx::AnyConnection) -> StoreResult<i64> {
    let row = sqlx::query(
        "UPDATE api_key_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("version")?)
}

/// What a caller supplies to create a key; the secret was hashed by the caller.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub public_id: String,
    pub secret_hash: String,
    pub name: String,
    pub owner_user_id: String,
    pub scopes: Vec<Scope>,
    pub models: Option<Vec<String>>,
    pub limits: KeyLimits,
    pub expires_at: Option<i64>,
    pub org_id: String,
    pub team_id: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
}

/// Every key query reads through this: the key (`k`) with its organization's allow-list and
/// limits (`o`), its team's limits (`t`) and its owner's budget (`u`). Conditions name `k.`
/// columns.
const KEY_SELECT: &str =
    "SELECT k.id, k.public_id, k.secret_hash, k.name, k.owner_user_id, k.scopes, k.models, k.limits, \
     k.expires_at, k.revoked_at, k.rotated_to, k.created_at, k.updated_at, k.last_used_at, \
     k.owner_disabled, k.version, k.org_id, k.team_id, k.allowed_ips, o.allowed_models AS org_models, \
     o.budget_usd AS org_budget_usd, o.budget_period AS org_budget_period, o.tokens_per_minute AS org_tpm, \
     t.budget_usd AS team_budget_usd, t.budget_period AS team_budget_period, t.tokens_per_minute AS team_tpm, \
     u.budget_usd AS user_budget_usd, u.budget_period AS user_budget_period \
     FROM api_keys k LEFT JOIN organizations o ON o.id = k.org_id \
     LEFT JOIN teams t ON t.id = k.team_id LEFT JOIN users u ON u.id = k.owner_user_id";

/// A JSON array of names, as `models` and `allowed_models` are stored.
pub(crate) fn name_list(text: Option<String>) -> StoreResult<Option<Vec<String>>> {
    text.map(|text| serde_json::from_str(&text).map_err(|_| StoreError::Corrupt))
        .transpose()
}

fn key_from_row(row: &AnyRow) -> StoreResult<ApiKeyRow> {
    let scopes_text: String = row.try_get("scopes")?;
    let limits_text: String = row.try_get("limits")?;
    Ok(ApiKeyRow {
        id: row.try_get("id")?,
        public_id: row.try_get("public_id")?,
        secret_hash: row.try_get("secret_hash")?,
        name: row.try_get("name")?,
        owner_user_id: row.try_get("owner_user_id")?,
        scopes: Scope::parse_list(&scopes_text).map_err(|_| StoreError::Corrupt)?,
        models: name_list(row.try_get("models")?)?,
        limits: serde_json::from_str(&limits_text).map_err(|_| StoreError::Corrupt)?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rotated_to: row.try_get("rotated_to")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_used_at: row.try_get("last_used_at")?,
        owner_disabled: crate::get_bool(row, "owner_disabled")?,
        version: row.try_get("version")?,
        org_id: row.try_get("org_id")?,
        team_id: row.try_get("team_id")?,
        org_models: name_list(row.try_get("org_models")?)?,
        allowed_ips: name_list(row.try_get("allowed_ips")?)?,
        above: LevelsAbove {
            user_budget: crate::users::budget_from_columns(
                row,
                "user_budget_usd",
                "user_budget_period",
            )?,
            team_budget: crate::users::budget_from_columns(
                row,
                "team_budget_usd",
                "team_budget_period",
            )?,
            team_tokens_per_minute: row.try_get("team_tpm")?,
            org_budget: crate::users::budget_from_columns(
                row,
                "org_budget_usd",
                "org_budget_period",
            )?,
            org_tokens_per_minute: row.try_get("org_tpm")?,
        },
    })
}

/// Inserts a key stamped with `version`; it starts suspended when its owner is disabled. A key
/// charged to a team is inserted only when the team is of the key's organization and the owner
/// is one of its members (checked in the writing transaction, so a concurrent membership change
/// cannot slip past the service's check): `NotFound` otherwise.
async fn insert_key(
    conn: &mut sqlx::AnyConnection,
    key: &NewApiKey,
    version: i64,
    now: i64,
) -> StoreResult<()> {
    let models = key
        .models
        .as_ref()
        .map(|m| serde_json::to_string(m).map_err(|_| StoreError::Corrupt))
        .transpose()?;
    let limits = serde_json::to_string(&key.limits).map_err(|_| StoreError::Corrupt)?;
    let allowed_ips = key
        .allowed_ips
        .as_ref()
        .map(|m| serde_json::to_string(m).map_err(|_| StoreError::Corrupt))
        .transpose()?;
    if let Some(team_id) = &key.team_id {
        let member = sqlx::query(
            "SELECT 1 AS one FROM team_members m JOIN teams t ON t.id = m.team_id \
             WHERE m.team_id = $1 AND m.user_id = $2 AND t.org_id = $3",
        )
        .bind(team_id)
        .bind(&key.owner_user_id)
        .bind(&key.org_id)
        .fetch_optional(&mut *conn)
        .await?;
        if member.is_none() {
            return Err(StoreError::NotFound);
        }
    }
    sqlx::query(
        "INSERT INTO api_keys (id, public_id, secret_hash, name, owner_user_id, scopes, models, limits, expires_at, created_at, updated_at, owner_disabled, version, org_id, team_id, allowed_ips) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, COALESCE((SELECT disabled FROM users WHERE id = $5), FALSE), $11, $12, $13, $14)",
    )
    .bind(&key.id)
    .bind(&key.public_id)
    .bind(&key.secret_hash)
    .bind(&key.name)
    .bind(&key.owner_user_id)
    .bind(Scope::join(&key.scopes))
    .bind(models)
    .bind(limits)
    .bind(key.expires_at)
    .bind(now)
    .bind(version)
    .bind(&key.org_id)
    .bind(key.team_id.as_deref())
    .bind(allowed_ips)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    pub async fn create_api_key(
        &self,
        key: &NewApiKey,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<ApiKeyRow> {
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        insert_key(&mut tx, key, version, now).await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_api_key(&Tenant::All, &key.id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The key `id` if `tenant` sees it (another organization's key is not found).
    pub async fn get_api_key(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<ApiKeyRow>> {
        let row = sqlx::query(&format!(
            "{KEY_SELECT} WHERE k.id = $1 AND ($2 IS NULL OR k.org_id = $2)"
        ))
        .bind(id)
        .bind(tenant.org_filter())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    pub async fn get_api_key_by_public_id(
        &self,
        tenant: &Tenant,
        public_id: &str,
    ) -> StoreResult<Option<ApiKeyRow>> {
        let row = sqlx::query(&format!(
            "{KEY_SELECT} WHERE k.public_id = $1 AND ($2 IS NULL OR k.org_id = $2)"
        ))
        .bind(public_id)
        .bind(tenant.org_filter())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// The keys `tenant` sees, all or one owner's, newest first.
    pub async fn list_api_keys(
        &self,
        tenant: &Tenant,
        owner_user_id: Option<&str>,
    ) -> StoreResult<Vec<ApiKeyRow>> {
        let rows = sqlx::query(&format!(
            "{KEY_SELECT} WHERE ($1 IS NULL OR k.owner_user_id = $1) AND ($2 IS NULL OR k.org_id = $2) \
             ORDER BY k.created_at DESC, k.id"
        ))
        .bind(owner_user_id)
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Keys written with a version above `version`, for the cache poll on every instance. One
    /// statement, so one snapshot: since versions commit in order (see [`next_key_version`]),
    /// every row up to the highest version returned is in it, and the next poll may start
    /// there.
    pub async fn api_keys_changed_after(&self, version: i64) -> StoreResult<Vec<ApiKeyRow>> {
        let rows = sqlx::query(&format!("{KEY_SELECT} WHERE k.version > $1"))
            .bind(version)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key; false when `tenant` does not see it or it was already revoked.
    pub async fn revoke_api_key(
        &self,
        tenant: &Tenant,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1, updated_at = $1, version = $2 WHERE id = $3 AND revoked_at IS NULL AND ($4 IS NULL OR org_id = $4)")
            .bind(now)
            .bind(version)
            .bind(id)
            .bind(tenant.org_filter())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Issues `replacement` and lets the old key live until `old_expires_at` (revoked at once
    /// when that is `now` or earlier). One transaction, one audit event. Only a live key is
    /// rotated, and only once: `NotFound` when the old key is missing, revoked, expired at
    /// `now`, suspended with its owner, or already rotated (the caller checked these before;
    /// this is the check that holds under concurrent changes).
    pub async fn rotate_api_key(
        &self,
        old_id: &str,
        replacement: &NewApiKey,
        old_expires_at: i64,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<ApiKeyRow> {
        const LIVE: &str = "id = $4 AND revoked_at IS NULL AND rotated_to IS NULL \
             AND owner_disabled = FALSE AND (expires_at IS NULL OR expires_at > $5)";
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        insert_key(&mut tx, replacement, version, now).await?;
        let done = if old_expires_at <= now {
            sqlx::query(&format!(
                "UPDATE api_keys SET revoked_at = $1, rotated_to = $2, updated_at = $1, version = $3 WHERE {LIVE}"
            ))
            .bind(now)
            .bind(&replacement.id)
            .bind(version)
            .bind(old_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(&format!(
                "UPDATE api_keys SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END, \
                 rotated_to = $2, version = $3, updated_at = $5 WHERE {LIVE}"
            ))
            .bind(old_expires_at)
            .bind(&replacement.id)
            .bind(version)
            .bind(old_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
        };
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_api_key(&Tenant::All, &replacement.id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Records last-used times in one statement per key; called off the hot path in batches.
    pub async fn touch_api_keys(&self, used: &[(String, i64)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, at) in used {
            // last_used_at does not bump updated_at: it must not make every instance reload.
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(*at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
