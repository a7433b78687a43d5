//! Re-sealing every stored secret under a new master key, in one transaction.
//!
//! The store does not know master keys: the caller passes a function that re-wraps one sealed
//! value (given its associated data, the record id), the audit chain's old and new keys, and the
//! checkpoint signing of both ([`CheckpointKeys`]). If anything fails for any record, the
//! transaction is rolled back and the old key stays valid for every record.

use cortex_domain::audit::{AuditChainKey, ChainHasher, NewAuditEvent};
use sqlx::Row;

use crate::audit::{append_in_tx, checkpoint_in_tx, rekey_chain_in_tx, CheckpointKeys, RekeyError};
use crate::{Backend, Store, StoreError};

/// What a rotation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationCounts {
    pub provider_keys: u64,
    pub totp_secrets: u64,
    /// Audit events re-hashed under the new chain key.
    pub audit_events: u64,
    pub checkpoints: u64,
}

/// The audit side of a rotation: the chain's key before and after, and the checkpoint keys.
pub struct ChainRotation<'a> {
    pub old: &'a ChainHasher,
    pub new: &'a AuditChainKey,
    pub checkpoints: &'a dyn CheckpointKeys,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be opened with the current key; nothing was changed.
    #[error("{0} cannot be opened with the current master key; nothing was changed")]
    Unreadable(String),
    #[error(
        "the current master key is not the one this database is sealed with; nothing was changed"
    )]
    WrongKey,
    #[error("the new key is the current key; nothing was changed")]
    SameKey,
    /// The audit chain does not verify under the current key (from this event on).
    #[error("the audit log does not verify at event #{0} under the current master key; nothing was changed")]
    AuditChainBroken(i64),
}

impl From<RekeyError> for RotateError {
    fn from(err: RekeyError) -> Self {
        match err {
            RekeyError::Store(err) => RotateError::Store(err),
            RekeyError::ChainBroken(seq) => RotateError::AuditChainBroken(seq),
            RekeyError::CheckpointInvalid(seq) => {
                RotateError::Unreadable(format!("the audit checkpoint at event #{seq}"))
            }
            RekeyError::WrongKey => RotateError::WrongKey,
        }
    }
}

impl From<sqlx::Error> for RotateError {
    fn from(err: sqlx::Error) -> Self {
        RotateError::Store(err.into())
    }
}

/// One column of sealed values, each bound to its row's `id`, that a key rotation re-wraps.
struct SealedColumn {
    select: &'static str,
    update: &'static str,
    /// How a row is named when it cannot be opened, from the value of `name_column`.
    name_column: &'static str,
    describe: fn(&str) -> String,
}

const SEALED_PROVIDER_KEYS: SealedColumn = SealedColumn {
    select: "SELECT id, name, api_key_sealed AS sealed FROM providers WHERE api_key_sealed IS NOT NULL ORDER BY id",
    update: "UPDATE providers SET api_key_sealed = $1 WHERE id = $2",
    name_column: "name",
    describe: |name| format!("the API key of provider {name:?}"),
};

const SEALED_TOTP_SECRETS: SealedColumn = SealedColumn {
    select: "SELECT id, username, totp_secret_sealed AS sealed FROM users WHERE totp_secret_sealed IS NOT NULL ORDER BY id",
    update: "UPDATE users SET totp_secret_sealed = $1 WHERE id = $2",
    name_column: "username",
    describe: |username| format!("the TOTP secret of user {username:?}"),
};

/// Re-wraps every value of `column` inside `tx`; the number re-wrapped, or the first row that
/// does not open (which aborts the whole rotation).
async fn rewrap_column(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    column: &SealedColumn,
    rewrap: &impl Fn(&[u8], &[u8]) -> Option<Vec<u8>>,
) -> Result<u64, RotateError> {
    let rows = sqlx::query(column.select).fetch_all(&mut **tx).await?;
    for row in &rows {
        let id: String = row.try_get("id")?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let Some(moved) = rewrap(&sealed, id.as_bytes()) else {
            let name: String = row.try_get(column.name_column)?;
            return Err(RotateError::Unreadable((column.describe)(&name)));
        };
        sqlx::query(column.update)
            .bind(moved)
            .bind(&id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(rows.len() as u64)
}

impl Store {
    /// Re-wraps every provider key and TOTP secret with `rewrap(sealed, record_id)`, re-keys the
    /// audit chain and re-signs every checkpoint (after verifying both under the old key), writes
    /// `settings` and the audit event under the new chain key, and signs a checkpoint covering
    /// that event — all or nothing.
    pub async fn rotate_sealed_secrets(
        &self,
        rewrap: impl Fn(&[u8], &[u8]) -> Option<Vec<u8>>,
        chain: &ChainRotation<'_>,
        settings: &[(&str, &str)],
        audit: &NewAuditEvent,
        now: i64,
    ) -> Result<RotationCounts, RotateError> {
        let mut tx = self.pool.begin().await?;
        // Take the write locks before reading: on PostgreSQL lock the tables whose rows are
        // rewritten (readers go on; writers wait), on SQLite any write takes the database lock.
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE providers, users, audit_checkpoints IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        // Every instance reloads its routing table (and its provider keys) after this.
        sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let mut counts = RotationCounts {
            provider_keys: rewrap_column(&mut tx, &SEALED_PROVIDER_KEYS, &rewrap).await?,
            totp_secrets: rewrap_column(&mut tx, &SEALED_TOTP_SECRETS, &rewrap).await?,
            ..RotationCounts::default()
        };
        let (rekeyed, newest) = rekey_chain_in_tx(
            &mut tx,
            self.backend,
            chain.old,
            chain.new,
            chain.checkpoints,
        )
        .await?;
        counts.audit_events = rekeyed.events;
        counts.checkpoints = rekeyed.checkpoints;

        for (name, value) in settings {
            sqlx::query(
                "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(*name)
            .bind(*value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let new_hasher = ChainHasher::Keyed(chain.new.clone());
        let record = append_in_tx(&mut tx, &new_hasher, audit, now).await?;
        checkpoint_in_tx(&mut tx, chain.checkpoints, &record, newest.as_ref(), now).await?;
        tx.commit().await?;
        Ok(counts)
    }

    /// Copies the SQLite database to `path` as one consistent snapshot (`VACUUM INTO`), while
    /// other connections keep reading and writing. `path` must not exist or be an empty file.
    pub async fn backup_sqlite_into(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Other);
        }
        let target = path.to_str().ok_or(StoreError::Other)?;
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// SQLite's own consistency check of every page and index; true when it answers "ok".
    pub async fn sqlite_integrity_ok(&self) -> Result<bool, StoreError> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Other);
        }
        let row = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?;
        let answer: String = row.try_get(0)?;
        Ok(answer == "ok")
    }
}
