//! Providers and models. Provider secrets are write-only: answers say `has_api_key`, never the
//! key, and no route can read it back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_crypto::envelope::seal;
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::Permission;
use cortex_store::catalog::{moves_origin, ModelChange, ModelRow, ProviderChange, ProviderRow};
use cortex_store::{new_id, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::guard::Caller;
use super::json::{list_body, AdminJson};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

/// Distinguishes "field absent" (None) from "field null" (Some(None)) in PATCH bodies.
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Including the version prefix, e.g. `http://127.0.0.1:8000/v1`.
    #[schema(format = "uri")]
    base_url: String,
    /// Write-only: answers show `has_api_key`.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 4096)]
    api_key: Option<SecretString>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    name: Option<String>,
    #[serde(default)]
    #[schema(format = "uri")]
    base_url: Option<String>,
    /// A string sets the key, `null` removes it, absent leaves it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    api_key: Option<Option<SecretString>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// The serving provider's id or name; give this or `providers`.
    #[serde(default)]
    provider: Option<String>,
    /// Several providers (ids or names), balanced with failover.
    #[serde(default)]
    #[schema(min_items = 1)]
    providers: Option<Vec<String>>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    upstream_name: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    input_price_per_mtok: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    output_price_per_mtok: Option<f64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    name: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    providers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    upstream_name: Option<Option<String>>,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    input_price_per_mtok: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    output_price_per_mtok: Option<f64>,
}

pub fn provider_json(p: &ProviderRow) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "base_url": p.base_url,
        "has_api_key": p.api_key_sealed.is_some(),
        "source": p.source,
        "created_at": millis_to_rfc3339(p.created_at),
        "updated_at": millis_to_rfc3339(p.updated_at),
    })
}

/// A model for a caller who may not read providers (Developer, Billing): without the
/// provider ids and names, which map the deployment's upstream servers.
fn model_json_without_providers(m: &ModelRow) -> Value {
    let mut model = model_json(m, &[]);
    if let Some(fields) = model.as_object_mut() {
        fields.remove("providers");
        fields.remove("provider_ids");
    }
    model
}

pub fn model_json(m: &ModelRow, providers: &[ProviderRow]) -> Value {
    let names: Vec<&str> = m
        .provider_ids
        .iter()
        .filter_map(|id| {
            providers
                .iter()
                .find(|p| &p.id == id)
                .map(|p| p.name.as_str())
        })
        .collect();
    json!({
        "id": m.id,
        "name": m.name,
        "providers": names,
        "provider_ids": m.provider_ids,
        "upstream_name": m.upstream_name,
        "input_price_per_mtok": m.input_price_per_mtok,
        "output_price_per_mtok": m.output_price_per_mtok,
        "source": m.source,
        "created_at": millis_to_rfc3339(m.created_at),
        "updated_at": millis_to_rfc3339(m.updated_at),
    })
}

fn valid_name(name: &str, max: usize) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > max || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "`name` must be 1 to {max} printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// A well-formed base URL whose host, when it is an address literal, the egress policy allows.
/// (Names are checked on every connect, after resolution; this is the clear early answer.)
fn valid_base_url(app: &AppState, url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    cortex_config::validate_base_url("base_url", url)
        .and_then(|()| cortex_config::check_egress("base_url", url, &app.config.upstream_allow))
        .map_err(|e| ApiError::invalid(format!("`base_url`: {}", e.problem)))?;
    Ok(url.to_owned())
}

fn valid_price(field: &'static str, price: Option<f64>) -> Result<Option<f64>, ApiError> {
    match price {
        Some(p) if !(p.is_finite() && p >= 0.0) => {
            Err(ApiError::invalid(format!("`{field}` must be zero or more")))
        }
        other => Ok(other),
    }
}

fn seal_key(app: &AppState, provider_id: &str, key: &SecretString) -> Result<Vec<u8>, ApiError> {
    if key.expose_secret().is_empty() || key.expose_secret().len() > 4096 {
        return Err(ApiError::invalid("`api_key` must be 1 to 4096 characters"));
    }
    seal(
        &app.master_key,
        key.expose_secret().as_bytes(),
        provider_id.as_bytes(),
    )
    .map_err(ApiError::internal("sealing a provider key failed"))
}

fn conflict(e: StoreError, what: &'static str) -> ApiError {
    match e {
        StoreError::Conflict => ApiError::Conflict(what.into()),
        other => other.into(),
    }
}

/// Applies catalogue changes on this instance at once (others poll within a second).
async fn reload(app: &AppState) -> Result<(), ApiError> {
    app.data
        .catalog
        .refresh(&app.store, &app.master_key)
        .await?;
    app.announce(cortex_gateway::invalidation::Topic::Catalog)
        .await;
    Ok(())
}

pub async fn list_providers(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    Ok(list_body(
        app.store.list_providers().await?.iter().map(provider_json),
    ))
}

pub async fn create_provider(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateProvider>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = new_id();
    let name = valid_name(&request.name, 128)?;
    let base_url = valid_base_url(&app, &request.base_url)?;
    let sealed = request
        .api_key
        .as_ref()
        .map(|k| seal_key(&app, &id, k))
        .transpose()?;
    let now = app.now_millis();
    let row = ProviderRow {
        id: id.clone(),
        name,
        base_url,
        api_key_sealed: sealed,
        source: "api".into(),
        created_at: now,
        updated_at: now,
    };
    let event = NewAuditEvent::new(caller.actor(), "provider.create", &id)
        .with_details(&json!({ "name": row.name, "base_url": row.base_url, "has_api_key": row.api_key_sealed.is_some() }))
        .with_ip(caller.ip.clone());
    let created = app
        .store
        .create_provider(&row, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "a provider with that name exists"))?;
    reload(&app).await?;
    Ok((StatusCode::CREATED, Json(provider_json(&created))))
}

pub async fn update_provider(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateProvider>,
) -> Result<Json<Value>, ApiError> {
    let current = app
        .store
        .get_provider(&id)
        .await?
        .filter(|p| p.id == id)
        .ok_or(ApiError::NotFound)?;
    let base_url = request
        .base_url
        .as_deref()
        .map(|url| valid_base_url(&app, url))
        .transpose()?;
    // The stored key was given for the provider's origin: re-pointed elsewhere without a new
    // key, the provider loses it (the store enforces the same in its transaction), so the new
    // host never receives the old secret.
    let moves = base_url
        .as_deref()
        .is_some_and(|url| moves_origin(&current.base_url, url));
    let api_key_dropped = moves && request.api_key.is_none() && current.api_key_sealed.is_some();
    let change = ProviderChange {
        name: request
            .name
            .as_deref()
            .map(|n| valid_name(n, 128))
            .transpose()?,
        base_url,
        api_key_sealed: match &request.api_key {
            None if api_key_dropped => Some(None),
            None => None,
            Some(None) => Some(None),
            Some(Some(key)) => Some(Some(seal_key(&app, &current.id, key)?)),
        },
        source: None,
    };
    let event = NewAuditEvent::new(caller.actor(), "provider.update", &id)
        .with_details(&json!({
            "name": change.name,
            "base_url": change.base_url,
            "api_key_changed": change.api_key_sealed.is_some(),
            "api_key_dropped": api_key_dropped,
        }))
        .with_ip(caller.ip.clone());
    let updated = app
        .store
        .update_provider(&id, change, Some(&event), app.now_millis())
        .await
        .map_err(|e| conflict(e, "a provider with that name exists"))?;
    reload(&app).await?;
    let mut answer = provider_json(&updated);
    answer["api_key_dropped"] = json!(api_key_dropped);
    Ok(Json(answer))
}

pub async fn delete_provider(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let event =
        NewAuditEvent::new(caller.actor(), "provider.delete", &id).with_ip(caller.ip.clone());
    app.store
        .delete_provider(&id, Some(&event), app.now_millis())
        .await
        .map_err(|e| conflict(e, "models still use this provider"))?;
    reload(&app).await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}

/// Resolves `provider` / `providers` (ids or names) to provider ids, in order.
fn resolve_providers(
    all: &[ProviderRow],
    provider: Option<&String>,
    providers: Option<&Vec<String>>,
) -> Result<Option<Vec<String>>, ApiError> {
    let wanted: Vec<&String> = provider
        .into_iter()
        .chain(providers.into_iter().flatten())
        .collect();
    if provider.is_none() && providers.is_none() {
        return Ok(None);
    }
    if wanted.is_empty() {
        return Err(ApiError::invalid(
            "give `provider` or a non-empty `providers`",
        ));
    }
    let mut ids: Vec<String> = Vec::new();
    for name in wanted {
        let found = all
            .iter()
            .find(|p| &p.id == name || &p.name == name)
            .ok_or(ApiError::invalid("`provider` names an unknown provider"))?;
        if !ids.contains(&found.id) {
            ids.push(found.id.clone());
        }
    }
    Ok(Some(ids))
}

/// Every model; provider ids and names only for callers who may read providers.
pub async fn list_models(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let models = app.store.list_models().await?;
    if !caller.principal.can(Permission::ProvidersRead) {
        return Ok(list_body(models.iter().map(model_json_without_providers)));
    }
    let providers = app.store.list_providers().await?;
    Ok(list_body(models.iter().map(|m| model_json(m, &providers))))
}

pub async fn create_model(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(request): AdminJson<CreateModel>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let providers = app.store.list_providers().await?;
    let provider_ids = resolve_providers(
        &providers,
        request.provider.as_ref(),
        request.providers.as_ref(),
    )?
    .ok_or(ApiError::invalid("give `provider` or `providers`"))?;
    let now = app.now_millis();
    let row = ModelRow {
        id: new_id(),
        name: valid_name(&request.name, 256)?,
        upstream_name: request
            .upstream_name
            .map(|u| valid_name(&u, 256))
            .transpose()?,
        input_price_per_mtok: valid_price("input_price_per_mtok", request.input_price_per_mtok)?
            .unwrap_or(0.0),
        output_price_per_mtok: valid_price("output_price_per_mtok", request.output_price_per_mtok)?
            .unwrap_or(0.0),
        source: "api".into(),
        provider_ids,
        created_at: now,
        updated_at: now,
    };
    let event = NewAuditEvent::new(caller.actor(), "model.create", &row.id)
        .with_details(&json!({ "name": row.name, "providers": row.provider_ids }))
        .with_ip(caller.ip.clone());
    let created = app
        .store
        .create_model(&row, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "a model with that name exists"))?;
    reload(&app).await?;
    Ok((StatusCode::CREATED, Json(model_json(&created, &providers))))
}

pub async fn update_model(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateModel>,
) -> Result<Json<Value>, ApiError> {
    let providers = app.store.list_providers().await?;
    let change = ModelChange {
        name: request
            .name
            .as_deref()
            .map(|n| valid_name(n, 256))
            .transpose()?,
        upstream_name: request
            .upstream_name
            .map(|u| u.map(|u| valid_name(&u, 256)).transpose())
            .transpose()?,
        input_price_per_mtok: valid_price("input_price_per_mtok", request.input_price_per_mtok)?,
        output_price_per_mtok: valid_price("output_price_per_mtok", request.output_price_per_mtok)?,
        provider_ids: resolve_providers(
            &providers,
            request.provider.as_ref(),
            request.providers.as_ref(),
        )?,
    };
    let event = NewAuditEvent::new(caller.actor(), "model.update", &id)
        .with_details(&json!({ "name": change.name, "providers": change.provider_ids }))
        .with_ip(caller.ip.clone());
    let updated = app
        .store
        .update_model(&id, change, Some(&event), app.now_millis())
        .await
        .map_err(|e| conflict(e, "a model with that name exists"))?;
    reload(&app).await?;
    Ok(Json(model_json(&updated, &providers)))
}

pub async fn delete_model(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let event = NewAuditEvent::new(caller.actor(), "model.delete", &id).with_ip(caller.ip.clone());
    app.store
        .delete_model(&id, Some(&event), app.now_millis())
        .await?;
    reload(&app).await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}
