//! Cortex's configuration: defaults, then `cortex.toml` (or `CORTEX_CONFIG`), then the
//! environment, validated once at start-up into typed structs (SPEC §13, §14).
//!
//! Nothing here reads the process environment directly: callers pass a lookup function, so tests
//! can vary every setting without touching globals. A malformed or unsafe value is a
//! [`ConfigError`] whose one-line message names the setting and never echoes a secret.

mod error;
mod file;
mod parse;
mod provider_kind;
mod resolve;
mod routing;
mod settings;

use std::path::PathBuf;

pub use error::ConfigError;
pub use file::{
    FileConfig, ModelFileEntry, OidcFile, OidcRuleFile, ProviderFileEntry, SecretRef, WebauthnFile,
};
pub use parse::{check_egress, split_host_port, validate_base_url};
pub use provider_kind::{check_provider_dialect, mixed_dialects, same_dialect, ProviderDialect};
pub use resolve::OIDC_CALLBACK_PATH;
pub use routing::{check_health_check_path, check_strategy, check_weight};
pub use settings::{
    AuditForwardSettings, AuditForwardTarget, CacheBackend, CacheSettings, ConcurrencySettings,
    Config, CorsSettings, EngineSettings, LogFormat, MasterKeySource, ModelSpec, OidcRule,
    OidcSettings, ProviderSpec, RateLimitSettings, RedisFailureMode, RoutingSettings, TlsPaths,
    TraceExport, TraceSampler, UpstreamTimeouts, WebauthnSettings, ADMIN_MAX_BODY_BYTES,
};

impl Config {
    /// Loads from the real process environment and the config file it names.
    pub fn from_process_env() -> Result<Config, ConfigError> {
        Config::load(&|name| std::env::var(name).ok())
    }

    /// Loads with an explicit environment lookup: defaults, then the file, then the environment.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let explicit_file = env("CORTEX_CONFIG").filter(|v| !v.trim().is_empty());
        let (config_file, file) = match explicit_file {
            Some(path) => {
                let path = PathBuf::from(path);
                let file = FileConfig::read(&path)?;
                (Some(path), file)
            }
            None => {
                let default_path = PathBuf::from("cortex.toml");
                if default_path.is_file() {
                    let file = FileConfig::read(&default_path)?;
                    (Some(default_path), file)
                } else {
                    (None, FileConfig::default())
                }
            }
        };
        Config::resolve(file, config_file, env)
    }

    /// Merges a parsed file with the environment and validates the result.
    // The file is taken by value as it always was (callers hand it over); the settings are now
    // all copied out of it, so nothing is moved.
    #[allow(clippy::needless_pass_by_value)]
    pub fn resolve(
        file: FileConfig,
        config_file: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        resolve::resolve(&file, config_file, env)
    }
}

/// Removes the password from a URL before it is shown to anyone.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://[REDACTED]@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
