//! Stage 9, meter: the answer goes back to the client, whole or streamed, and exactly one
//! usage record per request goes to the usage queue (`context.rs`), with the key's token and
//! spend counters charged (the streamed case finishes in `stream.rs`, when the stream ends or
//! is dropped).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use cortex_guard::Guard;
use cortex_upstream::{ModelRoute, UpstreamBody, UpstreamError};
use cortex_wire::sse::usage_from_json;
use cortex_wire::translate::AnswerError;

use crate::cache::CachedAnswer;
use crate::error::ApiError;

use super::cached::Caching;
use super::context::{answer_with_room, UsageContext};

/// Upstream bodies larger than this are refused rather than buffered (non-streamed answers).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// A whole answer: read (bounded), its usage parsed (in the provider's dialect) and recorded,
/// then returned in the door's dialect (`translate`, for a successful answer) — through the
/// answer's guardrails (`guard`: the compiled policy and its id) and into the cache.
pub(super) async fn whole(
    context: &mut UsageContext,
    route: &ModelRoute,
    status: u16,
    body: UpstreamBody,
    translate: impl FnOnce(Bytes) -> Result<Bytes, AnswerError>,
    guard: Option<(Arc<Guard>, String)>,
    caching: Option<Caching>,
) -> Result<Response, ApiError> {
    let body = body
        .read_all(MAX_UPSTREAM_BODY)
        .await
        .map_err(|_| ApiError::Upstream(UpstreamError::Unreachable))?;
    let usage = usage_from_json(&body);
    let succeeded = (200..300).contains(&status);
    let mut body = if succeeded {
        match translate(body) {
            Ok(body) => body,
            Err(error) => {
                // The provider did the work (its usage is charged), but its answer cannot be
                // given in the client's dialect.
                tracing::warn!(provider = %context.provider, %error, "the provider's answer could not be translated");
                let refusal = ApiError::Upstream(UpstreamError::BadResponse);
                context.finish(Some(route), refusal.status().as_u16(), usage);
                return Err(refusal);
            }
        }
    } else {
        body
    };
    if let (true, Some((guard, policy_id))) = (succeeded, &guard) {
        let verdict = guard.apply_json(&body);
        super::guard::report(context, policy_id, "response", verdict.hits);
        if let Some(detector) = verdict.blocked {
            // The provider did the work (its usage is charged); the client gets none of it.
            let refusal = ApiError::GuardrailBlocked(detector);
            context.finish(Some(route), refusal.status().as_u16(), usage);
            return Err(refusal);
        }
        if let Some(redacted) = verdict.redacted {
            body = Bytes::from(redacted);
        }
    }
    if let (200, Some(caching)) = (status, caching) {
        let answer =
            CachedAnswer::whole(body.clone(), usage.unwrap_or_default(), &*context.provider);
        caching.store(context, answer);
    }
    context.finish(Some(route), status, usage);
    crate::telemetry::stage(&mut context.trace, "meter");
    let mut response = answer_with_room(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The address as the usage row stores it, the same text as `Display` writes. IPv4 is
/// written with `itoa`: `Display` goes through the formatting machinery, ~1.3 k instructions
/// per request in the profile.
pub(super) fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.22.133.4",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
            assert_eq!(ip_text(ip), text);
        }
    }
}
