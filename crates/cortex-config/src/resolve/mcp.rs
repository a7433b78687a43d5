//! The MCP endpoint: its bearer token, the API key its `chat` tool uses, and its request rate.

use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_num, var, Env};

pub(super) struct Mcp {
    pub token: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub requests_per_minute: u32,
}

pub(super) fn mcp(env: Env<'_>, file: &FileConfig) -> Result<Mcp, ConfigError> {
    let mcp_token = var(env, "MCP_TOKEN").map(SecretString::from);
    if let Some(token) = &mcp_token {
        if token.expose_secret().chars().count() < 32 {
            return Err(ConfigError::new(
                "MCP_TOKEN",
                "must be at least 32 characters",
            ));
        }
    }
    let mcp_api_key = var(env, "MCP_API_KEY").map(SecretString::from);
    if let Some(key) = &mcp_api_key {
        if cortex_domain::api_key::parse_api_key(key.expose_secret()).is_err() {
            return Err(ConfigError::new(
                "MCP_API_KEY",
                "must be a Cortex API key (ctx_…)",
            ));
        }
    }
    let mcp_requests_per_minute = env_num(
        env,
        "CORTEX_MCP_REQUESTS_PER_MINUTE",
        file.mcp_requests_per_minute,
        30,
        "a whole number",
    )?;
    if mcp_requests_per_minute == 0 {
        return Err(ConfigError::new(
            "CORTEX_MCP_REQUESTS_PER_MINUTE",
            "must be at least 1",
        ));
    }
    Ok(Mcp {
        token: mcp_token,
        api_key: mcp_api_key,
        requests_per_minute: mcp_requests_per_minute,
    })
}
