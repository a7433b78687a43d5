//! Per-key request rate limit on `/v1` (GCRA). Runs after authentication, so the identity is
//! the key; requests without a valid key were already answered (and IP-limited) there.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::limits::{self, RateHeaders};
use crate::middleware::api_key::ApiPrincipal;
use crate::state::AppState;

/// The per-key check as a router middleware (used by `GET /v1/models`; the proxied POSTs call
/// [`check`] from `v1::fast`).
pub async fn per_key(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<ApiPrincipal>().cloned() else {
        // Authentication always runs first; without a principal there is nothing to allow.
        return crate::error::ApiError::MissingCredentials.into_response();
    };
    match check(&app, &principal).await {
        Ok(headers) => {
            let mut response = next.run(request).await;
            if let Some(headers) = headers {
                response.headers_mut().extend(headers);
            }
            response
        }
        Err(refusal) => refusal,
    }
}

/// The key's request-rate decision: the `RateLimit-*` headers for the answer (none when rate
/// limiting is off), or the 429 to send instead.
pub async fn check(
    app: &AppState,
    principal: &ApiPrincipal,
) -> Result<Option<RateHeaders>, Response> {
    if !app.config.rate_limit.enabled {
        return Ok(None);
    }
    let quota = limits::key_quota(app, &principal.key);
    limits::check_rate(app, &principal.key.id, quota)
        .await
        .map(Some)
        .map_err(IntoResponse::into_response)
}
