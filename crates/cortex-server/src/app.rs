//! The router and its layer stack, in one place.
//!
//! The edge stack (security headers … JSON errors) wraps the whole router once and reads
//! outermost first; each line says why it sits where it does. It sits around the router as one
//! service rather than on it with `Router::layer`, which wraps every route separately and clones
//! that route's whole stack on every request. Innermost, the data plane's paths leave for the
//! gateway's pipeline (`cortex_gateway::pipeline`) before the router, which has no `/v1` routes;
//! the only per-route layer is the MCP body limit.

use std::convert::Infallible;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Request};
use axum::response::Response;
use axum::routing::get;
use axum::BoxError;
use axum::Router;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::middleware::inline::InlineLayer;
use crate::middleware::{allowed_host, client_ip, csrf, error_shape, request_id, security_headers};
use crate::ops;
use crate::state::AppState;
use cortex_gateway::pipeline::PipelineLayer;

/// The whole application as one `Router` (for callers that want axum's type, such as MCP's
/// in-process calls). The serve loop takes [`edge`] itself.
pub fn router(state: &AppState) -> Router {
    Router::new().fallback_service(edge(state))
}

/// The edge stack around the router: what every connection serves. Cloned once per connection
/// by the serve loop and called in place after that; wrapped in a `Router` it would be cloned
/// (boxed) and dispatched through a fallback route on every request.
pub fn edge(
    state: &AppState,
) -> impl Service<
    Request<Body>,
    Response = Response<impl HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
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

    let routes = Router::new()
        .merge(admin)
        .merge(mcp)
        .merge(crate::console::routes())
        .merge(ops)
        .fallback(ops::not_found)
        .with_state(state.clone());

    let edge = ServiceBuilder::new()
        // Outermost of all, so every answer — panics' 500s and rejections included — carries
        // the security headers.
        .layer(InlineLayer::new(security_headers::SecurityHeaders::new(&state.config)))
        // A panic anywhere becomes a 500, never a dropped connection or a stack trace.
        .layer(CatchPanicLayer::custom(|_| axum::response::IntoResponse::into_response(cortex_gateway::error::ApiError::Internal)))
        // Credentials are marked sensitive so no layer or log can print them.
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE, header::PROXY_AUTHORIZATION, header::HeaderName::from_static(cortex_gateway::authenticate::X_API_KEY)]))
        // Assigns the request id before anything logs.
        .layer(InlineLayer::new(request_id::AssignRequestId))
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
        // Every error answer in its door's shape (plain-text rejections into OpenAI's; all of
        // /v1/messages' into Anthropic's); inside the trace layer so the logged status is the
        // one the client sees, outside every layer that can refuse a request.
        .layer(InlineLayer::new(error_shape::JsonErrors))
        // Only the host names the gateway is reached by (CORTEX_ALLOWED_HOSTS; DNS rebinding),
        // before anything answers, CORS preflights included.
        .layer(InlineLayer::new(allowed_host::AllowedHosts::new(state.config.clone())))
        // CORS answers preflights itself and tags allowed origins; outside auth so a preflight
        // never needs credentials.
        .layer(cors(state))
        // The client IP (trusted-proxy aware) for limits, usage and audit.
        .layer(InlineLayer::new(client_ip::AssignClientIp::new(state.config.clone())))
        // Cookie-authenticated changes need a trusted Origin; before any handler or admin guard.
        .layer(InlineLayer::new(csrf::CsrfProtect::new(state.config.clone())))
        // Every /v1 path is the data plane's: its pipeline answers it, stage by stage, and the
        // router never sees it.
        .layer(PipelineLayer::new(state.data.clone()))
        .service(routes);
    edge
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
