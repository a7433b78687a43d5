//! Login, token refresh, logout and password change.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cortex_crypto::password::check_password_policy;
use cortex_crypto::token::{random_token, sha256_hex};
use cortex_crypto::totp::{hash_recovery_code, verify_totp};
use cortex_domain::audit::NewAuditEvent;
use cortex_store::new_id;
use cortex_store::sessions::{NewSession, RefreshOutcome};
use cortex_store::users::UserRow;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::guard::Caller;
use super::json::AdminJson;
use super::principal::session_cookie_name;
use super::{attempts, device};
use crate::state::AppState;
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

fn session_cookie(app: &AppState, token: &str, max_age_secs: u64) -> HeaderValue {
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

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

fn audit(actor: &str, action: &str, target: &str, ip: &str) -> NewAuditEvent {
    NewAuditEvent::new(actor, action, target).with_ip(ip)
}

/// Checks the second factor of a user with TOTP on. A code is charged to the user's MFA bucket
/// before it is checked and refunded when it is right; asking without a code costs nothing.
async fn check_mfa(
    app: &AppState,
    user: &UserRow,
    request: &LoginRequest,
    ip: &str,
) -> Result<(), ApiError> {
    if request.totp_code.is_none() && request.recovery_code.is_none() {
        return Err(ApiError::MfaRequired);
    }
    let attempt = attempts::charge_mfa(app, &user.id).await?;
    let result = second_factor(app, user, request, ip, app.now_millis()).await;
    if result.is_ok() {
        attempt.refund(app).await;
    } else {
        attempt.keep();
    }
    result
}

async fn second_factor(
    app: &AppState,
    user: &UserRow,
    request: &LoginRequest,
    ip: &str,
    now: i64,
) -> Result<(), ApiError> {
    if let Some(code) = &request.totp_code {
        let sealed = user.totp_secret_sealed.as_ref().ok_or(ApiError::Internal)?;
        let secret = cortex_crypto::envelope::open(&app.master_key, sealed, user.id.as_bytes())
            .map_err(ApiError::internal("opening a user's TOTP secret failed"))?;
        let last = user.totp_last_step.and_then(|s| u64::try_from(s).ok());
        let step = verify_totp(&secret, code, u64::try_from(now / 1000).unwrap_or(0), last)
            .ok_or(ApiError::InvalidCredentials)?;
        // The atomic claim refuses a code another request (or instance) just used.
        if !app
            .store
            .claim_totp_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX))
            .await?
        {
            return Err(ApiError::InvalidCredentials);
        }
        return Ok(());
    }
    if let Some(code) = &request.recovery_code {
        let used = app
            .store
            .consume_recovery_code(
                &user.id,
                &hash_recovery_code(code.expose_secret()),
                &audit(&user.username, "auth.recovery_code_used", &user.id, ip),
                now,
            )
            .await?;
        return if used {
            Ok(())
        } else {
            Err(ApiError::InvalidCredentials)
        };
    }
    Err(ApiError::MfaRequired)
}

/// Creates a session with its first refresh token and answers the token pair plus cookie.
async fn issue_session(
    app: &AppState,
    user: &UserRow,
    ip: &str,
    agent: &str,
) -> Result<Response, ApiError> {
    let now = app.now_millis();
    let session_token = random_token(32);
    let refresh_token = random_token(32);
    let session_id = new_id();
    let refresh_ttl = app.config.refresh_token_ttl_sec;
    let expires_at = now + i64::try_from(refresh_ttl).unwrap_or(i64::MAX / 2_000) * 1000;
    app.store
        .create_session(
            &NewSession {
                session_id: &session_id,
                user_id: &user.id,
                token_hash: &sha256_hex(session_token.expose_secret().as_bytes()),
                refresh_id: &new_id(),
                refresh_hash: &sha256_hex(refresh_token.expose_secret().as_bytes()),
                expires_at,
                client_ip: ip,
                user_agent: agent,
            },
            &audit(&user.username, "auth.login", &user.id, ip),
            now,
        )
        .await?;
    let mut response = token_answer(app, user, &session_id, &refresh_token, now)?;
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(app, session_token.expose_secret(), refresh_ttl),
    );
    Ok(response)
}

/// The token pair answer of login and refresh: a fresh JWT for the session plus the refresh
/// token, never cached.
fn token_answer(
    app: &AppState,
    user: &UserRow,
    session_id: &str,
    refresh_token: &SecretString,
    now: i64,
) -> Result<Response, ApiError> {
    let access_ttl = app.config.access_token_ttl_sec;
    let (access_token, _) = app
        .jwt
        .issue(
            &user.id,
            session_id,
            user.role.as_str(),
            now / 1000,
            i64::try_from(access_ttl).unwrap_or(900),
        )
        .map_err(ApiError::internal("signing an access token failed"))?;
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "refresh_token": refresh_token.expose_secret(),
        "expires_in": access_ttl,
        "must_change_password": user.must_change_password,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub async fn login(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    AdminJson(request): AdminJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = client.0.to_string();
    // Buckets count an address as every per-address limit does (an IPv6 /64 is one address).
    let bucket = client.bucket().to_string();
    let username = request.username.trim().to_owned();
    if username.is_empty() || username.len() > 64 {
        return Err(ApiError::InvalidCredentials);
    }
    // Charged before the password is checked, so parallel guesses cannot outrun the limit.
    let device = device::presented(&app, &headers, &username);
    let attempt = attempts::charge_login(&app, &bucket, &username, device.as_ref()).await?;
    let user = match app.store.get_user_by_username(&username).await {
        Ok(user) => user,
        Err(error) => {
            attempt.refund(&app).await;
            return Err(error.into());
        }
    };
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    let password_ok = match app
        .password_gate
        .verify(stored_hash, &request.password)
        .await
    {
        Ok(matches) => matches,
        Err(busy) => {
            // Never checked: the attempt does not count.
            attempt.refund(&app).await;
            return Err(busy);
        }
    };
    let now = app.now_millis();
    let user = match user {
        Some(user) if password_ok && !user.disabled => user,
        _ => {
            attempt.keep();
            let details = json!({ "username": username.chars().take(64).collect::<String>() });
            app.store
                .append_audit(
                    &audit("anonymous", "auth.login_failed", "", &ip).with_details(&details),
                    now,
                )
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    };
    // The password was right; the second factor has its own bucket.
    attempt.refund(&app).await;
    if user.totp_enabled {
        if let Err(error) = check_mfa(&app, &user, &request, &ip).await {
            if matches!(error, ApiError::InvalidCredentials) {
                app.store
                    .append_audit(
                        &audit(&user.username, "auth.mfa_failed", &user.id, &ip),
                        now,
                    )
                    .await?;
            }
            return Err(error);
        }
    }
    let mut response = issue_session(&app, &user, &ip, &user_agent(&headers)).await?;
    if let Some(cookie) = device::issue(&app, &user.username) {
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
    let presented = sha256_hex(request.refresh_token.expose_secret().as_bytes());
    let new_token = random_token(32);
    let now = app.now_millis();
    let outcome = app
        .store
        .rotate_refresh_token(
            &presented,
            &new_id(),
            &sha256_hex(new_token.expose_secret().as_bytes()),
            |family, user_id| {
                NewAuditEvent::new("anonymous", "auth.refresh_token_reuse", user_id)
                    .with_details(&json!({ "family": family }))
                    .with_ip(ip.clone())
            },
            now,
        )
        .await?;
    let (session_id, user_id) = match outcome {
        RefreshOutcome::Rotated {
            session_id,
            user_id,
        } => (session_id, user_id),
        RefreshOutcome::Reused { .. } => {
            attempt.keep();
            tracing::warn!(ip = %ip, "a used refresh token was presented again; its family is revoked");
            return Err(ApiError::Unauthenticated);
        }
        RefreshOutcome::Invalid => {
            attempt.keep();
            return Err(ApiError::Unauthenticated);
        }
    };
    attempt.refund(&app).await;
    let user = app
        .store
        .get_user(&user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or(ApiError::Unauthenticated)?;
    let response = token_answer(&app, &user, &session_id, &new_token, now)?;
    Ok(response)
}

pub async fn logout(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let now = app.now_millis();
    let event = audit(
        caller.actor(),
        "auth.logout",
        &caller.principal.user.id,
        &caller.ip,
    );
    app.store
        .revoke_session(&caller.principal.session_id, Some(&event), now)
        .await?;
    let mut response = Json(json!({ "ok": true })).into_response();
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
    if request.new_password.expose_secret() == request.current_password.expose_secret() {
        return Err(ApiError::invalid(
            "the new password must differ from the current one",
        ));
    }
    check_password_policy(request.new_password.expose_secret(), &[&user.username])
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let hash = app.password_gate.hash(&request.new_password).await?;
    let now = app.now_millis();
    app.store
        .set_password(
            &user.id,
            &hash,
            false,
            &audit(caller.actor(), "user.password_change", &user.id, &caller.ip),
            now,
        )
        .await?;
    // Other logins of this user end; the one that changed the password stays.
    app.store
        .revoke_user_sessions(&user.id, Some(&caller.principal.session_id), now)
        .await?;
    Ok(Json(json!({ "ok": true, "must_change_password": false })))
}
