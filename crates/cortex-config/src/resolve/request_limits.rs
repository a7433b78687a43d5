//! Per-client request limits: the request rate and the number of concurrent streams.

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_bool, env_num, positive_u64, Env};
use crate::settings::{ConcurrencySettings, RateLimitSettings};

pub(super) fn rate_limit(
    env: Env<'_>,
    file: &FileConfig,
) -> Result<RateLimitSettings, ConfigError> {
    let rl = file.rate_limit.clone().unwrap_or_default();
    let rate_limit = RateLimitSettings {
        enabled: env_bool(env, "RATE_LIMIT_ENABLED", rl.enabled, true)?,
        requests_per_second: env_num(env, "RATE_LIMIT_RPS", rl.rps, 10.0, "a positive number")?,
        burst: env_num(
            env,
            "RATE_LIMIT_BURST",
            rl.burst,
            20,
            "a whole number of at least 1",
        )?,
        window_sec: env_num(
            env,
            "RATE_LIMIT_WINDOW_SEC",
            rl.window_sec,
            60,
            "a whole number of seconds",
        )?,
    };
    if !(rate_limit.requests_per_second.is_finite() && rate_limit.requests_per_second > 0.0) {
        return Err(ConfigError::new(
            "RATE_LIMIT_RPS",
            "must be a positive number",
        ));
    }
    if rate_limit.burst == 0 {
        return Err(ConfigError::new("RATE_LIMIT_BURST", "must be at least 1"));
    }
    positive_u64("RATE_LIMIT_WINDOW_SEC", rate_limit.window_sec)?;
    Ok(rate_limit)
}

pub(super) fn concurrency(
    env: Env<'_>,
    file: &FileConfig,
) -> Result<ConcurrencySettings, ConfigError> {
    let concurrency = ConcurrencySettings {
        enabled: env_bool(
            env,
            "CONCURRENCY_LIMIT_ENABLED",
            file.concurrency_limit_enabled,
            true,
        )?,
        max_streams_per_id: env_num(
            env,
            "MAX_CONCURRENT_STREAMS_PER_ID",
            file.max_concurrent_streams_per_id,
            5,
            "a whole number of at least 1",
        )?,
        stream_lease_sec: env_num(
            env,
            "CORTEX_STREAM_LEASE_SEC",
            file.stream_lease_sec,
            30,
            "a whole number of seconds",
        )?,
    };
    if !(3..=3600).contains(&concurrency.stream_lease_sec) {
        return Err(ConfigError::new(
            "CORTEX_STREAM_LEASE_SEC",
            "must be between 3 and 3600 seconds",
        ));
    }
    if concurrency.max_streams_per_id == 0 {
        return Err(ConfigError::new(
            "MAX_CONCURRENT_STREAMS_PER_ID",
            "must be at least 1",
        ));
    }
    Ok(concurrency)
}
