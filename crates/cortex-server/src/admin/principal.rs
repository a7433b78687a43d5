//! Who is calling the admin API: a browser session (the `cortex_session` cookie, named
//! `__Host-cortex_session` over TLS) or an API client (a JWT access token in
//! `Authorization: Bearer`). Both end at an active session row: a JWT names its session, so
//! logging out revokes the token too. Finding that session is `cortex_control::sessions`; this
//! module reads the credentials from the request.

use axum::http::HeaderMap;
use cortex_domain::{Permission, Role, SessionMethod, Tenant, DEFAULT_ORG};
use cortex_store::users::UserRow;

use crate::state::AppState;
use cortex_control::sessions;
use cortex_gateway::authenticate::bearer_token;
use cortex_gateway::error::ApiError;

/// The session cookie's name over plain HTTP.
pub const SESSION_COOKIE: &str = "cortex_session";
/// Its name when served over TLS (native, or `CORTEX_BEHIND_TLS`): the `__Host-` prefix makes
/// browsers accept it only with `Secure`, `Path=/` and no `Domain`, so a sibling subdomain or a
/// plain-HTTP page cannot plant or overwrite it. Over TLS only this name is read.
pub const SECURE_SESSION_COOKIE: &str = "__Host-cortex_session";

/// The session cookie's name for this server.
pub fn session_cookie_name(app: &AppState) -> &'static str {
    if app.config.serves_tls() {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Cookie,
    Bearer,
}

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct AdminPrincipal {
    pub user: UserRow,
    pub session_id: String,
    pub via: Via,
    /// How the session began (a service account's token is `ClientCredentials`).
    pub method: SessionMethod,
}

impl AdminPrincipal {
    pub fn role(&self) -> Role {
        self.user.role
    }

    pub fn can(&self, permission: Permission) -> bool {
        self.user.role.permits(permission)
    }

    /// The organizations this caller's queries see: every one for admins of the default
    /// organization, their own for everyone else (`Tenant::for_member`). Handlers pass it to
    /// every store query of tenant data; they never filter by organization themselves.
    pub fn tenant(&self) -> Tenant {
        Tenant::for_member(&self.user.org_id, self.user.role)
    }

    /// A member of the default organization: the deployment's own operators, who manage what
    /// every organization shares (providers, the model catalogue, the production check).
    pub fn in_default_org(&self) -> bool {
        self.user.org_id == DEFAULT_ORG
    }
}

/// The value of one cookie, if present.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Resolves the caller; `Ok(None)` when no credentials were presented at all.
pub async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<AdminPrincipal>, ApiError> {
    let now = app.now_millis();
    let (session, via) = if let Some(token) = bearer_token(headers) {
        let session = sessions::resolve_access_token(&app.store, &app.jwt, token, now).await?;
        (session, Via::Bearer)
    } else if let Some(token) = cookie(headers, session_cookie_name(app)) {
        let session = sessions::resolve_session_token(&app.store, token, now).await?;
        (session, Via::Cookie)
    } else {
        return Ok(None);
    };
    Ok(Some(AdminPrincipal {
        user: session.user,
        session_id: session.session_id,
        via,
        method: session.method,
    }))
}

/// The console's check: a valid session cookie (bearer tokens do not open the console).
pub async fn authenticate_cookie(app: &AppState, headers: &HeaderMap) -> Option<AdminPrincipal> {
    cookie(headers, session_cookie_name(app))?;
    let mut only_cookie = HeaderMap::new();
    for value in headers.get_all(axum::http::header::COOKIE) {
        only_cookie.append(axum::http::header::COOKIE, value.clone());
    }
    authenticate(app, &only_cookie).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_static("a=1; cortex_session=tok; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "cortex"), None);
        headers.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_static("cortex_session="),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), None);
    }
}
