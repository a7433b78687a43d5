//! Passkeys over HTTP (SPEC §19): a local user's own passkeys (`/admin/me/passkeys`,
//! `/admin/me/webauthn/register/start|finish`, `/admin/me/passkey-only`) and signing in with one
//! (`/admin/auth/webauthn/start|finish`), as a second factor after the password or alone for
//! passkey-only accounts. The ceremonies are `cortex_control::passkeys`; the browser's side is
//! the console's `navigator.credentials` calls. Off (404) unless `CORTEX_WEBAUTHN_ORIGIN` is set.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use cortex_control::passkeys::{self, Assertion, Attestation, LoginFor, PasskeyError, Passkeys};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::SessionMethod;
use cortex_store::passkeys::PasskeyRow;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::attempts;
use super::auth::{break_glass, check_password_login, finish_login};
use super::guard::Caller;
use super::json::{list_body, AdminJson};
use super::me::local_account;
use crate::state::AppState;
use cortex_gateway::error::ApiError;
use cortex_gateway::request_meta::ClientIp;

fn relying_party(app: &AppState) -> Result<Arc<Passkeys>, ApiError> {
    app.passkeys.clone().ok_or(ApiError::NotFound)
}

fn passkey_json(row: &PasskeyRow) -> Value {
    json!({
        "id": row.id,
        "name": row.name,
        "created_at": millis_to_rfc3339(row.created_at),
        "last_used_at": row.last_used_at.map(millis_to_rfc3339),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterStart {
    /// Unique among the user's passkeys: "laptop", "YubiKey 5".
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterFinish {
    /// From the start's answer.
    #[schema(value_type = String)]
    challenge_id: SecretString,
    /// The browser's `PublicKeyCredential` from `navigator.credentials.create`, as JSON
    /// (`credential.toJSON()`).
    #[schema(value_type = Object)]
    credential: Attestation,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyOnly {
    /// Sign in with a passkey alone; the password is then refused.
    enabled: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginStart {
    username: String,
    /// With the password, the passkey is the second factor; without it, the account must sign
    /// in with a passkey alone.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<SecretString>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginFinish {
    #[schema(value_type = String)]
    challenge_id: SecretString,
    /// The browser's `PublicKeyCredential` from `navigator.credentials.get`, as JSON.
    #[schema(value_type = Object)]
    credential: Assertion,
}

/// The caller's passkeys.
pub async fn list(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    relying_party(&app)?;
    local_account(&caller)?;
    let rows = app.store.list_passkeys(&caller.principal.user.id).await?;
    Ok(list_body(rows.iter().map(passkey_json).collect::<Vec<_>>()))
}

pub async fn register_start(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<RegisterStart>,
) -> Result<Json<Value>, ApiError> {
    let rp = relying_party(&app)?;
    local_account(&caller)?;
    let ceremony = passkeys::register_start(
        &rp,
        &app.store,
        &app.master_key,
        &caller.principal.user,
        &request.name,
        app.now_millis(),
    )
    .await?;
    Ok(Json(json!({
        "challenge_id": ceremony.challenge_token.expose_secret(),
        "options": ceremony.options,
    })))
}

pub async fn register_finish(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<RegisterFinish>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let rp = relying_party(&app)?;
    local_account(&caller)?;
    let row = passkeys::register_finish(
        &rp,
        &app.store,
        &app.master_key,
        &caller.principal.user,
        request.challenge_id.expose_secret(),
        &request.credential,
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(passkey_json(&row))))
}

pub async fn remove(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    relying_party(&app)?;
    local_account(&caller)?;
    passkeys::remove(
        &app.store,
        &caller.principal.user,
        &id,
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}

pub async fn set_passkey_only(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<PasskeyOnly>,
) -> Result<Json<Value>, ApiError> {
    relying_party(&app)?;
    local_account(&caller)?;
    passkeys::set_passkey_only(
        &app.store,
        &caller.principal.user,
        request.enabled,
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok(Json(json!({ "passkey_only": request.enabled })))
}

fn refused(error: PasskeyError) -> ApiError {
    match error {
        // One answer for a bad assertion, an unknown challenge and a cloned authenticator (the
        // audit event says which).
        PasskeyError::Refused | PasskeyError::CounterReplayed | PasskeyError::NotAllowed => {
            ApiError::InvalidCredentials
        }
        PasskeyError::Store(error) => ApiError::from(error),
        PasskeyError::Internal => ApiError::Internal,
    }
}

/// Starts a passkey sign-in: with the password (a second factor, the password checked as a
/// login checks it) or with the username alone.
pub async fn login_start(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    AdminJson(request): AdminJson<LoginStart>,
) -> Result<Json<Value>, ApiError> {
    let rp = relying_party(&app)?;
    let now = app.now_millis();
    let ceremony = match &request.password {
        Some(password) => {
            let user =
                check_password_login(&app, &client, &headers, &request.username, password).await?;
            passkeys::login_start(
                &rp,
                &app.store,
                &app.master_key,
                LoginFor::SecondFactor(&user),
                now,
            )
            .await
            .map_err(|error| match error {
                // The password was right: saying there is no passkey tells nothing new.
                PasskeyError::NotAllowed => {
                    ApiError::invalid("this account has no passkey; sign in with a TOTP code")
                }
                other => refused(other),
            })?
        }
        None => {
            // Not refunded: a passwordless start costs a row, and a wrong name must cost the
            // same as a right one.
            attempts::charge_passkey(&app, &client.bucket().to_string())
                .await?
                .keep();
            passkeys::login_start(
                &rp,
                &app.store,
                &app.master_key,
                LoginFor::Passwordless(&request.username),
                now,
            )
            .await
            .map_err(refused)?
        }
    };
    Ok(Json(json!({
        "challenge_id": ceremony.challenge_token.expose_secret(),
        "options": ceremony.options,
    })))
}

/// Completes a passkey sign-in and starts the session a password login starts.
pub async fn login_finish(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    AdminJson(request): AdminJson<LoginFinish>,
) -> Result<Response, ApiError> {
    let rp = relying_party(&app)?;
    let ip = client.0.to_string();
    let attempt = attempts::charge_passkey(&app, &client.bucket().to_string()).await?;
    let login = match passkeys::login_finish(
        &rp,
        &app.store,
        &app.master_key,
        request.challenge_id.expose_secret(),
        &request.credential,
        &ip,
        app.now_millis(),
    )
    .await
    {
        Ok(login) => login,
        Err(error) => {
            attempt.keep();
            return Err(refused(error));
        }
    };
    attempt.refund(&app).await;
    // Without the password, only an account that signs in with a passkey alone (it may have
    // turned that off since the start).
    if !login.password_verified && !login.user.passkey_only {
        return Err(ApiError::InvalidCredentials);
    }
    // A passkey alone is local sign-in too: with it off, only break-glass admins.
    if !app.config.local_login && !break_glass(&login.user) {
        return Err(ApiError::LocalLoginDisabled);
    }
    finish_login(&app, &login.user, &ip, &headers, SessionMethod::Passkey).await
}
