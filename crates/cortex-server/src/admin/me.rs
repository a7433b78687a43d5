//! The caller's own account: who am I, and TOTP enrolment.

use axum::extract::State;
use axum::{Extension, Json};
use cortex_crypto::envelope::{open, seal};
use cortex_crypto::totp::{
    generate_recovery_codes, generate_totp_secret, hash_recovery_code, otpauth_url, secret_base32,
    verify_totp,
};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::time_fmt::millis_to_rfc3339;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::attempts;
use super::guard::Caller;
use super::json::AdminJson;
use crate::state::AppState;
use cortex_gateway::error::ApiError;

const RECOVERY_CODES: usize = 10;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    #[schema(value_type = String)]
    code: SecretString,
}

pub async fn me(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let user = &caller.principal.user;
    let permissions: Vec<&str> = user.role.permissions().iter().map(|p| p.as_str()).collect();
    Ok(Json(json!({
        "id": user.id,
        "username": user.username,
        "role": user.role.as_str(),
        "permissions": permissions,
        "must_change_password": user.must_change_password,
        "mfa_enabled": user.totp_enabled,
        "mfa_required": app.config.require_mfa_for.contains(&user.role),
        "recovery_codes_left": app.store.unused_recovery_codes(&user.id).await?,
        "created_at": millis_to_rfc3339(user.created_at),
    })))
}

/// Starts enrolment: a new secret, stored sealed and not yet active until confirmed.
pub async fn enrol_totp(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let user = &caller.principal.user;
    if user.totp_enabled {
        return Err(ApiError::Conflict(
            "TOTP is already enabled; disable it first to enrol again".into(),
        ));
    }
    let secret = generate_totp_secret();
    let sealed = seal(&app.master_key, secret.expose_secret(), user.id.as_bytes())
        .map_err(ApiError::internal("sealing a TOTP secret failed"))?;
    app.store
        .set_pending_totp(&user.id, &sealed, app.now_millis())
        .await?;
    let url = otpauth_url(secret.expose_secret(), "Cortex", &user.username)
        .map_err(ApiError::internal("building the otpauth URL failed"))?;
    // The QR code is drawn here so the console needs no QR library and the secret never
    // travels in a URL.
    let qr_svg = qrcode::QrCode::new(url.expose_secret().as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .map_err(ApiError::internal("rendering the TOTP QR code failed"))?;
    Ok(Json(json!({
        "secret": secret_base32(secret.expose_secret()).expose_secret(),
        "otpauth_url": url.expose_secret(),
        "qr_svg": qr_svg,
    })))
}

/// Confirms enrolment with a first code; answers the recovery codes, shown once.
pub async fn confirm_totp(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CodeRequest>,
) -> Result<Json<Value>, ApiError> {
    let user = &caller.principal.user;
    if user.totp_enabled {
        return Err(ApiError::Conflict("TOTP is already enabled".into()));
    }
    let sealed = user.totp_secret_sealed.as_ref().ok_or(ApiError::invalid(
        "start enrolment first (POST /admin/me/totp)",
    ))?;
    let secret = open(&app.master_key, sealed, user.id.as_bytes())
        .map_err(ApiError::internal("opening a pending TOTP secret failed"))?;
    let now = app.now_millis();
    let step = verify_totp(
        &secret,
        request.code.expose_secret(),
        u64::try_from(now / 1000).unwrap_or(0),
        None,
    )
    .ok_or(ApiError::InvalidCredentials)?;
    let codes = generate_recovery_codes(RECOVERY_CODES);
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| hash_recovery_code(c.expose_secret()))
        .collect();
    let event =
        NewAuditEvent::new(caller.actor(), "user.mfa_enabled", &user.id).with_ip(caller.ip.clone());
    app.store
        .enable_totp(
            &user.id,
            i64::try_from(step).unwrap_or(i64::MAX),
            &hashes,
            &event,
            now,
        )
        .await?;
    let shown: Vec<&str> = codes.iter().map(|c| c.expose_secret()).collect();
    Ok(Json(json!({ "recovery_codes": shown })))
}

/// Turns TOTP off after a valid code (TOTP or recovery). Refused for roles that require MFA.
/// Each code is charged to the user's MFA bucket (the one login uses) before it is checked.
pub async fn disable_totp(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CodeRequest>,
) -> Result<Json<Value>, ApiError> {
    let user = &caller.principal.user;
    if app.config.require_mfa_for.contains(&user.role) {
        return Err(ApiError::Forbidden);
    }
    if !user.totp_enabled {
        return Err(ApiError::Conflict("TOTP is not enabled".into()));
    }
    let attempt = attempts::charge_mfa(&app, &user.id).await?;
    let now = app.now_millis();
    let sealed = user.totp_secret_sealed.as_ref().ok_or(ApiError::Internal)?;
    let secret = open(&app.master_key, sealed, user.id.as_bytes())
        .map_err(ApiError::internal("opening a user's TOTP secret failed"))?;
    let last = user.totp_last_step.and_then(|s| u64::try_from(s).ok());
    let code = request.code.expose_secret();
    let by_totp = match verify_totp(&secret, code, u64::try_from(now / 1000).unwrap_or(0), last) {
        Some(step) => {
            app.store
                .claim_totp_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX))
                .await?
        }
        None => false,
    };
    let ok = by_totp
        || app
            .store
            .consume_recovery_code(
                &user.id,
                &hash_recovery_code(code),
                &NewAuditEvent::new(caller.actor(), "auth.recovery_code_used", &user.id)
                    .with_ip(caller.ip.clone()),
                now,
            )
            .await?;
    if !ok {
        attempt.keep();
        return Err(ApiError::InvalidCredentials);
    }
    attempt.refund(&app).await;
    let event = NewAuditEvent::new(caller.actor(), "user.mfa_disabled", &user.id)
        .with_ip(caller.ip.clone());
    app.store.disable_totp(&user.id, &event, now).await?;
    Ok(Json(json!({ "ok": true })))
}
