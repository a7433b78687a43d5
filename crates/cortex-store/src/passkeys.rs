//! Passkeys (SPEC §19): each user's WebAuthn credentials, named. The credential column holds the
//! verified public key and its signature counter (JSON, no secret); `sign_count` repeats the
//! counter so that using a passkey moves it forward in one conditional `UPDATE`: two assertions
//! racing with the same counter, or a clone replaying an old one, cannot both pass.

use cortex_domain::audit::NewAuditEvent;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::append_in_tx;
use crate::{Store, StoreError, StoreResult};

#[derive(Clone)]
pub struct PasskeyRow {
    pub id: String,
    pub user_id: String,
    /// base64url, as the browser names the credential.
    pub credential_id: String,
    pub name: String,
    /// The verified credential (webauthn-rs's `Passkey`), as JSON.
    pub credential: String,
    pub sign_count: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for PasskeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

pub struct NewPasskey<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub credential_id: &'a str,
    pub name: &'a str,
    pub credential: &'a str,
    pub sign_count: i64,
}

const COLUMNS: &str =
    "id, user_id, credential_id, name, credential, sign_count, created_at, last_used_at";

fn passkey_from_row(row: &AnyRow) -> StoreResult<PasskeyRow> {
    Ok(PasskeyRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        credential_id: row.try_get("credential_id")?,
        name: row.try_get("name")?,
        credential: row.try_get("credential")?,
        sign_count: row.try_get("sign_count")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl Store {
    /// A user's passkeys, oldest first.
    pub async fn list_passkeys(&self, user_id: &str) -> StoreResult<Vec<PasskeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, name"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(passkey_from_row).collect()
    }

    pub async fn count_passkeys(&self, user_id: &str) -> StoreResult<i64> {
        let row =
            sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM passkeys WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("n")?)
    }

    /// Stores a registered passkey with its audit event. `Conflict` when the user already has a
    /// passkey of that name, or the credential is registered (to anyone) already.
    pub async fn add_passkey(
        &self,
        passkey: &NewPasskey<'_>,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<PasskeyRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO passkeys (id, user_id, credential_id, name, credential, sign_count, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(passkey.id)
        .bind(passkey.user_id)
        .bind(passkey.credential_id)
        .bind(passkey.name)
        .bind(passkey.credential)
        .bind(passkey.sign_count)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM passkeys WHERE id = $1"))
            .bind(passkey.id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        passkey_from_row(&row)
    }

    /// Records a use of passkey `id`: the credential as updated and its new counter, only when
    /// the counter moves forward (or stays 0 for an authenticator without one). `false` when
    /// another use got there first with this counter or a higher one.
    pub async fn record_passkey_use(
        &self,
        id: &str,
        credential: &str,
        sign_count: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE passkeys SET credential = $1, sign_count = $2, last_used_at = $3 \
             WHERE id = $4 AND (sign_count < $2 OR ($2 = 0 AND sign_count = 0))",
        )
        .bind(credential)
        .bind(sign_count)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes passkey `id` of `user_id` with its audit event. Refused (`Conflict`) when it is
    /// the last passkey of a user who signs in with a passkey alone: they would be locked out.
    pub async fn remove_passkey(
        &self,
        user_id: &str,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "DELETE FROM passkeys WHERE id = $1 AND user_id = $2 AND NOT EXISTS ( \
                 SELECT 1 FROM users u WHERE u.id = $2 AND u.passkey_only = TRUE \
                 AND (SELECT COUNT(*) FROM passkeys p WHERE p.user_id = $2) <= 1)",
        )
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let exists =
                sqlx::query("SELECT 1 AS one FROM passkeys WHERE id = $1 AND user_id = $2")
                    .bind(id)
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(if exists.is_some() {
                StoreError::Conflict
            } else {
                StoreError::NotFound
            });
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Turns signing in with a passkey alone on or off for `user_id`, with its audit event. On
    /// needs a passkey (`Conflict` otherwise), checked in the same statement.
    pub async fn set_passkey_only(
        &self,
        user_id: &str,
        enabled: bool,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE users SET passkey_only = $1, updated_at = $2 WHERE id = $3 AND kind = 'local' \
             AND ($1 = FALSE OR EXISTS (SELECT 1 FROM passkeys p WHERE p.user_id = $3))",
        )
        .bind(enabled)
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
