//! `CORTEX_ALLOWED_HOSTS`: answer only for the host names the gateway is reached by.
//!
//! A browser tricked by DNS rebinding sends requests with the attacker's host name to an address
//! that now points at the gateway (or at a reverse proxy in front of it on the same host). With
//! the list set, any other `Host` (`:authority` on HTTP/2) gets 421 before anything else runs.
//! An entry without a port allows that name on any port. An empty list (the default) allows
//! every host.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;

use cortex_config::split_host_port;

use crate::middleware::inline::Inline;
use std::sync::Arc;

use cortex_config::Config;
use cortex_gateway::error::ApiError;

#[derive(Clone)]
pub struct AllowedHosts {
    config: Arc<Config>,
}

impl AllowedHosts {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

/// Whether `host` (as the client sent it) matches an entry of `allowed` (lower-case): the
/// whole `host`, or its name for an entry without a port.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let (name, _) = split_host_port(&host);
    allowed
        .iter()
        .any(|entry| *entry == host || (*entry == name && split_host_port(entry).1.is_none()))
}

impl Inline<Body> for AllowedHosts {
    type Carry = ();

    fn before<B>(&self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        let allowed = &self.config.allowed_hosts;
        if allowed.is_empty() {
            return Ok(());
        }
        let host = request.uri().authority().map(|a| a.as_str()).or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        });
        match host {
            Some(host) if host_allowed(allowed, host) => Ok(()),
            _ => {
                tracing::warn!(path = %request.uri().path(), "refused a request for a host not in CORTEX_ALLOWED_HOSTS");
                Err(ApiError::HostNotAllowed.into_response())
            }
        }
    }

    fn after((): (), response: Response<Body>) -> Response<Body> {
        response
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn names_match_on_any_port_and_host_ports_exactly() {
        let allowed: Vec<String> = [
            "gateway.example",
            "api.example:8443",
            "[::1]",
            "127.0.0.1:8084",
        ]
        .map(str::to_owned)
        .to_vec();
        for ok in [
            "gateway.example",
            "Gateway.Example:8084",
            "api.example:8443",
            "[::1]:9000",
            "[::1]",
            "127.0.0.1:8084",
        ] {
            assert!(host_allowed(&allowed, ok), "{ok}");
        }
        for refused in [
            "attacker.example",
            "gateway.example.attacker.example",
            "api.example",
            "api.example:443",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::2]",
            "",
        ] {
            assert!(!host_allowed(&allowed, refused), "{refused}");
        }
    }
}
