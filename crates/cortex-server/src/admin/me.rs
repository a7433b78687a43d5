//! The caller's own account: who am I, and TOTP enrolment. Enrolment's state changes and code
//! checks are `cortex_control::users::totp`'s; what stays here is the answer's shape (with the
//! QR code), the roles that may not turn TOTP off, and charging codes to the MFA bucket.

use axum::extract::State;
use axum::{Extension, Json};
use cortex_control::users::totp;
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::Permission;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{Access, ADMIN_ROUTES};
use super::attempts;
use super::guard::{within_reach, Caller};
use super::json::AdminJson;
use super::principal::AdminPrincipal;
use crate::state::AppState;
use cortex_gateway::error::ApiError;

/// Whether `permission` opens any route `principal` can reach; one no route asks for (checked
/// in handlers, as `keys:rotate_all`) is kept.
fn usable(principal: &AdminPrincipal, permission: Permission) -> bool {
    let mut routes = ADMIN_ROUTES
        .iter()
        .filter(|r| matches!(r.access, Access::AnyOf(ps) if ps.contains(&permission)))
        .peekable();
    routes.peek().is_none() || routes.any(|r| within_reach(principal, r.reach))
}

/// Refuses the password and second-factor routes to accounts that have none of their own:
/// single sign-on users (their identity provider authenticates them) and service accounts.
pub(super) fn local_account(caller: &Caller) -> Result<(), ApiError> {
    if caller.principal.user.kind.has_local_factors() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

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
    // The role's permissions this caller can use: a permission that only deployment-wide
    // routes ask for (providers, catalogue changes, the check, the export) is of no use outside
    // the default organization, so the console does not offer what would be refused.
    let permissions: Vec<&str> = user
        .role
        .permissions()
        .iter()
        .filter(|p| usable(&caller.principal, **p))
        .map(|p| p.as_str())
        .collect();
    let tenant = caller.tenant();
    let passkeys = app.store.count_passkeys(&user.id).await?;
    let org = app.store.get_org(&tenant, &user.org_id).await?;
    let teams = app.store.teams_of_user(&tenant, &user.id).await?;
    Ok(Json(json!({
        "id": user.id,
        "username": user.username,
        "role": user.role.as_str(),
        // local, sso or service: which sign-in and second-factor settings apply.
        "kind": user.kind.as_str(),
        "session_method": caller.principal.method.as_str(),
        "org_id": user.org_id,
        "org_name": org.map(|o| o.name),
        // Admins of the default organization manage every organization (SPEC §18).
        "all_orgs": tenant.is_all(),
        "teams": teams.iter().map(|t| json!({ "id": t.id, "name": t.name })).collect::<Vec<_>>(),
        "permissions": permissions,
        "must_change_password": user.must_change_password,
        // A second factor: TOTP or a passkey.
        "mfa_enabled": user.totp_enabled || passkeys > 0,
        "totp_enabled": user.totp_enabled,
        "passkeys": passkeys,
        "passkey_only": user.passkey_only,
        // Whether this server offers passkeys at all (CORTEX_WEBAUTHN_ORIGIN).
        "passkeys_enabled": app.passkeys.is_some(),
        // Only local accounts enrol second factors here (a single sign-on user's is the
        // identity provider's business).
        "mfa_required": app.config.require_mfa_for.contains(&user.role) && user.kind.has_local_factors(),
        "recovery_codes_left": app.store.unused_recovery_codes(&user.id).await?,
        "created_at": millis_to_rfc3339(user.created_at),
    })))
}

/// Starts enrolment: a new secret, stored sealed and not yet active until confirmed.
pub async fn enrol_totp(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    local_account(&caller)?;
    let enrolment = totp::start(
        &app.store,
        &app.master_key,
        &caller.principal.user,
        app.now_millis(),
    )
    .await?;
    // The QR code is drawn here so the console needs no QR library and the secret never
    // travels in a URL.
    let qr_svg = qrcode::QrCode::new(enrolment.otpauth_url.expose_secret().as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .map_err(ApiError::internal("rendering the TOTP QR code failed"))?;
    Ok(Json(json!({
        "secret": enrolment.secret.expose_secret(),
        "otpauth_url": enrolment.otpauth_url.expose_secret(),
        "qr_svg": qr_svg,
    })))
}

/// Confirms enrolment with a first code; answers the recovery codes, shown once.
pub async fn confirm_totp(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CodeRequest>,
) -> Result<Json<Value>, ApiError> {
    local_account(&caller)?;
    let codes = totp::confirm(
        &app.store,
        &app.master_key,
        &caller.principal.user,
        request.code.expose_secret(),
        caller.actor(),
        &caller.ip,
        app.now_millis(),
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
    totp::check_enabled(user)?;
    let attempt = attempts::charge_mfa(&app, &user.id).await?;
    let now = app.now_millis();
    // An error here keeps the charge (dropping the attempt does), as a wrong code does.
    let ok = totp::check_code(
        &app.store,
        &app.master_key,
        user,
        request.code.expose_secret(),
        caller.actor(),
        &caller.ip,
        now,
    )
    .await?;
    if !ok {
        attempt.keep();
        return Err(ApiError::InvalidCredentials);
    }
    attempt.refund(&app).await;
    totp::disable(&app.store, user, caller.actor(), &caller.ip, now).await?;
    Ok(Json(json!({ "ok": true })))
}
