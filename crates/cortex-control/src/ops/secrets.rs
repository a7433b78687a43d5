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

use cortex_crypto::envelope::{rewrap, MasterKey};
use cortex_domain::audit::{ChainHasher, NewAuditEvent};
use cortex_store::secrets::{ChainRotation, RotateError, RotationCounts};
use cortex_store::Store;
use serde_json::json;

use super::audit::{chain_key, signer, Resigner};
pub use super::fingerprint::{check_master_key, fingerprint, FINGERPRINT_SETTING};

/// Where a generated key waits while a rotation commits (`master.key` → `master.key.next`).
pub fn pending_key_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    key_path.with_file_name(name)
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
