//! Signing in: which roles must use MFA, and how long access and refresh tokens live.

use cortex_domain::Role;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_num, positive_u64, split_list, var, Env};

pub(super) struct Sessions {
    pub require_mfa_for: Vec<Role>,
    pub access_token_ttl_sec: u64,
    pub refresh_token_ttl_sec: u64,
}

pub(super) fn sessions(env: Env<'_>, file: &FileConfig) -> Result<Sessions, ConfigError> {
    let mfa_raw = match var(env, "CORTEX_REQUIRE_MFA_FOR") {
        Some(text) => split_list(&text),
        None => file.require_mfa_for.clone().unwrap_or_default(),
    };
    let require_mfa_for = mfa_raw
        .iter()
        .map(|name| {
            Role::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
                ConfigError::new("CORTEX_REQUIRE_MFA_FOR", format!("unknown role {name:?}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let access_token_ttl_sec = positive_u64(
        "CORTEX_ACCESS_TOKEN_TTL_SEC",
        env_num(
            env,
            "CORTEX_ACCESS_TOKEN_TTL_SEC",
            file.access_token_ttl_sec,
            900,
            "a whole number of seconds",
        )?,
    )?;
    let refresh_token_ttl_sec = positive_u64(
        "CORTEX_REFRESH_TOKEN_TTL_SEC",
        env_num(
            env,
            "CORTEX_REFRESH_TOKEN_TTL_SEC",
            file.refresh_token_ttl_sec,
            604_800,
            "a whole number of seconds",
        )?,
    )?;
    Ok(Sessions {
        require_mfa_for,
        access_token_ttl_sec,
        refresh_token_ttl_sec,
    })
}
