//! Strict validation of `/v1` request bodies. Only the fields Cortex acts on are checked; the
//! rest of the object passes through to the provider byte for byte.
//!
//! The body is not built into a `serde_json::Value` tree: the top-level object is read as
//! (key, raw JSON text) pairs borrowed from the request bytes, the few fields Cortex needs are
//! parsed from their raw text, and the upstream body is written from the same pairs. That
//! keeps numbers, key order and string escapes exactly as the client sent them, and costs no
//! allocation per message. A key that appears twice is refused: the gateway and the provider
//! could otherwise read different `model`s from one body.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::endpoint::{Dialect, Endpoint};

/// Why a body was refused. The message names the field and never echoes the body; the layer
/// that answers the client turns it into its front door's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body is JSON of the wrong shape; the message says which field and why.
    Invalid(Cow<'static, str>),
    /// The body is not JSON at all.
    InvalidJson,
    /// A field with an effect that the provider's dialect cannot carry (SPEC §15: refused, never
    /// dropped). Holds the field's name, as the client wrote it (`tools[0].type`, …).
    Unsupported(Cow<'static, str>),
}

impl BodyError {
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        BodyError::Invalid(message.into())
    }

    pub fn unsupported(field: impl Into<Cow<'static, str>>) -> Self {
        BodyError::Unsupported(field.into())
    }

    /// The error code clients see (`invalid_request`, `invalid_json`, `unsupported_parameter`).
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Invalid(_) => "invalid_request",
            BodyError::InvalidJson => "invalid_json",
            BodyError::Unsupported(_) => "unsupported_parameter",
        }
    }
}

/// The fields Cortex needs from a request, plus the top-level object to forward.
pub struct ProxyRequest<'a> {
    endpoint: Endpoint,
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: String,
    pub stream: bool,
}

const MAX_MODEL_NAME: usize = 256;

/// A key, borrowed from the body unless it had escapes to undo.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The top-level object as (key, raw value) pairs in the order sent.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((Key(key), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<ProxyRequest<'_>, BodyError> {
    let Fields(fields) = serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        // Well-formed JSON that is not an object.
        serde_json::error::Category::Data => {
            BodyError::invalid("the request body must be a JSON object")
        }
        _ => BodyError::InvalidJson,
    })?;
    let mut keys: Vec<&str> = fields.iter().map(|(key, _)| key.as_ref()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(BodyError::invalid(
            "a key appears twice in the request body",
        ));
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, raw)| raw.get())
    };

    let model = match field("model") {
        None => return Err(BodyError::invalid("`model` is required")),
        Some(raw) => match serde_json::from_str::<String>(raw) {
            Ok(model) if !model.is_empty() && model.len() <= MAX_MODEL_NAME => model,
            Ok(_) => return Err(BodyError::invalid("`model` must be 1 to 256 characters")),
            Err(_) => return Err(BodyError::invalid("`model` must be a string")),
        },
    };
    let stream = match field("stream") {
        None | Some("null") => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(BodyError::invalid("`stream` must be a boolean")),
    };
    match endpoint {
        Endpoint::Chat | Endpoint::Messages => match field("messages") {
            Some(raw) if raw.starts_with('[') => {
                let messages: Vec<&RawValue> = serde_json::from_str(raw)
                    .map_err(|_| BodyError::invalid("`messages` must be an array"))?;
                if messages.is_empty() {
                    return Err(BodyError::invalid("`messages` must not be empty"));
                }
                if messages.iter().any(|m| !m.get().starts_with('{')) {
                    return Err(BodyError::invalid(
                        "every entry of `messages` must be an object",
                    ));
                }
            }
            Some(_) => return Err(BodyError::invalid("`messages` must be an array")),
            None => return Err(BodyError::invalid("`messages` is required")),
        },
        Endpoint::Completions => match field("prompt") {
            Some(raw) if raw.starts_with('"') || raw.starts_with('[') => {}
            Some(_) => return Err(BodyError::invalid("`prompt` must be a string or an array")),
            None => return Err(BodyError::invalid("`prompt` is required")),
        },
        Endpoint::Embeddings => {
            match field("input") {
                Some(raw) if raw.starts_with('"') || raw.starts_with('[') => {}
                Some(_) => return Err(BodyError::invalid("`input` must be a string or an array")),
                None => return Err(BodyError::invalid("`input` is required")),
            }
            if stream {
                return Err(BodyError::invalid("embeddings cannot be streamed"));
            }
        }
        // `input` may be left out when a stored prompt or an earlier response supplies it; the
        // translator refuses a request it cannot carry.
        Endpoint::Responses => match field("input") {
            None | Some("null") => {}
            Some(raw) if raw.starts_with('"') || raw.starts_with('[') => {}
            Some(_) => return Err(BodyError::invalid("`input` must be a string or an array")),
        },
    }
    Ok(ProxyRequest {
        endpoint,
        fields,
        model,
        stream,
    })
}

impl ProxyRequest<'_> {
    /// The most output tokens the client allowed, in its door's field (`max_completion_tokens`
    /// or `max_tokens` on chat, `max_tokens` on completions and messages, `max_output_tokens`
    /// on responses); embeddings produce none. `None` when the client set no bound (or one
    /// that is not a whole number, which the provider will refuse).
    pub fn output_cap(&self) -> Option<u64> {
        let names: &[&str] = match self.endpoint {
            Endpoint::Embeddings => return Some(0),
            Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
            Endpoint::Completions | Endpoint::Messages => &["max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
        };
        names.iter().find_map(|name| {
            self.fields
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, raw)| raw.get().parse::<u64>().ok())
        })
    }

    /// The body to send to a provider of the endpoint's own dialect: the client's object with
    /// `model` set to the provider's name for it and, on an OpenAI-style stream,
    /// `stream_options.include_usage` set so the stream is metered (Responses and Messages
    /// streams always report usage). Every other field is copied as it arrived.
    pub fn upstream_body(&self, upstream_model: &str) -> Result<Vec<u8>, BodyError> {
        let meter_stream = self.stream && self.endpoint.dialect() == Dialect::Chat;
        let size: usize = self
            .fields
            .iter()
            .map(|(key, raw)| key.len() + raw.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + upstream_model.len() + 48);
        out.push(b'{');
        let mut asked_for_usage = false;
        for (key, raw) in &self.fields {
            let key = key.as_ref();
            if out.len() > 1 {
                out.push(b',');
            }
            write_string(&mut out, key)?;
            out.push(b':');
            match key {
                "model" => write_string(&mut out, upstream_model)?,
                "stream_options" if meter_stream => {
                    let mut options: Map<String, Value> = serde_json::from_str(raw.get())
                        .map_err(|_| BodyError::invalid("`stream_options` must be an object"))?;
                    options.insert("include_usage".to_owned(), Value::Bool(true));
                    serde_json::to_writer(&mut out, &options)
                        .map_err(|_| BodyError::InvalidJson)?;
                    asked_for_usage = true;
                }
                _ => out.extend_from_slice(raw.get().as_bytes()),
            }
        }
        if meter_stream && !asked_for_usage {
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Ok(out)
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) -> Result<(), BodyError> {
    serde_json::to_writer(out, text).map_err(|_| BodyError::InvalidJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(endpoint: Endpoint, body: &str) -> Option<&'static str> {
        parse(endpoint, body.as_bytes()).err().map(|e| e.code())
    }

    #[test]
    fn the_output_cap_is_read_from_the_doors_field() {
        let cap = |endpoint, body: &str| parse(endpoint, body.as_bytes()).unwrap().output_cap();
        let chat = r#""model":"m","messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(cap(Endpoint::Chat, &format!("{{{chat}}}")), None);
        assert_eq!(
            cap(Endpoint::Chat, &format!("{{{chat},\"max_tokens\":7}}")),
            Some(7)
        );
        assert_eq!(
            cap(
                Endpoint::Chat,
                &format!("{{{chat},\"max_tokens\":7,\"max_completion_tokens\":9}}")
            ),
            Some(9)
        );
        assert_eq!(
            cap(Endpoint::Chat, &format!("{{{chat},\"max_tokens\":\"7\"}}")),
            None
        );
        assert_eq!(
            cap(
                Endpoint::Responses,
                r#"{"model":"m","input":"hi","max_output_tokens":12}"#
            ),
            Some(12)
        );
        assert_eq!(
            cap(Endpoint::Embeddings, r#"{"model":"m","input":"hi"}"#),
            Some(0)
        );
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
        let forwarded: Value = serde_json::from_slice(&ok.upstream_body("up").unwrap()).unwrap();
        assert_eq!(forwarded["x"], 1);
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

    #[test]
    fn a_key_sent_twice_is_refused_even_when_escaped() {
        for body in [
            r#"{"model":"cheap","messages":[{}],"model":"dear"}"#,
            r#"{"model":"cheap","messages":[{}],"mod\u0065l":"dear"}"#,
            r#"{"model":"m","messages":[{}],"stream":false,"stream":true}"#,
        ] {
            assert_eq!(
                code(Endpoint::Chat, body),
                Some("invalid_request"),
                "{body}"
            );
        }
    }

    #[test]
    fn the_upstream_body_changes_only_model_and_stream_options() {
        let body = r#"{"temperature":0.50,"model":"alias","n":12345678901234567890,"messages":[{"role":"user","content":"caf\u00e9"}],"x":{"b":1,"a":2}}"#;
        let request = parse(Endpoint::Chat, body.as_bytes()).unwrap();
        let forwarded = String::from_utf8(request.upstream_body("real-name").unwrap()).unwrap();
        // Numbers, escapes and key order exactly as sent; only the model differs.
        assert_eq!(forwarded, body.replace(r#""alias""#, r#""real-name""#));

        let streamed = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{}],"stream":true}"#,
        )
        .unwrap();
        let forwarded: Value =
            serde_json::from_slice(&streamed.upstream_body("m").unwrap()).unwrap();
        assert_eq!(forwarded["stream_options"]["include_usage"], true);

        let with_options = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{}],"stream":true,"stream_options":{"include_usage":false,"other":1}}"#,
        )
        .unwrap();
        let forwarded: Value =
            serde_json::from_slice(&with_options.upstream_body("m").unwrap()).unwrap();
        assert_eq!(forwarded["stream_options"]["include_usage"], true);
        assert_eq!(forwarded["stream_options"]["other"], 1);

        let bad_options = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{}],"stream":true,"stream_options":"all"}"#,
        )
        .unwrap();
        assert_eq!(
            bad_options.upstream_body("m").err().map(|e| e.code()),
            Some("invalid_request")
        );
    }
}
