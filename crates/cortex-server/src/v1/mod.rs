//! The OpenAI-compatible data plane: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`.

pub mod body;
mod fast;
mod proxy;
mod stream;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tower::ServiceBuilder;

use crate::middleware::api_key::ApiPrincipal;
use crate::middleware::{api_key, rate_limit};
use crate::state::AppState;

pub use fast::FastLayer;
pub use proxy::Endpoint;

/// The `/v1` routes. In the running server the proxied POSTs are answered by [`FastLayer`]
/// before the router sees them; the routes here answer POSTs the same way (for a router used
/// without that layer) and other methods with 405 and `Allow: POST`, after the key check.
pub fn routes(state: &AppState) -> Router<AppState> {
    let models = Router::new().route("/v1/models", get(list_models)).layer(
        ServiceBuilder::new()
            // Every /v1 route needs a valid key; nothing below runs without one.
            .layer(from_fn_with_state(state.clone(), api_key::authenticate))
            // Limits need the principal that authentication found.
            .layer(from_fn_with_state(state.clone(), rate_limit::per_key)),
    );
    Endpoint::ALL.into_iter().fold(models, |router, endpoint| {
        router.route(
            endpoint.path(),
            any(move |State(app): State<AppState>, request: Request| {
                proxied(app, endpoint, request)
            }),
        )
    })
}

async fn proxied(app: AppState, endpoint: Endpoint, request: Request) -> Response {
    if request.method() == Method::POST {
        return fast::serve(app, endpoint, request).await;
    }
    // Any other method: the key check still comes first, as on every /v1 route, so the answer
    // to a caller without a key does not depend on the method.
    match api_key::authenticate_request(&app, request.headers(), request.extensions()).await {
        Ok(_) => (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response(),
        Err(refusal) => refusal,
    }
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
