//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, and the 404 fallback.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_crypto::token::ct_eq;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::error::ApiError;
use crate::middleware::api_key::bearer_token;
use crate::state::AppState;

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

/// Prometheus metrics. With `CORTEX_METRICS_TOKEN` set, the bearer token must match; without
/// it, only loopback peers are answered (a local agent), everyone else gets 404.
pub async fn metrics(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match &app.config.metrics_token {
        Some(token) => {
            let presented = bearer_token(&headers).unwrap_or("");
            if !ct_eq(presented.as_bytes(), token.expose_secret().as_bytes()) {
                return ApiError::MissingCredentials.into_response();
            }
        }
        None if !peer.ip().is_loopback() => return ApiError::NotFound.into_response(),
        None => {}
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

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
