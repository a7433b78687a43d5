//! The router and its layer stack, in one place. Each `.layer` wraps everything above it, so
//! the stack reads innermost first and the last layer is the outermost; each line says why it
//! sits where it does.

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::middleware::{
    api_key, client_ip, csrf, error_shape, rate_limit, request_id, security_headers,
};
use crate::state::AppState;
use crate::{ops, v1};

pub fn router(state: AppState) -> Router {
    let v1 = v1::routes()
        // Innermost: limits need the principal that authentication found.
        .layer(from_fn_with_state(state.clone(), rate_limit::per_key))
        // Every /v1 route needs a valid key; nothing below runs without one.
        .layer(from_fn_with_state(state.clone(), api_key::authenticate))
        // Bodies larger than CORTEX_MAX_BODY_BYTES are refused with 413 before being buffered.
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes));

    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(crate::openapi::serve));

    let admin = crate::admin::routes(state.clone());
    // /mcp exists only when MCP_TOKEN is set; otherwise the 404 fallback answers.
    let mcp = if state.config.mcp_token.is_some() {
        Router::new()
            .route(
                "/mcp",
                axum::routing::post(crate::mcp::handle).fallback(crate::mcp::method_not_allowed),
            )
            .layer(DefaultBodyLimit::max(cortex_config::ADMIN_MAX_BODY_BYTES))
    } else {
        Router::new()
    };

    Router::new()
        .merge(v1)
        .merge(admin)
        .merge(mcp)
        .merge(crate::console::routes())
        .merge(ops)
        .fallback(ops::not_found)
        // Rewrites plain-text rejections into OpenAI's error shape; inside the trace layer so
        // the logged status is the one the client sees.
        .layer(from_fn(error_shape::ensure_json_errors))
        // Cookie-authenticated changes need a trusted Origin; before any handler or admin guard.
        .layer(from_fn_with_state(state.clone(), csrf::protect))
        // The client IP (trusted-proxy aware) for limits, usage and audit.
        .layer(from_fn_with_state(state.clone(), client_ip::assign))
        // CORS answers preflights itself and tags allowed origins; outside auth so a preflight
        // never needs credentials.
        .layer(cors(&state))
        // One access log line per request, inside the request-id layer so it carries the id.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let id = request.headers().get(request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path())
                })
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        // Assigns the request id before anything logs.
        .layer(from_fn(request_id::assign))
        // Credentials are marked sensitive so no layer or log can print them.
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE, header::PROXY_AUTHORIZATION]))
        // Outermost: a panic anywhere becomes a 500, never a dropped connection or a stack trace.
        .layer(CatchPanicLayer::custom(|_| crate::error::ApiError::Internal.into_response_static()))
        // Outermost of all, so every answer — panics' 500s and rejections included — carries
        // the security headers.
        .layer(from_fn_with_state(state.clone(), security_headers::apply))
        .with_state(state)
}

/// CORS from `CORS_ALLOW_ORIGINS` / `CORS_ALLOW_CREDENTIALS`. An empty list allows no
/// cross-origin use at all; `*` is only possible without credentials (config refuses both).
fn cors(state: &AppState) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let settings = &state.config.cors;
    let origin = if settings.allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            settings
                .allow_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            header::RETRY_AFTER,
        ])
        .allow_credentials(settings.allow_credentials)
        .max_age(std::time::Duration::from_secs(600))
}
