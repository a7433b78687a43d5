//! CSRF protection for cookie-authenticated requests (SPEC §7, §14).
//!
//! A state-changing request (POST, PUT, PATCH, DELETE) that carries a session cookie (under
//! either name, `cortex_session` or `__Host-cortex_session`, whichever this server reads) and no
//! bearer token must show an `Origin` (or, failing that, a `Referer`) that is the request's own
//! origin or one listed in `CORS_ALLOW_ORIGINS`. Browsers always send `Origin` on
//! cross-site and same-origin POSTs, so a forged form or script from another site is refused
//! here before authentication. Bearer-authenticated requests are exempt: a browser never adds a
//! bearer token on its own.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method};
use axum::response::IntoResponse;
use http::{Request, Response};

use crate::admin::principal::{cookie, SECURE_SESSION_COOKIE, SESSION_COOKIE};
use crate::middleware::inline::Inline;
use std::sync::Arc;

use cortex_config::Config;
use cortex_gateway::authenticate::bearer_token;
use cortex_gateway::error::ApiError;

fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| {
        format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        )
    })
}

/// Whether the request's `Origin`/`Referer` is one we trust for cookie-authenticated changes.
pub fn trusted_origin(config: &Config, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != "null")
        .and_then(origin_of)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(origin_of)
        });
    let Some(presented) = presented else {
        return false;
    };
    let scheme = if config.serves_tls() { "https" } else { "http" };
    let own = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|host| format!("{scheme}://{}", host.to_ascii_lowercase()));
    own.as_deref() == Some(presented.as_str()) || config.cors.allow_origins.contains(&presented)
}

/// Refuses cookie-authenticated changes without a trusted `Origin`/`Referer`.
#[derive(Clone)]
pub struct CsrfProtect {
    config: Arc<Config>,
}

impl CsrfProtect {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

impl Inline<Body> for CsrfProtect {
    type Carry = ();

    fn before<B>(&self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        let changes_state = matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let headers = request.headers();
        if changes_state
            && (cookie(headers, SESSION_COOKIE).is_some()
                || cookie(headers, SECURE_SESSION_COOKIE).is_some())
            && bearer_token(headers).is_none()
            && !trusted_origin(&self.config, headers)
        {
            tracing::warn!(path = %request.uri().path(), "refused a cookie-authenticated change without a trusted Origin");
            return Err(ApiError::CsrfRejected.into_response());
        }
        Ok(())
    }

    fn after((): (), response: Response<Body>) -> Response<Body> {
        response
    }
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_are_scheme_and_host() {
        assert_eq!(
            origin_of("https://Console.Example:8443/ui/keys?x=1").as_deref(),
            Some("https://console.example:8443")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8084").as_deref(),
            Some("http://127.0.0.1:8084")
        );
        assert_eq!(origin_of("not a url"), None);
        assert_eq!(origin_of("https://"), None);
    }
}
