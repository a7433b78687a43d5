//! Gives every error answer its front door's JSON shape, including the plain-text rejections
//! that axum and tower produce themselves (405, 413, 415, timeouts), so clients always parse one
//! format: Anthropic's on `/v1/messages` (SPEC §15), OpenAI's everywhere else.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use http::{Request, Response};

use crate::middleware::inline::Inline;
use cortex_gateway::error::ErrorMessage;
use cortex_gateway::ApiError;
use cortex_wire::error_shape::{anthropic_error, openai_error as error_body};
use cortex_wire::Endpoint;

/// Rewrites non-JSON error answers into OpenAI's error shape, and every error answer on
/// `/v1/messages` into Anthropic's.
#[derive(Clone, Copy, Default)]
pub struct JsonErrors;

/// The error shape a request's door answers in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Anthropic,
}

impl Inline<Body> for JsonErrors {
    type Carry = Shape;

    fn before<B>(&self, request: &mut Request<B>) -> Result<Shape, Response<Body>> {
        Ok(if request.uri().path() == Endpoint::Messages.path() {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        })
    }

    fn after(shape: Shape, response: Response<Body>) -> Response<Body> {
        match shape {
            Shape::OpenAi => ensure_json_errors(response),
            Shape::Anthropic => anthropic_errors(response),
        }
    }
}

/// An error answer in Anthropic's shape, with its status and headers kept (`Retry-After`,
/// `WWW-Authenticate`, …). The message is the one Cortex wrote ([`ErrorMessage`]); an answer
/// without one (a plain-text rejection from below) gets a fixed message for its status.
fn anthropic_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = match parts.extensions.get::<ErrorMessage>() {
        Some(ErrorMessage(message)) => message.clone(),
        None => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = anthropic_error(status.as_u16(), &message).to_string();
    Response::from_parts(parts, Body::from(body))
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
