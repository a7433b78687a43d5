//! The OpenAI-compatible data plane: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`.

pub mod body;
mod proxy;
mod stream;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::middleware::api_key::ApiPrincipal;
use crate::state::AppState;

pub use proxy::Endpoint;

/// Routes only; authentication and limits are layered on in `app.rs`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/completions", post(proxy::completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(list_models))
}

/// Lists only the models the key may use.
async fn list_models(
    State(app): State<AppState>,
    Extension(principal): Extension<ApiPrincipal>,
) -> Json<Value> {
    let table = app.catalog.current();
    let data: Vec<Value> = table
        .model_names()
        .into_iter()
        .filter(|name| principal.key.allows_model(name))
        .map(|name| json!({ "id": name, "object": "model", "created": 0, "owned_by": "cortex" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
