//! OpenTelemetry traces of `/v1` requests (SPEC §20), exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, never otherwise.
//!
//! One server span per request, named by the GenAI semantic conventions (`chat llama`), with a
//! child span per pipeline stage and one per upstream attempt. What a span holds is chosen
//! here and nowhere else: the operation, the requested and upstream model, the provider's
//! name and kind, token counts, statuses, error codes, the request id — never a prompt, a
//! completion, a key, a header or a provider's URL.
//!
//! Cost: with tracing off the pipeline carries `None` and every call here is one branch. With
//! it on, the sampler decides when the request arrives; a request not sampled keeps no span
//! (no child is made). Sampled spans go to the SDK's batch processor, a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`; spans past it are dropped) emptied by its own thread, which
//! hands each export to the main runtime: nothing on a serving thread waits for the collector.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cortex_config::{TraceExport, TraceSampler};
use cortex_domain::ProviderKind;
use cortex_upstream::{AttemptOutcome, Attempts};
use cortex_wire::Endpoint;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use secrecy::ExposeSecret;

/// The process's trace pipeline: the SDK's provider (sampler, batch processor, exporter) and
/// the tracer the pipeline's spans come from.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OpenTelemetry trace export: {0}")]
pub struct TraceSetupError(String);

impl Traces {
    /// The pipeline `settings` describe. Exports run on `runtime` (the process's main
    /// runtime), started from the batch processor's thread.
    pub fn new(
        settings: &TraceExport,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, TraceSetupError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| TraceSetupError(e.to_string()))?;
        let headers = settings
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.expose_secret().to_owned()))
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime { client, runtime })
            .with_endpoint(settings.endpoint.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| TraceSetupError(e.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_scheduled_delay(Duration::from_millis(settings.schedule_delay_ms))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batches)
                    .build(),
            )
            .with_sampler(sampler(settings.sampler))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("cortex");
        Ok(Self { provider, tracer })
    }

    /// Exports what is queued and stops the exporter. Blocks: call it from a blocking thread.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

fn sampler(setting: TraceSampler) -> Sampler {
    match setting {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        TraceSampler::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        TraceSampler::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        TraceSampler::ParentBasedRatio(ratio) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// The exporter's HTTP client: the batch processor's thread is not a runtime's, so each
/// export is spawned on the main runtime and awaited from there.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// A collector's answer is read up to this size (it is an empty or tiny protobuf).
const MAX_COLLECTOR_ANSWER: usize = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let exchange = self.runtime.spawn(async move {
            let mut answer = client.execute(request).await?;
            let mut response = Response::builder().status(answer.status());
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await? {
                if body.len() + chunk.len() > MAX_COLLECTOR_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(headers) = response.headers_mut() {
                *headers = std::mem::take(answer.headers_mut());
            }
            Ok::<_, HttpError>(response.body(Bytes::from(body))?)
        });
        exchange.await?
    }
}

/// The `gen_ai.operation.name` of a door (semantic conventions' values).
fn operation(endpoint: Option<Endpoint>) -> &'static str {
    match endpoint {
        Some(Endpoint::Chat | Endpoint::Responses | Endpoint::Messages) => "chat",
        Some(Endpoint::Completions) => "text_completion",
        Some(Endpoint::Embeddings) => "embeddings",
        None => "list_models",
    }
}

/// The `gen_ai.system` of a provider kind (semantic conventions' values).
pub fn system(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Azure => "az.ai.openai",
    }
}

/// An incoming `traceparent` (W3C trace context), to be honoured only when the request came
/// through a trusted proxy: a client must not choose the trace it is recorded under, nor force
/// sampling through a `sampled` flag.
pub fn parent_from(headers: &axum::http::HeaderMap) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// One sampled request's spans: the root (in `cx`), and the clock that places its children.
pub struct RequestTrace {
    cx: Context,
    tracer: SdkTracer,
    /// `gen_ai.operation.name`, the first word of the span's name.
    operation: &'static str,
    /// The same moment on both clocks, to turn the pipeline's `Instant`s into span times.
    anchor: (Instant, SystemTime),
    /// Where the next stage starts: the end of the one before.
    last: Instant,
}

impl RequestTrace {
    /// The root span of a request to `endpoint` (`None`: the model list) that arrived at
    /// `started`, under `parent` when a trusted proxy sent one; `None` when tracing is off or
    /// the sampler left this request out.
    pub fn start(
        traces: Option<&Traces>,
        endpoint: Option<Endpoint>,
        request_id: &str,
        started: Instant,
        parent: Option<Context>,
    ) -> Option<RequestTrace> {
        let traces = traces?;
        let operation = operation(endpoint);
        let parent = parent.unwrap_or_default();
        // The sampler decides first: a request it leaves out costs no clock read and no span.
        let span = traces
            .tracer
            .span_builder(operation)
            .with_kind(SpanKind::Server)
            .start_with_context(&traces.tracer, &parent);
        if !opentelemetry::trace::Span::span_context(&span).is_sampled() {
            return None;
        }
        // The span's start is the SDK's clock now, a few microseconds after the request's
        // `started`; the stages are placed from here on the same clock.
        let anchor = (Instant::now(), SystemTime::now());
        let cx = parent.with_span(span);
        cx.span().set_attributes([
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new(
                "http.request.method",
                if endpoint.is_some() { "POST" } else { "GET" },
            ),
            KeyValue::new("url.path", endpoint.map_or("/v1/models", Endpoint::path)),
            KeyValue::new("cortex.request_id", request_id.to_owned()),
        ]);
        Some(RequestTrace {
            cx,
            tracer: traces.tracer.clone(),
            operation,
            anchor,
            last: anchor.0.max(started),
        })
    }

    fn time(&self, at: Instant) -> SystemTime {
        let (instant, system) = self.anchor;
        if at >= instant {
            system + (at - instant)
        } else {
            system.checked_sub(instant - at).unwrap_or(system)
        }
    }

    /// A child span for the stage that ran from the end of the one before until now.
    pub fn stage(&mut self, name: &'static str) {
        let now = Instant::now();
        let mut span = self.span(name, SpanKind::Internal, self.last, &self.cx, None);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, self.time(now));
        self.last = now;
    }

    fn span(
        &self,
        name: &'static str,
        kind: SpanKind,
        from: Instant,
        parent: &Context,
        attributes: Option<Vec<KeyValue>>,
    ) -> opentelemetry_sdk::trace::Span {
        let mut builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(self.time(from));
        builder.attributes = attributes;
        builder.start_with_context(&self.tracer, parent)
    }

    /// The send stage, with one client span per upstream attempt below it.
    pub fn send(&mut self, attempts: &Attempts) {
        let now = Instant::now();
        let send = self.span("send", SpanKind::Internal, self.last, &self.cx, None);
        let cx = self.cx.with_span(send);
        for (n, attempt) in attempts.iter().enumerate() {
            let mut attributes = vec![
                KeyValue::new("cortex.provider", attempt.provider.name.clone()),
                KeyValue::new("gen_ai.system", system(attempt.provider.kind)),
                KeyValue::new("cortex.attempt", i64::try_from(n + 1).unwrap_or(i64::MAX)),
            ];
            let failed = match &attempt.outcome {
                AttemptOutcome::Answered(status) => {
                    attributes.push(KeyValue::new(
                        "http.response.status_code",
                        i64::from(*status),
                    ));
                    *status >= 500 || *status == 429
                }
                AttemptOutcome::Failed(error) => {
                    attributes.push(KeyValue::new("error.type", upstream_error_type(error)));
                    true
                }
            };
            let mut span = self.span(
                "upstream attempt",
                SpanKind::Client,
                attempt.started,
                &cx,
                Some(attributes),
            );
            if failed {
                opentelemetry::trace::Span::set_status(
                    &mut span,
                    Status::error("the attempt failed"),
                );
            }
            opentelemetry::trace::Span::end_with_timestamp(
                &mut span,
                self.time(attempt.started + attempt.took),
            );
        }
        cx.span().end_with_timestamp(self.time(now));
        self.last = now;
    }

    /// What routing decided: the model asked for (the span's name becomes `chat llama`), the
    /// model the provider is asked for, and whether the answer streams.
    pub fn route(&self, requested_model: &str, upstream_model: &str, stream: bool) {
        let span = self.cx.span();
        span.update_name(format!("{} {requested_model}", self.operation));
        span.set_attributes([
            KeyValue::new("gen_ai.request.model", requested_model.to_owned()),
            KeyValue::new("gen_ai.response.model", upstream_model.to_owned()),
            KeyValue::new("cortex.stream", stream),
        ]);
    }

    /// The provider that answered.
    pub fn provider(&self, name: &str, kind: ProviderKind) {
        self.cx.span().set_attributes([
            KeyValue::new("gen_ai.system", system(kind)),
            KeyValue::new("cortex.provider", name.to_owned()),
        ]);
    }

    /// The request's usage, when it is metered.
    pub fn usage(
        &self,
        input_tokens: u64,
        output_tokens: u64,
        attempts: u32,
        ttft: Option<Duration>,
    ) {
        let span = self.cx.span();
        span.set_attributes([
            KeyValue::new(
                "gen_ai.usage.input_tokens",
                i64::try_from(input_tokens).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "gen_ai.usage.output_tokens",
                i64::try_from(output_tokens).unwrap_or(i64::MAX),
            ),
            KeyValue::new("cortex.attempts", i64::from(attempts)),
        ]);
        if let Some(ttft) = ttft {
            span.set_attribute(KeyValue::new(
                "cortex.time_to_first_token_ms",
                i64::try_from(ttft.as_millis()).unwrap_or(i64::MAX),
            ));
        }
    }

    /// Ends the request's span (and the last stage, `last_stage`, if one is open) with its
    /// answer's status and error code.
    pub fn end(mut self, last_stage: Option<&'static str>, status: u16, code: Option<&str>) {
        if let Some(stage) = last_stage {
            self.stage(stage);
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(code) = code {
            span.set_attribute(KeyValue::new("error.type", code.to_owned()));
        }
        if status >= 500 {
            span.set_status(Status::error(code.unwrap_or("server_error").to_owned()));
        }
        span.end_with_timestamp(self.time(Instant::now()));
    }
}

fn upstream_error_type(error: &cortex_upstream::UpstreamError) -> &'static str {
    match error {
        cortex_upstream::UpstreamError::NoProvider => "no_provider",
        cortex_upstream::UpstreamError::Unreachable => "unreachable",
        cortex_upstream::UpstreamError::Timeout => "timeout",
        cortex_upstream::UpstreamError::ServerError(_) => "server_error",
        cortex_upstream::UpstreamError::BadResponse => "bad_response",
        cortex_upstream::UpstreamError::EgressDenied => "egress_denied",
    }
}

/// Records `name` as the stage that just ended, if the request is traced.
pub fn stage(trace: &mut Option<RequestTrace>, name: &'static str) {
    if let Some(trace) = trace {
        trace.stage(name);
    }
}
