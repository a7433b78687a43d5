//! The error bodies clients parse. OpenAI's shape today (every front door answers with it);
//! a front door with its own shape (Anthropic's on `/v1/messages`) adds its writer here.

use serde_json::json;

/// OpenAI's error body: `{"error": {"message", "type", "code", "param": null}}`.
pub fn openai_error(message: &str, kind: &str, code: &str) -> serde_json::Value {
    json!({ "error": { "message": message, "type": kind, "code": code, "param": null } })
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
}
