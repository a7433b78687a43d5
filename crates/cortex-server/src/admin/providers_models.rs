//! Providers and models through the admin API: the JSON in and out, over the services in
//! `cortex_control::catalog`, which check and store the change with its audit event. Provider
//! secrets are write-only: answers say `has_api_key`, never the key, and no route can read it
//! back. After a change this instance reloads its catalogue and tells the others.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_control::catalog::{self, ModelUpdate, NewModel, NewProvider, ProviderUpdate};
use cortex_domain::routing::{DEFAULT_WEIGHT, MAX_WEIGHT};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::{Permission, RoutingStrategy};
use cortex_store::catalog::{ModelRow, ProviderRow};
use secrecy::SecretString;
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

/// A `weight` that is not a whole number in `u32` (negative, fractional, a string, too large)
/// is refused with the field named, like one out of range, instead of serde's "expected u32".
fn weight_value<E: serde::de::Error>(value: &Value) -> Result<u32, E> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            E::custom(format!(
                "`weight` must be a whole number from 1 to {MAX_WEIGHT}"
            ))
        })
}

/// `weight` in a create body: absent or `null` is the default.
fn weight<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    Option::<Value>::deserialize(de)?
        .filter(|value| !value.is_null())
        .map(|value| weight_value(&value))
        .transpose()
}

/// `weight` in a PATCH body: absent (None), `null` (Some(None)) or a number.
fn weight_change<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Option<u32>>, D::Error> {
    let value = Value::deserialize(de)?;
    if value.is_null() {
        return Ok(Some(None));
    }
    weight_value(&value).map(|weight| Some(Some(weight)))
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
    /// How the provider takes its credential and where its endpoints are; `openai` when absent.
    #[serde(default)]
    #[schema(value_type = Option<KindName>, inline)]
    kind: Option<String>,
    /// `anthropic` and `azure` only: Anthropic's `anthropic-version` header (default
    /// `2023-06-01`) or Azure's `api-version` query value (default `2024-10-21`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    api_version: Option<String>,
    /// `openai` only: the provider serves `/responses` itself, so Responses requests pass
    /// through untranslated.
    #[serde(default)]
    responses_api: bool,
    /// Its share of requests under a model's `weighted` strategy; 1 when absent.
    #[serde(default, deserialize_with = "weight")]
    #[schema(minimum = 1, maximum = 1000)]
    weight: Option<u32>,
    /// The path below `base_url` the active health check asks; `models` when absent.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[A-Za-z0-9_.-][A-Za-z0-9/_.-]*$"
    )]
    health_check_path: Option<String>,
}

/// The provider kinds of SPEC §15, as the document shows them (the service parses the strings).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Documentation only: never built.
enum KindName {
    Openai,
    Anthropic,
    Azure,
}

/// The balancing strategies of SPEC §16, as the document shows them (the service parses the
/// strings).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only: never built.
enum StrategyName {
    RoundRobin,
    Weighted,
    LeastLatency,
    Priority,
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
    /// A new kind. Without `api_version` and `responses_api` in the same body, those go back to
    /// the new kind's defaults.
    #[serde(default)]
    #[schema(value_type = Option<KindName>, inline)]
    kind: Option<String>,
    /// A string sets the version, `null` goes back to the kind's default, absent leaves it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, min_length = 1, max_length = 64)]
    api_version: Option<Option<String>>,
    #[serde(default)]
    responses_api: Option<bool>,
    /// A number sets the weight, `null` goes back to the default (1), absent leaves it.
    #[serde(default, deserialize_with = "weight_change")]
    #[schema(value_type = Option<u32>, nullable, minimum = 1, maximum = 1000)]
    weight: Option<Option<u32>>,
    /// A string sets the path, `null` goes back to the default (`models`), absent leaves it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(
        value_type = Option<String>,
        nullable,
        min_length = 1,
        max_length = 200,
        pattern = "^[A-Za-z0-9_.-][A-Za-z0-9/_.-]*$"
    )]
    health_check_path: Option<Option<String>>,
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
    /// How requests spread over the providers; `round_robin` when absent.
    #[serde(default)]
    #[schema(value_type = Option<StrategyName>, inline)]
    strategy: Option<String>,
    /// The output cap set on a request under a budget that carries none, so the reserved
    /// worst case bounds its cost; 4096 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_output_tokens: Option<u32>,
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
    /// A name sets the strategy, `null` goes back to the default (`round_robin`), absent
    /// leaves it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<StrategyName>, nullable, inline)]
    strategy: Option<Option<String>>,
    /// A number sets the cap, `null` goes back to the default (4096), absent leaves it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(minimum = 1, maximum = 1_000_000, nullable)]
    max_output_tokens: Option<Option<u32>>,
}

pub fn provider_json(p: &ProviderRow) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "base_url": p.base_url,
        "has_api_key": p.api_key_sealed.is_some(),
        "kind": p.kind.as_str(),
        "api_version": p.api_version,
        "responses_api": p.responses_api,
        "weight": p.weight,
        "health_check_path": p.health_check_path,
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
        "strategy": m.strategy.as_str(),
        "max_output_tokens": m.max_output_tokens,
        "source": m.source,
        "created_at": millis_to_rfc3339(m.created_at),
        "updated_at": millis_to_rfc3339(m.updated_at),
    })
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
    let spec = NewProvider {
        name: request.name,
        base_url: request.base_url,
        api_key: request.api_key,
        kind: request.kind,
        api_version: request.api_version,
        responses_api: request.responses_api,
        weight: request.weight,
        health_check_path: request.health_check_path,
    };
    let created = catalog::create_provider(
        &app.store,
        &app.master_key,
        &app.config.upstream_allow,
        &spec,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok((StatusCode::CREATED, Json(provider_json(&created))))
}

pub async fn update_provider(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateProvider>,
) -> Result<Json<Value>, ApiError> {
    let update = ProviderUpdate {
        name: request.name,
        base_url: request.base_url,
        api_key: request.api_key,
        kind: request.kind,
        api_version: request.api_version,
        responses_api: request.responses_api,
        weight: request
            .weight
            .map(|weight| weight.unwrap_or(DEFAULT_WEIGHT)),
        health_check_path: request.health_check_path,
    };
    let updated = catalog::update_provider(
        &app.store,
        &app.master_key,
        &app.config.upstream_allow,
        &id,
        &update,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    let mut answer = provider_json(&updated.row);
    answer["api_key_dropped"] = json!(updated.api_key_dropped);
    Ok(Json(answer))
}

pub async fn delete_provider(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    catalog::delete_provider(
        &app.store,
        &id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}

/// The models the caller's organization may use (its `allowed_models`; every model for admins
/// of the default organization); provider ids and names only for callers who may read
/// providers, which only the default organization's members can (`Reach::Deployment`).
pub async fn list_models(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let models = app.store.list_models(&caller.tenant()).await?;
    if !(caller.principal.can(Permission::ProvidersRead) && caller.principal.in_default_org()) {
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
    let spec = NewModel {
        name: request.name,
        provider: request.provider,
        providers: request.providers,
        upstream_name: request.upstream_name,
        input_price_per_mtok: request.input_price_per_mtok,
        output_price_per_mtok: request.output_price_per_mtok,
        strategy: request.strategy,
        max_output_tokens: request.max_output_tokens,
    };
    let created = catalog::create_model(
        &app.store,
        &spec,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok((
        StatusCode::CREATED,
        Json(model_json(&created.row, &created.providers)),
    ))
}

pub async fn update_model(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(request): AdminJson<UpdateModel>,
) -> Result<Json<Value>, ApiError> {
    let update = ModelUpdate {
        name: request.name,
        provider: request.provider,
        providers: request.providers,
        upstream_name: request.upstream_name,
        input_price_per_mtok: request.input_price_per_mtok,
        output_price_per_mtok: request.output_price_per_mtok,
        strategy: request.strategy.map(|strategy| {
            strategy.unwrap_or_else(|| RoutingStrategy::default().as_str().to_owned())
        }),
        max_output_tokens: request.max_output_tokens,
    };
    let updated = catalog::update_model(
        &app.store,
        &id,
        &update,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok(Json(model_json(&updated.row, &updated.providers)))
}

pub async fn delete_model(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    catalog::delete_model(
        &app.store,
        &id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reload(&app).await?;
    Ok(Json(json!({ "id": id, "deleted": true })))
}
