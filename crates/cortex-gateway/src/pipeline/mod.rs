//! The data plane's one pipeline: every request to a `/v1` path Cortex serves is answered here,
//! and only here (the router has no `/v1` routes).
//!
//! [`PipelineLayer`] sits innermost in the HTTP crate's edge stack, so security headers, panic
//! catching, the request id, the access log, CORS, the client IP, CSRF and JSON errors wrap
//! these requests as they wrap every other. It sends a request on to [`serve`] when its path is
//! one of the [`Door`]s, and everything else to the router.
//!
//! The stages, in order — [`serve`] and [`forward`] are this list, read top to bottom:
//!
//! | # | stage | file |
//! |---|---|---|
//! | 1 | authenticate: the key, from memory | `authenticate.rs` |
//! | 2 | request rate: the key's GCRA, `RateLimit-*` headers | `quota.rs` |
//! | 3 | read: the body, within `CORTEX_MAX_BODY_BYTES` and the body deadline | here |
//! | 4 | route: scope, body decoded by the endpoint's codec, model allow-list, route table | `route.rs`, `cortex-wire/src/body.rs` |
//! | 5 | guardrails on the request: block, redact, log; webhooks | `guard.rs` → `cortex-guard` |
//! | 6 | spend limits: tokens per minute; then the cache (a hit is answered here); then the budget and a stream slot | `quota.rs`, `cached.rs` |
//! | 7 | translate: the upstream body in the provider's dialect (and the answer back, in 9) | `translate.rs`, `cortex-wire/src/translate/` |
//! | 8 | send: the providers in order, with failover | `send.rs` |
//! | 9 | meter: the answer, whole or streamed, through the answer's guardrails and into the cache; one usage record | `meter.rs`, `stream.rs`, `guard_stream.rs` |
//!
//! A stage is a function that takes what the stages before it produced and returns what the
//! next needs, or the refusal to send instead (an [`ApiError`]). Adding one is one call in
//! this list; adding a front door is one [`Door`] (and its codec in `cortex-wire`).

mod cached;
mod context;
mod guard;
mod guard_stream;
mod meter;
mod models;
mod route;
mod send;
mod stream;
mod translate;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use cortex_wire::Endpoint;
use futures_util::future::Either;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::authenticate::{self, ApiPrincipal, KeyHeaders};
use crate::budget;
use crate::error::{ApiError, ErrorCode};
use crate::metrics as m;
use crate::quota;
use crate::request_meta::{ClientIp, FromTrustedProxy, RequestId};
use crate::telemetry::{self, RequestTrace, Traces};
use crate::DataPlane;

use self::cached::Caching;
use self::context::UsageContext;
use self::translate::Plan;
use crate::cache::CacheDirectives;

/// The `/v1` paths the pipeline serves: each proxied [`Endpoint`], and the model list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `POST` to an OpenAI-style endpoint, proxied to a provider.
    Proxied(Endpoint),
    /// `GET /v1/models`.
    Models,
}

impl Door {
    pub const MODELS_PATH: &'static str = "/v1/models";

    /// The door at `path`, if the pipeline serves it (any method: the pipeline answers a wrong
    /// method with 405 after the key check, as every `/v1` answer comes after it).
    pub fn of(path: &str) -> Option<Door> {
        if path == Door::MODELS_PATH {
            return Some(Door::Models);
        }
        Endpoint::from_path(path).map(Door::Proxied)
    }
}

#[derive(Clone)]
pub struct PipelineLayer {
    plane: DataPlane,
}

impl PipelineLayer {
    pub fn new(plane: DataPlane) -> Self {
        Self { plane }
    }
}

impl<S> Layer<S> for PipelineLayer {
    type Service = Pipeline<S>;

    fn layer(&self, router: S) -> Self::Service {
        Pipeline {
            plane: self.plane.clone(),
            router,
        }
    }
}

/// The `/v1` doors go to [`serve`]; every other request goes on to the router.
#[derive(Clone)]
pub struct Pipeline<S> {
    plane: DataPlane,
    router: S,
}

type Served = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for Pipeline<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Served, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        match Door::of(path) {
            Some(door) => {
                let plane = self.plane.clone();
                Either::Left(Box::pin(
                    async move { Ok(serve(plane, door, request).await) },
                ))
            }
            // A /v1 path no door serves is still a /v1 request: counted (as `other`) with the
            // router's answer.
            None if path == "/v1" || path.starts_with("/v1/") => {
                let answer = self.router.call(request);
                Either::Left(Box::pin(async move {
                    let response = answer.await?;
                    count(m::OTHER_DOOR, &response);
                    Ok(response)
                }))
            }
            None => Either::Right(self.router.call(request)),
        }
    }
}

/// Counts a request at `door` by its answer's status and error code.
fn count(door: usize, response: &Response) {
    let code = response.extensions().get::<ErrorCode>().map(|code| code.0);
    m::hot().count_request(door, response.status().as_u16(), code);
}

/// Answers one request to a door, and counts it: every `/v1` request is counted once, refused
/// ones included, here when its answer is made — or, for a stream, when the stream ends and
/// its status is known (`stream.rs`).
pub async fn serve(plane: DataPlane, door: Door, request: Request<Body>) -> Response {
    let started = Instant::now();
    let endpoint = match door {
        Door::Proxied(endpoint) => Some(endpoint),
        Door::Models => None,
    };
    let mut trace = match &plane.traces {
        None => None,
        Some(traces) => start_trace(traces, endpoint, &request, started),
    };
    let (response, counted_by_stream) = answer(plane, door, request, started, &mut trace).await;
    if !counted_by_stream {
        let code = response.extensions().get::<ErrorCode>().map(|code| code.0);
        let status = response.status().as_u16();
        m::hot().count_request(m::door(endpoint), status, code);
        if let Some(trace) = trace {
            trace.end(None, status, code);
        }
    }
    response
}

/// The request's trace, if the sampler takes it: under the `traceparent` a trusted proxy sent,
/// else a trace of its own.
fn start_trace(
    traces: &Traces,
    endpoint: Option<Endpoint>,
    request: &Request<Body>,
    started: Instant,
) -> Option<RequestTrace> {
    let parent = request
        .extensions()
        .get::<FromTrustedProxy>()
        .and_then(|_| telemetry::parent_from(request.headers()));
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or("", RequestId::as_str);
    RequestTrace::start(Some(traces), endpoint, request_id, started, parent)
}

/// Stages 1–3, then [`forward`] for the rest; and whether the answer is a stream, which counts
/// itself (and ends its trace) when it ends.
async fn answer(
    plane: DataPlane,
    door: Door,
    request: Request<Body>,
    started: Instant,
    trace: &mut Option<RequestTrace>,
) -> (Response, bool) {
    let (parts, body) = request.into_parts();
    // 1. authenticate. Every answer on /v1, a wrong method's included, comes after it, so what
    //    a caller without a key learns does not depend on the method.
    let accepted = match door {
        Door::Proxied(Endpoint::Messages) => KeyHeaders::BearerOrXApiKey,
        _ => KeyHeaders::Bearer,
    };
    let principal = match authenticate::authenticate_request(
        &plane,
        &parts.headers,
        &parts.extensions,
        accepted,
    )
    .await
    {
        Ok(principal) => principal,
        Err(refusal) => return (refusal, false),
    };
    telemetry::stage(trace, "authenticate");
    let endpoint = match door {
        Door::Proxied(endpoint) if parts.method == Method::POST => endpoint,
        Door::Proxied(_) => return (method_not_allowed("POST"), false),
        Door::Models if parts.method == Method::GET || parts.method == Method::HEAD => {
            let listed =
                with_request_rate(&plane, &principal, || models::list(&plane, &principal)).await;
            return (listed, false);
        }
        Door::Models => return (method_not_allowed("GET,HEAD"), false),
    };
    // 2. request rate.
    let rate_headers = match quota::check_request_rate(&plane, &principal.key).await {
        Ok(headers) => headers,
        Err(refusal) => return (refusal.into_response(), false),
    };
    telemetry::stage(trace, "rate_limit");
    // Both are put there by the edge layers around the pipeline; without them the stack is
    // miswired, and the request is refused rather than served without an id or an address.
    let (Some(ip), Some(request_id)) = (
        parts.extensions.get::<ClientIp>().copied(),
        parts.extensions.get::<RequestId>().cloned(),
    ) else {
        return (ApiError::Internal.into_response(), false);
    };
    let mut counted_by_stream = false;
    let directives = CacheDirectives::from_headers(&parts.headers);
    // 3. read the body.
    let mut response = match read_body(body, plane.config.max_body_bytes).await {
        Ok(bytes) => {
            telemetry::stage(trace, "read_body");
            let mut context = UsageContext {
                started_millis: plane.now_millis(),
                plane,
                principal,
                request_id: request_id.as_str().to_owned(),
                endpoint,
                model: String::new(),
                provider: String::new(),
                client_ip: meter::ip_text(ip.0),
                started,
                attempts: 0,
                reservation: None,
                meter: None,
                ttft: None,
                counted_by_stream: false,
                cached: false,
                trace: trace.take(),
            };
            let response = match forward(&mut context, bytes, directives).await {
                Ok(response) => response,
                Err(error) => refused(&mut context, error),
            };
            counted_by_stream = context.counted_by_stream;
            // A stream took the trace along, to end it with the stream.
            *trace = context.trace.take();
            response
        }
        Err(error) => {
            // The rest of the body is not read, so the connection cannot carry another request:
            // say so, or a client may send its next request on it and see it closed.
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    };
    if let Some(headers) = rate_headers {
        response.headers_mut().extend(headers);
    }
    (response, counted_by_stream)
}

/// Stages 4–9 for a body that has arrived.
async fn forward(
    context: &mut UsageContext,
    bytes: Bytes,
    directives: CacheDirectives,
) -> Result<Response, ApiError> {
    let plane = context.plane.clone();
    // 4. route: the key's scope for the endpoint, the body in the endpoint's codec, the model.
    route::authorize(&context.principal, context.endpoint)?;
    let mut bytes = bytes;
    let mut request = cortex_wire::body::parse(context.endpoint, &bytes)?;
    let route = route::resolve(&plane, &context.principal, &request.model)?;
    context.model.clone_from(&request.model);
    let plan = Plan::new(context.endpoint, &route)?;
    if let Some(trace) = &mut context.trace {
        trace.stage("route");
        trace.route(&request.model, &route.upstream_name, request.stream);
    }
    // 5. guardrails: the policy of the key, else of the model, else of the organization.
    let key = &context.principal.key;
    let policy = plane
        .catalog
        .policies()
        .resolve(&key.id, &key.org_id, &context.model);
    let guard = policy.as_ref().and_then(|policy| policy.guard.clone());
    if let (Some(policy), Some(guard)) = (&policy, &guard) {
        let redacted = guard::request(context, &policy.id, guard, &bytes).await?;
        if let Some(redacted) = redacted {
            drop(request);
            bytes = redacted;
            request = cortex_wire::body::parse(context.endpoint, &bytes)?;
        }
        telemetry::stage(&mut context.trace, "guardrails");
    }
    // 6. spend limits: tokens per minute, then the cache, then the budget reservation and a
    //    stream slot.
    quota::check_tokens(&plane, &context.principal.key).await?;
    let caching = Caching::of(context, policy.as_deref(), directives, &bytes);
    if let Some(caching) = caching.as_ref().filter(|caching| caching.lookup) {
        if let Some(hit) = plane.cache.get(&caching.key).await {
            return Ok(cached::replay(context, &route, &hit));
        }
    }
    let output_cap = request.output_cap();
    let levels = &context.principal.key.budget_levels;
    let budgeted = !levels.is_empty();
    // The cap set on a budgeted request that carries none: the model's, else the default. A
    // request translated to the Messages API gets the translator's own (the same default).
    let upstream_endpoint = plan.upstream_endpoint(context.endpoint);
    let default_cap = match budget::cap_field(upstream_endpoint) {
        Some(_) => route
            .output_cap
            .map_or(budget::DEFAULT_OUTPUT_CAP, u64::from),
        None => budget::DEFAULT_OUTPUT_CAP,
    };
    if budgeted {
        let cap = output_cap.unwrap_or(default_cap);
        let worst = budget::worst_case_micro_usd(&route, bytes.len(), cap);
        context.reservation = quota::reserve_budget(&plane, levels, worst).await?;
    }
    let slot = if request.stream {
        quota::acquire_stream_slot(&plane, &context.principal.key).await?
    } else {
        None
    };
    telemetry::stage(&mut context.trace, "spend_limits");
    // 7. translate.
    let mut upstream_body = plan.request(&request, &bytes, &route.upstream_name)?;
    if budgeted && output_cap.is_none() {
        // The reservation assumed the default cap: the provider must not spend past it.
        if let Some(field) = budget::cap_field(upstream_endpoint) {
            budget::append_cap(&mut upstream_body, field, default_cap);
        }
    }
    let streaming = request.stream;
    telemetry::stage(&mut context.trace, "translate");
    // The client's body is not needed past this point, however long the answer takes.
    drop(request);
    drop(bytes);
    // 8. send.
    let answer = send::send(context, &route, upstream_endpoint, upstream_body, streaming).await?;
    // 9. meter, and the answer back in the door's dialect, through the answer's guardrails
    //    and into the cache.
    // `created` in translated answers: the request's own start, read once already.
    let created = context.started_millis / 1000;
    let answer_guard = guard
        .filter(|guard| guard.scan_responses() && guard.scans_text())
        .zip(policy.as_ref().map(|policy| policy.id.clone()));
    let looked_up = caching.is_some();
    let mut response = if streaming {
        let translator = plan.stream(created);
        stream::streamed(
            context,
            route,
            slot,
            answer.body,
            translator,
            stream::Extras {
                guard: answer_guard,
                caching,
            },
        )
    } else {
        meter::whole(
            context,
            &route,
            answer.status,
            answer.body,
            |body| plan.answer(body, created),
            answer_guard,
            caching,
        )
        .await?
    };
    if looked_up {
        cached::mark_miss(&mut response);
    }
    Ok(response)
}

/// The answer to a refusal from stages 4–9, with its usage recorded when a model was resolved
/// (requests refused before that carry no usage worth a row, only the request counter).
fn refused(context: &mut UsageContext, error: ApiError) -> Response {
    if context.pending() {
        context.finish(None, error.status().as_u16(), None);
    }
    error.into_response()
}

/// Runs `answer` if the key's request rate allows it, with the `RateLimit-*` headers added.
async fn with_request_rate(
    plane: &DataPlane,
    principal: &ApiPrincipal,
    answer: impl FnOnce() -> Response,
) -> Response {
    match quota::check_request_rate(plane, &principal.key).await {
        Ok(headers) => {
            let mut response = answer();
            if let Some(headers) = headers {
                response.headers_mut().extend(headers);
            }
            response
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// 405, whose body the edge writes in the door's shape (`method_not_allowed`); the code is
/// left beside it for the request counter.
fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static(allow))],
    )
        .into_response();
    response
        .extensions_mut()
        .insert(ErrorCode("method_not_allowed"));
    response
}

/// The whole body, or 413 as soon as it passes `limit` (a `Content-Length` above it is refused
/// before anything is read).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge)
        }
        Err(error) if crate::request_meta::is_body_timeout(error.as_ref()) => {
            Err(ApiError::RequestTimeout)
        }
        Err(_) => Err(ApiError::invalid("the request body could not be read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_doors_paths_go_to_the_pipeline() {
        assert_eq!(
            Door::of("/v1/chat/completions"),
            Some(Door::Proxied(Endpoint::Chat))
        );
        assert_eq!(
            Door::of("/v1/completions"),
            Some(Door::Proxied(Endpoint::Completions))
        );
        assert_eq!(
            Door::of("/v1/embeddings"),
            Some(Door::Proxied(Endpoint::Embeddings))
        );
        assert_eq!(
            Door::of("/v1/responses"),
            Some(Door::Proxied(Endpoint::Responses))
        );
        assert_eq!(
            Door::of("/v1/messages"),
            Some(Door::Proxied(Endpoint::Messages))
        );
        assert_eq!(Door::of("/v1/models"), Some(Door::Models));
        for path in [
            "/v1/chat/completions/",
            "/V1/chat/completions",
            "/v1/models/x",
            "/v1",
            "/admin/keys",
            "/",
        ] {
            assert_eq!(Door::of(path), None, "{path}");
        }
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_with_413() {
        let small = read_body(Body::from("12345"), 5).await;
        assert_eq!(small.ok().as_deref(), Some(&b"12345"[..]));
        let large = read_body(Body::from("123456"), 5).await;
        assert!(matches!(large, Err(ApiError::PayloadTooLarge)));
    }
}
