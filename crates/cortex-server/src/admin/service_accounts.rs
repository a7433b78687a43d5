//! Service accounts through the admin API (SPEC §19): managed like users, by admins
//! (`users:write`) and read by whoever may read users; every read and change is scoped to the
//! caller's organization by the store, so another organization's account is not found. The
//! client secret is in the answer of create and rotate only. The rules and audit events are
//! `cortex_control::service_accounts`; the token endpoint is [`super::oauth`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_control::service_accounts::{self, Actor, Credentials, NewAccount};
use cortex_control::users::parse_role;
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_store::service_accounts::ServiceAccountRow;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::budgets::keys_changed;
use super::guard::Caller;
use super::json::{list_body, AdminJson};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    /// A username: unique among users and service accounts of every organization.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    name: String,
    /// The account's role; its tokens carry it.
    #[schema(value_type = String, example = "operator")]
    role: String,
    /// The account's organization; absent: the caller's.
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 256)]
    description: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateServiceAccount {
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "viewer")]
    role: Option<String>,
    /// Disabling ends the account's tokens at once and suspends its API keys.
    #[serde(default)]
    disabled: Option<bool>,
}

fn account_json(account: &ServiceAccountRow) -> Value {
    json!({
        "id": account.user.id,
        "name": account.user.username,
        "client_id": account.client_id,
        "role": account.user.role.as_str(),
        "org_id": account.user.org_id,
        "description": account.description,
        "disabled": account.user.disabled,
        "created_at": millis_to_rfc3339(account.user.created_at),
        "secret_rotated_at": millis_to_rfc3339(account.secret_rotated_at),
        "last_token_at": account.last_token_at.map(millis_to_rfc3339),
    })
}

/// The account with its new secret: the only answers that carry one.
fn with_secret(account: &ServiceAccountRow, credentials: &Credentials) -> Value {
    let mut body = account_json(account);
    body["client_secret"] = json!(credentials.client_secret.expose_secret());
    body
}

fn actor(caller: &Caller) -> Actor<'_> {
    Actor {
        name: caller.actor(),
        ip: &caller.ip,
    }
}

async fn target(app: &AppState, caller: &Caller, id: &str) -> Result<ServiceAccountRow, ApiError> {
    app.store
        .get_service_account(&caller.tenant(), id)
        .await?
        .ok_or(ApiError::NotFound)
}

pub async fn list(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let accounts = app.store.list_service_accounts(&caller.tenant()).await?;
    Ok(list_body(
        accounts.iter().map(account_json).collect::<Vec<_>>(),
    ))
}

pub async fn get_one(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(account_json(&target(&app, &caller, &id).await?)))
}

pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateServiceAccount>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let role = parse_role(&request.role)?;
    let org_id = request
        .org_id
        .unwrap_or_else(|| caller.principal.user.org_id.clone());
    // Another organization is not found, as any of its objects (SPEC §18).
    if !caller.tenant().sees(&org_id) {
        return Err(ApiError::NotFound);
    }
    let (account, credentials) = service_accounts::create(
        &app.store,
        &NewAccount {
            name: &request.name,
            role,
            org_id: &org_id,
            description: request.description.as_deref().unwrap_or(""),
        },
        actor(&caller),
        app.now_millis(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(with_secret(&account, &credentials)),
    ))
}

pub async fn update(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateServiceAccount>,
) -> Result<Json<Value>, ApiError> {
    let current = target(&app, &caller, &id).await?;
    let account = service_accounts::update(
        &app.store,
        &current,
        request.role.as_deref(),
        request.disabled,
        actor(&caller),
        app.now_millis(),
    )
    .await?;
    if request.disabled.is_some() {
        // The account's keys were suspended (or the suspension lifted) in the same
        // transaction: apply that here at once and tell the other instances.
        keys_changed(&app).await?;
    }
    Ok(Json(account_json(&account)))
}

pub async fn rotate(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (account, credentials) = service_accounts::rotate(
        &app.store,
        &caller.tenant(),
        &id,
        actor(&caller),
        app.now_millis(),
    )
    .await?;
    Ok(Json(with_secret(&account, &credentials)))
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = target(&app, &caller, &id).await?;
    // An account deleting itself would end the session this request runs in.
    if current.user.id == caller.principal.user.id {
        return Err(ApiError::Conflict(
            "a service account cannot delete itself".into(),
        ));
    }
    service_accounts::delete(&app.store, &current, actor(&caller), app.now_millis()).await?;
    // The account's keys were revoked in the same transaction; apply that here at once.
    keys_changed(&app).await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}
