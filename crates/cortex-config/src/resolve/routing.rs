//! Circuit breakers, active health checks and retries (SPEC §16): the `[upstream]` table's
//! routing keys, each overridden by its `CORTEX_*` variable.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_num, var, Env};
use crate::settings::RoutingSettings;

pub(super) fn routing(env: Env<'_>, file: &FileConfig) -> Result<RoutingSettings, ConfigError> {
    let up = file.upstream.clone().unwrap_or_default();
    let defaults = RoutingSettings::default();
    Ok(RoutingSettings {
        breaker_failures: bounded(
            env,
            Setting::new("CORTEX_BREAKER_FAILURES", "breaker_failures"),
            up.breaker_failures,
            defaults.breaker_failures,
            1..=1000,
            "failures",
        )?,
        breaker_cooldown_sec: bounded(
            env,
            Setting::new("CORTEX_BREAKER_COOLDOWN_SEC", "breaker_cooldown_sec"),
            up.breaker_cooldown_sec,
            defaults.breaker_cooldown_sec,
            1..=3600,
            "seconds",
        )?,
        health_check_interval_sec: bounded(
            env,
            Setting::new(
                "CORTEX_HEALTH_CHECK_INTERVAL_SEC",
                "health_check_interval_sec",
            ),
            up.health_check_interval_sec,
            defaults.health_check_interval_sec,
            0..=3600,
            "seconds",
        )?,
        health_check_timeout_ms: bounded(
            env,
            Setting::new("CORTEX_HEALTH_CHECK_TIMEOUT_MS", "health_check_timeout_ms"),
            up.health_check_timeout_ms,
            defaults.health_check_timeout_ms,
            1..=60_000,
            "milliseconds",
        )?,
        max_retries: bounded(
            env,
            Setting::new("CORTEX_MAX_RETRIES", "max_retries"),
            up.max_retries,
            defaults.max_retries,
            0..=10,
            "retries",
        )?,
    })
}

/// A setting's two names: the environment variable and the key in the file's `[upstream]`.
#[derive(Clone, Copy)]
struct Setting {
    env: &'static str,
    file_key: &'static str,
}

impl Setting {
    fn new(env: &'static str, file_key: &'static str) -> Self {
        Setting { env, file_key }
    }
}

/// The variable, else the file, else the default, within `range`. The error names where the
/// bad value came from (`CORTEX_MAX_RETRIES` or `upstream.max_retries`), so the operator knows
/// which of the two to fix.
fn bounded<T>(
    env: Env<'_>,
    setting: Setting,
    file: Option<T>,
    default: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> Result<T, ConfigError>
where
    T: FromStr + Copy + PartialOrd + Display,
{
    let from_env = var(env, setting.env).is_some();
    let what = format!(
        "a whole number of {unit} from {} to {}",
        range.start(),
        range.end()
    );
    let value = env_num(env, setting.env, file, default, &what)?;
    if range.contains(&value) {
        return Ok(value);
    }
    let name = if from_env {
        setting.env.to_owned()
    } else {
        format!("upstream.{}", setting.file_key)
    };
    Err(ConfigError::new(name, format!("must be {what}")))
}
