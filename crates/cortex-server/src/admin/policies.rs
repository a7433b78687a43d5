//! Gateway policies (SPEC §21) and the guardrail events they caused, through the admin API.
//! The checks and audit events are `cortex_control::policies`'s; scoping is the store's, through
//! the caller's `Tenant`, so another organization's policy is simply not found (404) and a
//! policy naming another organization's key is refused as naming a key that does not exist.
//!
//! A change reloads this instance's catalogue (policies travel with it) and tells the others,
//! as a change to a provider or a model does.
//!
//! PATCH replaces the parts it names: an absent part stays, an explicit `null` removes it (a
//! policy with neither part is an opt-out: its scope gets no cache and no guardrails).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_control::policies;
use cortex_domain::audit::AuditRecord;
use cortex_domain::policy::{CacheSpec, GuardrailSpec, PolicyScope, PolicySpec};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_store::policies::PolicyRow;
use serde::Deserialize;
use serde_json::{json, Value};

use super::guard::Caller;
use super::json::{list_body, present, AdminJson};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

/// The scopes on the wire.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Documents the enum; the body is read as text and parsed by the domain.
pub enum ScopeName {
    Organization,
    Model,
    Key,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    /// The organization; absent: the caller's. Admins of the default organization may name
    /// any; everyone else only their own.
    #[serde(default)]
    org_id: Option<String>,
    #[schema(value_type = ScopeName, inline)]
    scope: String,
    /// The model's name or the key's id; for an organization policy its id, or absent.
    #[serde(default)]
    target: Option<String>,
    /// `{"ttl_seconds": 1-604800, "cache_nonzero_temperature": false}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    cache: Option<Value>,
    /// `{"rules": [{"detector": {"type": "secrets"|"pii"|"regex"|"webhook", …}, "action":
    /// "block"|"redact"|"log"}], "scan_responses": true}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    guardrails: Option<Value>,
}

/// A change: an absent part stays; `null` removes it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    cache: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    guardrails: Option<Option<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events, newest first (default 50, at most 500).
    limit: Option<i64>,
}

/// A part of a policy read from its JSON with the domain's strict shape; the message names the
/// part and what serde found wrong (never a Rust type).
fn part<T: serde::de::DeserializeOwned>(name: &str, value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|err| {
        let text = err.to_string();
        let head = text.split(" at line").next().unwrap_or(&text);
        if head.contains("::") || head.len() > 300 {
            ApiError::invalid(format!("`{name}` is invalid"))
        } else {
            ApiError::invalid(format!("`{name}`: {head}"))
        }
    })
}

fn cache_part(value: Option<Value>) -> Result<Option<CacheSpec>, ApiError> {
    value.map(|v| part("cache", v)).transpose()
}

fn guardrails_part(value: Option<Value>) -> Result<Option<GuardrailSpec>, ApiError> {
    value.map(|v| part("guardrails", v)).transpose()
}

pub fn policy_json(policy: &PolicyRow) -> Value {
    // The stored text as it was checked; a spec this version cannot read shows as stored.
    let spec: Value = serde_json::from_str(&policy.spec).unwrap_or(Value::Null);
    json!({
        "id": policy.id,
        "object": "policy",
        "org_id": policy.org_id,
        "scope": policy.scope.as_str(),
        "target": policy.target,
        "cache": spec.get("cache").cloned().unwrap_or(Value::Null),
        "guardrails": spec.get("guardrails").cloned().unwrap_or(Value::Null),
        "version": policy.version,
        "created_at": millis_to_rfc3339(policy.created_at),
        "updated_at": millis_to_rfc3339(policy.updated_at),
    })
}

/// One guardrail event: ids, counts and names from the event's details; the details never held
/// matched text, and only these fields are passed on.
pub fn guardrail_event_json(event: &AuditRecord) -> Value {
    let details: Value = serde_json::from_str(&event.details).unwrap_or(Value::Null);
    let field = |name: &str| details.get(name).cloned().unwrap_or(Value::Null);
    json!({
        "id": event.seq.to_string(),
        "object": "guardrail_event",
        "seq": event.seq,
        "org_id": event.org_id,
        "at": millis_to_rfc3339(event.at_millis),
        "action": event.action.strip_prefix("guardrail.").unwrap_or(&event.action),
        "detector": field("detector"),
        "label": field("label"),
        "count": field("count"),
        "direction": field("direction"),
        "model": field("model"),
        "key_id": event.actor,
        "policy_id": event.target,
        "request_id": field("request_id"),
    })
}

async fn reload(app: &AppState) -> Result<(), ApiError> {
    app.data
        .catalog
        .refresh(&app.store, &app.master_key)
        .await?;
    app.announce(cortex_gateway::invalidation::Topic::Catalog)
        .await;
    Ok(())
}

pub async fn list(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let rows = app.store.list_policies(&caller.tenant()).await?;
    Ok(list_body(rows.iter().map(policy_json)))
}

pub async fn get_one(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = app
        .store
        .get_policy(&caller.tenant(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(policy_json(&row)))
}

pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreatePolicy>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let scope = PolicyScope::parse(&request.scope).ok_or(ApiError::invalid(
        "`scope` must be organization, model or key",
    ))?;
    let spec = PolicySpec {
        cache: cache_part(request.cache)?,
        guardrails: guardrails_part(request.guardrails)?,
    };
    let org_id = request
        .org_id
        .unwrap_or_else(|| caller.principal.user.org_id.clone());
    let row = policies::create_policy(
        &app.store,
        &caller.tenant(),
        &org_id,
        scope,
        request.target.as_deref(),
        &spec,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok((StatusCode::CREATED, Json(policy_json(&row))))
}

pub async fn update(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdatePolicy>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant();
    let current = app
        .store
        .get_policy(&tenant, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut spec = policies::parse_spec(&current)?;
    if let Some(cache) = request.cache {
        spec.cache = cache_part(cache)?;
    }
    if let Some(guardrails) = request.guardrails {
        spec.guardrails = guardrails_part(guardrails)?;
    }
    let row = policies::update_policy(
        &app.store,
        &tenant,
        &id,
        &spec,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok(Json(policy_json(&row)))
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    policies::delete_policy(
        &app.store,
        &caller.tenant(),
        &id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok(Json(
        json!({ "id": id, "object": "policy", "deleted": true }),
    ))
}

pub async fn guardrail_events(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be from 1 to 500"));
    }
    let events = app.store.guardrail_events(&caller.tenant(), limit).await?;
    Ok(list_body(events.iter().map(guardrail_event_json)))
}
