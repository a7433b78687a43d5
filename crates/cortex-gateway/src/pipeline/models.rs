//! `GET /v1/models`: the models the key may use, from the in-memory catalogue.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::authenticate::ApiPrincipal;
use crate::DataPlane;

/// Lists only the models the key may use.
pub(super) fn list(plane: &DataPlane, principal: &ApiPrincipal) -> Response {
    let table = plane.catalog.current();
    let data: Vec<Value> = table
        .model_names()
        .into_iter()
        .filter(|name| principal.key.allows_model(name))
        .map(|name| json!({ "id": name, "object": "model", "created": 0, "owned_by": "cortex" }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}
