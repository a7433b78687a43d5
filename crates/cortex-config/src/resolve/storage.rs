//! Where state lives: the data directory, the SQL database, Redis, stored files, and how long
//! usage rows are kept.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_num, secret_setting, var, Env};
use crate::settings::{Config, RedisFailureMode};

pub(super) fn data_dir(env: Env<'_>, file: &FileConfig) -> PathBuf {
    PathBuf::from(
        var(env, "CORTEX_DATA_DIR")
            .or(file.data_dir.clone())
            .unwrap_or_else(|| "./cortex-data".to_owned()),
    )
}

pub(super) fn database_url(
    env: Env<'_>,
    file: &FileConfig,
    data_dir: &Path,
) -> Result<SecretString, ConfigError> {
    let database_url = match secret_setting(
        env,
        "DATABASE_URL",
        "database_url",
        file.database_url.as_ref(),
    )? {
        Some(url) => {
            let text = url.expose_secret();
            if !(text.starts_with("sqlite:")
                || text.starts_with("postgres://")
                || text.starts_with("postgresql://"))
            {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "must start with sqlite: or postgres://",
                ));
            }
            url
        }
        None => SecretString::from(Config::default_sqlite_url(data_dir)),
    };
    Ok(database_url)
}

pub(super) struct Redis {
    pub url: Option<SecretString>,
    pub ca_file: Option<PathBuf>,
    pub failure_mode: RedisFailureMode,
}

pub(super) fn redis(env: Env<'_>, file: &FileConfig) -> Result<Redis, ConfigError> {
    let redis_url = secret_setting(env, "REDIS_URL", "redis_url", file.redis_url.as_ref())?;
    if let Some(url) = &redis_url {
        let text = url.expose_secret();
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis:// or rediss://",
            ));
        }
    }
    let redis_ca_file = var(env, "CORTEX_REDIS_CA_FILE")
        .or(file.redis_ca_file.clone())
        .map(PathBuf::from);
    if redis_ca_file.is_some() {
        let tls = redis_url
            .as_ref()
            .is_some_and(|u| u.expose_secret().starts_with("rediss://"));
        if !tls {
            return Err(ConfigError::new(
                "CORTEX_REDIS_CA_FILE",
                "is only used with a rediss:// REDIS_URL",
            ));
        }
    }
    let redis_failure_mode = match var(env, "CORTEX_REDIS_FAILURE_MODE")
        .or(file.redis_failure_mode.clone())
        .as_deref()
        .map(str::trim)
    {
        None | Some("fail-open") => RedisFailureMode::FailOpen,
        Some("fail-closed") => RedisFailureMode::FailClosed,
        Some(other) => {
            return Err(ConfigError::new(
                "CORTEX_REDIS_FAILURE_MODE",
                format!("expected fail-open or fail-closed, got {other:?}"),
            ))
        }
    };
    Ok(Redis {
        url: redis_url,
        ca_file: redis_ca_file,
        failure_mode: redis_failure_mode,
    })
}

pub(super) fn usage_retention_days(env: Env<'_>, file: &FileConfig) -> Result<u32, ConfigError> {
    let usage_retention_days = env_num(
        env,
        "CORTEX_USAGE_RETENTION_DAYS",
        file.usage_retention_days,
        90,
        "a whole number of days",
    )?;
    if usage_retention_days == 0 {
        return Err(ConfigError::new(
            "CORTEX_USAGE_RETENTION_DAYS",
            "must be at least 1",
        ));
    }
    Ok(usage_retention_days)
}

pub(super) fn storage_root(env: Env<'_>, file: &FileConfig, data_dir: &Path) -> PathBuf {
    var(env, "CORTEX_STORAGE_ROOT")
        .or(file.storage_root.clone())
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("storage"))
}
