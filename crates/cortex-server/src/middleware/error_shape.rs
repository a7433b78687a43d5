//! Gives every error answer OpenAI's JSON shape, including the plain-text rejections that axum
//! and tower produce themselves (405, 413, 415, timeouts), so clients always parse one format.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use http::{Request, Response};

use crate::middleware::inline::Inline;
use cortex_gateway::ApiError;
use cortex_wire::error_shape::openai_error as error_body;

/// Rewrites non-JSON error answers into OpenAI's error shape.
#[derive(Clone, Copy, Default)]
pub struct JsonErrors;

impl Inline<Body> for JsonErrors {
    type Carry = ();

    fn before<B>(&self, _request: &mut Request<B>) -> Result<(), Response<Body>> {
        Ok(())
    }

    fn after((): (), response: Response<Body>) -> Response<Body> {
        ensure_json_errors(response)
    }
}

fn ensure_json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (kind, code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => return ApiError::PayloadTooLarge.into_response(),
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid_request_error",
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "invalid_request_error",
            "request_timeout",
            "the request took too long",
        ),
        StatusCode::NOT_FOUND => ("invalid_request_error", "not_found", "not found"),
        s if s.is_client_error() => (
            "invalid_request_error",
            "invalid_request",
            "the request is invalid",
        ),
        _ => ("server_error", "internal_error", "internal error"),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = error_body(message, kind, code).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}
