//! Which browser origins may call the API, and whether with credentials.

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_bool, split_list, var, Env};
use crate::settings::CorsSettings;

pub(super) fn cors(env: Env<'_>, file: &FileConfig) -> Result<CorsSettings, ConfigError> {
    let origins_raw = match var(env, "CORS_ALLOW_ORIGINS") {
        Some(text) => split_list(&text),
        None => file.cors_allow_origins.clone().unwrap_or_default(),
    };
    let allow_origins = origins_raw
        .iter()
        .map(|o| validate_origin(o))
        .collect::<Result<Vec<_>, _>>()?;
    let allow_credentials = env_bool(
        env,
        "CORS_ALLOW_CREDENTIALS",
        file.cors_allow_credentials,
        false,
    )?;
    if allow_credentials && allow_origins.iter().any(|o| o == "*") {
        return Err(ConfigError::new(
            "CORS_ALLOW_ORIGINS",
            "a wildcard (*) together with CORS_ALLOW_CREDENTIALS=true is refused; list the origins",
        ));
    }
    Ok(CorsSettings {
        allow_origins,
        allow_credentials,
    })
}

/// An origin is `scheme://host[:port]`, nothing more; `*` is the wildcard.
fn validate_origin(origin: &str) -> Result<String, ConfigError> {
    let origin = origin.trim().trim_end_matches('/');
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            ConfigError::new(
                "CORS_ALLOW_ORIGINS",
                format!("{origin:?} is not an http(s) origin"),
            )
        })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(ConfigError::new(
            "CORS_ALLOW_ORIGINS",
            format!("{origin:?} must be scheme://host[:port] without a path"),
        ));
    }
    Ok(origin.to_ascii_lowercase())
}
