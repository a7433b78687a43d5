//! Strict validation of `/v1` request bodies. Only the fields Cortex acts on are checked; the
//! rest of the object passes through to the provider untouched.

use serde_json::{Map, Value};

use crate::error::ApiError;

use super::proxy::Endpoint;

/// The fields Cortex needs from a request, plus the object to forward.
pub struct ProxyRequest {
    pub object: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

const MAX_MODEL_NAME: usize = 256;

pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<ProxyRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| ApiError::InvalidJson)?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() && model.len() <= MAX_MODEL_NAME => {
            model.clone()
        }
        Some(Value::String(_)) => {
            return Err(ApiError::invalid("`model` must be 1 to 256 characters"))
        }
        Some(_) => return Err(ApiError::invalid("`model` must be a string")),
        None => return Err(ApiError::invalid("`model` is required")),
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(ApiError::invalid("`stream` must be a boolean")),
    };
    match endpoint {
        Endpoint::Chat => match object.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => {
                if messages.iter().any(|m| !m.is_object()) {
                    return Err(ApiError::invalid(
                        "every entry of `messages` must be an object",
                    ));
                }
            }
            Some(Value::Array(_)) => return Err(ApiError::invalid("`messages` must not be empty")),
            Some(_) => return Err(ApiError::invalid("`messages` must be an array")),
            None => return Err(ApiError::invalid("`messages` is required")),
        },
        Endpoint::Completions => match object.get("prompt") {
            Some(Value::String(_) | Value::Array(_)) => {}
            Some(_) => return Err(ApiError::invalid("`prompt` must be a string or an array")),
            None => return Err(ApiError::invalid("`prompt` is required")),
        },
        Endpoint::Embeddings => {
            match object.get("input") {
                Some(Value::String(_) | Value::Array(_)) => {}
                Some(_) => return Err(ApiError::invalid("`input` must be a string or an array")),
                None => return Err(ApiError::invalid("`input` is required")),
            }
            if stream {
                return Err(ApiError::invalid("embeddings cannot be streamed"));
            }
        }
    }
    Ok(ProxyRequest {
        object,
        model,
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(endpoint: Endpoint, body: &str) -> Option<&'static str> {
        parse(endpoint, body.as_bytes()).err().map(|e| e.code())
    }

    #[test]
    fn accepts_valid_bodies() {
        let ok = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"x":1}"#,
        )
        .unwrap();
        assert_eq!(ok.model, "m");
        assert!(ok.stream);
        assert_eq!(ok.object["x"], 1);
        assert!(parse(Endpoint::Completions, br#"{"model":"m","prompt":"hi"}"#).is_ok());
        assert!(parse(Endpoint::Embeddings, br#"{"model":"m","input":["a","b"]}"#).is_ok());
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert_eq!(code(Endpoint::Chat, "not json"), Some("invalid_json"));
        assert_eq!(code(Endpoint::Chat, "[1,2]"), Some("invalid_request"));
        assert_eq!(
            code(Endpoint::Chat, r#"{"messages":[{}]}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(Endpoint::Chat, r#"{"model":5,"messages":[{}]}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(Endpoint::Chat, r#"{"model":"m","messages":[]}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(Endpoint::Chat, r#"{"model":"m","messages":["x"]}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(
                Endpoint::Chat,
                r#"{"model":"m","messages":[{}],"stream":"yes"}"#
            ),
            Some("invalid_request")
        );
        assert_eq!(
            code(Endpoint::Completions, r#"{"model":"m"}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(Endpoint::Embeddings, r#"{"model":"m","input":1}"#),
            Some("invalid_request")
        );
        assert_eq!(
            code(
                Endpoint::Embeddings,
                r#"{"model":"m","input":"a","stream":true}"#
            ),
            Some("invalid_request")
        );
        let long = format!(r#"{{"model":"{}","messages":[{{}}]}}"#, "m".repeat(300));
        assert_eq!(code(Endpoint::Chat, &long), Some("invalid_request"));
    }
}
