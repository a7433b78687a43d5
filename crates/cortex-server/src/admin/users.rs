//! Users and roles; Admin only for changes (SPEC §14).

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use cortex_crypto::password::check_password_policy;
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::Role;
use cortex_store::users::{NewUser, UserChange, UserRow};
use cortex_store::{new_id, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

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
}

pub fn user_json(user: &UserRow) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "role": user.role.as_str(),
        "must_change_password": user.must_change_password,
        "mfa_enabled": user.totp_enabled,
        "disabled": user.disabled,
        "created_at": millis_to_rfc3339(user.created_at),
        "updated_at": millis_to_rfc3339(user.updated_at),
    })
}

fn parse_role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text).ok_or(ApiError::invalid(
        "`role` must be one of admin, operator, developer, viewer, billing",
    ))
}

fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

async fn hashed(
    app: &AppState,
    password: &SecretString,
    username: &str,
) -> Result<String, ApiError> {
    check_password_policy(password.expose_secret(), &[username])
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    app.password_gate.hash(password).await
}

pub async fn list_users(app: &AppState) -> Result<Vec<Value>, ApiError> {
    Ok(app
        .store
        .list_users()
        .await?
        .iter()
        .map(user_json)
        .collect())
}

pub async fn list(
    State(app): State<AppState>,
    Extension(_caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    Ok(list_body(list_users(&app).await?))
}

pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateUser>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let username = request.username.trim();
    if !valid_username(username) {
        return Err(ApiError::invalid(
            "`username` must be 1-64 letters, digits, '.', '_', '-' or '@'",
        ));
    }
    let role = parse_role(&request.role)?;
    let hash = hashed(&app, &request.password, username).await?;
    let id = new_id();
    let event = NewAuditEvent::new(caller.actor(), "user.create", &id)
        .with_details(&json!({ "username": username, "role": role.as_str() }))
        .with_ip(caller.ip.clone());
    // Admin-set passwords must be changed by their owner at first login.
    let new = NewUser {
        id: &id,
        username,
        password_hash: &hash,
        role,
        must_change_password: true,
    };
    let user = app
        .store
        .create_user(&new, &event, app.now_millis())
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ApiError::Conflict("a user with that username exists".into()),
            other => other.into(),
        })?;
    Ok((axum::http::StatusCode::CREATED, Json(user_json(&user))))
}

/// Refuses a change that would leave no active admin.
async fn keep_an_admin(
    app: &AppState,
    target: &UserRow,
    removes_admin: bool,
) -> Result<(), ApiError> {
    if target.role == Role::Admin
        && !target.disabled
        && removes_admin
        && app.store.count_other_active_admins(&target.id).await? == 0
    {
        return Err(ApiError::Conflict(
            "this would leave no active admin".into(),
        ));
    }
    Ok(())
}

pub async fn update(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateUser>,
) -> Result<Json<Value>, ApiError> {
    let target = app.store.get_user(&id).await?.ok_or(ApiError::NotFound)?;
    let role = request.role.as_deref().map(parse_role).transpose()?;
    let demotes = role.is_some_and(|r| r != Role::Admin);
    keep_an_admin(&app, &target, demotes || request.disabled == Some(true)).await?;
    let password_hash = match &request.password {
        Some(password) => Some(hashed(&app, password, &target.username).await?),
        None => None,
    };
    let change = UserChange {
        role,
        disabled: request.disabled,
        password_hash,
    };
    let event = NewAuditEvent::new(caller.actor(), "user.update", &id)
        .with_details(&json!({
            "role": change.role.map(Role::as_str),
            "disabled": change.disabled,
            "password_reset": change.password_hash.is_some(),
        }))
        .with_ip(caller.ip.clone());
    let user = app
        .store
        .update_user(&id, &change, &event, app.now_millis())
        .await?;
    if change.disabled.is_some() {
        // The user's keys were suspended (or the suspension lifted) in the same transaction:
        // apply that here at once and tell the other instances.
        app.data.keys.refresh(&app.store).await?;
        app.announce(cortex_gateway::invalidation::Topic::Keys)
            .await;
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
    let target = app.store.get_user(&id).await?.ok_or(ApiError::NotFound)?;
    if target.id == caller.principal.user.id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account".into(),
        ));
    }
    keep_an_admin(&app, &target, true).await?;
    if query.erase {
        // The event names the id only: the point is that the name goes.
        let event = NewAuditEvent::new(caller.actor(), "user.erase", &id)
            .with_details(&json!({ "erased": true }))
            .with_ip(caller.ip.clone());
        let report = app.store.erase_user(&id, &event, app.now_millis()).await?;
        app.data.keys.refresh(&app.store).await?;
        app.announce(cortex_gateway::invalidation::Topic::Keys)
            .await;
        return Ok(Json(json!({
            "id": id,
            "deleted": true,
            "erased": true,
            "keys_anonymised": report.keys_anonymised,
            "usage_rows_anonymised": report.usage_rows_anonymised,
        })));
    }
    let event = NewAuditEvent::new(caller.actor(), "user.delete", &id)
        .with_details(&json!({ "username": target.username }))
        .with_ip(caller.ip.clone());
    app.store.delete_user(&id, &event, app.now_millis()).await?;
    // The user's keys were revoked in the same transaction; apply that here at once.
    app.data.keys.refresh(&app.store).await?;
    app.announce(cortex_gateway::invalidation::Topic::Keys)
        .await;
    Ok(Json(json!({ "id": id, "deleted": true })))
}
