//! Login, token refresh, logout and password change over HTTP: the brute-force buckets, the
//! password hashing gate, cookies and the JSON answers. The session steps themselves are
//! `cortex_control::sessions`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cortex_domain::{AccountKind, SessionMethod, Tenant};
use cortex_store::users::UserRow;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::guard::Caller;
use super::json::AdminJson;
use super::principal::session_cookie_name;
use super::{attempts, device};
use crate::state::AppState;
use cortex_control::sessions::{self, SecondFactor, SignIn, TokenLifetimes, Tokens};
use cortex_gateway::error::ApiError;
use cortex_gateway::request_meta::ClientIp;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    #[schema(value_type = String)]
    password: SecretString,
    #[serde(default)]
    totp_code: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    recovery_code: Option<SecretString>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String)]
    refresh_token: SecretString,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    #[schema(value_type = String)]
    current_password: SecretString,
    #[schema(value_type = String)]
    new_password: SecretString,
}

pub(super) fn session_cookie(app: &AppState, token: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if app.config.serves_tls() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::try_from(format!(
        "{}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age_secs}{secure}",
        session_cookie_name(app)
    ))
    .unwrap_or(HeaderValue::from_static(
        "cortex_session=; Path=/; Max-Age=0",
    ))
}

/// An expired, empty cookie: the browser drops the session.
fn clear_cookie(app: &AppState) -> HeaderValue {
    session_cookie(app, "", 0)
}

pub(super) fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

/// The second factor a login request carries; `None` when it carries neither code. A TOTP code
/// wins when both are given.
fn second_factor(request: &LoginRequest) -> Option<SecondFactor<'_>> {
    if let Some(code) = &request.totp_code {
        return Some(SecondFactor::Totp(code));
    }
    request
        .recovery_code
        .as_ref()
        .map(SecondFactor::RecoveryCode)
}

/// Checks the second factor of a user with TOTP on. A code is charged to the user's MFA bucket
/// before it is checked and refunded when it is right; asking without a code costs nothing.
async fn check_mfa(
    app: &AppState,
    user: &UserRow,
    request: &LoginRequest,
    ip: &str,
) -> Result<(), ApiError> {
    let Some(factor) = second_factor(request) else {
        return Err(ApiError::MfaRequired);
    };
    let attempt = attempts::charge_mfa(app, &user.id).await?;
    let result = sessions::verify_second_factor(
        &app.store,
        &app.master_key,
        user,
        factor,
        ip,
        app.now_millis(),
    )
    .await;
    if result.is_ok() {
        attempt.refund(app).await;
    } else {
        attempt.keep();
    }
    Ok(result?)
}

/// Whether `user` may still sign in locally when `CORTEX_LOCAL_LOGIN=false`: an enabled local
/// admin of the default organization, the way in when the identity provider is down.
pub(super) fn break_glass(user: &UserRow) -> bool {
    user.kind == AccountKind::Local
        && user.role == cortex_domain::Role::Admin
        && user.org_id == cortex_domain::DEFAULT_ORG
        && !user.disabled
}

/// Starts a session and answers the token pair plus cookie.
async fn issue_session(
    app: &AppState,
    user: &UserRow,
    ip: &str,
    agent: &str,
    method: SessionMethod,
) -> Result<Response, ApiError> {
    let lifetimes = TokenLifetimes::from_config(&app.config);
    let sign_in = SignIn {
        ip,
        user_agent: agent,
        method,
    };
    let login = sessions::start(
        &app.store,
        &app.jwt,
        lifetimes,
        user,
        sign_in,
        app.now_millis(),
    )
    .await?;
    let mut response = token_answer(&login.tokens);
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(
            app,
            login.session_token.expose_secret(),
            lifetimes.refresh_secs,
        ),
    );
    Ok(response)
}

/// The token pair answer of login and refresh, never cached.
fn token_answer(tokens: &Tokens) -> Response {
    let mut response = Json(json!({
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "refresh_token": tokens.refresh_token.expose_secret(),
        "expires_in": tokens.expires_in,
        "must_change_password": tokens.must_change_password,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The password step every password sign-in shares (login, and a passkey as second factor):
/// charged to its buckets before the hash is checked, refunded when it is right; answers the
/// user whose password it was, an enabled local account.
pub(super) async fn check_password_login(
    app: &AppState,
    client: &ClientIp,
    headers: &HeaderMap,
    username: &str,
    password: &SecretString,
) -> Result<UserRow, ApiError> {
    let ip = client.0.to_string();
    // Buckets count an address as every per-address limit does (an IPv6 /64 is one address).
    let bucket = client.bucket().to_string();
    let username = username.trim();
    if username.is_empty() || username.len() > 64 {
        return Err(ApiError::InvalidCredentials);
    }
    // Charged before the password is checked, so parallel guesses cannot outrun the limit.
    let device = device::presented(app, headers, username);
    let attempt = attempts::charge_login(app, &bucket, username, device.as_ref()).await?;
    let user = match app.store.get_user_by_username(&Tenant::All, username).await {
        Ok(user) => user,
        Err(error) => {
            attempt.refund(app).await;
            return Err(error.into());
        }
    };
    // Only local accounts have a password; for the others the gate checks a dummy hash, so the
    // answer takes as long as for a wrong password.
    let stored_hash = user
        .as_ref()
        .filter(|u| u.kind == AccountKind::Local)
        .map(|u| u.password_hash.clone());
    let password_ok = match app.password_gate.verify(stored_hash, password).await {
        Ok(matches) => matches,
        Err(busy) => {
            // Never checked: the attempt does not count.
            attempt.refund(app).await;
            return Err(busy);
        }
    };
    let now = app.now_millis();
    let user =
        match sessions::accept_password(&app.store, username, user, password_ok, &ip, now).await {
            Ok(user) => user,
            Err(error) => {
                attempt.keep();
                return Err(error.into());
            }
        };
    // The password was right; the second factor has its own bucket.
    attempt.refund(app).await;
    // With local sign-in off, only break-glass admins get further; said only to someone who
    // knew the password.
    if !app.config.local_login && !break_glass(&user) {
        return Err(ApiError::LocalLoginDisabled);
    }
    Ok(user)
}

pub async fn login(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    AdminJson(request): AdminJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = client.0.to_string();
    let user = check_password_login(
        &app,
        &client,
        &headers,
        &request.username,
        &request.password,
    )
    .await?;
    // A passkey-only account's password is not a way in (said only to someone who knew it).
    if user.passkey_only {
        return Err(ApiError::PasskeyRequired);
    }
    if user.totp_enabled {
        check_mfa(&app, &user, &request, &ip).await?;
    } else if app.store.count_passkeys(&user.id).await? > 0 {
        // Passkeys are the second factor: POST /admin/auth/webauthn/start with the password.
        return Err(ApiError::MfaRequired);
    }
    finish_login(&app, &user, &ip, &headers, SessionMethod::Password).await
}

/// The end of every successful local sign-in: the session, its tokens and cookie, and the
/// device cookie.
pub(super) async fn finish_login(
    app: &AppState,
    user: &UserRow,
    ip: &str,
    headers: &HeaderMap,
    method: SessionMethod,
) -> Result<Response, ApiError> {
    let mut response = issue_session(app, user, ip, &user_agent(headers), method).await?;
    if let Some(cookie) = device::issue(app, &user.username) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

pub async fn refresh(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    AdminJson(request): AdminJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let ip = client.0.to_string();
    let attempt = attempts::charge_refresh(&app, &client.bucket().to_string()).await?;
    let now = app.now_millis();
    let rotated =
        match sessions::rotate_refresh_token(&app.store, &request.refresh_token, &ip, now).await {
            Ok(rotated) => rotated,
            Err(error) => {
                attempt.keep();
                return Err(error.into());
            }
        };
    attempt.refund(&app).await;
    let access_secs = app.config.access_token_ttl_sec;
    let tokens = sessions::reissue(&app.store, &app.jwt, access_secs, rotated, now).await?;
    Ok(token_answer(&tokens))
}

pub async fn logout(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    sessions::logout(
        &app.store,
        &caller.principal.session_id,
        &caller.principal.user,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    // A single sign-on session may end at the provider too (RP-initiated logout): the console
    // sends the browser there.
    let end_session_url = match (&app.oidc, caller.principal.method) {
        (Some(provider), SessionMethod::Sso) => provider.end_session_url(app.now_millis()).await,
        _ => None,
    };
    let mut response =
        Json(json!({ "ok": true, "end_session_url": end_session_url })).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(&app));
    Ok(response)
}

pub async fn change_password(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<PasswordRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    super::me::local_account(&caller)?;
    let user = &caller.principal.user;
    let attempt = attempts::charge_password_change(&app, &user.id).await?;
    let current_ok = match app
        .password_gate
        .verify(Some(user.password_hash.clone()), &request.current_password)
        .await
    {
        Ok(matches) => matches,
        Err(busy) => {
            attempt.refund(&app).await;
            return Err(busy);
        }
    };
    if !current_ok {
        attempt.keep();
        return Err(ApiError::InvalidCredentials);
    }
    attempt.refund(&app).await;
    sessions::check_new_password(
        &request.current_password,
        &request.new_password,
        &user.username,
    )?;
    let hash = app.password_gate.hash(&request.new_password).await?;
    // Other logins of this user end; the one that changed the password stays.
    sessions::change_password(
        &app.store,
        user,
        &hash,
        &caller.principal.session_id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok(Json(json!({ "ok": true, "must_change_password": false })))
}
