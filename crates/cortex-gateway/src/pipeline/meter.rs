//! Stage 8, meter: the answer goes back to the client, whole or streamed, and exactly one
//! usage record per request goes to the usage queue, with the key's token and spend counters
//! charged (the streamed case finishes in `stream.rs`, when the stream ends or is dropped).

use std::net::IpAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use cortex_limits::Reservation;
use cortex_store::usage::UsageRecord;
use cortex_upstream::{ModelRoute, UpstreamBody, UpstreamError};
use cortex_wire::sse::usage_from_json;
use cortex_wire::translate::AnswerError;
use cortex_wire::Endpoint;
use cortex_wire::TokenUsage;

use std::sync::Arc;

use cortex_guard::Guard;

use crate::authenticate::ApiPrincipal;
use crate::budget;
use crate::cache::CachedAnswer;
use crate::error::ApiError;
use crate::metrics as m;
use crate::quota;
use crate::DataPlane;

use super::cached::Caching;

/// Upstream bodies larger than this are refused rather than buffered (non-streamed answers).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// Everything a usage record needs, gathered as the request goes.
pub struct UsageContext {
    pub plane: DataPlane,
    pub principal: ApiPrincipal,
    pub request_id: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub provider: String,
    pub client_ip: String,
    pub started: Instant,
    pub started_millis: i64,
    /// Upstream attempts made (retries and failovers included), for the usage record.
    pub attempts: u32,
    /// The request's worst-case cost, reserved at its budget levels until it is settled.
    pub reservation: Option<Reservation>,
    /// The answering provider's series (its time to first token), once it answered.
    pub meter: Option<m::ProviderMeter>,
    /// A stream's time from the request's arrival to the first byte sent to the client.
    pub ttft: Option<std::time::Duration>,
    /// The answer is a stream, which counts the request when it ends (`stream.rs`).
    pub counted_by_stream: bool,
    /// The answer came from the response cache: its usage is recorded at no cost.
    pub cached: bool,
    /// The request's spans, when it is traced.
    pub trace: Option<crate::telemetry::RequestTrace>,
}

impl UsageContext {
    /// Whether a usage record is still owed for this request.
    pub(super) fn pending(&self) -> bool {
        !self.model.is_empty()
    }

    /// Queues the usage record, settles the budget reservation and charges the key's tokens. The strings move
    /// into the record (no copies), which also marks the context finished: a request is
    /// recorded once.
    pub fn finish(&mut self, route: Option<&ModelRoute>, status: u16, usage: Option<TokenUsage>) {
        if !self.pending() {
            return;
        }
        let usage = usage.unwrap_or_default();
        // A cached answer cost the provider nothing this time.
        let cost_usd = match route {
            Some(route) if !self.cached => {
                route.cost_usd(usage.prompt_tokens, usage.completion_tokens)
            }
            _ => 0.0,
        };
        let elapsed = self.started.elapsed();
        let hot = m::hot();
        hot.request_duration(self.endpoint)
            .record(elapsed.as_secs_f64());
        if usage.prompt_tokens > 0 {
            hot.prompt_tokens.increment(usage.prompt_tokens);
        }
        if usage.completion_tokens > 0 {
            hot.completion_tokens.increment(usage.completion_tokens);
        }
        if let Some(trace) = &self.trace {
            trace.usage(
                usage.prompt_tokens,
                usage.completion_tokens,
                self.attempts,
                self.ttft,
            );
        }
        // The settlement starts before the usage record is queued (the writer batches it
        // later): a budget counter rebuilt from the records in between would otherwise count
        // this request twice.
        if let Some(reservation) = self.reservation.take() {
            quota::settle_budget(&self.plane, reservation, budget::micro_usd(cost_usd));
        }
        self.plane.usage.record(UsageRecord {
            request_id: std::mem::take(&mut self.request_id),
            key_id: self.principal.key.id.clone(),
            user_id: self.principal.key.owner_user_id.clone(),
            model: std::mem::take(&mut self.model),
            provider: std::mem::take(&mut self.provider),
            endpoint: self.endpoint.name().to_owned(),
            prompt_tokens: i64::try_from(usage.prompt_tokens).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(usage.completion_tokens).unwrap_or(i64::MAX),
            cost_usd,
            latency_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            status: i64::from(status),
            client_ip: std::mem::take(&mut self.client_ip),
            created_at: self.started_millis,
            attempts: i64::from(self.attempts),
            org_id: self.principal.key.org_id.clone(),
            team_id: self.principal.key.team_id.clone(),
            ttft_ms: self
                .ttft
                .map(|ttft| i64::try_from(ttft.as_millis()).unwrap_or(i64::MAX)),
            cached: self.cached,
        });
        quota::charge(
            &self.plane,
            &self.principal.key,
            usage.prompt_tokens + usage.completion_tokens,
        );
    }
}

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

/// A response whose header map already has room for every header the layers around the proxy
/// add (request id, `RateLimit-*`, CORS's `Vary`, the security headers): about fifteen, which
/// an empty map reaches by growing and re-hashing three times.
pub(super) fn answer_with_room(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().reserve(16);
    response
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
