//! Stage 5, the response cache (SPEC §21): after the request's guardrails and its token
//! check, before its budget is reserved — a hit spends nothing at the provider, so it reserves
//! nothing, but it still counts for the key's request rate and tokens and has its usage row
//! (`cached: true`, cost 0).
//!
//! A request is looked up when its policy has a `cache` part, its `temperature` allows it,
//! and it did not say `Cache-Control: no-cache`; its answer is stored (200 only, whole or
//! streamed to its end, within the entry bound) unless it said `no-store`. The key holds the
//! organization, the model, the door, the guardrail policy's id and version and the canonical
//! body (`cache/key.rs`): no two tenants, and no two guardrail policies, share an entry.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;
use cortex_upstream::ModelRoute;

use crate::cache::{
    key_of, parse_object, temperature_allows_in, CacheDirectives, CacheKey, CachedAnswer,
};
use crate::policies::EffectivePolicy;

use super::context::{answer_with_room, UsageContext};

pub const X_CORTEX_CACHE: HeaderName = HeaderName::from_static("x-cortex-cache");

/// The cache's part in one request.
pub(super) struct Caching {
    pub key: CacheKey,
    pub ttl: Duration,
    /// Look the request up (no `no-cache`).
    pub lookup: bool,
    /// Keep its answer (no `no-store`).
    pub store: bool,
}

impl Caching {
    /// The cache's part for a request under `policy`, if it has one.
    pub(super) fn of(
        context: &UsageContext,
        policy: Option<&EffectivePolicy>,
        directives: CacheDirectives,
        body: &[u8],
    ) -> Option<Caching> {
        let policy = policy?;
        let spec = policy.cache.as_ref()?;
        // Parsed once, for the temperature and the key.
        let fields = parse_object(body).ok()?;
        if !temperature_allows_in(&fields, spec) {
            return None;
        }
        // The guardrails the answer was made under are part of what it is.
        let mut salt = Vec::with_capacity(policy.id.len() + 21);
        salt.extend_from_slice(policy.id.as_bytes());
        salt.push(0);
        salt.extend_from_slice(&policy.version.to_be_bytes());
        let key = key_of(
            &context.principal.key.org_id,
            &context.model,
            context.endpoint,
            fields,
            &salt,
        );
        Some(Caching {
            key,
            ttl: Duration::from_secs(u64::from(spec.ttl_seconds)),
            lookup: !directives.no_cache,
            store: !directives.no_store,
        })
    }

    /// Keeps `answer` for the policy's TTL, if the request allows storing.
    pub(super) fn store(self, context: &UsageContext, answer: CachedAnswer) {
        if self.store {
            context.plane.cache.put(self.key, answer, self.ttl);
        }
    }
}

/// A hit: the stored answer again — the same JSON body, or the same SSE chunks — with its
/// usage recorded as cached (the key's tokens charged, no cost).
pub(super) fn replay(
    context: &mut UsageContext,
    route: &ModelRoute,
    answer: &CachedAnswer,
) -> Response {
    context.provider.clone_from(&answer.provider);
    context.cached = true;
    context.finish(Some(route), 200, Some(answer.usage));
    let body = if answer.streamed {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            answer.chunks.iter().cloned().map(Ok).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(answer.chunks.first().cloned().unwrap_or_default())
    };
    let mut response = answer_with_room(body);
    let headers = response.headers_mut();
    if answer.streamed {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.insert(X_CORTEX_CACHE, HeaderValue::from_static("hit"));
    response
}

/// Marks an answer that was looked up and missed (or not looked up: `no-cache`).
pub(super) fn mark_miss(response: &mut Response) {
    response
        .headers_mut()
        .insert(X_CORTEX_CACHE, HeaderValue::from_static("miss"));
}
