//! Forwarding audit events to a SIEM or a syslog receiver.

use std::path::PathBuf;

use cortex_domain::features::FeatureFlags;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{secret_setting, split_host_port, var, Env};
use crate::settings::{AuditForwardSettings, AuditForwardTarget};

pub(super) fn forward(
    env: Env<'_>,
    file: &FileConfig,
    feature_flags: &FeatureFlags,
) -> Result<Option<AuditForwardSettings>, ConfigError> {
    let audit_forward =
        match var(env, "CORTEX_AUDIT_FORWARD_URL").or(file.audit_forward_url.clone()) {
            None => None,
            Some(url) => Some(AuditForwardSettings {
                target: parse_forward_url(url.trim())?,
                token: secret_setting(
                    env,
                    "CORTEX_AUDIT_FORWARD_TOKEN",
                    "audit_forward_token",
                    file.audit_forward_token.as_ref(),
                )?,
                ca_file: var(env, "CORTEX_AUDIT_FORWARD_CA_FILE")
                    .or(file.audit_forward_ca_file.clone())
                    .map(PathBuf::from),
            }),
        };
    if let Some(settings) = &audit_forward {
        let clear_text = match &settings.target {
            AuditForwardTarget::Http { url } => url.starts_with("http://"),
            AuditForwardTarget::Syslog { tls, .. } => !tls,
        };
        if settings.ca_file.is_some() && clear_text {
            return Err(ConfigError::new(
                "CORTEX_AUDIT_FORWARD_CA_FILE",
                "is only used with an https:// or syslog+tls:// sink",
            ));
        }
    }
    if audit_forward.is_none()
        && feature_flags.is_enabled(cortex_domain::features::AUDIT_FORWARDING)
    {
        return Err(ConfigError::new(
            "CORTEX_AUDIT_FORWARD_URL",
            "the audit_forwarding feature flag is on but no sink URL is set",
        ));
    }
    Ok(audit_forward)
}

/// `CORTEX_AUDIT_FORWARD_URL`: `https://…`, `http://` to a loopback address, `syslog+tls://host:port`,
/// or `syslog+tcp://` to a loopback address. Audit events do not cross a network in clear text:
/// the clear-text forms reach only a relay on the same host. Credentials never go in the URL:
/// the token has its own setting.
fn parse_forward_url(url: &str) -> Result<AuditForwardTarget, ConfigError> {
    const SETTING: &str = "CORTEX_AUDIT_FORWARD_URL";
    const EXPECTED: &str =
        "expected https://…, syslog+tls://host:port, or http:// or syslog+tcp:// to a loopback address";
    let bad = |problem: &str| ConfigError::new(SETTING, problem.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(EXPECTED))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "put no credentials in the URL; set CORTEX_AUDIT_FORWARD_TOKEN instead",
        ));
    }
    if url.contains([' ', '\n', '\r']) {
        return Err(bad("the URL may not contain spaces or line breaks"));
    }
    let (host, port) = split_host_port(authority);
    if host.is_empty() {
        return Err(bad("the URL has no host"));
    }
    match scheme {
        "https" => Ok(AuditForwardTarget::Http {
            url: url.to_owned(),
        }),
        "http" if is_loopback_host(host) => Ok(AuditForwardTarget::Http {
            url: url.to_owned(),
        }),
        "http" => Err(bad(
            "plain http is allowed only to a loopback address; use https for a remote SIEM",
        )),
        "syslog+tcp" | "syslog+tls" => {
            if authority.len() != rest.len()
                && !rest[authority.len()..].trim_matches('/').is_empty()
            {
                return Err(bad(&format!("{scheme}://host:port takes no path")));
            }
            let tls = scheme == "syslog+tls";
            if !tls && !is_loopback_host(host) {
                return Err(bad(
                    "syslog+tcp sends in clear text and is allowed only to a loopback address \
                     (a local relay); use syslog+tls://host:port for a remote receiver",
                ));
            }
            let port = port
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    bad(&format!(
                        "{scheme}:// needs a port, e.g. {scheme}://127.0.0.1:6514"
                    ))
                })?;
            Ok(AuditForwardTarget::Syslog {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
                tls,
            })
        }
        _ => Err(bad(EXPECTED)),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
