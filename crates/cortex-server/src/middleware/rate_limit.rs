//! Per-key request rate limit on `/v1` (GCRA). Runs after authentication, so the identity is
//! the key; requests without a valid key were already answered (and IP-limited) there.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::limits;
use crate::middleware::api_key::ApiPrincipal;
use crate::state::AppState;

pub async fn per_key(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if !app.config.rate_limit.enabled {
        return next.run(request).await;
    }
    let Some(principal) = request.extensions().get::<ApiPrincipal>().cloned() else {
        // Authentication always runs first; without a principal there is nothing to allow.
        return crate::error::ApiError::MissingCredentials.into_response();
    };
    let quota = limits::key_quota(&app, &principal.key);
    match limits::check_rate(&app, &principal.key.id, quota).await {
        Ok(headers) => {
            let mut response = next.run(request).await;
            response.headers_mut().extend(headers);
            response
        }
        Err(error) => error.into_response(),
    }
}
