//! Single sign-on over HTTP (SPEC §19): `GET /admin/auth/oidc/login` sends the browser to the
//! provider with a short-lived cookie that binds the login to it, `GET /admin/auth/oidc/callback`
//! completes it and starts the same session a password login starts. Both are browser
//! navigations, so both answer with redirects: to the console on success, to the login page
//! with `?sso_error=<code>` (a fixed code, never the provider's text) otherwise. The flow
//! itself is `cortex_control::oidc`. `GET /admin/auth/methods` tells the login page which ways
//! of signing in this server offers.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cortex_control::oidc::{self, Callback, OidcError};
use cortex_control::sessions::{self, SignIn, TokenLifetimes};
use cortex_domain::SessionMethod;
use secrecy::ExposeSecret;
use serde_json::json;

use super::attempts;
use super::auth::{session_cookie, user_agent};
use super::principal::cookie;
use crate::state::AppState;
use cortex_gateway::error::ApiError;
use cortex_gateway::request_meta::ClientIp;

/// The cookie that binds a login to the browser that started it, over plain HTTP.
pub const OIDC_COOKIE: &str = "cortex_oidc";
/// Its name over TLS: `__Secure-` makes browsers accept it only with `Secure`.
pub const SECURE_OIDC_COOKIE: &str = "__Secure-cortex_oidc";
/// The cookie's path: only the two sign-in routes ever see it.
const OIDC_COOKIE_PATH: &str = "/admin/auth/oidc";

fn oidc_cookie_name(app: &AppState) -> &'static str {
    if app.config.serves_tls() {
        SECURE_OIDC_COOKIE
    } else {
        OIDC_COOKIE
    }
}

/// The login cookie: HttpOnly, and `SameSite=Lax` so that the provider's redirect back (a
/// top-level navigation from another site) carries it.
fn oidc_cookie(app: &AppState, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if app.config.serves_tls() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::try_from(format!(
        "{}={value}; HttpOnly; SameSite=Lax; Path={OIDC_COOKIE_PATH}; Max-Age={max_age_secs}{secure}",
        oidc_cookie_name(app)
    ))
    .unwrap_or(HeaderValue::from_static(
        "cortex_oidc=; Path=/admin/auth/oidc; Max-Age=0",
    ))
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Back to the login page with a refusal's code; the login cookie is dropped.
fn refused(app: &AppState, code: &str) -> Response {
    let mut response = redirect(&format!("/ui/login?sso_error={code}"));
    response
        .headers_mut()
        .append(header::SET_COOKIE, oidc_cookie(app, "", 0));
    response
}

/// How this server lets people sign in, for the login page.
pub async fn methods(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "password": app.config.local_login,
        // Passkeys: as a second factor after the password, or alone for accounts that chose it.
        "passkeys": app.passkeys.is_some(),
        "sso": app.oidc.as_ref().map(|oidc| json!({
            "name": oidc.settings().display_name,
            "login_url": "/admin/auth/oidc/login",
        })),
    }))
}

pub async fn login(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
) -> Response {
    let Some(provider) = app.oidc.clone() else {
        return ApiError::NotFound.into_response();
    };
    // Each start writes a row: starts and callbacks share one bucket per address.
    match attempts::charge_sso(&app, &client.bucket().to_string()).await {
        Ok(attempt) => attempt.keep(),
        Err(ApiError::RateLimited { .. }) => return refused(&app, "too_many_attempts"),
        Err(other) => return other.into_response(),
    }
    match oidc::begin(&provider, &app.store, &app.master_key, app.now_millis()).await {
        Ok(start) => {
            let mut response = redirect(&start.authorize_url);
            response.headers_mut().append(
                header::SET_COOKIE,
                oidc_cookie(
                    &app,
                    start.browser_token.expose_secret(),
                    oidc::LOGIN_TTL_MS / 1000,
                ),
            );
            response
        }
        Err(error) => refused(&app, error.code()),
    }
}

pub async fn callback(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(provider) = app.oidc.clone() else {
        return ApiError::NotFound.into_response();
    };
    match attempts::charge_sso(&app, &client.bucket().to_string()).await {
        Ok(attempt) => attempt.keep(),
        Err(ApiError::RateLimited { .. }) => return refused(&app, "too_many_attempts"),
        Err(other) => return other.into_response(),
    }
    let ip = client.0.to_string();
    let now = app.now_millis();
    let param = |name: &str| params.get(name).map(String::as_str);
    let user = match oidc::complete(
        &provider,
        &app.store,
        &app.master_key,
        cookie(&headers, oidc_cookie_name(&app)),
        Callback {
            code: param("code"),
            state: param("state"),
            iss: param("iss"),
            error: param("error"),
        },
        &ip,
        now,
    )
    .await
    {
        Ok(user) => user,
        Err(error) => return refused(&app, error.code()),
    };
    let lifetimes = TokenLifetimes::from_config(&app.config);
    let agent = user_agent(&headers);
    let sign_in = SignIn {
        ip: &ip,
        user_agent: &agent,
        method: SessionMethod::Sso,
    };
    let login = match sessions::start(&app.store, &app.jwt, lifetimes, &user, sign_in, now).await {
        Ok(login) => login,
        Err(error) => {
            tracing::error!(error = %error, "starting a single sign-on session failed");
            return refused(&app, OidcError::Internal.code());
        }
    };
    let mut response = redirect("/ui/");
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        session_cookie(
            &app,
            login.session_token.expose_secret(),
            lifetimes.refresh_secs,
        ),
    );
    headers.append(header::SET_COOKIE, oidc_cookie(&app, "", 0));
    response
}
