//! The response cache (SPEC §21): where answers are kept and how much of them. Environment
//! only; which requests use the cache is decided by policies, through the admin API.

use crate::error::ConfigError;
use crate::parse::{env_num, var, Env};
use crate::settings::{CacheBackend, CacheSettings};

const MIB: u64 = 1024 * 1024;
const MIN_MAX_BYTES: u64 = MIB;
const MAX_MAX_BYTES: u64 = 64 * 1024 * MIB;

/// `redis_configured`: whether `REDIS_URL` is set (the default backend follows it).
pub(super) fn cache(env: Env<'_>, redis_configured: bool) -> Result<CacheSettings, ConfigError> {
    let backend = match var(env, "CORTEX_CACHE_BACKEND")
        .map(|text| text.trim().to_ascii_lowercase())
        .as_deref()
    {
        None if redis_configured => CacheBackend::Redis,
        None | Some("memory") => CacheBackend::Memory,
        Some("redis") if redis_configured => CacheBackend::Redis,
        Some("redis") => {
            return Err(ConfigError::new(
                "CORTEX_CACHE_BACKEND",
                "redis needs REDIS_URL to be set",
            ))
        }
        Some(other) => {
            return Err(ConfigError::new(
                "CORTEX_CACHE_BACKEND",
                format!("expected memory or redis, got {other:?}"),
            ))
        }
    };
    let max_bytes: u64 = env_num(
        env,
        "CORTEX_CACHE_MAX_BYTES",
        None,
        64 * MIB,
        "a number of bytes",
    )?;
    if !(MIN_MAX_BYTES..=MAX_MAX_BYTES).contains(&max_bytes) {
        return Err(ConfigError::new(
            "CORTEX_CACHE_MAX_BYTES",
            format!("must be 1 MiB ({MIN_MAX_BYTES}) to 64 GiB ({MAX_MAX_BYTES}) bytes"),
        ));
    }
    let max_entry_bytes: u64 = env_num(
        env,
        "CORTEX_CACHE_MAX_ENTRY_BYTES",
        None,
        MIB,
        "a number of bytes",
    )?;
    if max_entry_bytes == 0 || max_entry_bytes > max_bytes {
        return Err(ConfigError::new(
            "CORTEX_CACHE_MAX_ENTRY_BYTES",
            "must be at least 1 and at most CORTEX_CACHE_MAX_BYTES",
        ));
    }
    Ok(CacheSettings {
        backend,
        max_bytes,
        max_entry_bytes,
    })
}
