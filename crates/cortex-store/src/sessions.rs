//! Admin logins: sessions (the cookie's token, hashed) and refresh tokens that rotate on every
//! use. All state is in the database, so every instance sees the same sessions, rotations and
//! revocations.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::SessionMethod;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::append_in_tx;
use crate::{Store, StoreError, StoreResult};

#[derive(Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// How the session began.
    pub method: SessionMethod,
}

impl std::fmt::Debug for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl SessionRow {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A new login: the session and the first refresh token of its family.
pub struct NewSession<'a> {
    pub session_id: &'a str,
    pub user_id: &'a str,
    /// SHA-256 (hex) of the cookie token.
    pub token_hash: &'a str,
    pub refresh_id: &'a str,
    pub refresh_hash: &'a str,
    pub expires_at: i64,
    pub client_ip: &'a str,
    pub user_agent: &'a str,
    pub method: SessionMethod,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid and is now used; the new token was stored in its family.
    Rotated { session_id: String, user_id: String },
    /// The token had been used before: the whole family and its session are now revoked.
    Reused {
        family_id: String,
        session_id: String,
        user_id: String,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

fn session_from_row(row: &AnyRow) -> StoreResult<SessionRow> {
    Ok(SessionRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        method: SessionMethod::parse(&row.try_get::<String, _>("method")?)
            .ok_or(StoreError::Corrupt)?,
    })
}

impl Store {
    pub async fn create_session(
        &self,
        new: &NewSession<'_>,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at, client_ip, user_agent, method) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new.session_id)
        .bind(new.user_id)
        .bind(new.token_hash)
        .bind(now)
        .bind(new.expires_at)
        .bind(new.client_ip)
        .bind(new.user_agent)
        .bind(new.method.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, session_id, token_hash, created_at, expires_at) VALUES ($1, $1, $2, $3, $4, $5)",
        )
        .bind(new.refresh_id)
        .bind(new.session_id)
        .bind(new.refresh_hash)
        .bind(now)
        .bind(new.expires_at)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT id, user_id, created_at, expires_at, revoked_at, method FROM sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    pub async fn get_session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<SessionRow>> {
        let row = sqlx::query("SELECT id, user_id, created_at, expires_at, revoked_at, method FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Revokes a session and every refresh token of it; false when already revoked.
    pub async fn revoke_session(
        &self,
        session_id: &str,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE session_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Revokes every session of a user except `keep` (after a password change or removal).
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
        now: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let keep = keep.unwrap_or("");
        let done = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND id <> $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(user_id)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND session_id IN \
             (SELECT id FROM sessions WHERE user_id = $2 AND id <> $3)",
        )
        .bind(now)
        .bind(user_id)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Uses a refresh token once. The claim is one conditional UPDATE, so two instances racing
    /// with the same token cannot both succeed; the loser sees a reuse.
    pub async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_id: &str,
        new_hash: &str,
        reuse_audit: impl Fn(&str, &str) -> NewAuditEvent,
        now: i64,
    ) -> StoreResult<RefreshOutcome> {
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1 \
             RETURNING family_id, session_id, expires_at",
        )
        .bind(now)
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = claimed {
            let family_id: String = row.try_get("family_id")?;
            let session_id: String = row.try_get("session_id")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            let session = sqlx::query("SELECT id, user_id, created_at, expires_at, revoked_at, method FROM sessions WHERE id = $1")
                .bind(&session_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(session) = session.as_ref().map(session_from_row).transpose()? else {
                return Ok(RefreshOutcome::Invalid);
            };
            if !session.is_active(now) {
                tx.rollback().await?;
                return Ok(RefreshOutcome::Invalid);
            }
            sqlx::query(
                "INSERT INTO refresh_tokens (id, family_id, session_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id)
            .bind(&family_id)
            .bind(&session_id)
            .bind(new_hash)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Rotated {
                session_id,
                user_id: session.user_id,
            });
        }
        let existing = sqlx::query(
            "SELECT r.family_id, r.session_id, r.used_at, s.user_id FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(existing) = existing else {
            return Ok(RefreshOutcome::Invalid);
        };
        let used_at: Option<i64> = existing.try_get("used_at")?;
        if used_at.is_none() {
            // Revoked or expired, never used: nothing to punish.
            return Ok(RefreshOutcome::Invalid);
        }
        let family_id: String = existing.try_get("family_id")?;
        let session_id: String = existing.try_get("session_id")?;
        let user_id: String = existing.try_get("user_id")?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&family_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(&session_id)
            .execute(&mut *tx)
            .await?;
        append_in_tx(
            &mut tx,
            &self.audit_hasher,
            &reuse_audit(&family_id, &user_id),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Reused {
            family_id,
            session_id,
            user_id,
        })
    }

    /// Records a TOTP step as used, only if it is newer than the last one: atomic, so the same
    /// code cannot be accepted twice even by two instances at once.
    pub async fn claim_totp_step(&self, user_id: &str, step: i64) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE users SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)")
            .bind(step)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses a recovery code once; false when unknown or already used.
    pub async fn consume_recovery_code(
        &self,
        user_id: &str,
        code_hash: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
            .bind(now)
            .bind(user_id)
            .bind(code_hash)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a pending (not yet confirmed) TOTP secret.
    pub async fn set_pending_totp(
        &self,
        user_id: &str,
        sealed: &[u8],
        now: i64,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE users SET totp_secret_sealed = $1, totp_enabled = FALSE, totp_last_step = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(sealed.to_vec())
        .bind(now)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Turns TOTP on, records the confirming step, and replaces the recovery codes.
    pub async fn enable_totp(
        &self,
        user_id: &str,
        step: i64,
        recovery_hashes: &[String],
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET totp_enabled = TRUE, totp_last_step = $1, updated_at = $2 WHERE id = $3")
            .bind(step)
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for hash in recovery_hashes {
            sqlx::query("INSERT INTO recovery_codes (id, user_id, code_hash) VALUES ($1, $2, $3)")
                .bind(crate::new_id())
                .bind(user_id)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn disable_totp(
        &self,
        user_id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET totp_enabled = FALSE, totp_secret_sealed = NULL, totp_last_step = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn unused_recovery_codes(&self, user_id: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}
