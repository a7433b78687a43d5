//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, and the 404 fallback.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_crypto::token::ct_eq;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::state::AppState;
use cortex_gateway::authenticate::bearer_token;
use cortex_gateway::error::ApiError;

/// Liveness: the process answers. No dependency is checked, so a database outage does not get
/// every instance restarted.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers.
pub async fn readyz(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready", "database": app.store.backend().name() }))
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "database": "unreachable" })),
        )
            .into_response(),
    }
}

/// Prometheus metrics on the main listener: only with `CORTEX_METRICS_TOKEN`, whose bearer token
/// must match. Without a token they are 404 here for everyone, loopback peers included: behind a
/// reverse proxy on the same host every client is a loopback peer, and a DNS-rebound page in a
/// local browser is one too. Tokenless metrics live on `CORTEX_METRICS_LISTEN` alone.
pub async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if app.config.metrics_token.is_none() {
        return ApiError::NotFound.into_response();
    }
    render_metrics(&app, &headers)
}

/// The exposition, after the token check when a token is set.
fn render_metrics(app: &AppState, headers: &HeaderMap) -> Response {
    if let Some(token) = &app.config.metrics_token {
        let presented = bearer_token(headers).unwrap_or("");
        if !ct_eq(presented.as_bytes(), token.expose_secret().as_bytes()) {
            return ApiError::MissingCredentials.into_response();
        }
    }
    let Some(handle) = &app.prometheus else {
        return ApiError::Unavailable.into_response();
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// What `CORTEX_METRICS_LISTEN` serves: `/metrics` (with the token check when a token is set)
/// and nothing else. The address is the operator's choice of who may scrape.
pub fn metrics_router(app: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |State(app): State<AppState>, headers: HeaderMap| async move {
                    render_metrics(&app, &headers)
                },
            ),
        )
        .fallback(not_found)
        .with_state(app)
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
