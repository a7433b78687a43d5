//! What makes two requests "the same" for the cache, and whether a request may use it at all.
//!
//! The key is SHA-256 over a length-prefixed list: a version tag, the organization's id, the
//! model, the endpoint's name, a salt, and the canonical body. Each part is prefixed with its
//! length, so no two different lists hash the same bytes (`"ab" + "c"` is not `"a" + "bc"`).
//! The organization is in the key, so tenants never share an entry; the salt is what the
//! gateway passes for the effective guardrail policy (its id and version), so answers made under
//! one policy are never served under another.
//!
//! The canonical body is the request's JSON with object keys sorted (by their bytes) at every
//! depth and no whitespace: key order and formatting do not change an answer, so they do not
//! change the key. These top-level fields are left out, because they do not change the answer
//! either (they label, route or bill the request on the provider's side):
//!
//! `user`, `stream_options`, `metadata`, `store`, `prompt_cache_key`, `safety_identifier`,
//! `service_tier`.
//!
//! `stream` stays in: a streamed answer is replayed as SSE and a whole one as JSON, so the two
//! are different entries. Numbers are kept as they were written (serde_json's own form): `1`
//! and `1.0` are different keys. That is the conservative choice — at worst two entries for one
//! answer, never one answer for two questions.

use std::fmt;

use axum::http::{header, HeaderMap};
use cortex_domain::policy::CacheSpec;
use cortex_wire::Endpoint;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Changes whenever the key's recipe does, so old entries are simply never found again.
const VERSION: &[u8] = b"cortex-cache-key/1";

/// Top-level body fields that do not change the answer (see the module's documentation).
pub const EXCLUDED_FIELDS: [&str; 7] = [
    "user",
    "stream_options",
    "metadata",
    "store",
    "prompt_cache_key",
    "safety_identifier",
    "service_tier",
];

/// One request's place in the cache: its organization (kept apart so a purge can find an
/// organization's entries) and the digest of everything else.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    org_id: String,
    digest: [u8; 32],
}

impl CacheKey {
    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The digest in lower-case hex (64 characters), as Redis keys carry it.
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// The digest is a hash of the prompt, not the prompt; still, only its start is shown.
impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CacheKey({}, {}…)",
            self.org_id,
            hex::encode(&self.digest[..6])
        )
    }
}

/// Why a request has no cache key. The pipeline has already refused malformed bodies by then,
/// so these only mean "do not cache", never an error for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCacheable {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not an object.
    NotAnObject,
}

/// The key of a request for `model` at `endpoint`, made in organization `org_id`.
pub fn cache_key(
    org_id: &str,
    model: &str,
    endpoint: Endpoint,
    body: &[u8],
    salt: &[u8],
) -> Result<CacheKey, NotCacheable> {
    Ok(key_of(org_id, model, endpoint, parse_object(body)?, salt))
}

/// The body's top-level object, parsed once for both [`temperature_allows_in`] and [`key_of`].
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, NotCacheable> {
    let value: Value = serde_json::from_slice(body).map_err(|_| NotCacheable::InvalidJson)?;
    let Value::Object(fields) = value else {
        return Err(NotCacheable::NotAnObject);
    };
    Ok(fields)
}

/// [`cache_key`] over a body already parsed by [`parse_object`].
pub fn key_of(
    org_id: &str,
    model: &str,
    endpoint: Endpoint,
    mut fields: Map<String, Value>,
    salt: &[u8],
) -> CacheKey {
    for name in EXCLUDED_FIELDS {
        fields.remove(name);
    }
    let mut canonical = Vec::new();
    write_canonical(&Value::Object(fields), &mut canonical);

    let mut hasher = Sha256::new();
    for part in [
        VERSION,
        org_id.as_bytes(),
        model.as_bytes(),
        endpoint.name().as_bytes(),
        salt,
        &canonical,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    CacheKey {
        org_id: org_id.to_owned(),
        digest: hasher.finalize().into(),
    }
}

/// Sorted keys, no whitespace. Strings and numbers are written by serde_json itself, so their
/// escaping is one fixed form. The depth is bounded by serde_json's parser (128 levels).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(fields) => {
            let mut entries: Vec<(&String, &Value)> = fields.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (name, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(name.clone()), out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a `Value` into a `Vec` cannot fail; an empty write would only make the key
    // more specific, never shared.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Whether the request's `temperature` lets it use the cache under `spec`.
///
/// An explicit `temperature` above 0 asks for a sampled answer, and a client asking twice
/// expects two; such requests are cached only when the policy says so
/// (`cache_nonzero_temperature`). A request that leaves `temperature` out (or sends `null`) is
/// cacheable: the operator turned the cache on for this scope, and most SDK calls leave it out,
/// so refusing them would make the cache useless. A body that is not a JSON object, or a
/// `temperature` that is not a number, is not cacheable.
pub fn temperature_allows(body: &[u8], spec: &CacheSpec) -> bool {
    parse_object(body).is_ok_and(|fields| temperature_allows_in(&fields, spec))
}

/// [`temperature_allows`] over a body already parsed by [`parse_object`].
pub fn temperature_allows_in(fields: &Map<String, Value>, spec: &CacheSpec) -> bool {
    match fields.get("temperature") {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t <= 0.0 => true,
            Some(_) => spec.cache_nonzero_temperature,
            None => false,
        },
        Some(_) => false,
    }
}

/// What the request's `Cache-Control` asks of the cache: `no-cache` skips the lookup (the
/// answer is fetched fresh, and stored), `no-store` skips storing it. Directives are matched
/// without regard to case, in comma lists and across several headers; unknown ones (and
/// headers that are not text) are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheDirectives {
    pub no_cache: bool,
    pub no_store: bool,
}

impl CacheDirectives {
    pub fn from_headers(headers: &HeaderMap) -> CacheDirectives {
        let mut directives = CacheDirectives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for item in text.split(',') {
                let name = item.split('=').next().unwrap_or_default().trim();
                if name.eq_ignore_ascii_case("no-cache") {
                    directives.no_cache = true;
                } else if name.eq_ignore_ascii_case("no-store") {
                    directives.no_store = true;
                }
            }
        }
        directives
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(body: &str) -> CacheKey {
        cache_key(
            "org-a",
            "llama",
            Endpoint::Chat,
            body.as_bytes(),
            b"policy-1",
        )
        .unwrap()
    }

    const BASE: &str =
        r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;

    #[test]
    fn order_whitespace_and_excluded_fields_do_not_change_the_key() {
        let base = key(BASE);
        for same in [
            r#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"llama"}"#,
            "{ \"model\" : \"llama\",\n \"messages\": [ {\"role\":\"user\", \"content\":\"hi\"} ],\t\"temperature\":0 }",
            r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"u-1","metadata":{"a":"b"},"store":true,"service_tier":"auto","prompt_cache_key":"x","safety_identifier":"s","stream_options":{"include_usage":true}}"#,
            // The same string, escaped differently.
            r#"{"model":"llama","messages":[{"role":"user","content":"\u0068i"}],"temperature":0}"#,
        ] {
            assert_eq!(key(same), base, "{same}");
        }
    }

    #[test]
    fn everything_that_changes_the_answer_changes_the_key() {
        let base = key(BASE);
        let body = BASE.as_bytes();
        let others = [
            cache_key("org-b", "llama", Endpoint::Chat, body, b"policy-1").unwrap(),
            cache_key("org-a", "llama-2", Endpoint::Chat, body, b"policy-1").unwrap(),
            cache_key("org-a", "llama", Endpoint::Completions, body, b"policy-1").unwrap(),
            cache_key("org-a", "llama", Endpoint::Chat, body, b"policy-2").unwrap(),
            cache_key("org-a", "llama", Endpoint::Chat, body, b"").unwrap(),
            key(
                r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true}"#,
            ),
            key(
                r#"{"model":"llama","messages":[{"role":"user","content":"hello"}],"temperature":0}"#,
            ),
            key(
                r#"{"model":"llama","messages":[{"role":"system","content":"hi"}],"temperature":0}"#,
            ),
            key(
                r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}"#,
            ),
            // Excluded fields are excluded at the top level only.
            key(
                r#"{"model":"llama","messages":[{"role":"user","content":"hi","user":"x"}],"temperature":0}"#,
            ),
            // Numbers keep their written form: distinct entries, never a shared answer.
            key(
                r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"temperature":0.0}"#,
            ),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(*other, base, "case {i}");
        }
        // Length prefixes: moving bytes from one part to the next changes the key.
        assert_ne!(
            cache_key("ab", "c", Endpoint::Chat, body, b"").unwrap(),
            cache_key("a", "bc", Endpoint::Chat, body, b"").unwrap()
        );
        assert_eq!(base.hex().len(), 64);
        assert_eq!(base.org_id(), "org-a");
    }

    #[test]
    fn bodies_that_are_not_objects_have_no_key() {
        for (body, why) in [
            ("not json", NotCacheable::InvalidJson),
            ("", NotCacheable::InvalidJson),
            ("[1,2]", NotCacheable::NotAnObject),
            ("\"text\"", NotCacheable::NotAnObject),
        ] {
            assert_eq!(
                cache_key("o", "m", Endpoint::Chat, body.as_bytes(), b""),
                Err(why),
                "{body}"
            );
        }
    }

    #[test]
    fn temperature_rule() {
        let off = CacheSpec {
            ttl_seconds: 60,
            cache_nonzero_temperature: false,
        };
        let on = CacheSpec {
            ttl_seconds: 60,
            cache_nonzero_temperature: true,
        };
        for (body, under_off, under_on) in [
            (r#"{"model":"m"}"#, true, true),
            (r#"{"model":"m","temperature":null}"#, true, true),
            (r#"{"model":"m","temperature":0}"#, true, true),
            (r#"{"model":"m","temperature":0.0}"#, true, true),
            (r#"{"model":"m","temperature":0.7}"#, false, true),
            (r#"{"model":"m","temperature":1}"#, false, true),
            (r#"{"model":"m","temperature":"0"}"#, false, false),
            ("not json", false, false),
            ("[]", false, false),
        ] {
            assert_eq!(
                temperature_allows(body.as_bytes(), &off),
                under_off,
                "{body}"
            );
            assert_eq!(temperature_allows(body.as_bytes(), &on), under_on, "{body}");
        }
    }

    #[test]
    fn cache_control_directives() {
        let parse = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    header::CACHE_CONTROL,
                    HeaderValue::from_bytes(value).unwrap(),
                );
            }
            CacheDirectives::from_headers(&headers)
        };
        let none = CacheDirectives::default();
        let no_cache = CacheDirectives {
            no_cache: true,
            no_store: false,
        };
        let no_store = CacheDirectives {
            no_cache: false,
            no_store: true,
        };
        let both = CacheDirectives {
            no_cache: true,
            no_store: true,
        };
        for (values, expected) in [
            (&[][..], none),
            (&[&b"no-cache"[..]][..], no_cache),
            (&[&b"No-Cache"[..]][..], no_cache),
            (&[&b"NO-STORE"[..]][..], no_store),
            (&[&b"max-age=0, no-store"[..]][..], no_store),
            (&[&b"no-cache,no-store"[..]][..], both),
            (&[&b"no-cache"[..], &b"no-store"[..]][..], both),
            (&[&b" no-cache = \"x\" "[..]][..], no_cache),
            (&[&b"private, max-age=60"[..]][..], none),
            (&[&b"no-cacheable, xno-store"[..]][..], none),
            (&[&b"\xffno-cache"[..], &b"no-store"[..]][..], no_store),
        ] {
            assert_eq!(parse(values), expected, "{values:?}");
        }
    }
}
