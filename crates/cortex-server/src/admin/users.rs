//! Users and roles through the admin API; Admin only for changes (SPEC §14). The rules
//! (usernames, roles, the password policy, keeping an admin) and the audit events live in
//! `cortex_control::users`; password hashing goes through the server's password gate. Every
//! read and change is scoped to the caller's organization by the store (`Caller::tenant`):
//! another organization's user is not found. Admins of the default organization may create
//! users in any organization, everyone else only in their own (SPEC §18).

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use cortex_control::users::{self, Membership};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::AccountKind;
use cortex_store::users::{UserChange, UserRow};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};

use super::budgets::keys_changed;
use super::guard::Caller;
use super::json::{list_body, AdminJson};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    username: String,
    /// The password policy also refuses common and weak passwords (zxcvbn score under 3).
    #[schema(value_type = String, min_length = 12, max_length = 128)]
    password: SecretString,
    #[schema(value_type = RoleName, inline)]
    role: String,
    /// The user's organization; absent: the caller's.
    #[serde(default)]
    org_id: Option<String>,
    /// With `budget_period`, or neither: the user's spend cap in US dollars.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1_000_000_000.0)]
    budget_usd: Option<f64>,
    #[serde(default, alias = "period")]
    #[schema(value_type = Option<super::budgets::BudgetPeriodName>, inline)]
    budget_period: Option<String>,
}

/// The role names on the wire (SPEC §14).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Documentation only: never built.
enum RoleName {
    Admin,
    Operator,
    Developer,
    Viewer,
    Billing,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    #[schema(value_type = Option<RoleName>, inline)]
    role: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 12, max_length = 128)]
    password: Option<SecretString>,
    #[serde(default)]
    disabled: Option<bool>,
    /// Both, or both `null` to remove the budget.
    #[serde(default, deserialize_with = "super::json::present")]
    #[schema(value_type = Option<f64>)]
    budget_usd: Option<Option<f64>>,
    #[serde(default, alias = "period", deserialize_with = "super::json::present")]
    #[schema(value_type = Option<super::budgets::BudgetPeriodName>, inline)]
    budget_period: Option<Option<String>>,
}

pub fn user_json(user: &UserRow) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "role": user.role.as_str(),
        "kind": user.kind.as_str(),
        "passkey_only": user.passkey_only,
        "must_change_password": user.must_change_password,
        "mfa_enabled": user.totp_enabled,
        "disabled": user.disabled,
        "org_id": user.org_id,
        "budget_usd": user.budget.map(|b| b.usd),
        "budget_period": user.budget.map(|b| b.period.as_str()),
        "created_at": millis_to_rfc3339(user.created_at),
        "updated_at": millis_to_rfc3339(user.updated_at),
    })
}

/// The policy check, then the hash through the password gate, which bounds how many run at
/// once.
async fn hashed(
    app: &AppState,
    password: &SecretString,
    username: &str,
) -> Result<String, ApiError> {
    users::check_password(password, username)?;
    app.password_gate.hash(password).await
}

/// The people of the caller's organization: service accounts have their own list.
pub async fn list_users(app: &AppState, caller: &Caller) -> Result<Vec<Value>, ApiError> {
    Ok(app
        .store
        .list_users(&caller.tenant())
        .await?
        .iter()
        .filter(|user| user.kind.is_person())
        .map(user_json)
        .collect())
}

/// The person `id` in the caller's organization; a service account is managed through its own
/// routes and is not found here.
async fn person(app: &AppState, caller: &Caller, id: &str) -> Result<UserRow, ApiError> {
    app.store
        .get_user(&caller.tenant(), id)
        .await?
        .filter(|user| user.kind.is_person())
        .ok_or(ApiError::NotFound)
}

pub async fn list(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    Ok(list_body(list_users(&app, &caller).await?))
}

pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateUser>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let username = users::check_username(&request.username)?;
    let role = users::parse_role(&request.role)?;
    let org_id = request
        .org_id
        .unwrap_or_else(|| caller.principal.user.org_id.clone());
    // Another organization is not found, as any of its objects (SPEC §18).
    if !caller.tenant().sees(&org_id) {
        return Err(ApiError::NotFound);
    }
    let membership = Membership {
        org_id,
        budget: super::budgets::new_budget(request.budget_usd, request.budget_period.as_deref())?,
    };
    let hash = hashed(&app, &request.password, username).await?;
    let user = users::create(
        &app.store,
        username,
        role,
        &hash,
        &membership,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok((axum::http::StatusCode::CREATED, Json(user_json(&user))))
}

pub async fn update(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateUser>,
) -> Result<Json<Value>, ApiError> {
    let target = person(&app, &caller, &id).await?;
    let mut change = UserChange {
        role: request.role.as_deref().map(users::parse_role).transpose()?,
        disabled: request.disabled,
        password_hash: None,
        budget: super::budgets::budget_change(request.budget_usd, request.budget_period)?,
    };
    if let Some(password) = &request.password {
        if target.kind != AccountKind::Local {
            return Err(ApiError::invalid(
                "a single sign-on user has no password: their identity provider signs them in",
            ));
        }
        // A refused change costs no hash, and is refused before any password error.
        users::check_update(&app.store, &target, &change).await?;
        change.password_hash = Some(hashed(&app, password, &target.username).await?);
    }
    let user = users::update(
        &app.store,
        &target,
        &change,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    if change.disabled.is_some() {
        // The user's keys were suspended (or the suspension lifted) in the same transaction:
        // apply that here at once and tell the other instances.
        keys_changed(&app).await?;
    }
    Ok(Json(user_json(&user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    erase: bool,
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant();
    let target = person(&app, &caller, &id).await?;
    // The caller's own session is at stake: that is this API's rule, not the command line's.
    if target.id == caller.principal.user.id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account".into(),
        ));
    }
    if query.erase {
        let report = users::erase(
            &app.store,
            &tenant,
            &id,
            caller.actor(),
            &caller.ip,
            app.now_millis(),
        )
        .await?;
        keys_changed(&app).await?;
        return Ok(Json(json!({
            "id": id,
            "deleted": true,
            "erased": true,
            "keys_anonymised": report.keys_anonymised,
            "usage_rows_anonymised": report.usage_rows_anonymised,
        })));
    }
    users::delete(
        &app.store,
        &target,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    // The user's keys were revoked in the same transaction; apply that here at once.
    keys_changed(&app).await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}
