//! TLS: served natively from a certificate and key, or by a TLS proxy in front.

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_bool, var, Env};
use crate::settings::TlsPaths;

pub(super) struct Tls {
    pub behind_tls: bool,
    pub tls: Option<TlsPaths>,
}

pub(super) fn tls(env: Env<'_>, file: &FileConfig) -> Result<Tls, ConfigError> {
    let behind_tls = env_bool(env, "CORTEX_BEHIND_TLS", file.behind_tls, false)?;
    let tls = match (
        var(env, "CORTEX_TLS_CERT").or(file.tls_cert.clone()),
        var(env, "CORTEX_TLS_KEY").or(file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(TlsPaths {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "CORTEX_TLS_KEY",
                "CORTEX_TLS_CERT is set but CORTEX_TLS_KEY is not",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "CORTEX_TLS_CERT",
                "CORTEX_TLS_KEY is set but CORTEX_TLS_CERT is not",
            ))
        }
    };
    Ok(Tls { behind_tls, tls })
}
