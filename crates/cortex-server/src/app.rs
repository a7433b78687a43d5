//! The router and its layer stack, in one place. Layers are listed outermost first; each line
//! says why it sits where it does.

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::middleware::{api_key, client_ip, error_shape, rate_limit, request_id};
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
        // The client IP (trusted-proxy aware) for limits, usage and audit.
        .layer(from_fn_with_state(state.clone(), client_ip::assign))
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
        .with_state(state)
}
