//! Organizations and teams through the admin API (SPEC §18). Organizations are managed by admins
//! of the default organization only (the route table's `Reach::AllOrganizations`); teams by each
//! organization's admins, inside their organization. The rules and audit events are
//! `cortex_control::orgs`'s; scoping is the store's, through the caller's `Tenant`, so another
//! organization's team is simply not found (404).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_control::orgs::{self, Limits};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::Budget;
use cortex_store::organizations::{OrgRow, TeamRow};
use serde::Deserialize;
use serde_json::{json, Value};

use super::budgets::{budget_change, keys_changed, new_budget, BudgetPeriodName};
use super::guard::Caller;
use super::json::{list_body, present, AdminJson};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    #[schema(pattern = r"^[A-Za-z0-9._ -]{1,64}$")]
    name: String,
    /// With `budget_period`, or neither: a spend cap in US dollars, at least 0.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1_000_000_000.0)]
    budget_usd: Option<f64>,
    #[serde(default, alias = "period")]
    #[schema(value_type = Option<BudgetPeriodName>, inline)]
    budget_period: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    tokens_per_minute: Option<i64>,
    /// The model names the organization's keys may use (and it sees); absent: every model.
    #[serde(default)]
    #[schema(max_items = 1000)]
    allowed_models: Option<Vec<String>>,
}

/// A change: absent fields stay; `null` clears a budget, a limit or the model list.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    budget_usd: Option<Option<f64>>,
    #[serde(default, alias = "period", deserialize_with = "present")]
    #[schema(value_type = Option<BudgetPeriodName>, inline)]
    budget_period: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    tokens_per_minute: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    allowed_models: Option<Option<Vec<String>>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// The organization; absent: the caller's. Admins of the default organization may name
    /// any; everyone else only their own.
    #[serde(default)]
    org_id: Option<String>,
    #[schema(pattern = r"^[A-Za-z0-9._ -]{1,64}$")]
    name: String,
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1_000_000_000.0)]
    budget_usd: Option<f64>,
    #[serde(default, alias = "period")]
    #[schema(value_type = Option<BudgetPeriodName>, inline)]
    budget_period: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    tokens_per_minute: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    budget_usd: Option<Option<f64>>,
    #[serde(default, alias = "period", deserialize_with = "present")]
    #[schema(value_type = Option<BudgetPeriodName>, inline)]
    budget_period: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    tokens_per_minute: Option<Option<i64>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamMembers {
    /// Users of the team's organization; replaces the members.
    #[schema(max_items = 1000)]
    user_ids: Vec<String>,
}

fn budget_fields(budget: Option<&Budget>) -> (Value, Value) {
    match budget {
        Some(b) => (json!(b.usd), json!(b.period.as_str())),
        None => (Value::Null, Value::Null),
    }
}

pub fn org_json(org: &OrgRow) -> Value {
    let (budget_usd, budget_period) = budget_fields(org.budget.as_ref());
    json!({
        "id": org.id,
        "object": "organization",
        "name": org.name,
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "tokens_per_minute": org.tokens_per_minute,
        "allowed_models": org.allowed_models,
        "created_at": millis_to_rfc3339(org.created_at),
    })
}

pub fn team_json(team: &TeamRow) -> Value {
    let (budget_usd, budget_period) = budget_fields(team.budget.as_ref());
    json!({
        "id": team.id,
        "object": "team",
        "org_id": team.org_id,
        "name": team.name,
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "tokens_per_minute": team.tokens_per_minute,
        "members": team.members,
        "created_at": millis_to_rfc3339(team.created_at),
    })
}

pub async fn list_orgs(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let orgs = app.store.list_orgs(&caller.tenant()).await?;
    Ok(list_body(orgs.iter().map(org_json)))
}

pub async fn create_org(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateOrg>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limits = Limits {
        budget: Some(new_budget(
            request.budget_usd,
            request.budget_period.as_deref(),
        )?),
        tokens_per_minute: Some(request.tokens_per_minute),
    };
    let org = orgs::create_org(
        &app.store,
        &request.name,
        &limits,
        request.allowed_models,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(org_json(&org))))
}

pub async fn update_org(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateOrg>,
) -> Result<Json<Value>, ApiError> {
    let limits = Limits {
        budget: budget_change(request.budget_usd, request.budget_period)?,
        tokens_per_minute: request.tokens_per_minute,
    };
    let models_changed = request.allowed_models.is_some();
    let org = orgs::update_org(
        &app.store,
        &caller.tenant(),
        &id,
        request.name.as_deref(),
        &limits,
        request.allowed_models,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    if models_changed {
        // The organization's keys got a new version with the list: apply it here at once and
        // tell the other instances.
        keys_changed(&app).await?;
    }
    Ok(Json(org_json(&org)))
}

pub async fn delete_org(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    orgs::delete_org(
        &app.store,
        &caller.tenant(),
        &id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok(Json(
        json!({ "id": id, "object": "organization", "deleted": true }),
    ))
}

pub async fn list_teams(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let teams = app.store.list_teams(&caller.tenant()).await?;
    Ok(list_body(teams.iter().map(team_json)))
}

pub async fn create_team(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateTeam>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limits = Limits {
        budget: Some(new_budget(
            request.budget_usd,
            request.budget_period.as_deref(),
        )?),
        tokens_per_minute: Some(request.tokens_per_minute),
    };
    let org_id = request
        .org_id
        .unwrap_or_else(|| caller.principal.user.org_id.clone());
    let team = orgs::create_team(
        &app.store,
        &caller.tenant(),
        &org_id,
        &request.name,
        &limits,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(team_json(&team))))
}

pub async fn update_team(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateTeam>,
) -> Result<Json<Value>, ApiError> {
    let limits = Limits {
        budget: budget_change(request.budget_usd, request.budget_period)?,
        tokens_per_minute: request.tokens_per_minute,
    };
    let team = orgs::update_team(
        &app.store,
        &caller.tenant(),
        &id,
        request.name.as_deref(),
        &limits,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    Ok(Json(team_json(&team)))
}

pub async fn delete_team(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    orgs::delete_team(
        &app.store,
        &caller.tenant(),
        &id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    // Its keys stopped being charged to it (a new key version each).
    keys_changed(&app).await?;
    Ok(Json(json!({ "id": id, "object": "team", "deleted": true })))
}

pub async fn set_members(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<TeamMembers>,
) -> Result<Json<Value>, ApiError> {
    let team = orgs::set_members(
        &app.store,
        &caller.tenant(),
        &id,
        &request.user_ids,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    // Keys of removed members stopped being charged to the team.
    keys_changed(&app).await?;
    Ok(Json(team_json(&team)))
}
