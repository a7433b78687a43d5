//! The error bodies clients parse: OpenAI's on every door but `/v1/messages`, which answers in
//! Anthropic's shape with the same status codes (SPEC §15).

use serde_json::json;

/// OpenAI's error body: `{"error": {"message", "type", "code", "param": null}}`.
pub fn openai_error(message: &str, kind: &str, code: &str) -> serde_json::Value {
    json!({ "error": { "message": message, "type": kind, "code": code, "param": null } })
}

/// Anthropic's error body: `{"type":"error","error":{"type","message"}}`, its `type` chosen
/// from the status as Anthropic's API does, so its SDKs raise the matching exception.
pub fn anthropic_error(status: u16, message: &str) -> serde_json::Value {
    json!({ "type": "error", "error": { "type": anthropic_error_type(status), "message": message } })
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openai_shape_has_every_field_clients_read() {
        let body = openai_error(
            "the API key is not valid",
            "authentication_error",
            "invalid_api_key",
        );
        assert_eq!(body["error"]["message"], "the API key is not valid");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(body["error"]["param"].is_null());
    }

    #[test]
    fn the_anthropic_shape_types_errors_by_status() {
        let body = anthropic_error(401, "the API key is not valid");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["message"], "the API key is not valid");
        assert_eq!(anthropic_error_type(400), "invalid_request_error");
        assert_eq!(anthropic_error_type(429), "rate_limit_error");
        assert_eq!(anthropic_error_type(502), "api_error");
        assert_eq!(anthropic_error_type(504), "api_error");
    }
}
