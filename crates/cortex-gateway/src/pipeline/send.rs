//! Stage 7, send: the upstream request goes to the route's providers in order, with failover
//! (`cortex-upstream`'s client); the answer's head decides what the client is told. A
//! provider's 401/403 is the gateway's credential failing, never the client's: 502
//! `upstream_auth_failed`. Other 4xx pass through with a sanitized message.

use axum::body::Bytes;
use axum::http::StatusCode;
use cortex_upstream::{Attempts, ModelRoute, UpstreamBody, UpstreamRequest, UpstreamResponse};
use cortex_wire::Endpoint;
use serde_json::Value;

use crate::error::ApiError;
use crate::metrics as m;

use super::context::UsageContext;

/// Upstream error bodies are read up to this size to extract a message.
const MAX_UPSTREAM_ERROR_BODY: usize = 64 * 1024;

/// Sends `body` to the route's providers at `endpoint` (the provider's dialect's, which may
/// differ from the client's door); an answer the client may see, or the refusal to give
/// instead (with its usage recorded).
pub(super) async fn send(
    context: &mut UsageContext,
    route: &ModelRoute,
    endpoint: Endpoint,
    body: Vec<u8>,
    streaming: bool,
) -> Result<UpstreamResponse, ApiError> {
    let plane = &context.plane;
    let upstream_request = UpstreamRequest {
        path: endpoint.upstream_path(),
        model: &route.upstream_name,
        body: Bytes::from(body),
        request_id: &context.request_id,
        streaming,
    };
    let mut attempts = Attempts::default();
    let answer = plane
        .upstream
        .send_logged(route, &upstream_request, plane.now_millis(), &mut attempts)
        .await;
    context.attempts = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
    // Each attempt's latency goes to its provider's histogram; the last attempt's provider is
    // the one that answered, whose series also get the stream's time to first token.
    for attempt in attempts.iter() {
        let meter = plane.catalog.meter(&attempt.provider.id);
        meter.upstream_duration.record(attempt.took.as_secs_f64());
        context.meter = Some(meter);
    }
    if let Some(trace) = &mut context.trace {
        trace.send(&attempts);
        if let Ok(answer) = &answer {
            trace.provider(&answer.provider.name, answer.provider.kind);
        }
    }
    let answer = answer.inspect_err(|err| {
        metrics::counter!(m::UPSTREAM_ERRORS, "kind" => upstream_error_kind(err)).increment(1);
    })?;
    context.provider.clone_from(&answer.provider.name);
    let status = answer.status;

    if status == 401 || status == 403 {
        // The provider refused the gateway's credential, not the client's: the client gets a
        // 502 that says so without the provider's words, and the operator gets them in the log.
        let message = log_safe(
            &read_upstream_error(answer.body).await,
            answer.provider.api_key.as_ref(),
        );
        tracing::warn!(provider = %answer.provider.name, status, upstream_message = %message, "the provider refused the gateway's credential for it");
        let error = ApiError::UpstreamAuthFailed;
        context.finish(Some(route), error.status().as_u16(), None);
        return Err(error);
    }
    if (400..500).contains(&status) {
        let retry_after_secs = answer.retry_after_secs.filter(|_| status == 429);
        let message = read_upstream_error(answer.body).await;
        context.finish(Some(route), status, None);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return Err(ApiError::UpstreamRejected {
            status,
            message,
            retry_after_secs,
        });
    }
    Ok(answer)
}

fn upstream_error_kind(err: &cortex_upstream::UpstreamError) -> &'static str {
    match err {
        cortex_upstream::UpstreamError::NoProvider => "no_provider",
        cortex_upstream::UpstreamError::Unreachable => "unreachable",
        cortex_upstream::UpstreamError::Timeout => "timeout",
        cortex_upstream::UpstreamError::ServerError(_) => "server_error",
        cortex_upstream::UpstreamError::BadResponse => "bad_response",
        cortex_upstream::UpstreamError::EgressDenied => "egress_denied",
    }
}

/// Takes only `error.message` from an upstream error body, shortened, so that upstream stack
/// traces, hostnames in other fields, or echoed headers never reach the client.
async fn read_upstream_error(body: UpstreamBody) -> String {
    const FALLBACK: &str = "the model server refused the request";
    let Ok(body) = body.read_all(MAX_UPSTREAM_ERROR_BODY).await else {
        return FALLBACK.to_owned();
    };
    let message = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match message {
        Some(text) if !text.is_empty() => {
            text.chars().filter(|c| !c.is_control()).take(500).collect()
        }
        _ => FALLBACK.to_owned(),
    }
}

/// A provider's refusal message as the log may hold it: at most 200 characters, and never the
/// credential itself (a provider may echo the key it refused).
fn log_safe(message: &str, key: Option<&secrecy::SecretString>) -> String {
    let mut message = message.to_owned();
    if let Some(key) = key.map(secrecy::ExposeSecret::expose_secret) {
        if !key.is_empty() {
            message = message.replace(key, "[REDACTED]");
        }
    }
    message.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_refusal_is_logged_short_and_without_the_key() {
        let key = secrecy::SecretString::from("sk-secret-123");
        let logged = log_safe("Incorrect API key provided: sk-secret-123.", Some(&key));
        assert_eq!(logged, "Incorrect API key provided: [REDACTED].");
        assert_eq!(log_safe(&"x".repeat(600), None).len(), 200);
    }
}
