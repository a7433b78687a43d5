//! Strict JSON bodies for the admin API: `Content-Type: application/json` required, unknown
//! fields refused (every request type derives `deny_unknown_fields`), and every failure is a 400
//! in OpenAI's shape whose message names the problem without internals (never 422). Lists go
//! out in one shape too ([`list_body`]).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use cortex_gateway::error::ApiError;

pub struct AdminJson<T>(pub T);

impl<T, S> FromRequest<S> for AdminJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::invalid(
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else if cortex_gateway::request_meta::is_body_timeout(&rejection) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::InvalidJson
                }
            })?;
        parse(&bytes).map(AdminJson)
    }
}

/// Parses with a message that names the field and the problem, not Rust types.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidJson,
            Category::Data => ApiError::invalid(sanitize(&err.to_string())),
        }
    })
}

/// serde's data errors read like "unknown field `x`, expected one of `a`, `b` at line 1
/// column 9" or "invalid type: integer `5`, expected a string"; keep the part before " at line",
/// and drop anything that could name a Rust type path.
fn sanitize(message: &str) -> String {
    let head = message.split(" at line").next().unwrap_or(message);
    if head.contains("::") || head.len() > 300 {
        return "the request body has an invalid field".to_owned();
    }
    format!("invalid request body: {head}")
}

/// `{"object":"list","data":[…]}`.
pub fn list_body<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
) -> axum::Json<serde_json::Value> {
    let data: Vec<T> = items.into_iter().collect();
    axum::Json(serde_json::json!({ "object": "list", "data": data }))
}

/// For a PATCH field that may be cleared: absent is `None` (leave it), `null` is `Some(None)`
/// (clear it), a value is `Some(Some(value))`. Use with `#[serde(default, deserialize_with =
/// "present")]`.
pub fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
    }

    #[test]
    fn errors_are_sanitized_400s() {
        let unknown = parse::<Body>(br#"{"name":"a","admin":true}"#).unwrap_err();
        assert_eq!(unknown.status(), 400);
        assert!(format!("{unknown:?}").contains("unknown field `admin`"));
        assert_eq!(parse::<Body>(b"{").unwrap_err().code(), "invalid_json");
        let wrong = parse::<Body>(br#"{"name":5}"#).unwrap_err();
        assert_eq!(wrong.code(), "invalid_request");
        assert!(parse::<Body>(br#"{"name":"ok"}"#).is_ok());
    }
}
