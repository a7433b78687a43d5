//! Feature flags, read from `CORTEX_FEATURE_FLAGS_FILE` when one is named.

use std::path::PathBuf;

use cortex_domain::features::FeatureFlags;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{var, Env};

pub(super) struct Flags {
    pub file: Option<PathBuf>,
    pub flags: FeatureFlags,
}

pub(super) fn feature_flags(env: Env<'_>, file: &FileConfig) -> Result<Flags, ConfigError> {
    let feature_flags_file = var(env, "CORTEX_FEATURE_FLAGS_FILE")
        .or(file.feature_flags_file.clone())
        .map(PathBuf::from);
    let feature_flags = match &feature_flags_file {
        None => FeatureFlags::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "CORTEX_FEATURE_FLAGS_FILE",
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })?;
            FeatureFlags::parse(&text).map_err(|problem| {
                ConfigError::new(
                    "CORTEX_FEATURE_FLAGS_FILE",
                    format!("{}: {problem}", path.display()),
                )
            })?
        }
    };
    Ok(Flags {
        file: feature_flags_file,
        flags: feature_flags,
    })
}
