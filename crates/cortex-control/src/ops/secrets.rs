//! The master key: a fingerprint that ties a database to the key its secrets are sealed with,
//! and `cortex secrets rotate-master-key`.
//!
//! Rotation re-wraps every data key (provider credentials, TOTP secrets) under the new key,
//! re-hashes the audit chain under the new chain key and re-signs every audit checkpoint with the
//! new checkpoint key, in one transaction with its audit event (and a checkpoint covering it). A
//! chain or a checkpoint that does not verify under the old key aborts the rotation, so rotation
//! can never launder a forged event or checkpoint. Access tokens (JWTs, signed with a key derived
//! from the master key) issued before the rotation stop verifying; sessions and refresh tokens are
//! stored as hashes, independent of the key, so clients simply refresh.

use std::path::{Path, PathBuf};

use cortex_crypto::envelope::{open, rewrap, MasterKey};
use cortex_crypto::token::{ct_eq, sha256_hex};
use cortex_domain::audit::{ChainHasher, NewAuditEvent};
use cortex_store::secrets::{ChainRotation, RotateError, RotationCounts};
use cortex_store::{Store, StoreResult};
use secrecy::ExposeSecret;
use serde_json::json;

use super::audit::{chain_key, signer, Resigner};

/// The `settings` row holding the fingerprint of the master key in use.
pub const FINGERPRINT_SETTING: &str = "master_key_fingerprint";

/// A one-way fingerprint of the key (SHA-256 of a purpose-bound derived key): it identifies the
/// key without revealing it or any other sub-key.
pub fn fingerprint(key: &MasterKey) -> String {
    sha256_hex(
        key.derive_subkey("cortex-master-key-fingerprint-v1")
            .expose_secret(),
    )
}

/// Where a generated key waits while a rotation commits (`master.key` → `master.key.next`).
pub fn pending_key_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    key_path.with_file_name(name)
}

/// True when `key` is the key this database's secrets are sealed with. A database without a
/// fingerprint yet (new, or from before fingerprints) gets this key's, provided the key opens the
/// secrets already stored.
pub async fn check_master_key(store: &Store, key: &MasterKey, now: i64) -> StoreResult<bool> {
    let mine = fingerprint(key);
    if let Some(stored) = store.get_setting(FINGERPRINT_SETTING).await? {
        return Ok(ct_eq(stored.as_bytes(), mine.as_bytes()));
    }
    if !opens_stored_secrets(store, key).await? {
        return Ok(false);
    }
    let stored = store
        .put_setting_if_absent(FINGERPRINT_SETTING, &mine, now)
        .await?;
    Ok(ct_eq(stored.as_bytes(), mine.as_bytes()))
}

async fn opens_stored_secrets(store: &Store, key: &MasterKey) -> StoreResult<bool> {
    for provider in store.list_providers().await? {
        if let Some(sealed) = &provider.api_key_sealed {
            return Ok(open(key, sealed, provider.id.as_bytes()).is_ok());
        }
    }
    for user in store.list_users().await? {
        if let Some(sealed) = &user.totp_secret_sealed {
            return Ok(open(key, sealed, user.id.as_bytes()).is_ok());
        }
    }
    Ok(true)
}

/// What a rotation did, for the operator and the audit log.
#[derive(Debug, Clone)]
pub struct RotationReport {
    pub counts: RotationCounts,
    pub old_checkpoint_key: String,
    pub new_checkpoint_key: String,
}

/// Re-seals everything under `new` in one transaction; on any error nothing changed and `old`
/// stays the key.
pub async fn rotate_master_key(
    store: &Store,
    old: &MasterKey,
    new: &MasterKey,
    actor: &str,
    now: i64,
) -> Result<RotationReport, RotateError> {
    if fingerprint(old) == fingerprint(new) {
        return Err(RotateError::SameKey);
    }
    if !check_master_key(store, old, now).await? {
        return Err(RotateError::WrongKey);
    }
    let old_public = signer(old).verifying_key_hex();
    let new_signer = signer(new);
    let new_public = new_signer.verifying_key_hex();
    let new_fingerprint = fingerprint(new);
    let event = NewAuditEvent::new(actor, "secrets.rotate_master_key", "master_key").with_details(
        &json!({ "old_checkpoint_key": old_public, "new_checkpoint_key": new_public }),
    );
    let resigner = Resigner {
        old_public: old_public.clone(),
        old_unchained: false,
        new_signer,
    };
    let counts = store
        .rotate_sealed_secrets(
            |sealed, record_id| rewrap(old, new, sealed, record_id).ok(),
            &ChainRotation {
                old: &ChainHasher::Keyed(chain_key(old)),
                new: &chain_key(new),
                checkpoints: &resigner,
            },
            &[(FINGERPRINT_SETTING, new_fingerprint.as_str())],
            &event,
            now,
        )
        .await?;
    Ok(RotationReport {
        counts,
        old_checkpoint_key: old_public,
        new_checkpoint_key: new_public,
    })
}
