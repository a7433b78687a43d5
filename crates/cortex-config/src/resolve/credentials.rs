//! The secrets and identities the gateway itself holds: the first admin, the master key, the
//! metrics token, the development key switch and the internal upstream key
//! (`INTERNAL_VLLM_API_KEY`).

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_bool, secret_setting, var, Env};
use crate::settings::MasterKeySource;

pub(super) struct Credentials {
    pub admin_user: String,
    pub admin_password: Option<SecretString>,
    pub master_key: MasterKeySource,
    pub metrics_token: Option<SecretString>,
    pub dev_allow_all_keys: bool,
    pub internal_upstream_key: Option<SecretString>,
}

pub(super) fn credentials(
    env: Env<'_>,
    file: &FileConfig,
    data_dir: &Path,
) -> Result<Credentials, ConfigError> {
    let admin_user = var(env, "CORTEX_ADMIN_USER")
        .or(file.admin_user.clone())
        .unwrap_or_else(|| "admin".to_owned());
    if admin_user.len() > 64
        || !admin_user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(ConfigError::new(
            "CORTEX_ADMIN_USER",
            "use 1-64 letters, digits, '.', '_' or '-'",
        ));
    }
    let admin_password = var(env, "CORTEX_ADMIN_PASSWORD").map(SecretString::from);

    let master_key = match (
        var(env, "CORTEX_MASTER_KEY"),
        var(env, "CORTEX_MASTER_KEY_FILE").or(file.master_key_file.clone()),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "CORTEX_MASTER_KEY",
                "set CORTEX_MASTER_KEY or CORTEX_MASTER_KEY_FILE, not both",
            ))
        }
        (Some(inline), None) => MasterKeySource::Inline(SecretString::from(inline)),
        (None, Some(path)) => MasterKeySource::File(PathBuf::from(path)),
        (None, None) => MasterKeySource::Generated(data_dir.join("master.key")),
    };

    let metrics_token = secret_setting(
        env,
        "CORTEX_METRICS_TOKEN",
        "metrics_token",
        file.metrics_token.as_ref(),
    )?;
    if let Some(token) = &metrics_token {
        if token.expose_secret().len() < 16 {
            return Err(ConfigError::new(
                "CORTEX_METRICS_TOKEN",
                "must be at least 16 characters",
            ));
        }
    }
    let dev_allow_all_keys = env_bool(env, "GATEWAY_DEV_ALLOW_ALL_KEYS", None, false)?;
    let internal_upstream_key = secret_setting(
        env,
        "INTERNAL_VLLM_API_KEY",
        "internal_vllm_api_key",
        file.internal_vllm_api_key.as_ref(),
    )?;
    Ok(Credentials {
        admin_user,
        admin_password,
        master_key,
        metrics_token,
        dev_allow_all_keys,
        internal_upstream_key,
    })
}
