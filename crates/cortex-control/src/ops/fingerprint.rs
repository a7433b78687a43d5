//! The master key's fingerprint: it ties a database to the key its secrets are sealed with, so
//! a server started with the wrong key refuses to start instead of failing to open secrets
//! later. Used by start-up, audit verification, backups and rotation.

use cortex_crypto::envelope::{open, MasterKey};
use cortex_crypto::token::{ct_eq, sha256_hex};
use cortex_domain::Tenant;
use cortex_store::{Store, StoreResult};
use secrecy::ExposeSecret;

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
    for user in store.list_users(&Tenant::All).await? {
        if let Some(sealed) = &user.totp_secret_sealed {
            return Ok(open(key, sealed, user.id.as_bytes()).is_ok());
        }
    }
    Ok(true)
}
