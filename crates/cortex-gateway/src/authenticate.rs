//! Stage 1, authenticate: the `/v1` request's API key, entirely from the in-memory key cache.
//!
//! Order of checks: format, known public id, secret (constant time), then revoked, owner
//! disabled and expired. The key's status is only revealed to someone who holds the whole
//! secret. MCP's agent key goes through the same [`check_key`].

use std::sync::{Arc, OnceLock};

use axum::http::{Extensions, HeaderMap};
use axum::response::{IntoResponse, Response};
use cortex_crypto::api_key::hash_key_secret;
use cortex_domain::api_key::parse_api_key;
use cortex_domain::{KeyLimits, Scope};

use cortex_limits::Quota;

use crate::error::ApiError;
use crate::key_cache::CachedKey;
use crate::metrics as m;
use crate::quota;
use crate::request_meta::ClientIp;
use crate::DataPlane;

/// The authenticated caller of a `/v1` request.
#[derive(Debug, Clone)]
pub struct ApiPrincipal {
    pub key: Arc<CachedKey>,
}

impl ApiPrincipal {
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::ScopeDenied)
        }
    }
}

/// `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Anthropic's credential header, which `/v1/messages` takes as well as `Authorization`.
pub const X_API_KEY: &str = "x-api-key";

/// More than one `Authorization` header, or of `x-api-key` where the door reads it.
pub fn has_several_authorizations(headers: &HeaderMap, accepted: KeyHeaders) -> bool {
    let several_bearers = headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some();
    several_bearers
        || (accepted == KeyHeaders::BearerOrXApiKey
            && headers.get_all(X_API_KEY).iter().nth(1).is_some())
}

/// Where a door reads the API key from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeaders {
    /// `Authorization: Bearer` only (OpenAI's doors).
    Bearer,
    /// `x-api-key` or `Authorization: Bearer` (Anthropic's door, whose SDKs send either).
    BearerOrXApiKey,
}

/// The key a request carries, read as `accepted` says. Both headers with different values are
/// refused: whichever one a proxy, a log or a limiter looked at, the gateway might use the
/// other.
fn api_token(headers: &HeaderMap, accepted: KeyHeaders) -> Result<&str, (&'static str, ApiError)> {
    let bearer = bearer_token(headers);
    if accepted == KeyHeaders::Bearer {
        return bearer.ok_or(("missing", ApiError::MissingCredentials));
    }
    let x_api_key = headers
        .get(X_API_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty());
    match (bearer, x_api_key) {
        (Some(a), Some(b)) if a != b => Err((
            "duplicate_authorization",
            ApiError::invalid("send the key once: in x-api-key or in Authorization, not both"),
        )),
        (Some(token), _) | (None, Some(token)) => Ok(token),
        (None, None) => Err(("missing", ApiError::MissingCredentials)),
    }
}

/// The principal used while `GATEWAY_DEV_ALLOW_ALL_KEYS` is on: every scope, every model.
fn dev_principal() -> ApiPrincipal {
    static DEV: OnceLock<Arc<CachedKey>> = OnceLock::new();
    let key = DEV.get_or_init(|| {
        Arc::new(CachedKey {
            id: "dev-bypass".to_owned(),
            public_id: "dev-bypass".to_owned(),
            name: "development bypass".to_owned(),
            owner_user_id: "dev-bypass".to_owned(),
            secret_hash: hash_key_secret(""),
            scopes: Scope::ALL.to_vec(),
            models: None,
            limits: KeyLimits::default(),
            expires_at: None,
            revoked: false,
            owner_disabled: false,
            version: 0,
            budget_levels: Vec::new(),
            token_levels: Vec::new(),
            allowed_ips: None,
            org_id: cortex_domain::DEFAULT_ORG.to_owned(),
            team_id: None,
        })
    });
    ApiPrincipal { key: key.clone() }
}

fn blocked(reason: &'static str, error: ApiError) -> Response {
    metrics::counter!(m::KEY_AUTH_BLOCKED, "reason" => reason).increment(1);
    error.into_response()
}

/// Finds the principal of a `/v1` request, or the answer to send instead. Failed attempts are
/// rate limited per client IP, so keys cannot be guessed at speed.
pub async fn authenticate_request(
    app: &DataPlane,
    headers: &HeaderMap,
    extensions: &Extensions,
    accepted: KeyHeaders,
) -> Result<ApiPrincipal, Response> {
    // Two credentials are one too many: whichever a proxy, a log or a limiter picked, the
    // others might pick differently. Refused before anything else, the dev bypass included.
    if has_several_authorizations(headers, accepted) {
        return Err(blocked(
            "duplicate_authorization",
            ApiError::invalid("send one Authorization header (or one x-api-key), not several"),
        ));
    }
    let principal = match authenticate_headers(app, headers, accepted) {
        Ok(principal) => principal,
        Err(_) if app.config.dev_allow_all_keys => dev_principal(),
        Err((reason, error)) => {
            if app.config.rate_limit.enabled {
                let ip = extensions
                    .get::<ClientIp>()
                    .map(|c| c.bucket().to_string())
                    .unwrap_or_default();
                let defaults = &app.config.rate_limit;
                let quota = Quota {
                    rate_per_second: defaults.requests_per_second,
                    burst: defaults.burst,
                };
                if let Err(limited) = quota::check_rate(app, &format!("authfail:{ip}"), quota).await
                {
                    return Err(blocked("rate_limited", limited));
                }
            }
            return Err(blocked(reason, error));
        }
    };
    // A key with an allow-list is refused from anywhere else (its secret alone is not enough:
    // SPEC §18). The address is the one the edge resolved (trusted proxies, SPEC §6); without
    // it the stack is miswired and the key is refused rather than let through.
    if let Some(allowed) = &principal.key.allowed_ips {
        let from = extensions.get::<ClientIp>().map(|ip| ip.0);
        if !from.is_some_and(|ip| allowed.allows(ip)) {
            return Err(blocked("ip_not_allowed", ApiError::IpNotAllowed));
        }
    }
    m::hot().key_auth_allowed.increment(1);
    Ok(principal)
}

fn authenticate_headers(
    app: &DataPlane,
    headers: &HeaderMap,
    accepted: KeyHeaders,
) -> Result<ApiPrincipal, (&'static str, ApiError)> {
    let token = api_token(headers, accepted)?;
    check_key(app, token).map(|key| ApiPrincipal { key })
}

/// The cached key behind a full `ctx_` key, if it may be used now; otherwise the reason (a
/// metric label) and the answer. From memory only: the hot path queries no database.
pub fn check_key(app: &DataPlane, token: &str) -> Result<Arc<CachedKey>, (&'static str, ApiError)> {
    let parsed = parse_api_key(token).map_err(|_| ("malformed", ApiError::InvalidApiKey))?;
    let key = app
        .keys
        .get(parsed.public_id)
        .ok_or(("unknown", ApiError::InvalidApiKey))?;
    if !hash_key_secret(parsed.secret).ct_eq(&key.secret_hash) {
        return Err(("wrong_secret", ApiError::InvalidApiKey));
    }
    if key.revoked {
        return Err(("revoked", ApiError::KeyRevoked));
    }
    if key.owner_disabled {
        return Err(("owner_disabled", ApiError::KeyOwnerDisabled));
    }
    if key
        .expires_at
        .is_some_and(|at| at <= app.clock.now_millis())
    {
        return Err(("expired", ApiError::KeyExpired));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_strict() {
        let mut headers = HeaderMap::new();
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            headers.insert(
                axum::http::header::AUTHORIZATION,
                HeaderValue::from_static(value),
            );
            assert_eq!(bearer_token(&headers), expected, "{value}");
        }
    }

    #[test]
    fn the_messages_door_reads_x_api_key_and_refuses_two_different_keys() {
        let mut headers = HeaderMap::new();
        headers.insert(X_API_KEY, HeaderValue::from_static("ctx_a"));
        assert_eq!(
            api_token(&headers, KeyHeaders::BearerOrXApiKey).ok(),
            Some("ctx_a")
        );
        // OpenAI's doors never read it.
        assert_eq!(
            api_token(&headers, KeyHeaders::Bearer).err().map(|e| e.0),
            Some("missing")
        );
        headers.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer ctx_a"),
        );
        assert_eq!(
            api_token(&headers, KeyHeaders::BearerOrXApiKey).ok(),
            Some("ctx_a")
        );
        headers.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer ctx_b"),
        );
        assert_eq!(
            api_token(&headers, KeyHeaders::BearerOrXApiKey)
                .err()
                .map(|e| e.0),
            Some("duplicate_authorization")
        );
        headers.append(X_API_KEY, HeaderValue::from_static("ctx_c"));
        assert!(has_several_authorizations(
            &headers,
            KeyHeaders::BearerOrXApiKey
        ));
        assert!(!has_several_authorizations(&headers, KeyHeaders::Bearer));
    }
}
