//! API keys through the admin API. Developers see and change only their own keys; another
//! user's key answers 404 so its existence is not revealed. Own-key limits of a caller who may
//! not manage all keys stay within the deployment's defaults, and a rotated secret goes only
//! to the key's owner or an Admin (an Operator may revoke another's key, not take it over).
//! "All keys" means all of the caller's organization: every query goes through the store with
//! the caller's `Tenant`, so another organization's key is not found (SPEC §18).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_domain::time_fmt::{millis_to_rfc3339, rfc3339_to_millis};
use cortex_domain::{KeyLimits, Permission, Scope};
use cortex_store::keys::ApiKeyRow;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::guard::Caller;
use super::json::{list_body, AdminJson};
use crate::state::AppState;
use cortex_control::keys::{self, KeySpec};
use cortex_gateway::error::ApiError;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    #[schema(value_type = Vec<ScopeName>, inline, min_items = 1)]
    scopes: Vec<String>,
    /// Model names the key may use; absent means every model.
    #[serde(default)]
    #[schema(max_items = 1000)]
    models: Option<Vec<String>>,
    /// RFC 3339, in the future.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<KeyLimitsDocument>, inline)]
    limits: Option<KeyLimits>,
    /// A team of the caller's organization the caller is a member of: the key's spend and
    /// usage count for the team too.
    #[serde(default)]
    team_id: Option<String>,
    /// CIDRs (or single addresses) the key may be used from; the client address is the TCP
    /// peer or what a trusted proxy vouched for. Left out: anywhere.
    #[serde(default)]
    #[schema(max_items = 100, example = json!(["10.0.0.0/8", "2001:db8::/32"]))]
    allowed_ips: Option<Vec<String>>,
}

/// The scopes of SPEC §4, as the document shows them (the handler parses the strings).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Documentation only: never built.
enum ScopeName {
    Chat,
    Completions,
    Embeddings,
}

/// `KeyLimits` as the document shows it, with the bounds `KeyLimits::validate` enforces (the
/// domain crate knows nothing of OpenAPI). A caller without `keys:write_all` is further held to
/// the deployment's defaults (`RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`,
/// `MAX_CONCURRENT_STREAMS_PER_ID`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documentation only: never built.
struct KeyLimitsDocument {
    #[schema(minimum = 0.001, maximum = 10_000_000.0)]
    requests_per_second: Option<f64>,
    #[schema(minimum = 1, maximum = 10_000_000)]
    burst: Option<u32>,
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_concurrent_streams: Option<u32>,
    #[schema(maximum = 1_000_000_000_000_i64)]
    tokens_per_minute: Option<u64>,
    #[schema(minimum = 0.0, maximum = 1_000_000_000.0)]
    budget_usd: Option<f64>,
    /// What `budget_usd` is counted over, in UTC: `daily`, `monthly` or `total` (the default).
    #[schema(pattern = "^(daily|monthly|total)$")]
    budget_period: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    #[serde(default)]
    grace_period_seconds: u64,
}

pub fn key_json(key: &ApiKeyRow, now: i64) -> Value {
    let status = if key.revoked_at.is_some() {
        "revoked"
    } else if key.owner_disabled {
        "owner_disabled"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "prefix": format!("ctx_{}_", key.public_id),
        "owner": key.owner_user_id,
        "org_id": key.org_id,
        "team_id": key.team_id,
        "allowed_ips": key.allowed_ips,
        "scopes": key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "models": key.models,
        "limits": key.limits,
        "status": status,
        "expires_at": key.expires_at.map(millis_to_rfc3339),
        "revoked_at": key.revoked_at.map(millis_to_rfc3339),
        "rotated_to": key.rotated_to,
        "created_at": millis_to_rfc3339(key.created_at),
        "last_used_at": key.last_used_at.map(millis_to_rfc3339),
    })
}

/// Loads a key the caller may see (read) or change (write); otherwise 404.
async fn visible_key(
    app: &AppState,
    caller: &Caller,
    id: &str,
    write: bool,
) -> Result<ApiKeyRow, ApiError> {
    let scope = if write {
        caller.owner_scope(Permission::KeysWriteAll, Permission::KeysWriteOwn)?
    } else {
        caller.owner_scope(Permission::KeysReadAll, Permission::KeysReadOwn)?
    };
    let key = app
        .store
        .get_api_key(&caller.tenant(), id)
        .await?
        .ok_or(ApiError::NotFound)?;
    match scope {
        Some(owner) if owner != key.owner_user_id => Err(ApiError::NotFound),
        _ => Ok(key),
    }
}

pub async fn list(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let owner = caller.owner_scope(Permission::KeysReadAll, Permission::KeysReadOwn)?;
    let now = app.now_millis();
    let keys = app
        .store
        .list_api_keys(&caller.tenant(), owner.as_deref())
        .await?;
    Ok(list_body(keys.iter().map(|k| key_json(k, now))))
}

pub async fn get_one(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = visible_key(&app, &caller, &id, false).await?;
    Ok(Json(key_json(&key, app.now_millis())))
}

pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut scopes = Vec::new();
    for name in &request.scopes {
        let scope = Scope::parse(name).ok_or(ApiError::invalid(
            "`scopes` may contain chat, completions, embeddings",
        ))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let expires_at = request
        .expires_at
        .as_deref()
        .map(|t| {
            rfc3339_to_millis(t).ok_or(ApiError::invalid("`expires_at` must be an RFC 3339 time"))
        })
        .transpose()?;
    let spec = KeySpec {
        name: request.name,
        owner_user_id: caller.principal.user.id.clone(),
        scopes,
        models: request.models,
        expires_at,
        limits: request.limits.unwrap_or_default(),
        // The key belongs to its owner's organization.
        org_id: caller.principal.user.org_id.clone(),
        team_id: request.team_id,
        allowed_ips: request.allowed_ips,
    };
    let now = app.now_millis();
    // Sanity bounds first (400 for everyone), then the ceiling for those who may not manage
    // all keys (403).
    spec.validate(now)?;
    if !caller.principal.can(Permission::KeysWriteAll) {
        keys::check_limit_ceiling(&app.config, &spec.limits)?;
    }
    let issued = keys::create(
        &app.store,
        &app.data.keys,
        &spec,
        caller.actor(),
        &caller.ip,
        now,
    )
    .await?;
    app.announce(cortex_gateway::invalidation::Topic::Keys)
        .await;
    let mut body = key_json(&issued.row, now);
    body["key"] = Value::String(issued.key.expose_secret().to_owned());
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn revoke(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = visible_key(&app, &caller, &id, true).await?;
    let tenant = caller.tenant();
    if key.revoked_at.is_none() {
        keys::revoke(
            &app.store,
            &app.data.keys,
            &tenant,
            &key.id,
            caller.actor(),
            &caller.ip,
            app.now_millis(),
        )
        .await?;
        app.announce(cortex_gateway::invalidation::Topic::Keys)
            .await;
    }
    let key = app
        .store
        .get_api_key(&tenant, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(key_json(&key, app.now_millis())))
}

pub async fn rotate(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let old = visible_key(&app, &caller, &id, true).await?;
    // The new secret acts as the key's owner: only the owner or an Admin may receive it.
    if old.owner_user_id != caller.principal.user.id
        && !caller.principal.can(Permission::KeysRotateAll)
    {
        return Err(ApiError::Forbidden);
    }
    // The body is optional: no body means no grace period.
    let request: RotateKey = if body.is_empty() {
        RotateKey::default()
    } else {
        super::json::parse(&body)?
    };
    let grace = request.grace_period_seconds;
    let now = app.now_millis();
    let issued = keys::rotate(
        &app.store,
        &app.data.keys,
        &old,
        grace,
        caller.actor(),
        &caller.ip,
        now,
    )
    .await?;
    app.announce(cortex_gateway::invalidation::Topic::Keys)
        .await;
    let mut body = key_json(&issued.row, now);
    body["key"] = Value::String(issued.key.expose_secret().to_owned());
    body["replaces"] = Value::String(old.id);
    Ok((StatusCode::CREATED, Json(body)))
}
