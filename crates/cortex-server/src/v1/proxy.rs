//! Forwarding one request to its model's providers and the answer back to the client.

use std::time::Instant;

use axum::body::{Body, Bytes};
use std::net::IpAddr;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cortex_domain::Scope;
use cortex_store::usage::UsageRecord;
use cortex_upstream::sse::usage_from_json;
use cortex_upstream::{ModelRoute, TokenUsage, UpstreamBody, UpstreamRequest};
use serde_json::Value;

use crate::error::ApiError;
use crate::limits;
use crate::metrics as m;
use crate::middleware::api_key::ApiPrincipal;
use crate::middleware::client_ip::ClientIp;
use crate::middleware::request_id::RequestId;
use crate::state::AppState;

use super::body;
use super::stream::{MeteredStream, StreamFinish};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Every proxied endpoint, in declaration order (so `ALL[e.index()] == e`).
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings];

    pub fn scope(self) -> Scope {
        match self {
            Endpoint::Chat => Scope::Chat,
            Endpoint::Completions => Scope::Completions,
            Endpoint::Embeddings => Scope::Embeddings,
        }
    }

    /// The gateway's path for it.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The path below the provider's base URL: the gateway's path without `/v1/`.
    fn upstream_path(self) -> &'static str {
        let path = self.path();
        path.strip_prefix("/v1/").unwrap_or(path)
    }

    /// Position in [`Endpoint::ALL`] (and so in the metrics' per-endpoint handles).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Upstream bodies larger than this are refused rather than buffered (non-streamed answers).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// Upstream error bodies are read up to this size to extract a message.
const MAX_UPSTREAM_ERROR_BODY: usize = 64 * 1024;

/// Everything a usage record needs, gathered as the request goes.
pub struct UsageContext {
    pub app: AppState,
    pub principal: ApiPrincipal,
    pub request_id: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub provider: String,
    pub client_ip: String,
    pub started: Instant,
    pub started_millis: i64,
}

impl UsageContext {
    /// Whether a usage record is still owed for this request.
    fn pending(&self) -> bool {
        !self.model.is_empty()
    }

    /// Queues the usage record and charges the key's token and spend counters. The strings move
    /// into the record (no copies), which also marks the context finished: a request is
    /// recorded once.
    pub fn finish(&mut self, route: Option<&ModelRoute>, status: u16, usage: Option<TokenUsage>) {
        if !self.pending() {
            return;
        }
        let usage = usage.unwrap_or_default();
        let cost_usd = route
            .map(|r| r.cost_usd(usage.prompt_tokens, usage.completion_tokens))
            .unwrap_or(0.0);
        let elapsed = self.started.elapsed();
        let hot = m::hot();
        hot.request_duration(self.endpoint)
            .record(elapsed.as_secs_f64());
        hot.requests(self.endpoint, status).increment(1);
        if usage.prompt_tokens > 0 {
            hot.prompt_tokens.increment(usage.prompt_tokens);
        }
        if usage.completion_tokens > 0 {
            hot.completion_tokens.increment(usage.completion_tokens);
        }
        self.app.usage.record(UsageRecord {
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
        });
        limits::charge(
            &self.app,
            &self.principal.key,
            usage.prompt_tokens + usage.completion_tokens,
            cost_usd,
        );
    }
}

pub(super) async fn handle(
    app: AppState,
    principal: ApiPrincipal,
    ip: ClientIp,
    request_id: RequestId,
    endpoint: Endpoint,
    bytes: Bytes,
) -> Response {
    let mut context = UsageContext {
        started_millis: app.now_millis(),
        app,
        principal,
        request_id: request_id.as_str().to_owned(),
        endpoint,
        model: String::new(),
        provider: String::new(),
        client_ip: ip_text(ip.0),
        started: Instant::now(),
    };
    match forward(&mut context, bytes).await {
        Ok(response) => response,
        Err(error) => {
            // Requests refused before a model was resolved carry no usage worth recording.
            if context.pending() {
                context.finish(None, error.status().as_u16(), None);
            } else {
                m::hot()
                    .requests(endpoint, error.status().as_u16())
                    .increment(1);
            }
            error.into_response()
        }
    }
}

async fn forward(context: &mut UsageContext, bytes: Bytes) -> Result<Response, ApiError> {
    let app = context.app.clone();
    let endpoint = context.endpoint;
    context.principal.require_scope(endpoint.scope())?;
    let request = body::parse(endpoint, &bytes)?;
    if !context.principal.key.allows_model(&request.model) {
        return Err(ApiError::ModelNotAllowed);
    }
    let table = app.catalog.current();
    let route = table
        .get(&request.model)
        .cloned()
        .ok_or(ApiError::ModelNotFound)?;
    context.model.clone_from(&request.model);

    limits::check_tokens_and_budget(&app, &context.principal.key).await?;
    let slot = if request.stream {
        Some(limits::acquire_stream_slot(&app, &context.principal.key).await?)
    } else {
        None
    };

    let upstream_body = request.upstream_body(&route.upstream_name)?;
    let streaming = request.stream;
    // The client's body is not needed past this point, however long the answer takes.
    drop(request);
    drop(bytes);

    let upstream_started = Instant::now();
    let upstream_request = UpstreamRequest {
        path: endpoint.upstream_path(),
        body: Bytes::from(upstream_body),
        request_id: &context.request_id,
        streaming,
    };
    let answer = app
        .upstream
        .send(&route, &upstream_request, app.now_millis())
        .await;
    m::hot()
        .upstream_duration
        .record(upstream_started.elapsed().as_secs_f64());
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
        context.finish(Some(&route), error.status().as_u16(), None);
        return Err(error);
    }
    if (400..500).contains(&status) {
        let message = read_upstream_error(answer.body).await;
        context.finish(Some(&route), status, None);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return Err(ApiError::UpstreamRejected { status, message });
    }

    if streaming {
        // The strings move to the stream's context, which leaves this one finished: the error
        // path must not record a second usage row for this request.
        let finish = StreamFinish::new(
            UsageContext {
                app: app.clone(),
                principal: context.principal.clone(),
                request_id: std::mem::take(&mut context.request_id),
                endpoint,
                model: std::mem::take(&mut context.model),
                provider: std::mem::take(&mut context.provider),
                client_ip: std::mem::take(&mut context.client_ip),
                started: context.started,
                started_millis: context.started_millis,
            },
            route,
            slot.flatten(),
        );
        let body = Body::from_stream(MeteredStream::new(answer.body, finish));
        let mut response = answer_with_room(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tells nginx-style proxies in front of Cortex not to buffer the stream either.
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        return Ok(response);
    }

    let body = answer
        .body
        .read_all(MAX_UPSTREAM_BODY)
        .await
        .map_err(|_| ApiError::Upstream(cortex_upstream::UpstreamError::Unreachable))?;
    let usage = usage_from_json(&body);
    context.finish(Some(&route), status, usage);
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
fn answer_with_room(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().reserve(16);
    response
}

/// The address as the usage row stores it, the same text as `Display` writes. IPv4 is
/// written with `itoa`: `Display` goes through the formatting machinery, ~1.3 k instructions
/// per request in the profile.
fn ip_text(ip: IpAddr) -> String {
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
