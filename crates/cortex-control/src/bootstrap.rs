//! First start: the master key, the first admin, and the catalogue from `cortex.toml`.

use std::io::Write;
use std::path::Path;

use cortex_config::{Config, ConfigError, MasterKeySource};
use cortex_crypto::envelope::{seal, MasterKey};
use cortex_crypto::password::{check_password_policy, hash_password};
use cortex_crypto::token::random_token;
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::Role;
use cortex_store::catalog::{ModelChange, ModelRow, ProviderChange, ProviderRow};
use cortex_store::users::NewUser;
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};

use cortex_store::OpenError;

/// Why the server could not start. Each message is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Open(#[from] OpenError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("REDIS_URL: {0}")]
    Redis(String),
    #[error("{0}")]
    Io(String),
}

/// Actor name on audit events written by start-up itself.
pub const SYSTEM_ACTOR: &str = "system";

/// Loads the key-encryption key, generating the file (mode 0600) on first start.
pub fn load_master_key(config: &Config) -> Result<MasterKey, StartError> {
    match &config.master_key {
        MasterKeySource::Inline(text) => MasterKey::parse(text.expose_secret()).map_err(|_| {
            ConfigError::new(
                "CORTEX_MASTER_KEY",
                "must be 32 bytes as 64 hex characters or base64",
            )
            .into()
        }),
        MasterKeySource::File(path) => read_key_file(path, "CORTEX_MASTER_KEY_FILE"),
        MasterKeySource::Generated(path) => {
            if path.exists() {
                return read_key_file(path, "CORTEX_MASTER_KEY_FILE");
            }
            let key = MasterKey::generate();
            write_private_file(path, key.to_base64().expose_secret().as_bytes()).map_err(|e| {
                StartError::Io(format!(
                    "cannot write the master key file {}: {}",
                    path.display(),
                    e.kind()
                ))
            })?;
            tracing::warn!(path = %path.display(), "generated a new master key; back it up: without it, stored secrets cannot be read");
            Ok(key)
        }
    }
}

/// The setting an operator changes to give Cortex another master key.
pub fn master_key_setting(config: &Config) -> &'static str {
    match &config.master_key {
        MasterKeySource::Inline(_) => "CORTEX_MASTER_KEY",
        MasterKeySource::File(_) | MasterKeySource::Generated(_) => "CORTEX_MASTER_KEY_FILE",
    }
}

/// Checks that `key` is the key the database's secrets are sealed with and returns the key to
/// use. A rotation of the generated key that committed but was cut off before the new key file
/// was moved into place (`master.key.next`) is finished here.
pub async fn verify_master_key(
    store: &Store,
    config: &Config,
    key: MasterKey,
    now: i64,
) -> Result<MasterKey, StartError> {
    use crate::ops::secrets::{check_master_key, pending_key_path};
    if check_master_key(store, &key, now).await? {
        return Ok(key);
    }
    if let MasterKeySource::Generated(path) = &config.master_key {
        let pending = pending_key_path(path);
        if pending.is_file() {
            let next = read_key_file(&pending, "CORTEX_MASTER_KEY_FILE")?;
            if check_master_key(store, &next, now).await? {
                std::fs::rename(&pending, path).map_err(|e| {
                    StartError::Io(format!(
                        "cannot move {} into place: {}",
                        pending.display(),
                        e.kind()
                    ))
                })?;
                tracing::warn!(path = %path.display(), "finished an interrupted master key rotation: the new key is now in place");
                return Ok(next);
            }
        }
    }
    Err(ConfigError::new(
        master_key_setting(config),
        "this master key does not open the secrets stored in the database (after a rotation, use the new key)",
    )
    .into())
}

fn read_key_file(path: &Path, setting: &str) -> Result<MasterKey, StartError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            setting,
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    MasterKey::parse(text.trim()).map_err(|_| {
        ConfigError::new(
            setting,
            format!(
                "{} does not hold a 32-byte key (hex or base64)",
                path.display()
            ),
        )
        .into()
    })
}

/// Creates a file only the owner can read; refuses to overwrite.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        cortex_store::create_private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Creates the first admin on an empty database. Returns the generated password, which the
/// caller prints once; `None` when a password was given or users already exist.
pub async fn ensure_first_admin(
    store: &Store,
    config: &Config,
    now: i64,
) -> Result<Option<SecretString>, StartError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match &config.admin_password {
        Some(given) => {
            check_password_policy(given.expose_secret(), &[&config.admin_user])
                .map_err(|e| ConfigError::new("CORTEX_ADMIN_PASSWORD", e.to_string()))?;
            (given.clone(), false)
        }
        None => (random_token(18), true),
    };
    let hash = hash_password(&password)
        .map_err(|_| StartError::Io("cannot hash the admin password".to_owned()))?;
    let id = new_id();
    let audit = NewAuditEvent::new(SYSTEM_ACTOR, "user.bootstrap", &id)
        .with_details(&serde_json::json!({ "username": config.admin_user, "role": "admin", "generated_password": generated }));
    let user = NewUser {
        id: &id,
        username: &config.admin_user,
        password_hash: &hash,
        role: Role::Admin,
        must_change_password: generated,
        // The first admin is an admin of the default organization: they manage all others.
        org_id: cortex_domain::DEFAULT_ORG,
        budget: None,
    };
    match store.create_user(&user, &audit, now).await {
        Ok(_) => Ok(generated.then_some(password)),
        // Another instance bootstrapped the same empty database a moment earlier.
        Err(StoreError::Conflict) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Makes the database's catalogue match the providers and models declared in the config file.
/// Entries created through the admin API (`source = 'api'`) are left alone.
pub async fn sync_catalog(
    store: &Store,
    config: &Config,
    master_key: &MasterKey,
    now: i64,
) -> Result<(), StartError> {
    // Instances started together on a fresh database race to create the declared rows; the
    // loser of a race sees a conflict, and the next pass finds the winner's rows. Each
    // conflict means another instance created a row, so there are at most as many as rows.
    let rows = config.providers.len() + config.models.len();
    let mut conflicts = 0;
    loop {
        match sync_catalog_once(store, config, master_key, now).await {
            Err(StartError::Store(StoreError::Conflict)) if conflicts < rows => conflicts += 1,
            result => return result,
        }
    }
}

async fn sync_catalog_once(
    store: &Store,
    config: &Config,
    master_key: &MasterKey,
    now: i64,
) -> Result<(), StartError> {
    let mut provider_ids = std::collections::HashMap::new();
    for declared in &config.providers {
        let secret = declared.api_key.as_ref();
        let existing = store.get_provider(&declared.name).await?;
        let id = existing
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_else(new_id);
        let sealed = secret
            .map(|s| seal(master_key, s.expose_secret().as_bytes(), id.as_bytes()))
            .transpose()
            .map_err(|_| StartError::Io("cannot encrypt a provider key".to_owned()))?;
        let dialect = &declared.dialect;
        let audit = NewAuditEvent::new("config-file", "provider.sync", &id).with_details(
            &serde_json::json!({
                "name": declared.name,
                "base_url": declared.base_url,
                "kind": dialect.kind.as_str(),
                "api_version": dialect.api_version,
                "responses_api": dialect.responses_api,
                "weight": declared.weight,
                "health_check_path": declared.health_check_path,
            }),
        );
        match existing {
            Some(current) => {
                let same_key = match (&current.api_key_sealed, &sealed) {
                    (None, None) => true,
                    (Some(stored), Some(_)) => {
                        // Sealing is randomised; compare what the sealed values open to.
                        let stored_plain = cortex_crypto::envelope::open(
                            master_key,
                            stored,
                            current.id.as_bytes(),
                        )
                        .ok();
                        match (stored_plain, secret) {
                            (Some(a), Some(b)) => {
                                cortex_crypto::token::ct_eq(&a, b.expose_secret().as_bytes())
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                // A row of that name made earlier through the API or an import becomes the
                // file's: the file now sets its URL and key, and only a row from the file may
                // receive the internal key (`catalog::internal_key_for`).
                let claim = current.source != "config";
                let same_dialect = current.kind == dialect.kind
                    && current.api_version == dialect.api_version
                    && current.responses_api == dialect.responses_api;
                let same_routing = current.weight == declared.weight
                    && current.health_check_path == declared.health_check_path;
                if current.base_url != declared.base_url
                    || !same_key
                    || !same_dialect
                    || !same_routing
                    || claim
                {
                    let change = ProviderChange {
                        name: None,
                        base_url: Some(declared.base_url.clone()),
                        api_key_sealed: Some(sealed),
                        source: claim.then(|| "config".to_owned()),
                        kind: Some(dialect.kind),
                        api_version: Some(dialect.api_version.clone()),
                        responses_api: Some(dialect.responses_api),
                        weight: Some(declared.weight),
                        health_check_path: Some(declared.health_check_path.clone()),
                    };
                    store
                        .update_provider(&current.id, change, Some(&audit), now)
                        .await?;
                }
            }
            None => {
                let row = ProviderRow {
                    id: id.clone(),
                    name: declared.name.clone(),
                    base_url: declared.base_url.clone(),
                    api_key_sealed: sealed,
                    source: "config".to_owned(),
                    kind: dialect.kind,
                    api_version: dialect.api_version.clone(),
                    responses_api: dialect.responses_api,
                    weight: declared.weight,
                    health_check_path: declared.health_check_path.clone(),
                    created_at: now,
                    updated_at: now,
                };
                store.create_provider(&row, Some(&audit), now).await?;
            }
        }
        provider_ids.insert(declared.name.clone(), id);
    }
    for declared in &config.models {
        let targets: Vec<String> = declared
            .providers
            .iter()
            .filter_map(|n| provider_ids.get(n).cloned())
            .collect();
        let existing = store.get_model(&declared.name).await?;
        let wanted = ModelRow {
            id: existing
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_else(new_id),
            name: declared.name.clone(),
            upstream_name: declared.upstream_name.clone(),
            input_price_per_mtok: declared.input_price_per_mtok.unwrap_or(0.0),
            output_price_per_mtok: declared.output_price_per_mtok.unwrap_or(0.0),
            source: "config".to_owned(),
            provider_ids: targets,
            strategy: declared.strategy,
            max_output_tokens: declared.max_output_tokens,
            created_at: now,
            updated_at: now,
        };
        let audit = NewAuditEvent::new("config-file", "model.sync", &wanted.id).with_details(
            &serde_json::json!({
                "name": wanted.name,
                "strategy": wanted.strategy.as_str(),
            }),
        );
        match existing {
            None => {
                store.create_model(&wanted, Some(&audit), now).await?;
            }
            Some(current) => {
                let differs = current.upstream_name != wanted.upstream_name
                    || current.provider_ids != wanted.provider_ids
                    || current.input_price_per_mtok != wanted.input_price_per_mtok
                    || current.output_price_per_mtok != wanted.output_price_per_mtok
                    || current.strategy != wanted.strategy
                    || current.max_output_tokens != wanted.max_output_tokens;
                if differs {
                    let change = ModelChange {
                        name: None,
                        upstream_name: Some(wanted.upstream_name.clone()),
                        input_price_per_mtok: Some(wanted.input_price_per_mtok),
                        output_price_per_mtok: Some(wanted.output_price_per_mtok),
                        provider_ids: Some(wanted.provider_ids.clone()),
                        strategy: Some(wanted.strategy),
                        max_output_tokens: Some(wanted.max_output_tokens),
                    };
                    store
                        .update_model(&current.id, change, Some(&audit), now)
                        .await?;
                }
            }
        }
    }
    Ok(())
}
