//! Inference engines through the admin API (SPEC §17): definitions over the services in
//! `cortex_control::engines` (strict parsing, deny-lists, models-directory containment, the
//! sealed `hf_token`, audit events), and their live state, logs and dry runs from this
//! process's supervisor. A change is stored first and then reconciled at once
//! (`crate::engines`), so a start returns when the engine is starting and a stop when it has
//! left routing and ended. `hf_token` is write-only: answers say `had_hf_token`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use cortex_control::engines::{self, EngineCommand};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_engines::{EngineId, EngineSpec};
use cortex_gateway::error::ApiError;
use cortex_store::engines::EngineRow;
use serde::Deserialize;
use serde_json::{json, Value};

use super::guard::Caller;
use super::json::{list_body, AdminJson};
use crate::state::AppState;

/// Lines a log request returns when it names no `tail`, and at most.
const DEFAULT_TAIL: usize = 200;
const MAX_TAIL: usize = 2000;

/// An engine as the API shows it: its definition (no secret), what was asked and what it is.
fn engine_json(app: &AppState, row: &EngineRow) -> Value {
    let spec: Value = serde_json::from_str(&row.spec).unwrap_or(Value::Null);
    let status = app
        .engines
        .supervisor()
        .status(&EngineId::new(row.id.clone()));
    let served = spec
        .get("served_model_name")
        .and_then(Value::as_str)
        .unwrap_or(&row.name)
        .to_owned();
    json!({
        "id": row.id,
        "object": "engine",
        "name": row.name,
        "engine": row.engine,
        "runtime": row.runtime,
        "served_model_name": served,
        "spec": spec,
        "had_hf_token": row.hf_token_sealed.is_some(),
        "auto_start": row.auto_start,
        "desired_state": row.desired_state.as_str(),
        "status": status.map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .unwrap_or_else(|| json!({"state": "stopped", "restarts": 0})),
        "created_at": millis_to_rfc3339(row.created_at),
        "updated_at": millis_to_rfc3339(row.updated_at),
    })
}

async fn find(app: &AppState, id: &str) -> Result<EngineRow, ApiError> {
    app.store
        .get_engine(id)
        .await?
        .filter(|row| row.id == id)
        .ok_or(ApiError::NotFound)
}

async fn reconcile(app: &AppState) {
    app.engines.reconcile(&app.store, &app.master_key).await;
}

pub async fn list(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let rows = app.store.list_engines().await?;
    Ok(list_body(rows.iter().map(|row| engine_json(&app, row))))
}

pub async fn get_one(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = find(&app, &id).await?;
    Ok(Json(engine_json(&app, &row)))
}

pub async fn create(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    AdminJson(spec): AdminJson<EngineSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let row = engines::create_engine(
        &app.store,
        &app.master_key,
        app.engines.models_dir(),
        &spec,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reconcile(&app).await;
    Ok((StatusCode::CREATED, Json(engine_json(&app, &row))))
}

pub async fn update(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    AdminJson(patch): AdminJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let row = engines::update_engine(
        &app.store,
        &app.master_key,
        app.engines.models_dir(),
        &id,
        &patch,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reconcile(&app).await;
    Ok(Json(engine_json(&app, &row)))
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    engines::delete_engine(
        &app.store,
        &id,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reconcile(&app).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn command(
    app: AppState,
    caller: Caller,
    id: String,
    command: EngineCommand,
) -> Result<Json<Value>, ApiError> {
    find(&app, &id).await?;
    let row = engines::command_engine(
        &app.store,
        &id,
        command,
        caller.actor(),
        &caller.ip,
        app.now_millis(),
    )
    .await?;
    reconcile(&app).await;
    Ok(Json(engine_json(&app, &row)))
}

pub async fn start(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(app, caller, id, EngineCommand::Start).await
}

pub async fn stop(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(app, caller, id, EngineCommand::Stop).await
}

pub async fn restart(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(app, caller, id, EngineCommand::Restart).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// The last N lines (default 200, at most 2000).
    tail: Option<usize>,
}

pub async fn logs(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    find(&app, &id).await?;
    let tail = query.tail.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL);
    let lines = app
        .engines
        .supervisor()
        .logs(&EngineId::new(id), tail)
        .unwrap_or_default();
    Ok(Json(json!({"object": "engine.logs", "lines": lines})))
}

pub async fn dry_run(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
    AdminJson(spec): AdminJson<EngineSpec>,
) -> Result<Json<Value>, ApiError> {
    engines::check_spec(&spec, app.engines.models_dir())?;
    let preview = app
        .engines
        .supervisor()
        .dry_run(&spec)
        .map_err(|e| engines::spec_error(&e))?;
    let value = serde_json::to_value(&preview)
        .map_err(|e| ApiError::internal("serializing a dry run failed")(e.to_string()))?;
    Ok(Json(value))
}

pub async fn local_models(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let models = app
        .engines
        .supervisor()
        .local_models()
        .await
        .map_err(|e| ApiError::internal("listing local models failed")(e.to_string()))?;
    let values: Vec<Value> = models
        .iter()
        .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
        .collect();
    Ok(list_body(values))
}
