//! The building blocks every setting group uses: reading a variable, parsing a value, the
//! file-or-environment precedence, secrets. Also the public validators the server reuses for
//! providers made through the admin API.

use std::str::FromStr;

use cortex_domain::egress::{EgressPolicy, Origin};
use secrecy::SecretString;

use crate::error::ConfigError;
use crate::file::{SecretRef, SecretSource};

pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads a variable, treating an empty value as unset (a common shell/compose artefact).
pub(crate) fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn parse_bool(setting: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            setting,
            format!("expected true or false, got {text:?}"),
        )),
    }
}

fn parse_num<T: FromStr>(setting: &str, text: &str, what: &str) -> Result<T, ConfigError> {
    text.trim()
        .parse::<T>()
        .map_err(|_| ConfigError::new(setting, format!("expected {what}, got {text:?}")))
}

pub(crate) fn env_bool(
    env: Env<'_>,
    name: &str,
    file: Option<bool>,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(env, name) {
        Some(text) => parse_bool(name, &text),
        None => Ok(file.unwrap_or(default)),
    }
}

pub(crate) fn env_num<T: FromStr + Copy>(
    env: Env<'_>,
    name: &str,
    file: Option<T>,
    default: T,
    what: &str,
) -> Result<T, ConfigError> {
    match var(env, name) {
        Some(text) => parse_num(name, &text, what),
        None => Ok(file.unwrap_or(default)),
    }
}

pub(crate) fn positive_u64(name: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(name, "must be greater than zero"));
    }
    Ok(value)
}

/// Resolves a secret from the file: a literal, `{ env = "NAME" }` or `{ file = "/path" }`.
pub(crate) fn resolve_secret(
    setting: &str,
    secret: &SecretRef,
    env: Env<'_>,
) -> Result<SecretString, ConfigError> {
    match secret {
        SecretRef::Literal(text) => Ok(SecretString::from(text.clone())),
        SecretRef::Reference(SecretSource {
            env: Some(name),
            file: None,
        }) => var(env, name).map(SecretString::from).ok_or_else(|| {
            ConfigError::new(setting, format!("environment variable {name} is not set"))
        }),
        SecretRef::Reference(SecretSource {
            env: None,
            file: Some(path),
        }) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    setting,
                    format!("cannot read secret file {path}: {}", e.kind()),
                )
            })?;
            Ok(SecretString::from(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        }
        SecretRef::Reference(_) => Err(ConfigError::new(
            setting,
            "give exactly one of `env` or `file`",
        )),
    }
}

pub(crate) fn secret_setting(
    env: Env<'_>,
    name: &str,
    file_key: &str,
    file: Option<&SecretRef>,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(value) = var(env, name) {
        return Ok(Some(SecretString::from(value)));
    }
    file.map(|secret| resolve_secret(file_key, secret, env))
        .transpose()
}

pub(crate) fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A base URL whose host is an address the egress policy refuses, refused with a clear
/// message. (Names are checked when they are resolved, on every connect.)
pub fn check_egress(
    setting: &str,
    base_url: &str,
    policy: &EgressPolicy,
) -> Result<(), ConfigError> {
    let Some(origin) = Origin::of(base_url) else {
        return Ok(());
    };
    if policy.allows_literal(&origin.host) == Some(false) {
        return Err(ConfigError::new(
            setting,
            format!(
                "base_url points at {}, which the egress policy refuses (link-local and cloud \
                 metadata addresses always, anything outside CORTEX_UPSTREAM_ALLOW when it is set)",
                origin.host
            ),
        ));
    }
    Ok(())
}

/// A provider's base URL is an absolute http(s) URL including the version prefix.
pub fn validate_base_url(setting: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::new(setting, "base_url must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || url.contains(['?', '#', ' ']) {
        return Err(ConfigError::new(
            setting,
            "base_url must be http(s)://host[:port]/path without credentials, query or fragment",
        ));
    }
    Ok(())
}

/// Splits `host[:port]`, keeping an IPv6 literal's brackets on the host. Used for URLs here,
/// for `CORTEX_ALLOWED_HOSTS` entries, and by the server for the `Host` it matches against them.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let port = authority[end + 1..].strip_prefix(':');
                (&authority[..=end], port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}
