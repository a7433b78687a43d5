//! API keys: only the SHA-256 of the secret is stored; lookup is by public id.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{KeyLimits, Scope};
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
}

impl ApiKeyRow {
    /// Usable at `now`: not revoked and not expired.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
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
}

const KEY_COLUMNS: &str =
    "id, public_id, secret_hash, name, owner_user_id, scopes, models, limits, \
     expires_at, revoked_at, rotated_to, created_at, updated_at, last_used_at";

fn key_from_row(row: &AnyRow) -> StoreResult<ApiKeyRow> {
    let scopes_text: String = row.try_get("scopes")?;
    let models_text: Option<String> = row.try_get("models")?;
    let limits_text: String = row.try_get("limits")?;
    Ok(ApiKeyRow {
        id: row.try_get("id")?,
        public_id: row.try_get("public_id")?,
        secret_hash: row.try_get("secret_hash")?,
        name: row.try_get("name")?,
        owner_user_id: row.try_get("owner_user_id")?,
        scopes: Scope::parse_list(&scopes_text).map_err(|_| StoreError::Corrupt)?,
        models: models_text
            .map(|text| serde_json::from_str(&text).map_err(|_| StoreError::Corrupt))
            .transpose()?,
        limits: serde_json::from_str(&limits_text).map_err(|_| StoreError::Corrupt)?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rotated_to: row.try_get("rotated_to")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

async fn insert_key(conn: &mut sqlx::AnyConnection, key: &NewApiKey, now: i64) -> StoreResult<()> {
    let models = key
        .models
        .as_ref()
        .map(|m| serde_json::to_string(m).map_err(|_| StoreError::Corrupt))
        .transpose()?;
    let limits = serde_json::to_string(&key.limits).map_err(|_| StoreError::Corrupt)?;
    sqlx::query(
        "INSERT INTO api_keys (id, public_id, secret_hash, name, owner_user_id, scopes, models, limits, expires_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
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
        insert_key(&mut tx, key, now).await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_api_key(&key.id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRow>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    pub async fn get_api_key_by_public_id(
        &self,
        public_id: &str,
    ) -> StoreResult<Option<ApiKeyRow>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE public_id = $1"
        ))
        .bind(public_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// All keys, or one owner's, newest first.
    pub async fn list_api_keys(&self, owner_user_id: Option<&str>) -> StoreResult<Vec<ApiKeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 IS NULL OR owner_user_id = $1) ORDER BY created_at DESC, id"
        ))
        .bind(owner_user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Keys changed at or after `since` (epoch ms), for cache refresh on every instance.
    pub async fn api_keys_changed_since(&self, since: i64) -> StoreResult<Vec<ApiKeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE updated_at >= $1"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key; false when it does not exist or was already revoked.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1, updated_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
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
    /// when that is `now` or earlier). One transaction, one audit event.
    pub async fn rotate_api_key(
        &self,
        old_id: &str,
        replacement: &NewApiKey,
        old_expires_at: i64,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<ApiKeyRow> {
        let mut tx = self.pool.begin().await?;
        insert_key(&mut tx, replacement, now).await?;
        let done = if old_expires_at <= now {
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $1, rotated_to = $2, updated_at = $1 WHERE id = $3 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(&replacement.id)
            .bind(old_id)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE api_keys SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END, \
                 rotated_to = $2, updated_at = $3 WHERE id = $4 AND revoked_at IS NULL",
            )
            .bind(old_expires_at)
            .bind(&replacement.id)
            .bind(now)
            .bind(old_id)
            .execute(&mut *tx)
            .await?
        };
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_api_key(&replacement.id)
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
